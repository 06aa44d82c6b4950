//! [`Pool`]: the submitting side of a distributed pool, with its [`TaskHandle`] and result
//! [`Results`] stream. Tasks go out in chunks (`map` puts many in one message; `submit` sends
//! a chunk of one). A background router reads this client's result messages and hands each
//! task's outcome to the handle waiting for it, once: a second result for a task (it ran
//! twice) finds no handle and is dropped.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesOrdered, FuturesUnordered};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::chunk::{self, ChunkBuf};
use super::error::PoolError;
use super::function::RemoteFn;
use super::layout::{self, Layout, PoolOptions};
use crate::connect::Nats;
use crate::error::{OpenError, RemoteError};

/// Chunks published before their acknowledgements are awaited, in `map`.
const PUBLISH_WINDOW: usize = 256;
/// Without a chunk size, `map` cuts its items into about this many chunks...
const AUTO_CHUNKS: usize = 32;
/// ...of at most this many tasks.
const MAX_AUTO_CHUNK: usize = 1024;
/// How long the server keeps this client's result consumer after the client went away.
const CLIENT_INACTIVE: Duration = Duration::from_secs(600);

type Outcome = Result<Bytes, PoolError>;

struct Shared {
    js: jetstream::Context,
    layout: Layout,
    reply_subject: String,
    client_id: String,
    next: AtomicU64,
    chunksize: Option<usize>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    router: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(router) = self.router.lock().unwrap_or_else(|e| e.into_inner()).take() {
            router.abort();
        }
    }
}

/// A pool whose workers run on many hosts ([`WorkerHost`](super::WorkerHost)s), submitted to
/// from any host: `map`, `imap`, `imap_unordered`, `submit`, as the local `multiproc::Pool`.
///
/// Functions are named ([`RemoteFn`]); arguments and results are postcard-encoded. Each
/// task's result is delivered exactly once, even when the task ran twice (its first host was
/// presumed dead). Cheap to clone.
///
/// # Examples
///
/// ```no_run
/// use multiproc_nats::pool::RemoteFn;
///
/// const SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square");
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = multiproc_nats::Nats::connect("nats://127.0.0.1:4222").await?;
/// let pool = nats.pool("math").await?;
/// let squares = pool.map(SQUARE, 0..100u64).await?;
/// assert_eq!(squares[9], 81);
/// let one = pool.submit(SQUARE, 12).await?;
/// assert_eq!(one.await?, 144);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("tasks", &self.shared.layout.tasks_subject)
            .field("client", &self.shared.client_id)
            .finish()
    }
}

/// Options for a distributed [`Pool`], applied if this client creates its streams.
#[derive(Debug)]
pub struct PoolBuilder {
    nats: Nats,
    name: String,
    options: PoolOptions,
    chunksize: Option<usize>,
}

impl PoolBuilder {
    /// Tasks per message in [`map`](Pool::map), [`imap`](Pool::imap) and
    /// [`imap_unordered`](Pool::imap_unordered) (default: about 32 chunks per call, at most
    /// 1,024 tasks each; a chunk also stops at 256 KiB of arguments). A chunk is published,
    /// acknowledged, run by one host and answered in one go, which is what makes small tasks
    /// fast; smaller chunks spread uneven tasks better over hosts. Each task still has its own
    /// outcome, and a chunk whose host dies is run again elsewhere with results delivered once.
    /// Zero counts as one.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = Some(chunksize.max(1));
        self
    }

    /// How long a task may go without its host's heartbeat before another host gets it
    /// (default 30 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.options.ack_timeout = timeout;
        self
    }

    /// Attempts per task before it goes to the dead-letter subject (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = attempts.max(1);
        self
    }

    /// Opens the pool, creating its streams if needed, and starts reading this client's
    /// results.
    ///
    /// # Errors
    /// An invalid name, or the server refused.
    ///
    /// # Cancel safety
    /// Cancel safe; the streams may or may not have been created.
    pub async fn open(self) -> Result<Pool, OpenError> {
        crate::name::check(&self.name)?;
        let layout = Layout::new(&self.nats, &self.name);
        layout.create(&self.nats.js, self.options).await?;
        let client_id = client_id();
        let reply_subject = format!("{}.{client_id}", layout.results_prefix);
        let results = self
            .nats
            .js
            .get_stream(&layout.results_stream)
            .await
            .map_err(|e| RemoteError::new("results stream", e))?;
        // Durable, so that it survives a server restart; the server deletes it once this client
        // has been gone for CLIENT_INACTIVE.
        let config = pull::Config {
            durable_name: Some(client_id.clone()),
            filter_subject: reply_subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            inactive_threshold: CLIENT_INACTIVE,
            max_ack_pending: -1,
            ..Default::default()
        };
        results
            .create_consumer(config.clone())
            .await
            .map_err(|e| RemoteError::new("results consumer", e))?;
        let shared = Arc::new(Shared {
            js: self.nats.js.clone(),
            layout,
            reply_subject,
            client_id,
            next: AtomicU64::new(0),
            chunksize: self.chunksize,
            pending: Mutex::new(HashMap::new()),
            router: Mutex::new(None),
        });
        let router = tokio::spawn(route(Arc::downgrade(&shared), results, config));
        *shared.router.lock().unwrap_or_else(|e| e.into_inner()) = Some(router);
        Ok(Pool { shared })
    }
}

