//! [`WorkerHost`]: a process that takes chunks of tasks from a distributed pool's stream and
//! runs them in a local multiproc `Pool`, with backpressure, heartbeats, the retry policy and
//! dead letters, each task keeping its own outcome.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use multiproc_process::pool::Pool as LocalPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::chunk;
use super::error::WireError;
use super::function::{Registry, RunError};
use super::layout::{self, Layout, PoolOptions};
use crate::connect::Nats;
use crate::error::{OpenError, RemoteError};

/// The most chunks one pull asks for.
const MAX_BATCH: usize = 64;
/// How long one pull waits for tasks.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// What a worker host does when the local worker process running a task dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnWorkerDeath {
    /// The submitter gets the local pool's worker-died error (as with the local pool).
    #[default]
    Report,
    /// The task is handed back to run again (on any host), until the pool's attempts are
    /// used up; then the submitter gets an error naming the attempts and the task goes to the
    /// dead-letter subject.
    Retry,
}

/// Why [`WorkerHostBuilder::serve`] stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The pool's streams could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The local pool could not be started.
    #[error("cannot start the local pool")]
    LocalPool(#[source] multiproc_process::pool::PoolError),
}

/// A worker host of a distributed pool: runs the pool's tasks in a local multiproc `Pool`.
///
/// Tasks come in chunks (a submitter's `map` sends many tasks in one message), and the host
/// runs a chunk's tasks on its local pool and answers them in one message. It takes from the
/// server only as many chunks as it has room for (one running and one waiting per local
/// worker), so a busy host never hoards work another host could run. While a chunk runs, the
/// host sends in-progress heartbeats every third of the ack timeout, so a long task is not
/// given to another host while this one lives; if this host dies, hangs or is cut off, its
/// chunks go to another host after the ack timeout. Each task keeps its own outcome: a chunk in
/// which one task fails reports that task's error and the others' results.
///
/// # Examples
///
/// ```no_run
/// use multiproc_nats::pool::{RemoteFn, Registry, WorkerHost};
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
/// const SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square");
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = multiproc_nats::Nats::connect("nats://127.0.0.1:4222").await?;
/// let registry = Registry::new().register(SQUARE, square);
/// WorkerHost::builder(&nats, "math", registry).workers(4).serve().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WorkerHost;

impl WorkerHost {
    /// A builder for a host of the pool `name`, running the functions in `registry`.
    pub fn builder(nats: &Nats, name: &str, registry: Registry) -> WorkerHostBuilder {
        WorkerHostBuilder {
            nats: nats.clone(),
            name: name.to_string(),
            registry,
            workers: 2,
            on_worker_death: OnWorkerDeath::default(),
            options: PoolOptions::default(),
            host: format!(
                "{}/{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "host".to_string()),
                std::process::id()
            ),
        }
    }
}

/// Options of a [`WorkerHost`].
#[derive(Debug)]
pub struct WorkerHostBuilder {
    nats: Nats,
    name: String,
    registry: Registry,
    workers: usize,
    on_worker_death: OnWorkerDeath,
    options: PoolOptions,
    host: String,
}

impl WorkerHostBuilder {
    /// Local worker processes (default 2).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// What to do when a local worker dies mid-task (default [`OnWorkerDeath::Report`]).
    pub fn on_worker_death(mut self, policy: OnWorkerDeath) -> Self {
        self.on_worker_death = policy;
        self
    }

    /// The pool's ack timeout, if this host creates the pool (default 30 s): how long a task
    /// goes without a heartbeat before another host gets it.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.options.ack_timeout = timeout;
        self
    }

    /// The pool's attempts per task, if this host creates the pool (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = attempts.max(1);
        self
    }

    /// The name this host gives in errors it reports (default `hostname/pid`).
    pub fn host_name(mut self, name: impl Into<String>) -> Self {
        self.host = name.into();
        self
    }

    /// Starts the local pool and serves tasks until the returned future is dropped.
    ///
    /// # Errors
    /// The pool's streams could not be opened, or the local pool could not start. Once
    /// serving, server failures are retried, never returned.
    ///
    /// # Cancel safety
    /// Dropping the future stops taking tasks and drops the local pool; tasks it held are
    /// delivered to another host after the ack timeout.
    pub async fn serve(self) -> Result<(), ServeError> {
        crate::name::check(&self.name).map_err(OpenError::from)?;
        let layout = Layout::new(&self.nats, &self.name);
        let consumer = layout
            .create(&self.nats.js, self.options)
            .await
            .map_err(OpenError::from)?;
        let config = &consumer.cached_info().config;
        let ack_timeout = config.ack_wait;
        let max_attempts = u32::try_from(config.max_deliver - 1).unwrap_or(1).max(1);
        let local = LocalPool::builder()
            .workers(self.workers)
            .build()
            .map_err(ServeError::LocalPool)?;
        let ctx = Arc::new(Ctx {
            js: self.nats.js.clone(),
            local,
            registry: self.registry,
            layout,
            host: self.host,
            heartbeat: ack_timeout / 3,
            max_attempts,
            on_worker_death: self.on_worker_death,
        });
        let slots = Arc::new(Semaphore::new(self.workers * 2));
        loop {
            pull_and_run(&ctx, &consumer, &slots).await;
        }
    }
}

