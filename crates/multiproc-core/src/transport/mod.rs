//! Moving bytes and descriptors between processes over Unix sockets: the framed stream
//! channel under pipes and the spawner's control socket ([`channel`]), and the
//! `SOCK_SEQPACKET` lane with memfd spill under queues ([`packet`]).
//!
//! May import: `sys`, `fd`, `message`, `error`, `shm` (spill), `wait` (the spin policy).
//! Never `proc`.

pub mod channel;
mod frame;
pub mod packet;
mod socket;
