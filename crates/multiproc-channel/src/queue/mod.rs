//! [`Queue`]: a typed, async, multi-producer multi-consumer queue shared by processes.
//!
//! The queue's area: [`Queue`] here, [`JoinableQueue`] over it (`joinable`), the untyped engine
//! under both (`engine`: the shared state in one memfd, the socket lane, the waits in a wait
//! arena slot) with its shared-memory slot ring (`ring`), message format and lanes (`lane`),
//! socket tickets (`ticket`), statistics (`stats`) and errors (`error`, re-exported from
//! [`crate::error`]). It imports only `multiproc-core`.

mod engine;
pub(crate) mod error;
mod joinable;
mod lane;
mod ring;
mod stats;
mod ticket;

pub use joinable::JoinableQueue;
pub use stats::QueueStats;

use std::fmt;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use multiproc_core::message::DEFAULT_MAX_MESSAGE_SIZE;
use multiproc_core::wait::deadline_after;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use engine::Engine;
use error::{
    GetError, GetTimeoutError, PutError, PutErrorKind, PutTimeoutError, TryGetError, TryPutError,
};
use lane::{GetOutcome, Message};

/// A typed queue shared by any number of producer and consumer processes (Python's
/// `multiprocessing.Queue`), async, bounded or unbounded.
///
/// Every handle can both [`put`](Self::put) and [`get`](Self::get). Clone a handle to share it
/// within a process; send it to another process as a [`spawn`] argument, inside a message on a
/// pipe, or inside a message on another queue (it implements `Serialize`/`Deserialize` through
/// the multiproc message encoding).
///
/// # Guarantees
/// - Each message is delivered to exactly one consumer; nothing is lost or duplicated while
///   processes behave (see *Crash behavior*).
/// - The messages of one producer (one task putting one after another) arrive in the order it
///   put them. Messages of different producers interleave.
/// - A message is encoded by `put` itself: a value that cannot be encoded is an error from
///   `put`, not a silent failure in some background thread, and the queue is unaffected.
/// - Once `put` has returned, the message lives in shared memory or in the kernel, not in the
///   producer: the producer may exit at once, and the message is still delivered.
/// - Messages may contain handles (a `Lock`, a pipe end, another `Queue`); they arrive usable.
///
/// # How messages travel
/// A message whose encoding fits in 112 bytes and carries no handle (most of them) is copied
/// into a slot of a ring in shared memory and out again: no system call unless a consumer is
/// asleep. Messages with handles go through a Unix socket (above 64 KiB, in a memfd the socket
/// carries); larger plain messages too while its buffer has room, else (and always above
/// 64 KiB) through a log in shared memory. A token keeps their place in the ring, so the order
/// guarantees hold across sizes. A packet written into the queue's socket by anything else
/// than the queue is reported to the getter that meets it ([`GetError::Corrupt`]) and skipped;
/// it never costs a real message. A consumer that finds the queue empty spins for a few
/// microseconds before it sleeps, less and less when that does not pay (see ARCHITECTURE.md).
///
/// # Capacity
/// A [bounded](Self::bounded) queue holds at most `capacity` messages (1 to 65,536; anything
/// else is an error from the constructor): `put` waits while it is full. An
/// [unbounded](Self::new) queue takes puts until memory runs out, with no consumer running:
/// its messages live in shared memory that the queue owns (so the producer may exit), which
/// takes memory for the messages it holds and gives it back as they are taken. (Its one hard
/// limit is 2^26, some 67 million, messages at once.) `try_put` on it does not report
/// [`Full`](TryPutError::Full), except for messages that carry handles, below.
///
/// Memory per message held: a 128-byte slot, plus, for a message of more than 112 encoded
/// bytes, those bytes (in the socket's buffer while it has room, else in shared memory).
///
/// A message that carries handles (descriptors) must travel through the queue's socket,
/// whatever the capacity: when its buffer (raised as far as the system allows,
/// `net.core.wmem_max`) is full, `put` waits for consumers, `try_put` reports `Full`, and
/// nothing is lost. Descriptors in flight also count against the producing user's
/// `RLIMIT_NOFILE` (unless privileged).
///
/// # Descriptors
/// A queue holds two descriptors in each process that has a handle of it, however many
/// handles (clones share them): a memfd (its header, ring and the log of large messages) and a
/// socket (for messages that carry handles). Its waits live in a 64-byte slot of a shared wait
/// arena, whose descriptors (a memfd and 8 eventfds) serve up to 16,383 locks, events and
/// queues of a process together. So a process under the usual limit of 1,024 descriptors can
/// hold some 500 queues, as with Python's queues (a pipe each).
///
/// # Shutdown
/// [`shutdown`](Self::shutdown) ends the queue for every handle in every process (Python
/// 3.13's `Queue.shutdown()`): puts fail with a closed error, consumers receive what is left
/// and then [`GetError::Closed`] (the stream ends), and tasks blocked in `get` or `put` wake.
///
/// There is no per-handle `close`. Python's `Queue.close()` means "this process puts no
/// more" and exists to stop its feeder thread; here a `put` has finished when it returns and
/// there is no feeder, so a producer that is done simply drops its handle, which affects no
/// other handle. Dropping handles never ends the queue; it lives as long as any process holds
/// a handle.
///
/// ```compile_fail,E0599
/// let queue: multiproc::Queue<u32> = multiproc::Queue::new().unwrap();
/// queue.close(); // no such method: drop the handle, or `shutdown()` to end the queue for all
/// ```
///
/// # Crash behavior
/// A put becomes visible with one atomic store and a get takes a message with one atomic
/// compare-and-swap, so a producer or consumer killed at any point (even `SIGKILL`) never leaves
/// a partial message. A slot it was writing or reading when it died is freed by the next process
/// that waits behind it (within a few tens of milliseconds): a message half written was never
/// put; a message half read is lost with the consumer that took it, as in every queue. A
/// producer killed in the few instructions between counting a joinable queue's task and
/// claiming its slot leaves the unfinished count one too high. A process killed in the middle
/// of putting or taking a message that went through the log leaks that message's memory until
/// the queue is dropped.
///
/// # Examples
/// ```
/// use multiproc::Queue;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue: Queue<(u32, String)> = Queue::bounded(16)?;
/// queue.put((1, "one".to_string())).await?;
/// queue.put((2, "two".to_string())).await?;
/// assert_eq!(queue.get().await?, (1, "one".to_string()));
/// queue.shutdown();
/// assert_eq!(queue.get().await?, (2, "two".to_string()));
/// assert!(queue.get().await.unwrap_err().is_closed());
/// # Ok(())
/// # }
/// ```
///
/// [`spawn`]: https://docs.rs/multiproc/latest/multiproc/fn.spawn.html
pub struct Queue<T> {
    pub(crate) engine: Arc<Engine>,
    _marker: PhantomData<fn(T) -> T>,
}

