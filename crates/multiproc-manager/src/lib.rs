//! Served typed state for multiproc: Python's `multiprocessing.Manager`, without its pitfalls.
//!
//! A [`Manager`] is a child process that owns named values (a [`Map`], a [`List`], a
//! [`Value`], a [`Counter`]) and serves them to any process through proxies. A proxy is a
//! handle like every multiproc handle: clone it, pass it to `spawn` or a pool task, or send it
//! inside a message. It carries no secret and no connection: each process that uses one opens
//! its own connection to the manager on first use.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use multiproc::manager::{Manager, Map};
//!
//! fn push(list: &mut Vec<u32>, x: u32) {
//!     list.push(x);
//! }
//!
//! async fn worker((results, i): (Map<String, Vec<u32>>, u32)) {
//!     // Runs `push` inside the manager: atomic, and never lost.
//!     results.update("all", push, i).await.unwrap();
//! }
//!
//! let manager = Manager::start().await?;
//! let results = manager.map::<String, Vec<u32>>("results").await?;
//! let children: Vec<_> = (0..4)
//!     .map(|i| multiproc::spawn((results.clone(), i), worker))
//!     .collect();
//! for child in children {
//!     child.await?;
//! }
//! let mut all = results.get("all").await?.unwrap_or_default();
//! all.sort();
//! assert_eq!(all, [0, 1, 2, 3]);
//! manager.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What Python's pitfalls become
//! - **Lost nested mutation** (`d['k'].append(x)` silently does nothing): reads return owned
//!   copies, so changing one visibly changes only the copy; [`Map::update`] runs a `fn` inside
//!   the manager on the stored value, atomically (the function is found the way `spawn` finds a
//!   child's function). Re-assigning (`insert` of a changed copy) works too, as in Python.
//! - **Every access is a round trip**: a [`Batch`] sends many operations in one request (and
//!   applies them atomically); a [`Pipeline`] sends operations without waiting for each answer.
//! - **Proxies break when passed around**: a proxy serializes as the manager's connector (a
//!   descriptor) and the value's id, nothing else; no authkey, no shared socket between
//!   processes.
//! - **A dead manager hangs its clients**: every pending and later operation fails promptly
//!   with [`OpError::is_manager_gone`].
//!
//! # Remote managers
//! With the `remote` feature (on in the `multiproc` facade with its `connection` feature),
//! `Client::serve` serves a manager on an endpoint (`multiproc::connection`'s addresses: TCP,
//! a Unix socket path or abstract name) with its authentication (a key with Python's mutual
//! challenge, same user, TLS); `connect` reaches it from any program. A wrong key is
//! refused (`ConnectError::is_auth`) and the manager goes on serving. A client of another
//! program can use every operation but `update` (functions are found by address, in this
//! program only).
//!
//! # Locks, queues and events need no manager
//! Python serves `Lock`, `Queue`, `Event` and friends from the manager because its own cannot
//! be passed to a running process. multiproc's can: hand the real handle (`multiproc::Lock`,
//! `multiproc::Queue`, ...) to `spawn`, a pool task or a message; it is faster and survives the
//! manager. Such handles may also be stored in served values (a map of queues, say).
//!
//! # Faults
//! - The manager killed: every pending and later operation on every proxy fails promptly with
//!   [`OpError::is_manager_gone`]. A restart ([`Manager::builder`] then
//!   [`ManagerBuilder::restore`]) serves what the last [`Snapshot`] held; without one it starts
//!   empty: **state that was not snapshotted is lost**. Proxies of the old manager stay failed;
//!   open the values again from the new one (by the same names).
//! - A client killed mid-operation: the manager keeps serving everyone else. A request is
//!   applied only once it arrived whole, and applied whole (an `update` whose function panics
//!   leaves the value as it was).
//! - A value, argument or key that cannot be encoded fails in the caller
//!   ([`OpError::is_encode`]); nothing is sent.
//!
//! # How it works
//! The manager keeps every value encoded (postcard bytes plus the descriptors of handles
//! inside), so it needs no knowledge of the types; clients encode and decode. A map's `insert`
//! and `get` travel as the key's and value's bytes in a compact form that the manager applies
//! without decoding anything: it finds the key by its bytes (see [`Map`]'s "Keys" on what that
//! means for equality) and answers a read by copying the stored bytes. Each process
//! opens its own pipe to the manager by sending one end through the manager's *connector*, a
//! `SOCK_SEQPACKET` socket whose receiving end only the manager holds: when the manager dies,
//! sends on the connector fail and every pipe reaches end-of-file. The manager serves every
//! connection from one loop that applies all the requests waiting on a connection and answers
//! them with one write, and that, when nothing waits, spins briefly across every client it just
//! answered before it sleeps; a [`Pipeline`] sends consecutive operations in groups (one
//! request per up to 64, written as soon as it is full, so the manager applies one group while
//! the client encodes the next), so a long stream of operations costs few requests, few writes
//! and, for short keys and values (kept inline), no allocation per operation.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

mod bytes;
mod codec;
#[cfg(test)]
mod cost;
mod counter;
mod decode;
pub mod error;
mod hub;
mod link;
mod list;
mod manager;
mod map;
mod op;
#[cfg(feature = "remote")]
mod remote;
mod server;
mod state;
mod target;
mod update;
mod value;
mod watch;
mod wire;

pub use counter::{Counter, CounterOps};
#[cfg(feature = "remote")]
pub use error::{ConnectError, ServeError};
pub use error::{OpError, ShutdownError, StartError};
pub use list::{List, ListOps};
pub use manager::{Client, Manager, ManagerBuilder, Snapshot};
pub use map::{Map, MapOps};
pub use op::{Batch, BatchResults, Op, Pipeline, Slot};
#[cfg(feature = "remote")]
pub use remote::{Serving, connect};
pub use value::{Value, ValueOps};
pub use watch::{MapEvent, Watch};
