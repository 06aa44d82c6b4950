//! [`Queue<T>`] and [`JoinableQueue<T>`] on a JetStream work-queue stream, with their builder,
//! [`QueueStream`] and [`QueueSink`]. The untyped stream engine is in `engine`; the joinable
//! queue and its [`Task`] in `joinable`.

mod engine;
mod joinable;

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Sink, Stream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::connect::Nats;
use crate::error::{
    GetError, GetTimeoutError, OpenError, PutError, PutErrorKind, PutTimeoutError, RemoteError,
    TryGetError, TryPutError,
};
use engine::{Engine, Options, Published};

pub use joinable::{JoinableQueue, Task};

/// Default largest encoded item: 1 MiB, the server's default payload limit.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Default ack timeout: how long a taken item may go without `task_done` or a heartbeat before
/// the server delivers it again.
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A queue of `T` stored by a NATS JetStream server, shared by any number of producers and
/// consumers on any number of hosts.
///
/// The distributed counterpart of `multiproc::Queue`: the same methods (async ones return
/// once the server answered), `Stream`/`Sink` ends, and the same errors plus a remote kind
/// ([`RemoteError`]: the server or the network failed). Items are postcard-encoded, so they
/// cannot carry file descriptors (a local handle means nothing on another host).
///
/// Cheap to clone; clones share the stream. A queue is opened by name on each host
/// ([`Nats::queue`]): the name is the handle to send, never the connection.
///
/// # Delivery
/// [`put`](Self::put) returns once the server has stored the item. [`get`](Self::get)
/// acknowledges the item as it takes it: an item is delivered to one getter, and again only
/// if that acknowledgement is lost in a failure. For processing that must survive the getter's
/// death use [`JoinableQueue`], whose items are acknowledged by [`Task::task_done`].
///
/// # Capacity
/// A bounded queue ([`QueueBuilder::capacity`]) holds at most that many items, counted on the
/// server across every host: items waiting, and items taken from a [`JoinableQueue`] whose
/// task is not yet done. A put into a full queue waits for room.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let queue = nats.queue_builder("jobs").capacity(100).build::<u64>().await?;
/// queue.put(7).await?;
/// assert_eq!(queue.get().await?, 7);
/// # Ok(()) }
/// ```
pub struct Queue<T> {
    pub(crate) engine: Arc<Engine>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.engine.name)
            .field("capacity", &self.engine.options.capacity)
            .finish()
    }
}

/// Options for a distributed queue: capacity, size limit, ack timeout, redelivery cap.
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    nats: Nats,
    name: String,
    options: Options,
}

impl QueueBuilder {
    pub(crate) fn new(nats: Nats, name: String) -> Self {
        Self {
            nats,
            name,
            options: Options {
                capacity: None,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                ack_timeout: DEFAULT_ACK_TIMEOUT,
                max_deliveries: None,
            },
        }
    }

    /// At most `capacity` items stored at once, across every host (default: unbounded).
    /// Applies when the stream is created; an existing stream keeps its own.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.options.capacity = Some(capacity);
        self
    }

    /// The largest encoded item, in bytes (default 1 MiB; the server's own limit also holds).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.options.max_message_size = bytes;
        self
    }

    /// How long a taken [`Task`] may go without [`task_done`](Task::task_done) or a
    /// [heartbeat](Task::in_progress) before the server delivers it again (default 30 s).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.options.ack_timeout = timeout;
        self
    }

    /// Stop delivering an item after this many deliveries (default: no cap).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.options.max_deliveries = Some(deliveries);
        self
    }

    /// Creates the queue's stream on the server if it does not exist, and opens it.
    ///
    /// # Errors
    /// An invalid name, or the server refused.
    ///
    /// # Cancel safety
    /// Cancel safe; the stream may or may not have been created.
    pub async fn build<T>(self) -> Result<Queue<T>, OpenError> {
        crate::name::check(&self.name)?;
        let engine = Engine::open(&self.nats, &self.name, self.options).await?;
        Ok(Queue {
            engine: Arc::new(engine),
            _t: PhantomData,
        })
    }

    /// As [`build`](Self::build), for a [`JoinableQueue`].
    ///
    /// # Errors
    /// As [`build`](Self::build).
    ///
    /// # Cancel safety
    /// As [`build`](Self::build).
    pub async fn build_joinable<T>(self) -> Result<JoinableQueue<T>, OpenError> {
        Ok(JoinableQueue::from_queue(self.build().await?))
    }
}

