//! Typed channels between processes for multiproc: [`pipe`]s now, queues beside them.
//!
//! Messages are serde values encoded with postcard; handles inside them (pipe ends, locks,
//! shared memory) travel as file descriptors and arrive usable. Linux only.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

pub mod error;
mod joinable_queue;
pub mod pipe;
mod queue;
mod queue_engine;
mod queue_error;
mod queue_message;
mod queue_ticket;
mod ring;

pub use joinable_queue::JoinableQueue;
pub use queue::{Queue, QueueBuilder, QueueSink, QueueStream};
