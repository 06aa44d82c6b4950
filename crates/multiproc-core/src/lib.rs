//! The OS layer of [multiproc](https://docs.rs/multiproc): descriptors that travel inside serde
//! messages, an untyped channel of frames plus descriptors over Unix sockets, and the child
//! bootstrap used by the spawner.
//!
//! Most users want the `multiproc` crate; this one is for building new handle types.
//!
//! Linux only: it relies on `SCM_RIGHTS`, eventfd, memfd and `/proc/self/exe`.
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod channel;
pub mod cpu;
pub mod error;
pub mod eventfd;
mod fd;
mod forkserver;
mod frame;
pub mod identity;
pub mod message;
pub mod packet;
pub mod pidfd;
pub mod reaper;
pub mod remote_fn;
pub mod shm;
mod socket;
pub mod spawner;
mod spin;
mod sys;
pub mod wait;

pub use error::{DecodeError, EncodeError, RecvError, SendError, SendErrorKind};
pub use fd::{DescriptorError, SharedFd};
