//! [`WorkerHost`]: a process that takes tasks from a distributed pool's stream and runs them
//! in a local multiproc `Pool`, with backpressure, heartbeats, the retry policy and dead
//! letters.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use multiproc_process::pool::Pool as LocalPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::WireError;
use super::function::{Registry, RunError};
use super::layout::{self, Layout, PoolOptions};
use crate::connect::Nats;
use crate::error::{OpenError, RemoteError};

/// The most tasks one pull asks for.
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
/// It takes from the server only as many tasks as it has room for (one running and one
/// waiting per local worker), so a busy host never hoards work another host could run. While
/// a task runs, the host sends in-progress heartbeats every third of the ack timeout, so a long
/// task is not given to another host while this one lives; if this host dies, hangs or is cut
/// off, its tasks go to another host after the ack timeout.
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

/// Runs one task and reports its outcome.
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
    let task = TaskRef {
        id: task,
        reply,
        function,
    };

    if delivered > ctx.max_attempts {
        // Every attempt was taken by a host that died or stopped answering.
        let cause = "the hosts running it died or stopped answering".to_string();
        ctx.exhaust(&task, &msg, delivered - 1, cause).await;
        return;
    }
    let Some(entry) = ctx.registry.get(&task.function).cloned() else {
        let e = WireError::Unknown {
            function: task.function.clone(),
            host: ctx.host.clone(),
        };
        ctx.finish(&task, &msg, Err(e)).await;
        return;
    };
    if format!("{:016x}", entry.fingerprint) != fp {
        let e = WireError::Mismatch {
            function: task.function.clone(),
            host_signature: entry.signature.clone(),
            submitter_signature: signature,
            host: ctx.host.clone(),
        };
        ctx.finish(&task, &msg, Err(e)).await;
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
    let outcome = (entry.run)(&ctx.local, msg.payload.clone()).await;
    heartbeat.abort();
    // The local worker is free: the next task may come in while this result goes out.
    drop(permit);

    let result = match outcome {
        Ok(bytes) => Ok(bytes),
        Err(RunError::Pool(e)) if e.is_worker_died() => {
            let cause = e.to_string();
            match ctx.on_worker_death {
                OnWorkerDeath::Retry if delivered < ctx.max_attempts => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    return;
                }
                OnWorkerDeath::Retry => {
                    ctx.exhaust(&task, &msg, delivered, cause).await;
                    return;
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
        Err(RunError::BadArgs(message) | RunError::Encode(message)) => Err(WireError::BadArgs {
            message,
            host: ctx.host.clone(),
        }),
    };
    ctx.finish(&task, &msg, result).await;
}

/// The parts of a task's headers a reply needs.
struct TaskRef {
    id: String,
    reply: String,
    function: String,
}

impl Ctx {
    /// Sends the outcome to the submitter, then acknowledges the task. If the outcome cannot
    /// be sent, the task is not acknowledged and runs again later (its result deduplicated).
    async fn finish(
        &self,
        task: &TaskRef,
        msg: &jetstream::Message,
        outcome: Result<Bytes, WireError>,
    ) {
        if self.reply(task, outcome).await.is_ok() {
            let _ = msg.double_ack().await;
        }
    }

    async fn reply(
        &self,
        task: &TaskRef,
        outcome: Result<Bytes, WireError>,
    ) -> Result<(), RemoteError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", task.id.as_str());
        headers.insert(layout::H_TASK, task.id.as_str());
        let payload = match outcome {
            Ok(bytes) => {
                headers.insert(layout::H_STATUS, "ok");
                bytes
            }
            Err(e) => {
                headers.insert(layout::H_STATUS, "err");
                postcard::to_allocvec(&e)
                    .map(Bytes::from)
                    .unwrap_or_default()
            }
        };
        self.js
            .publish_with_headers(task.reply.clone(), headers, payload)
            .await
            .map_err(|e| RemoteError::new("result publish", e))?
            .await
            .map_err(|e| RemoteError::new("result publish", e))?;
        Ok(())
    }

    /// The task used up its attempts: to the dead-letter subject, an error to the submitter,
    /// and never delivered again.
    async fn exhaust(
        &self,
        task: &TaskRef,
        msg: &jetstream::Message,
        attempts: u32,
        cause: String,
    ) {
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(layout::H_ERROR, cause.as_str());
        // The dead letter keeps the task's id, so a second host dead-lettering it is dropped.
        headers.insert("Nats-Msg-Id", format!("dead-{}", task.id).as_str());
        let dead = async {
            self.js
                .publish_with_headers(
                    self.layout.dead_subject.clone(),
                    headers,
                    msg.payload.clone(),
                )
                .await
                .map_err(|e| RemoteError::new("dead-letter publish", e))?
                .await
                .map_err(|e| RemoteError::new("dead-letter publish", e))
        };
        if dead.await.is_err() {
            return; // not acknowledged: delivered again, and dead-lettered then
        }
        let e = WireError::Exhausted {
            attempts,
            dead_letter: self.layout.dead_subject.clone(),
            last_cause: cause,
        };
        if self.reply(task, Err(e)).await.is_ok() {
            let _ = msg.ack_with(AckKind::Term).await;
        }
    }
}
