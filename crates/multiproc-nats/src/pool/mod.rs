//! A process pool whose workers run on many hosts: [`WorkerHost`]s, each running a local
//! multiproc `Pool`, take named tasks from a JetStream stream; a [`Pool`] client submits them
//! from anywhere and gets each result once.
//!
//! | what happens                          | what the submitter sees |
//! |---------------------------------------|-------------------------|
//! | the function panics                   | [`PoolError::is_panic`], with the message |
//! | the local worker process dies         | [`PoolError::is_worker_died`] ([`OnWorkerDeath::Report`], the default), or the task runs again ([`OnWorkerDeath::Retry`]) |
//! | a host dies, hangs or is cut off      | nothing: its tasks go to another host after the ack timeout; a result that still comes from the first is dropped |
//! | a task fails on every attempt         | [`PoolError::is_retries_exhausted`] naming the attempts and the dead-letter subject, where the task is kept |
//! | two builds disagree on a function     | [`PoolError::is_fingerprint_mismatch`], naming both signatures |
//! | no host knows the function            | [`PoolError::is_unknown_function`] |
//!
//! Functions are named, not addressed: declare a [`RemoteFn`] in code both sides build, and
//! [`Registry::register`] the function under it on the hosts.
//!
//! The streams and headers are described in `layout`; the host in `host`, the client in
//! `client`, names and fingerprints in `function`.

mod chunk;
mod client;
mod error;
mod function;
mod host;
mod layout;

pub use client::{Pool, PoolBuilder, Results, TaskHandle};
pub use error::PoolError;
pub use function::{Registry, RemoteFn};
pub use host::{OnWorkerDeath, ServeError, WorkerHost, WorkerHostBuilder};