impl<T> Queue<T> {
    /// The queue's name: what another host passes to [`Nats::queue`] to open it.
    pub fn name(&self) -> &str {
        &self.engine.name
    }

    /// The capacity, or `None` when unbounded.
    pub fn capacity(&self) -> Option<usize> {
        self.engine.options.capacity
    }

    /// The largest encoded item, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.engine.options.max_message_size
    }

    /// Items stored on the server: waiting, plus taken from a [`JoinableQueue`] but not done.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn len(&self) -> Result<usize, RemoteError> {
        Ok(self.engine.stored().await? as usize)
    }

    /// True when no item is stored.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn is_empty(&self) -> Result<bool, RemoteError> {
        Ok(self.len().await? == 0)
    }

    /// Shuts the queue down for every host: puts fail with `Closed`, gets take what is stored
    /// and then return `Closed` (Python 3.13's `Queue.shutdown()`).
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe; the shutdown may or may not have happened.
    pub async fn shutdown(&self) -> Result<(), RemoteError> {
        self.engine.shutdown().await
    }

    /// True once this handle has seen the queue shut down (no round trip).
    pub fn is_shutdown(&self) -> bool {
        self.engine.is_closed_cached()
    }

    /// Deletes the queue's stream and every item in it, for every host.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe; the stream may or may not have been deleted.
    pub async fn delete(&self) -> Result<(), RemoteError> {
        self.engine.delete().await
    }
}

impl<T: Serialize> Queue<T> {
    fn encode(&self, msg: T) -> Result<(bytes::Bytes, T), PutError<T>> {
        match postcard::to_allocvec(&msg) {
            Err(e) => Err(PutError::new(msg, PutErrorKind::Encode(e))),
            Ok(bytes) if bytes.len() > self.engine.options.max_message_size => {
                let len = bytes.len();
                let limit = self.engine.options.max_message_size;
                Err(PutError::new(msg, PutErrorKind::TooLarge { len, limit }))
            }
            Ok(bytes) => Ok((bytes.into(), msg)),
        }
    }

    /// Puts `msg` and returns once the server has stored it; waits for room in a full queue.
    ///
    /// # Errors
    /// The queue is shut down, `msg` cannot be encoded or is too large, or the server did not
    /// confirm (it may or may not have stored it). The message comes back in the error.
    ///
    /// # Cancel safety
    /// Not cancel safe: **a dropped put may or may not have stored the item** (the publish
    /// may already be on the wire). Use [`put_timeout`](Self::put_timeout) for a bounded wait.
    pub async fn put(&self, msg: T) -> Result<(), PutError<T>> {
        match self.put_deadline(msg, None).await {
            Ok(()) => Ok(()),
            Err(PutTimeoutError::Failed(e)) => Err(e),
            Err(PutTimeoutError::Closed(v) | PutTimeoutError::Timeout(v)) => {
                Err(PutError::new(v, PutErrorKind::Closed))
            }
        }
    }

    /// Puts `msg` if the queue has room right now (one round trip to the server).
    ///
    /// # Errors
    /// [`TryPutError::Full`], [`TryPutError::Closed`], or why it cannot be put.
    ///
    /// # Cancel safety
    /// As [`put`](Self::put).
    pub async fn try_put(&self, msg: T) -> Result<(), TryPutError<T>> {
        let (payload, msg) = self.encode(msg).map_err(TryPutError::Failed)?;
        match self.engine.publish(payload).await {
            Ok(Published::Stored) => Ok(()),
            Ok(Published::Full) => Err(TryPutError::Full(msg)),
            Ok(Published::Closed) => Err(TryPutError::Closed(msg)),
            Err(e) => Err(TryPutError::Failed(PutError::new(
                msg,
                PutErrorKind::Remote(e),
            ))),
        }
    }

