//! Typed channels between processes for multiproc: [`pipe`]s, queues, and named [`fifo`]s.
//!
//! Messages are serde values encoded with postcard; handles inside them (pipe ends, locks,
//! shared memory) travel as file descriptors and arrive usable. Linux only.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

pub mod error;
pub mod fifo;
pub mod pipe;
mod queue;

pub use queue::{JoinableQueue, Queue, QueueBuilder, QueueSink, QueueStats, QueueStream};