/// What every task handler of a host shares.
struct Ctx {
    js: jetstream::Context,
    local: LocalPool,
    registry: Registry,
    layout: Layout,
    host: String,
    heartbeat: Duration,
    max_attempts: u32,
    on_worker_death: OnWorkerDeath,
}

/// Takes as many tasks as there is room for, and starts each.
async fn pull_and_run(
    ctx: &Arc<Ctx>,
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    slots: &Arc<Semaphore>,
) {
    let Ok(first) = slots.clone().acquire_owned().await else {
        return;
    };
    let mut permits = vec![first];
    while permits.len() < MAX_BATCH {
        match slots.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    let batch = consumer
        .batch()
        .max_messages(permits.len())
        .expires(PULL_WAIT)
        .messages()
        .await;
    let mut batch = match batch {
        Ok(b) => b,
        Err(_) => {
            // The server is away (restarting?): try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
    };
    while let Some(next) = batch.next().await {
        match next {
            Ok(msg) => {
                let Some(permit) = permits.pop() else { break };
                tokio::spawn(handle(ctx.clone(), msg, permit));
            }
            Err(_) => break,
        }
    }
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// Runs one chunk of tasks and reports each task's outcome.
async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message, permit: OwnedSemaphorePermit) {
    let delivered = msg
        .info()
        .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let headers = msg.headers.as_ref();
    let (Some(task), Some(function), Some(fp), Some(reply)) = (
        header(headers, layout::H_TASK),
        header(headers, layout::H_FN),
        header(headers, layout::H_FP),
        header(headers, layout::H_REPLY),
    ) else {
        // Not a task of ours: drop it for good.
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let signature = header(headers, layout::H_SIG).unwrap_or_default();
    let chunk = ChunkRef {
        id: task,
        reply,
        function,
    };
    let items = match chunk::tasks(&msg.payload) {
        Ok(items) => items,
        Err(message) => {
            // Not a chunk we can read: each of its tasks (as many as the header says) gets the
            // error.
            let count = header(headers, layout::H_COUNT)
                .and_then(|c| c.parse::<usize>().ok())
                .unwrap_or(1)
                .min(chunk::MAX_CHUNK_BYTES);
            let e = WireError::BadArgs {
                message: format!("malformed chunk: {message}"),
                host: ctx.host.clone(),
            };
            ctx.finish(&chunk, &msg, vec![Err(e); count]).await;
            return;
        }
    };

    if delivered > ctx.max_attempts {
        // Every attempt was taken by a host that died or stopped answering.
        let cause = "the hosts running it died or stopped answering".to_string();
        let all: Vec<usize> = (0..items.len()).collect();
        let mut outcomes = vec![Ok(Bytes::new()); items.len()];
        ctx.exhaust(
            &chunk,
            &msg,
            &items,
            &all,
            delivered - 1,
            cause,
            &mut outcomes,
        )
        .await;
        return;
    }
    let Some(entry) = ctx.registry.get(&chunk.function).cloned() else {
        let e = WireError::Unknown {
            function: chunk.function.clone(),
            host: ctx.host.clone(),
        };
        ctx.finish(&chunk, &msg, vec![Err(e); items.len()]).await;
        return;
    };
    if format!("{:016x}", entry.fingerprint) != fp {
        let e = WireError::Mismatch {
            function: chunk.function.clone(),
            host_signature: entry.signature.clone(),
            submitter_signature: signature,
            host: ctx.host.clone(),
        };
        ctx.finish(&chunk, &msg, vec![Err(e); items.len()]).await;
        return;
    }

    let msg = Arc::new(msg);
    let heartbeat = {
        let msg = msg.clone();
        let period = ctx.heartbeat;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        })
    };
    let ran = (entry.run)(&ctx.local, items.clone()).await;
    heartbeat.abort();
    // The local workers are free: the next chunk may come in while these results go out.
    drop(permit);

    // Tasks whose worker died, when the policy retries them.
    let mut retry = Vec::new();
    let mut last_cause = String::new();
    let mut outcomes = Vec::with_capacity(ran.len());
    for (i, outcome) in ran.into_iter().enumerate() {
        outcomes.push(match outcome {
            Ok(bytes) => Ok(bytes),
            Err(RunError::Pool(e)) if e.is_worker_died() => {
                let cause = e.to_string();
                match ctx.on_worker_death {
                    OnWorkerDeath::Retry => {
                        retry.push(i);
                        last_cause = cause;
                        Ok(Bytes::new())
                    }
                    OnWorkerDeath::Report => Err(WireError::WorkerDied {
                        cause,
                        host: ctx.host.clone(),
                        attempts: delivered,
                    }),
                }
            }
            Err(RunError::Pool(e)) if e.is_panic() => Err(WireError::Panicked {
                message: e.panic_message().unwrap_or("").to_string(),
                host: ctx.host.clone(),
            }),
            Err(RunError::Pool(e)) => Err(WireError::Panicked {
                message: e.to_string(),
                host: ctx.host.clone(),
            }),
            Err(RunError::BadArgs(message) | RunError::Encode(message)) => {
                Err(WireError::BadArgs {
                    message,
                    host: ctx.host.clone(),
                })
            }
        });
    }
    if retry.is_empty() {
        ctx.finish(&chunk, &msg, outcomes).await;
    } else if delivered < ctx.max_attempts {
        // The whole chunk runs again (its results are delivered once all the same).
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    } else {
        ctx.exhaust(
            &chunk,
            &msg,
            &items,
            &retry,
            delivered,
            last_cause,
            &mut outcomes,
        )
        .await;
    }
}

/// The parts of a chunk's headers a reply needs.
struct ChunkRef {
    /// `client-n`: the chunk's tasks are `client-n`, `client-(n+1)`, ...
    id: String,
    reply: String,
    function: String,
}

impl ChunkRef {
    /// The id of the chunk's `i`-th task.
    fn task_id(&self, i: usize) -> String {
        match self.id.rsplit_once('-') {
            Some((client, n)) if i > 0 => match n.parse::<u64>() {
                Ok(n) => format!("{client}-{}", n + i as u64),
                Err(_) => format!("{}+{i}", self.id),
            },
            _ => self.id.clone(),
        }
    }
}

impl Ctx {
    /// Sends the outcomes to the submitter, then acknowledges the chunk. If they cannot be
    /// sent, the chunk is not acknowledged and runs again later (its results deduplicated).
    async fn finish(
        &self,
        chunk: &ChunkRef,
        msg: &jetstream::Message,
        outcomes: Vec<Result<Bytes, WireError>>,
    ) {
        if self.reply(chunk, &outcomes).await.is_ok() {
            let _ = msg.double_ack().await;
        }
    }

    async fn reply(
        &self,
        chunk: &ChunkRef,
        outcomes: &[Result<Bytes, WireError>],
    ) -> Result<(), RemoteError> {
        let mut acks = Vec::new();
        for (first, count, payload) in chunk::parts(outcomes) {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{}@{first}", chunk.id).as_str());
            headers.insert(layout::H_TASK, chunk.id.as_str());
            headers.insert(layout::H_FIRST, first.to_string().as_str());
            headers.insert(layout::H_COUNT, count.to_string().as_str());
            acks.push(
                self.js
                    .publish_with_headers(chunk.reply.clone(), headers, payload)
                    .await
                    .map_err(|e| RemoteError::new("result publish", e))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| RemoteError::new("result publish", e))?;
        }
        Ok(())
    }

    /// The tasks `which` of a chunk used up their attempts: each to the dead-letter subject,
    /// an error to the submitter (with the other tasks' `outcomes`), and the chunk never
    /// delivered again.
    #[allow(clippy::too_many_arguments)]
    async fn exhaust(
        &self,
        chunk: &ChunkRef,
        msg: &jetstream::Message,
        items: &[Bytes],
        which: &[usize],
        attempts: u32,
        cause: String,
        outcomes: &mut [Result<Bytes, WireError>],
    ) {
        let dead = async {
            let mut acks = Vec::new();
            for &i in which {
                let mut headers = msg.headers.clone().unwrap_or_default();
                let id = chunk.task_id(i);
                headers.insert(layout::H_TASK, id.as_str());
                headers.insert(layout::H_COUNT, "1");
                headers.insert(layout::H_ERROR, cause.as_str());
                // The dead letter keeps the task's id, so a second host dead-lettering it is
                // dropped.
                headers.insert("Nats-Msg-Id", format!("dead-{id}").as_str());
                // A dead letter holds one task, as a chunk of one: it can be submitted again
                // as it is.
                let mut one = chunk::ChunkBuf::default();
                one.push(&items[i]);
                acks.push(
                    self.js
                        .publish_with_headers(
                            self.layout.dead_subject.clone(),
                            headers,
                            one.take().1,
                        )
                        .await
                        .map_err(|e| RemoteError::new("dead-letter publish", e))?,
                );
            }
            for ack in acks {
                ack.await
                    .map_err(|e| RemoteError::new("dead-letter publish", e))?;
            }
            Ok::<(), RemoteError>(())
        };
        if dead.await.is_err() {
            return; // not acknowledged: delivered again, and dead-lettered then
        }
        for &i in which {
            outcomes[i] = Err(WireError::Exhausted {
                attempts,
                dead_letter: self.layout.dead_subject.clone(),
                last_cause: cause.clone(),
            });
        }
        if self.reply(chunk, outcomes).await.is_ok() {
            let _ = msg.ack_with(AckKind::Term).await;
        }
    }
}
