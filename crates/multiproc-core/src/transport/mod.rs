//! Moving bytes and descriptors between processes over Unix sockets: the framed stream
//! channel under pipes and the spawner's control socket ([`channel`]), and the packet lane
//! (a `SOCK_SEQPACKET` pair, or one datagram socket connected to itself) with memfd spill and
//! the log under queues and the manager ([`packet`]), and the OS pieces of named
//! endpoints ([`endpoint`]: peer credentials, the socket path lock).
//!
//! May import: `sys`, `fd`, `message`, `error`, `shm` (spill), `wait` (the spin policy).
//! Never `proc`.

pub mod channel;
pub mod endpoint;
mod frame;
pub mod packet;
mod socket;