/// Configures a [`Queue`] (or a [`JoinableQueue`]) before creating it.
///
/// # Examples
/// ```
/// use multiproc::Queue;
/// # fn main() -> std::io::Result<()> {
/// let queue: Queue<Vec<u8>> = Queue::builder().capacity(8).max_message_size(1 << 20).build()?;
/// assert_eq!(queue.capacity(), Some(8));
/// # Ok(())
/// # }
/// ```
pub struct QueueBuilder<T> {
    capacity: Option<usize>,
    max_message_size: usize,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("capacity", &self.capacity)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

impl<T> QueueBuilder<T> {
    /// Bounds the queue to `capacity` messages, 1 to 65,536 (default: unbounded); anything
    /// else makes [`build`](Self::build) fail.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Sets the largest encoded message the queue carries (default 64 MiB): a larger one is an
    /// error from `put`, and nothing is put.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Creates the queue.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when the capacity is zero or above 65,536; otherwise when
    /// the process is out of descriptors or memory.
    pub fn build(self) -> io::Result<Queue<T>> {
        Ok(Queue::from_engine(Engine::new(
            self.capacity,
            self.max_message_size,
            false,
        )?))
    }

    /// Creates a [`JoinableQueue`] with this configuration.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_joinable(self) -> io::Result<JoinableQueue<T>> {
        let engine = Engine::new(self.capacity, self.max_message_size, true)?;
        Ok(JoinableQueue::from_queue(Queue::from_engine(engine)))
    }
}

impl<T> Queue<T> {
    pub(crate) fn from_engine(engine: Engine) -> Self {
        Self {
            engine: Arc::new(engine),
            _marker: PhantomData,
        }
    }

