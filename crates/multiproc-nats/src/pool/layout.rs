//! Where a distributed pool lives on the server, shared by the submitting [`Pool`](super::Pool)
//! and the [`WorkerHost`](super::WorkerHost)s: its three streams, its subjects, its consumer,
//! and the headers its messages carry.
//!
//! - Tasks: a work-queue stream `ns_pool_NAME` on `ns.pool.NAME.tasks`, consumed by every host
//!   through one durable consumer (`hosts`) with explicit acks, the pool's ack timeout and
//!   `max_deliver` = attempts + 1 (the extra delivery lets a host notice that every attempt
//!   was used by hosts that died, and dead-letter the task instead of the server dropping it
//!   silently). A message is a *chunk*: one or more tasks of one function (`chunk`), numbered
//!   from the id in `Mp-Task` (`client-n`, then `client-(n+1)`, ...), published, delivered,
//!   acknowledged and redelivered as one.
//! - Results: a work-queue stream `ns_poolres_NAME` on `ns.pool.NAME.results.<client>`; each
//!   submitting client reads its own subject. A chunk's outcomes come back in one message (or
//!   a few, when large: `Mp-First` says where each starts), published with the chunk's id and
//!   that offset as its `Nats-Msg-Id`, so the server drops the second answer of a chunk that
//!   ran twice (and the client, which hands each task's outcome out once, drops any that gets
//!   through).
//! - Dead letters: a limits stream `ns_pooldead_NAME` on `ns.pool.NAME.dead`, where each task
//!   that used up its attempts is kept (as a chunk of one) with its last error.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};

use crate::connect::Nats;
use crate::error::RemoteError;

/// Header: the id of the chunk's first task (`client-n`).
pub(crate) const H_TASK: &str = "Mp-Task";
/// Header: the number of tasks in a chunk or a result message.
pub(crate) const H_COUNT: &str = "Mp-Count";
/// Header: on a result message, the chunk's task its first outcome belongs to (0 for the
/// first).
pub(crate) const H_FIRST: &str = "Mp-First";
/// Header: the function's name.
pub(crate) const H_FN: &str = "Mp-Fn";
/// Header: the fingerprint of the submitter's signature, hex.
pub(crate) const H_FP: &str = "Mp-Fp";
/// Header: the submitter's signature, for the mismatch message.
pub(crate) const H_SIG: &str = "Mp-Sig";
/// Header: the subject to send the result to.
pub(crate) const H_REPLY: &str = "Mp-Reply";
/// Header: on a dead letter, the last failure.
pub(crate) const H_ERROR: &str = "Mp-Error";

/// How long results wait for a client that went away.
const RESULT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Options of a pool, set by whoever creates its streams first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolOptions {
    pub(crate) ack_timeout: Duration,
    pub(crate) max_attempts: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(30),
            max_attempts: 3,
        }
    }
}

/// The names of a pool's streams and subjects.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) tasks_subject: String,
    pub(crate) results_stream: String,
    pub(crate) results_prefix: String,
    pub(crate) dead_stream: String,
    pub(crate) dead_subject: String,
    tasks_stream: String,
}

impl Layout {
    pub(crate) fn new(nats: &Nats, name: &str) -> Self {
        let base = nats.subject("pool", name);
        Self {
            tasks_stream: nats.stream_name("pool", name),
            tasks_subject: format!("{base}.tasks"),
            results_stream: nats.stream_name("poolres", name),
            results_prefix: format!("{base}.results"),
            dead_stream: nats.stream_name("pooldead", name),
            dead_subject: format!("{base}.dead"),
        }
    }

    /// Creates the three streams and the hosts' consumer if they do not exist.
    pub(crate) async fn create(
        &self,
        js: &jetstream::Context,
        options: PoolOptions,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, RemoteError> {
        let tasks = js
            .get_or_create_stream(stream::Config {
                name: self.tasks_stream.clone(),
                subjects: vec![self.tasks_subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| RemoteError::new("pool stream creation", e))?;
        js.get_or_create_stream(stream::Config {
            name: self.results_stream.clone(),
            subjects: vec![format!("{}.>", self.results_prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: RESULT_MAX_AGE,
            ..Default::default()
        })
        .await
        .map_err(|e| RemoteError::new("pool stream creation", e))?;
        js.get_or_create_stream(stream::Config {
            name: self.dead_stream.clone(),
            subjects: vec![self.dead_subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| RemoteError::new("pool stream creation", e))?;
        tasks
            .get_or_create_consumer(
                "hosts",
                pull::Config {
                    durable_name: Some("hosts".to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_timeout,
                    max_deliver: i64::from(options.max_attempts) + 1,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| RemoteError::new("pool consumer creation", e))
    }
}