    /// Puts `msg`, waiting at most `timeout` for room in a full queue.
    ///
    /// # Errors
    /// [`PutTimeoutError::Timeout`] when the queue stayed full, else as [`put`](Self::put).
    ///
    /// # Cancel safety
    /// As [`put`](Self::put).
    pub async fn put_timeout(&self, msg: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        self.put_deadline(msg, Some(Instant::now() + timeout)).await
    }

    async fn put_deadline(
        &self,
        msg: T,
        deadline: Option<Instant>,
    ) -> Result<(), PutTimeoutError<T>> {
        let (payload, msg) = self.encode(msg).map_err(PutTimeoutError::Failed)?;
        let mut attempt = 0;
        loop {
            match self.engine.publish(payload.clone()).await {
                Ok(Published::Stored) => return Ok(()),
                Ok(Published::Closed) => return Err(PutTimeoutError::Closed(msg)),
                Ok(Published::Full) => {
                    let pause = engine::full_backoff(attempt);
                    attempt += 1;
                    if deadline.is_some_and(|d| Instant::now() + pause > d) {
                        return Err(PutTimeoutError::Timeout(msg));
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    return Err(PutTimeoutError::Failed(PutError::new(
                        msg,
                        PutErrorKind::Remote(e),
                    )));
                }
            }
        }
    }

    /// A [`Sink`] that puts into this queue (one item in flight at a time).
    pub fn sink(&self) -> QueueSink<T>
    where
        T: Send + 'static,
    {
        QueueSink {
            queue: self.clone(),
            pending: None,
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Takes the next item, waiting for one.
    ///
    /// # Errors
    /// [`GetError::Closed`] at the end of a shut-down queue; a message of the wrong type
    /// (dropped); the server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that no item is lost: an item the server handed to a dropped
    /// get is delivered again after the ack timeout.
    pub async fn get(&self) -> Result<T, GetError> {
        match self.get_deadline(None).await {
            Ok(v) => Ok(v),
            Err(GetTimeoutError::Failed(e)) => Err(e),
            Err(GetTimeoutError::Closed | GetTimeoutError::Timeout) => Err(GetError::Closed),
        }
    }

    /// Takes an item if one is waiting (one round trip to the server).
    ///
    /// # Errors
    /// [`TryGetError::Empty`], [`TryGetError::Closed`], or as [`get`](Self::get).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn try_get(&self) -> Result<T, TryGetError> {
        match self.engine.pull(None).await {
            Err(e) => Err(TryGetError::Failed(GetError::Remote(e))),
            Ok(Some(msg)) => self.take(msg).await.map_err(TryGetError::Failed),
            Ok(None) => match self.engine.check_closed().await {
                Ok(true) => Err(TryGetError::Closed),
                Ok(false) => Err(TryGetError::Empty),
                Err(e) => Err(TryGetError::Failed(GetError::Remote(e))),
            },
        }
    }

    /// Takes the next item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`GetTimeoutError::Timeout`], or as [`get`](Self::get).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        self.get_deadline(Some(Instant::now() + timeout)).await
    }

    async fn get_deadline(&self, deadline: Option<Instant>) -> Result<T, GetTimeoutError> {
        let msg = pull_deadline(&self.engine, deadline).await?;
        self.take(msg).await.map_err(GetTimeoutError::Failed)
    }

    /// Acknowledges and decodes a message taken by a plain get.
    async fn take(&self, msg: async_nats::jetstream::Message) -> Result<T, GetError> {
        let decoded = decode::<T>(&msg.payload);
        // Acknowledged whether or not it decodes: a message of the wrong type must not loop.
        msg.ack()
            .await
            .map_err(|e| GetError::Remote(RemoteError::new("ack", e)))?;
        decoded
    }

    /// A [`Stream`] of the queue's items; it ends when the queue is shut down and empty.
    pub fn stream(&self) -> QueueStream<T>
    where
        T: Send + 'static,
    {
        QueueStream {
            queue: self.clone(),
            pending: None,
            done: false,
        }
    }
}

/// Pulls until a message arrives, the deadline passes or the queue is found shut down.
pub(crate) async fn pull_deadline(
    engine: &Engine,
    deadline: Option<Instant>,
) -> Result<async_nats::jetstream::Message, GetTimeoutError> {
    loop {
        let wait = match deadline {
            None => Duration::from_secs(1),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(GetTimeoutError::Timeout);
                }
                left
            }
        };
        match engine.pull(Some(wait)).await {
            Ok(Some(msg)) => return Ok(msg),
            Ok(None) => {}
            Err(e) => return Err(GetTimeoutError::Failed(GetError::Remote(e))),
        }
        match engine.check_closed().await {
            Ok(true) => {
                // Shut down: take what is left, without waiting.
                return match engine.pull(None).await {
                    Ok(Some(msg)) => Ok(msg),
                    Ok(None) => Err(GetTimeoutError::Closed),
                    Err(e) => Err(GetTimeoutError::Failed(GetError::Remote(e))),
                };
            }
            Ok(false) => {}
            Err(e) => return Err(GetTimeoutError::Failed(GetError::Remote(e))),
        }
    }
}

