//! The OS layer of [multiproc](https://docs.rs/multiproc): descriptors that travel inside serde
//! messages, an untyped channel of frames plus descriptors over Unix sockets, and the child
//! bootstrap used by the spawner.
//!
//! Laid out by area, lower areas never importing higher ones:
//! - [`message`] and the descriptors inside messages ([`SharedFd`]), [`error`]: the vocabulary;
//! - [`shm`]: shared memory regions;
//! - [`wait`]: eventfd wake-ups, the wait queue, the spin policy, deadlines;
//! - [`transport`]: the stream channel and the seqpacket lane over Unix sockets;
//! - [`proc`]: bootstrap, spawning, the fork server, pidfds, reaping, identity;
//! - [`named`]: values published under a name (abstract sockets) and looked up by name;
//! - [`fs`]: file locks and FIFOs;
//! - a private `sys`: raw sockets, `SCM_RIGHTS`, `poll`.
//!
//! Most users want the `multiproc` crate; this one is for building new handle types.
//!
//! Linux only: it relies on `SCM_RIGHTS`, eventfd, memfd and `/proc/self/exe`.
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

pub mod error;
mod fd;
pub mod fs;
pub mod message;
pub mod named;
pub mod proc;
pub mod shm;
mod sys;
pub mod transport;
pub mod wait;

pub use error::{DecodeError, EncodeError, RecvError, SendError, SendErrorKind};
pub use fd::{DescriptorError, SharedFd};
pub use sys::random_key;