fn client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "c{:x}x{:x}x{:x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Reads this client's results and hands each to its waiting handle, reopening its consumer
/// after a failure (a server restart).
async fn route(
    shared: std::sync::Weak<Shared>,
    results: jetstream::stream::Stream,
    config: pull::Config,
) {
    let name = config.durable_name.clone().unwrap_or_default();
    loop {
        if shared.strong_count() == 0 {
            return;
        }
        let messages = match results.get_or_create_consumer(&name, config.clone()).await {
            Ok(consumer) => consumer.messages().await,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(mut messages) = messages else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut errors = 0;
        while let Some(next) = messages.next().await {
            let msg = match next {
                Ok(msg) => msg,
                // A missed heartbeat or a reconnection: the stream may go on; after a few in a
                // row, the consumer is opened again.
                Err(_) => {
                    errors += 1;
                    if errors >= 3 {
                        break;
                    }
                    continue;
                }
            };
            errors = 0;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            deliver(&shared, &msg);
            let _ = msg.ack().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hands each outcome of a result message to the handle waiting for it, if any.
fn deliver(shared: &Shared, msg: &jetstream::Message) {
    let headers = msg.headers.as_ref();
    let number = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.as_str().parse::<u64>().ok())
    };
    let task = headers
        .and_then(|h| h.get(layout::H_TASK))
        .and_then(|v| v.as_str().rsplit('-').next()?.parse::<u64>().ok());
    let Some(task) = task else { return };
    let first = task.saturating_add(number(layout::H_FIRST).unwrap_or(0));
    let outcomes: Vec<Outcome> = match chunk::outcomes(&msg.payload) {
        Ok(outcomes) => outcomes
            .into_iter()
            .map(|o| match o {
                Ok(bytes) => Ok(bytes),
                Err(Ok(e)) => Err(PoolError::wire(e)),
                Err(Err(e)) => Err(PoolError::bad_result(e)),
            })
            .collect(),
        // Unreadable: each task it answers (as many as the header says) gets the error.
        Err(e) => {
            let count = number(layout::H_COUNT).unwrap_or(1).min(1 << 20);
            (0..count)
                .map(|_| Err(PoolError::bad_result(e.clone())))
                .collect()
        }
    };
    let mut waiters = Vec::with_capacity(outcomes.len());
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (i, outcome) in outcomes.into_iter().enumerate() {
            // No waiter: a second result of a task that ran twice, or a dropped handle.
            if let Some(waiter) = pending.remove(&first.saturating_add(i as u64)) {
                waiters.push((waiter, outcome));
            }
        }
    }
    for (waiter, outcome) in waiters {
        let _ = waiter.send(outcome);
    }
}

impl Pool {
    /// Submits `f(args)` and returns once the server has stored the task; the handle resolves
    /// to its result (Python's `apply_async`).
    ///
    /// # Errors
    /// The arguments cannot be encoded, or the server did not store the task.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped submit may or may not have stored the task (it then runs,
    /// and its result is dropped).
    pub async fn submit<A: Serialize, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        args: A,
    ) -> Result<TaskHandle<R>, PoolError> {
        let mut chunk = ChunkBuf::default();
        chunk.push(&encode(&args)?);
        let (mut handles, ack) = self.publish(f, &mut chunk).await?;
        ack.await?;
        Ok(handles.pop().expect("a chunk of one"))
    }

    /// Runs `f(args)` on some host and returns its result (Python's `apply`).
    ///
    /// # Errors
    /// As [`submit`](Self::submit), then the task's own error.
    ///
    /// # Cancel safety
    /// As [`submit`](Self::submit); after that, dropping only stops waiting.
    pub async fn apply<A: Serialize, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        args: A,
    ) -> Result<R, PoolError> {
        self.submit(f, args).await?.await
    }

    /// Publishes a chunk of tasks (and empties it); gives their handles and a future of the
    /// server's acknowledgement.
    async fn publish<A, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        chunk: &mut ChunkBuf,
    ) -> Result<
        (
            Vec<TaskHandle<R>>,
            impl Future<Output = Result<(), PoolError>> + use<A, R>,
        ),
        PoolError,
    > {
        let (count, payload) = chunk.take();
        let n = self.shared.next.fetch_add(count as u64, Ordering::Relaxed);
        let id = format!("{}-{n}", self.shared.client_id);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(layout::H_TASK, id.as_str());
        headers.insert(layout::H_COUNT, count.to_string().as_str());
        headers.insert(layout::H_FN, f.name());
        headers.insert(layout::H_FP, format!("{:016x}", f.fingerprint()).as_str());
        headers.insert(layout::H_SIG, f.signature().as_str());
        headers.insert(layout::H_REPLY, self.shared.reply_subject.as_str());
        let mut handles = Vec::with_capacity(count);
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for task in n..n + count as u64 {
                let (tx, rx) = oneshot::channel();
                pending.insert(task, tx);
                handles.push(TaskHandle {
                    rx,
                    shared: self.shared.clone(),
                    task,
                    _r: PhantomData,
                });
            }
        }
        let sent = self
            .shared
            .js
            .publish_with_headers(self.shared.layout.tasks_subject.clone(), headers, payload)
            .await
            .map_err(|e| PoolError::remote(RemoteError::new("task publish", e)))?;
        let ack = async move {
            sent.await
                .map(|_| ())
                .map_err(|e| PoolError::remote(RemoteError::new("task publish", e)))
        };
        Ok((handles, ack))
    }

    /// Submits every item in chunks, a window of chunks at a time, and gives their handles in
    /// order.
    async fn submit_all<A: Serialize, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<TaskHandle<R>>, PoolError> {
        let items: Vec<A> = items.into_iter().collect();
        let per_chunk = self
            .shared
            .chunksize
            .unwrap_or_else(|| items.len().div_ceil(AUTO_CHUNKS).clamp(1, MAX_AUTO_CHUNK));
        let mut handles = Vec::with_capacity(items.len());
        let mut acks = Vec::new();
        let mut chunk = ChunkBuf::default();
        let mut args = Vec::new();
        let mut items = items.into_iter().enumerate();
        loop {
            let next = items.next();
            if let Some((i, item)) = &next {
                args.clear();
                postcard::to_io(item, &mut args)
                    .map_err(|e| PoolError::encode(e.to_string()).at_item(*i))?;
            }
            // The chunk goes when the next item would not fit, or there is none.
            if chunk.len() > 0 && (next.is_none() || chunk.full_for(&args, per_chunk)) {
                let first = handles.len();
                let (more, ack) = self
                    .publish(f, &mut chunk)
                    .await
                    .map_err(|e| e.at_item(first))?;
                handles.extend(more);
                acks.push(ack);
                if acks.len() >= PUBLISH_WINDOW {
                    futures::future::try_join_all(acks.drain(..)).await?;
                }
            }
            if next.is_none() {
                break;
            }
            chunk.push(&args);
        }
        futures::future::try_join_all(acks).await?;
        Ok(handles)
    }

    /// Runs `f` over every item on the hosts and gives the results in order (Python's `map`).
    ///
    /// # Errors
    /// The first failing item's error (by position), with [`PoolError::item`] set.
    ///
    /// # Cancel safety
    /// Dropping the future stops waiting; tasks already stored still run.
    pub async fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, PoolError> {
        let handles = self.submit_all(f, items).await?;
        let mut out = Vec::with_capacity(handles.len());
        for (i, handle) in handles.into_iter().enumerate() {
            out.push(handle.await.map_err(|e| e.at_item(i))?);
        }
        Ok(out)
    }

    /// As [`map`](Self::map), as a [`Stream`] of results in item order (Python's `imap`);
    /// an item's error does not end the stream.
    pub fn imap<A, R, I>(&self, f: RemoteFn<A, R>, items: I) -> Results<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.results(f, items.into_iter(), true)
    }

    /// As [`imap`](Self::imap), with results in completion order (Python's
    /// `imap_unordered`); [`PoolError::item`] tells which item failed.
    pub fn imap_unordered<A, R, I>(&self, f: RemoteFn<A, R>, items: I) -> Results<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.results(f, items.into_iter(), false)
    }

    /// Submits every item when first polled, then yields the results in item or completion
    /// order.
    fn results<A, R>(
        &self,
        f: RemoteFn<A, R>,
        items: impl Iterator<Item = A> + Send + 'static,
        ordered: bool,
    ) -> Results<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let pool = self.clone();
        let stream = futures::stream::once(async move { pool.submit_all(f, items).await })
            .map(move |submitted| match submitted {
                Ok(handles) => {
                    let each = handles
                        .into_iter()
                        .enumerate()
                        .map(|(i, h)| async move { h.await.map_err(|e| e.at_item(i)) });
                    if ordered {
                        each.collect::<FuturesOrdered<_>>().boxed()
                    } else {
                        each.collect::<FuturesUnordered<_>>().boxed()
                    }
                }
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Results(stream.boxed())
    }

    /// The subject where tasks that used up their attempts are kept.
    pub fn dead_letter_subject(&self) -> &str {
        &self.shared.layout.dead_subject
    }

    /// How many tasks are in the dead-letter stream.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn dead_letters(&self) -> Result<u64, RemoteError> {
        let stream = self
            .shared
            .js
            .get_stream(&self.shared.layout.dead_stream)
            .await
            .map_err(|e| RemoteError::new("stream info", e))?;
        Ok(stream.cached_info().state.messages)
    }
}

