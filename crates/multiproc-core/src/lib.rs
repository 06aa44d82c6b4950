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
#![deny(unsafe_code)]

// Every crate of multiproc sits on this one, so this is where a build for another target stops,
// with one message instead of a page of unresolved imports.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "multiproc is Linux-only: it is built on SCM_RIGHTS descriptor passing, eventfd, memfd, \
     pidfd and /proc/self/exe, which this target does not have"
);

#[cfg(target_os = "linux")]
pub mod error;
#[cfg(target_os = "linux")]
mod fd;
#[cfg(target_os = "linux")]
pub mod fs;
#[cfg(target_os = "linux")]
pub mod message;
#[cfg(target_os = "linux")]
pub mod named;
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub mod peer;
#[cfg(target_os = "linux")]
pub mod proc;
#[cfg(target_os = "linux")]
pub mod shm;
#[cfg(target_os = "linux")]
mod sys;
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub mod trace;
#[cfg(target_os = "linux")]
pub mod transport;
#[cfg(target_os = "linux")]
pub mod wait;

#[cfg(target_os = "linux")]
pub use error::{DecodeError, EncodeError, RecvError, SendError, SendErrorKind};
#[cfg(target_os = "linux")]
pub use fd::{DescriptorError, SharedFd};
#[cfg(target_os = "linux")]
pub use sys::random_key;