/// Decodes one item.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, GetError> {
    postcard::from_bytes(payload).map_err(|source| GetError::Decode {
        ty: std::any::type_name::<T>(),
        source,
    })
}

/// The items of a [`Queue`] as a [`Stream`]; made by [`Queue::stream`].
///
/// Yields `Ok(item)`, or `Err` for an item that could not be taken or decoded (the stream goes
/// on); ends when the queue is shut down and empty.
pub struct QueueStream<T> {
    queue: Queue<T>,
    pending: Option<BoxFuture<'static, Result<T, GetError>>>,
    done: bool,
}

impl<T> fmt::Debug for QueueStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStream")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> Stream for QueueStream<T> {
    type Item = Result<T, GetError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let queue = self.queue.clone();
        let fut = self
            .pending
            .get_or_insert_with(|| Box::pin(async move { queue.get().await }));
        let out = futures::ready!(fut.as_mut().poll(cx));
        self.pending = None;
        match out {
            Err(GetError::Closed) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => Poll::Ready(Some(other)),
        }
    }
}

/// A [`Sink`] putting into a [`Queue`]; made by [`Queue::sink`]. Each item is stored on the
/// server before the next one is accepted.
pub struct QueueSink<T> {
    queue: Queue<T>,
    pending: Option<BoxFuture<'static, Result<(), PutError<T>>>>,
}

impl<T> Unpin for QueueSink<T> {}

impl<T> fmt::Debug for QueueSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSink")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<T> QueueSink<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        match self.pending.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(fut) => {
                let out = futures::ready!(fut.as_mut().poll(cx));
                self.pending = None;
                Poll::Ready(out)
            }
        }
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for QueueSink<T> {
    type Error = PutError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let queue = this.queue.clone();
        this.pending = Some(Box::pin(async move { queue.put(item).await }));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }
}

impl Nats {
    /// Opens (creating it if needed) the unbounded queue `name` in this connection's namespace.
    ///
    /// # Errors
    /// An invalid name, or the server refused.
    ///
    /// # Cancel safety
    /// Cancel safe; the stream may or may not have been created.
    pub async fn queue<T>(&self, name: &str) -> Result<Queue<T>, OpenError> {
        self.queue_builder(name).build().await
    }

    /// Opens (creating it if needed) the unbounded joinable queue `name`.
    ///
    /// # Errors
    /// As [`queue`](Self::queue).
    ///
    /// # Cancel safety
    /// As [`queue`](Self::queue).
    pub async fn joinable_queue<T>(&self, name: &str) -> Result<JoinableQueue<T>, OpenError> {
        self.queue_builder(name).build_joinable().await
    }

    /// A builder for the queue `name`, for a capacity, ack timeout or redelivery cap.
    pub fn queue_builder(&self, name: &str) -> QueueBuilder {
        QueueBuilder::new(self.clone(), name.to_string())
    }
}