fn encode<A: Serialize>(args: &A) -> Result<Vec<u8>, PoolError> {
    postcard::to_allocvec(args).map_err(|e| PoolError::encode(e.to_string()))
}

/// The result of one task submitted to a distributed [`Pool`]: a future.
///
/// Dropping it does not cancel the task (it runs, and its result is dropped).
pub struct TaskHandle<R> {
    rx: oneshot::Receiver<Outcome>,
    shared: Arc<Shared>,
    task: u64,
    _r: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("task", &self.task)
            .finish()
    }
}

impl<R> Drop for TaskHandle<R> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.task);
    }
}

impl<R: DeserializeOwned> TaskHandle<R> {
    /// Waits at most `timeout` for the result; the handle stays usable after a timeout.
    ///
    /// # Errors
    /// [`PoolError::is_timeout`], or the task's error.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn result_timeout(&mut self, timeout: Duration) -> Result<R, PoolError> {
        match tokio::time::timeout(timeout, &mut *self).await {
            Ok(r) => r,
            Err(_) => Err(PoolError::timeout()),
        }
    }
}

impl<R: DeserializeOwned> Future for TaskHandle<R> {
    type Output = Result<R, PoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = futures::ready!(Pin::new(&mut self.rx).poll(cx));
        Poll::Ready(match outcome {
            Ok(Ok(bytes)) => {
                postcard::from_bytes(&bytes).map_err(|e| PoolError::bad_result(e.to_string()))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PoolError::closed()),
        })
    }
}

impl<R> Unpin for TaskHandle<R> {}

/// The results of [`Pool::imap`] or [`Pool::imap_unordered`], as a [`Stream`].
pub struct Results<R>(BoxStream<'static, Result<R, PoolError>>);

impl<R> fmt::Debug for Results<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Results")
    }
}

impl<R> Stream for Results<R> {
    type Item = Result<R, PoolError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl Nats {
    /// Opens the distributed pool `name` for submitting (its hosts are
    /// [`WorkerHost`](super::WorkerHost)s).
    ///
    /// # Errors
    /// An invalid name, or the server refused.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn pool(&self, name: &str) -> Result<Pool, OpenError> {
        self.pool_builder(name).open().await
    }

    /// A builder for the pool `name`, for its ack timeout and attempts.
    pub fn pool_builder(&self, name: &str) -> PoolBuilder {
        PoolBuilder {
            nats: self.clone(),
            name: name.to_string(),
            options: PoolOptions::default(),
            chunksize: None,
        }
    }
}