    /// Creates an unbounded queue (see *Capacity* in the [type docs](Self)).
    ///
    /// # Errors
    /// When the process is out of descriptors or memory.
    pub fn new() -> io::Result<Self> {
        Self::builder().build()
    }

    /// Creates a queue that holds at most `capacity` messages.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `capacity` is zero or above 65,536 (for more, use an
    /// [unbounded](Self::new) queue); otherwise when the process is out of descriptors or
    /// memory.
    pub fn bounded(capacity: usize) -> io::Result<Self> {
        Self::builder().capacity(capacity).build()
    }

    /// A builder for a queue with a custom capacity or message size limit.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            capacity: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            _marker: PhantomData,
        }
    }

    /// The most messages the queue holds, or `None` when unbounded.
    pub fn capacity(&self) -> Option<usize> {
        self.engine.capacity()
    }

    /// The largest encoded message the queue carries.
    pub fn max_message_size(&self) -> usize {
        self.engine.max_message_size()
    }

    /// Number of messages in the queue, counted across all processes.
    ///
    /// Approximate, like Python's `qsize()`: it includes messages whose `put` or `get` is in
    /// progress in some process and may already be out of date when it returns.
    pub fn len(&self) -> usize {
        self.engine.len()
    }

    /// True when no message is in the queue right now ([`len`](Self::len) is zero).
    ///
    /// Approximate like `len`, and other processes may change it at any time.
    pub fn is_empty(&self) -> bool {
        !self.engine.has_pending()
    }

    /// True when a bounded queue has no free slot right now (always `false` when unbounded).
    /// Approximate, like [`len`](Self::len).
    pub fn is_full(&self) -> bool {
        self.engine.is_full()
    }

    /// Shuts the queue down for every handle in every process: Python 3.13's
    /// `Queue.shutdown()` (with `immediate=False`). Idempotent and final.
    ///
    /// Afterwards every `put` fails with a closed error ([`PutError::is_closed`]); consumers
    /// take what is left and then get [`GetError::Closed`] (a [`stream`](Self::stream) ends);
    /// tasks and threads waiting in `get` or `put`, in any process, wake. A
    /// [`JoinableQueue`]'s `join` is not ended: consumers still finish what is left.
    ///
    /// To stop putting from one handle only (Python's per-process `Queue.close()`), drop that
    /// handle: nothing else is needed, and the other handles are unaffected.
    pub fn shutdown(&self) {
        self.engine.close();
    }

    /// True once some handle, in any process, [shut the queue down](Self::shutdown).
    pub fn is_shutdown(&self) -> bool {
        self.engine.is_closed()
    }

    /// What a service can export about the queue, across all processes: its length, getters
    /// and putters waiting, unfinished tasks of a [`JoinableQueue`] (see [`QueueStats`]).
    /// Approximate like [`len`](Self::len); a few atomic loads.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = multiproc::Queue::<u32>::bounded(4)?;
    /// queue.put(1).await?;
    /// let stats = queue.stats();
    /// assert_eq!((stats.len, stats.capacity), (1, Some(4)));
    /// assert_eq!(stats.unfinished_tasks, None); // not a JoinableQueue
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> QueueStats {
        let (getters_waiting, putters_waiting) = self.engine.waiting();
        QueueStats {
            len: self.len(),
            capacity: self.capacity(),
            shutdown: self.is_shutdown(),
            getters_waiting,
            putters_waiting,
            unfinished_tasks: self
                .engine
                .is_joinable()
                .then(|| usize::try_from(self.engine.unfinished()).unwrap_or(usize::MAX)),
        }
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts `msg` at the end of the queue, waiting while the queue is full.
    ///
    /// The message is encoded before anything else happens, so a message that cannot be encoded
    /// fails here, with the queue untouched.
    ///
    /// # Errors
    /// [`PutError`] with the message back: the queue is shut down, the message cannot be encoded,
    /// is larger than [`max_message_size`](Self::max_message_size), carries too many handles, or
    /// the system is out of resources.
    ///
    /// # Cancel safety
    /// Cancel safe: the message is claimed, written and published within one poll, so a
    /// dropped `put` has either enqueued the whole message or nothing (and then holds no slot).
    ///
    /// # Examples
    /// ```
    /// # use multiproc::Queue;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = Queue::new()?;
    /// queue.put("hello".to_string()).await?;
    /// assert_eq!(queue.get().await?, "hello");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, msg: T) -> Result<(), PutError<T>> {
        let packet = match self.engine.encode(&msg) {
            Ok(p) => p,
            Err(e) => return Err(PutError::new(msg, e)),
        };
        match self.engine.put(&packet).await {
            Ok(()) => Ok(()),
            Err(kind) => Err(PutError::new(msg, kind)),
        }
    }

    /// Puts `msg` if the queue has room right now, without waiting.
    ///
    /// # Errors
    /// [`TryPutError::Full`] or [`TryPutError::Closed`] with the message back, or
    /// [`TryPutError::Failed`] as for [`put`](Self::put).
    pub fn try_put(&self, msg: T) -> Result<(), TryPutError<T>> {
        let packet = match self.engine.encode(&msg) {
            Ok(p) => p,
            Err(e) => {
                return Err(TryPutError::Failed(PutError::new(msg, e)));
            }
        };
        match self.engine.try_put(&packet) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TryPutError::Full(msg)),
            Err(PutErrorKind::Closed) => Err(TryPutError::Closed(msg)),
            Err(kind) => Err(TryPutError::Failed(PutError::new(msg, kind))),
        }
    }

    /// Puts `msg`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`PutTimeoutError::Timeout`] or [`PutTimeoutError::Closed`] with the message back, or
    /// [`PutTimeoutError::Failed`] as for [`put`](Self::put).
    ///
    /// # Panics
    /// When called outside a tokio runtime with the time driver enabled.
    ///
    /// # Cancel safety
    /// As [`put`](Self::put): the whole message or nothing.
    pub async fn put_timeout(&self, msg: T, timeout: Duration) -> Result<(), PutTimeoutError<T>> {
        let packet = match self.engine.encode(&msg) {
            Ok(p) => p,
            Err(e) => {
                return Err(PutTimeoutError::Failed(PutError::new(msg, e)));
            }
        };
        match tokio::time::timeout(timeout, self.engine.put(&packet)).await {
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(PutTimeoutError::Timeout(msg)),
            Ok(Err(PutErrorKind::Closed)) => Err(PutTimeoutError::Closed(msg)),
            Ok(Err(kind)) => Err(PutTimeoutError::Failed(PutError::new(msg, kind))),
        }
    }

    /// Puts `msg`, blocking the thread while the queue is full: the twin of
    /// [`put`](Self::put) for code outside a runtime (a sync child function, a plain thread).
    /// Do not call it from async code: it would block a runtime thread.
    ///
    /// # Errors
    /// As [`put`](Self::put).
    pub fn blocking_put(&self, msg: T) -> Result<(), PutError<T>> {
        let packet = match self.engine.encode(&msg) {
            Ok(p) => p,
            Err(e) => return Err(PutError::new(msg, e)),
        };
        match self.engine.blocking_put(&packet, None) {
            Ok(_) => Ok(()),
            Err(kind) => Err(PutError::new(msg, kind)),
        }
    }

    /// Puts `msg`, blocking the thread at most `timeout` while the queue is full; the twin of
    /// [`put_timeout`](Self::put_timeout). A `timeout` too large for the clock (`Duration::MAX`)
    /// waits forever.
    ///
    /// # Errors
    /// As [`put_timeout`](Self::put_timeout).
    pub fn blocking_put_timeout(
        &self,
        msg: T,
        timeout: Duration,
    ) -> Result<(), PutTimeoutError<T>> {
        let packet = match self.engine.encode(&msg) {
            Ok(p) => p,
            Err(e) => {
                return Err(PutTimeoutError::Failed(PutError::new(msg, e)));
            }
        };
        match self.engine.blocking_put(&packet, deadline_after(timeout)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PutTimeoutError::Timeout(msg)),
            Err(PutErrorKind::Closed) => Err(PutTimeoutError::Closed(msg)),
            Err(kind) => Err(PutTimeoutError::Failed(PutError::new(msg, kind))),
        }
    }

    /// A [`Sink`] that puts into this queue (a new handle; this one stays usable).
    ///
    /// Closing the sink flushes it; it does not end the queue (other producers may still
    /// put). Call [`Queue::shutdown`] for that.
    pub fn sink(&self) -> QueueSink<T> {
        QueueSink {
            engine: self.engine.clone(),
            pending: None,
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    fn decode(&self, received: Message) -> Result<T, GetError> {
        received.decode().map_err(|e| {
            self.engine.discarded();
            GetError::Decode(e)
        })
    }

    /// Takes the message at the front of the queue, waiting until one arrives.
    ///
    /// # Errors
    /// [`GetError::Closed`] once the queue is shut down and every message has been taken; other
    /// [`GetError`]s when a message was taken but could not be delivered (wrong type, too large,
    /// not a queue message): it is discarded and the queue stays usable.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is taken off the queue and returned within a single poll, so a
    /// dropped `get` never took one; the message stays for the next consumer.
    ///
    /// # Examples
    /// ```
    /// # use multiproc::Queue;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = Queue::new()?;
    /// queue.put(7u64).await?;
    /// assert_eq!(queue.get().await?, 7);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self) -> Result<T, GetError> {
        match self.engine.get().await {
            Ok(Some(received)) => self.decode(received),
            Ok(None) => Err(GetError::Closed),
            Err(e) => Err(e),
        }
    }

    /// Takes the message at the front of the queue if there is one, without waiting.
    ///
    /// # Errors
    /// [`TryGetError::Empty`] when no message is waiting, [`TryGetError::Closed`] at the end of
    /// a shut-down queue, [`TryGetError::Failed`] as for [`get`](Self::get).
    pub fn try_get(&self) -> Result<T, TryGetError> {
        match self.engine.try_get() {
            Ok(GetOutcome::Message(received)) => self.decode(received).map_err(TryGetError::Failed),
            Ok(GetOutcome::Empty) => Err(TryGetError::Empty),
            Ok(GetOutcome::Closed) => Err(TryGetError::Closed),
            Err(e) => Err(TryGetError::Failed(e)),
        }
    }

    /// Takes the message at the front of the queue, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`GetTimeoutError::Timeout`] when nothing arrived in time, [`GetTimeoutError::Closed`] at
    /// the end of a shut-down queue, [`GetTimeoutError::Failed`] as for [`get`](Self::get).
    ///
    /// # Panics
    /// When called outside a tokio runtime with the time driver enabled.
    ///
    /// # Cancel safety
    /// As [`get`](Self::get): a dropped or timed-out call never took a message.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        match tokio::time::timeout(timeout, self.get()).await {
            Ok(Ok(v)) => Ok(v),
            Err(_) => Err(GetTimeoutError::Timeout),
            Ok(Err(GetError::Closed)) => Err(GetTimeoutError::Closed),
            Ok(Err(e)) => Err(GetTimeoutError::Failed(e)),
        }
    }

    /// Takes the message at the front of the queue, blocking the thread until one arrives: the
    /// twin of [`get`](Self::get) for code outside a runtime. Do not call it from async code.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn blocking_get(&self) -> Result<T, GetError> {
        match self.engine.blocking_get(None) {
            Ok(GetOutcome::Message(received)) => self.decode(received),
            Ok(GetOutcome::Closed) => Err(GetError::Closed),
            Ok(GetOutcome::Empty) => Err(GetError::Io(io::Error::from(io::ErrorKind::TimedOut))),
            Err(e) => Err(e),
        }
    }

    /// Takes the message at the front of the queue, blocking the thread at most `timeout`; the twin
    /// of [`get_timeout`](Self::get_timeout). A `timeout` too large for the clock (`Duration::MAX`)
    /// waits forever.
    ///
    /// # Errors
    /// As [`get_timeout`](Self::get_timeout).
    pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, GetTimeoutError> {
        match self.engine.blocking_get(deadline_after(timeout)) {
            Ok(GetOutcome::Message(received)) => {
                self.decode(received).map_err(GetTimeoutError::Failed)
            }
            Ok(GetOutcome::Closed) => Err(GetTimeoutError::Closed),
            Ok(GetOutcome::Empty) => Err(GetTimeoutError::Timeout),
            Err(e) => Err(GetTimeoutError::Failed(e)),
        }
    }

    /// A [`Stream`] of the queue's messages (a new handle; this one stays usable). It ends when
    /// the queue is [shut down](Self::shutdown) and drained.
    ///
    /// # Cancel safety
    /// Dropping the stream, or a `next()` future, while it waits never loses a message.
    ///
    /// # Examples
    /// ```
    /// # use multiproc::Queue;
    /// use futures::TryStreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = Queue::new()?;
    /// for i in 0..5u32 {
    ///     queue.put(i).await?;
    /// }
    /// queue.shutdown();
    /// let squares: Vec<u32> = queue.stream().map_ok(|i| i * i).try_collect().await?;
    /// assert_eq!(squares, [0, 1, 4, 9, 16]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream(&self) -> QueueStream<T> {
        QueueStream {
            engine: self.engine.clone(),
            waiting: None,
            done: false,
            _marker: PhantomData,
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.engine, f)
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.engine.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let engine = Engine::deserialize(deserializer)?;
        if engine.is_joinable() {
            return Err(serde::de::Error::custom(
                "expected a Queue, got a JoinableQueue",
            ));
        }
        Ok(Self::from_engine(engine))
    }
}

