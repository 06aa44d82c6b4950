//! [`Pool`]: the submitting side of a distributed pool, with its [`TaskHandle`] and result
//! [`Results`] stream. A background router reads this client's results and hands each to the
//! handle waiting for it, once: a second result for a task (it ran twice) finds no handle and
//! is dropped.

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

use super::error::{PoolError, WireError};
use super::function::RemoteFn;
use super::layout::{self, Layout, PoolOptions};
use crate::connect::Nats;
use crate::error::{OpenError, RemoteError};

/// Tasks published before their acknowledgements are awaited, in `map`.
const PUBLISH_WINDOW: usize = 256;
/// How long the server keeps this client's result consumer after the client went away.
const CLIENT_INACTIVE: Duration = Duration::from_secs(600);

type Outcome = Result<Bytes, PoolError>;

struct Shared {
    js: jetstream::Context,
    layout: Layout,
    reply_subject: String,
    client_id: String,
    next: AtomicU64,
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
}

impl PoolBuilder {
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

/// Hands one result to the handle waiting for it, if any.
fn deliver(shared: &Shared, msg: &jetstream::Message) {
    let headers = msg.headers.as_ref();
    let task = headers
        .and_then(|h| h.get(layout::H_TASK))
        .and_then(|v| v.as_str().rsplit('-').next()?.parse::<u64>().ok());
    let ok = headers
        .and_then(|h| h.get(layout::H_STATUS))
        .is_some_and(|v| v.as_str() == "ok");
    let Some(task) = task else { return };
    let waiter = shared
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&task);
    // No waiter: a second result of a task that ran twice, or a dropped handle.
    if let Some(waiter) = waiter {
        let outcome = if ok {
            Ok(msg.payload.clone())
        } else {
            Err(match postcard::from_bytes::<WireError>(&msg.payload) {
                Ok(e) => PoolError::wire(e),
                Err(e) => PoolError::bad_result(e.to_string()),
            })
        };
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
        let (handle, ack) = self.publish(f, encode(&args)?).await?;
        ack.await?;
        Ok(handle)
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

    /// Publishes one task; gives its handle and a future of the server's acknowledgement.
    async fn publish<A, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        payload: Vec<u8>,
    ) -> Result<
        (
            TaskHandle<R>,
            impl Future<Output = Result<(), PoolError>> + use<A, R>,
        ),
        PoolError,
    > {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.shared.client_id);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(layout::H_TASK, id.as_str());
        headers.insert(layout::H_FN, f.name());
        headers.insert(layout::H_FP, format!("{:016x}", f.fingerprint()).as_str());
        headers.insert(layout::H_SIG, f.signature().as_str());
        headers.insert(layout::H_REPLY, self.shared.reply_subject.as_str());
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(n, tx);
        let handle = TaskHandle {
            rx,
            shared: self.shared.clone(),
            task: n,
            _r: PhantomData,
        };
        let sent = self
            .shared
            .js
            .publish_with_headers(
                self.shared.layout.tasks_subject.clone(),
                headers,
                Bytes::from(payload),
            )
            .await
            .map_err(|e| PoolError::remote(RemoteError::new("task publish", e)))?;
        let ack = async move {
            sent.await
                .map(|_| ())
                .map_err(|e| PoolError::remote(RemoteError::new("task publish", e)))
        };
        Ok((handle, ack))
    }

    /// Submits every item, a window at a time, and gives their handles in order.
    async fn submit_all<A: Serialize, R: DeserializeOwned>(
        &self,
        f: RemoteFn<A, R>,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<TaskHandle<R>>, PoolError> {
        let mut handles = Vec::new();
        let mut acks = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let payload = encode(&item).map_err(|e| e.at_item(i))?;
            drop(item);
            let (handle, ack) = self.publish(f, payload).await.map_err(|e| e.at_item(i))?;
            handles.push(handle);
            acks.push(ack);
            if acks.len() >= PUBLISH_WINDOW {
                futures::future::try_join_all(acks.drain(..)).await?;
            }
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
        }
    }
}