type GetFuture = Pin<Box<dyn Future<Output = Result<Option<Message>, GetError>> + Send + Sync>>;

/// The messages of a [`Queue`] as a [`Stream`]; made by [`Queue::stream`].
///
/// Yields `Ok(message)`, or `Err` for a message that was taken but could not be delivered (the
/// stream goes on); ends when the queue is shut down and drained.
pub struct QueueStream<T> {
    engine: Arc<Engine>,
    waiting: Option<GetFuture>,
    done: bool,
    _marker: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for QueueStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStream")
            .field("queue", &*self.engine)
            .field("done", &self.done)
            .finish()
    }
}

impl<T: DeserializeOwned> Stream for QueueStream<T> {
    type Item = Result<T, GetError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let result = match this.waiting.as_mut() {
            Some(fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    this.waiting = None;
                    r
                }
            },
            None => match this.engine.try_get() {
                Ok(GetOutcome::Message(m)) => Ok(Some(m)),
                Ok(GetOutcome::Closed) => Ok(None),
                Err(e) => Err(e),
                Ok(GetOutcome::Empty) => {
                    let engine = this.engine.clone();
                    let mut fut: GetFuture = Box::pin(async move { engine.get().await });
                    match fut.as_mut().poll(cx) {
                        Poll::Pending => {
                            this.waiting = Some(fut);
                            return Poll::Pending;
                        }
                        Poll::Ready(r) => r,
                    }
                }
            },
        };
        Poll::Ready(match result {
            Ok(Some(received)) => Some(received.decode().map_err(|e| {
                this.engine.discarded();
                GetError::Decode(e)
            })),
            Ok(None) => {
                this.done = true;
                None
            }
            Err(e) => Some(Err(e)),
        })
    }
}

type PutFuture = Pin<Box<dyn Future<Output = Result<(), PutErrorKind>> + Send + Sync>>;

/// Puts into a [`Queue`] as a [`Sink`]; made by [`Queue::sink`].
///
/// `start_send` encodes the message at once (an unencodable message is its error) and tries to
/// enqueue it without waiting; if the queue is full, `poll_ready`/`poll_flush` finish the put.
/// Closing the sink flushes it and leaves the queue open.
///
/// # Cancel safety
/// A message accepted by `start_send` but not yet flushed is put (whole) by the next
/// `poll_ready`/`poll_flush`/`poll_close`; dropping the sink before then drops it unput.
pub struct QueueSink<T> {
    engine: Arc<Engine>,
    pending: Option<(T, PutFuture)>,
}

// The message is never pinned: it is only kept to be handed back in an error.
impl<T> Unpin for QueueSink<T> {}

impl<T> fmt::Debug for QueueSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueSink")
            .field("queue", &*self.engine)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

impl<T> QueueSink<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        let Some((_, fut)) = self.pending.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(fut.as_mut().poll(cx));
        let (msg, _) = self.pending.take().expect("pending put vanished");
        Poll::Ready(result.map_err(|kind| PutError::new(msg, kind)))
    }
}

impl<T: Serialize> Sink<T> for QueueSink<T> {
    type Error = PutError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let this = self.get_mut();
        assert!(
            this.pending.is_none(),
            "QueueSink::start_send called without poll_ready"
        );
        let packet = match this.engine.encode(&item) {
            Ok(p) => p,
            Err(e) => return Err(PutError::new(item, e)),
        };
        match this.engine.try_put(&packet) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let engine = this.engine.clone();
                this.pending = Some((item, Box::pin(async move { engine.put(&packet).await })));
                Ok(())
            }
            Err(kind) => Err(PutError::new(item, kind)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_pending(cx)
    }
}

#[cfg(test)]
mod tests;
