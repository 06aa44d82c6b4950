use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_sink::Sink;
use multiproc_core::transport::channel::{self, ChannelEnd, RawSender};
use multiproc_core::wait::deadline_after;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{SendError, SendErrorKind};

/// Buffered bytes above which the [`Sink`] flushes before accepting more.
const SINK_HIGH_WATER: usize = 256 << 10;

/// The sending end of a one-way pipe, or the sending half of a duplex end.
///
/// Created by [`simplex`](super::simplex) or [`Duplex::split`](super::Duplex::split). It is a
/// handle: it can be a spawn argument or a field of a message, and works in the process that
/// receives it.
///
/// As a [`Sink`], messages are batched: `feed` encodes into a buffer and `flush` writes the
/// whole batch with as few system calls as possible, which is how to stream small messages fast.
pub struct Sender<T> {
    raw: RawSender,
    _marker: PhantomData<fn(T)>,
}

impl<T> Sender<T> {
    pub(crate) fn from_raw(raw: RawSender) -> Self {
        Self {
            raw,
            _marker: PhantomData,
        }
    }

    /// The largest encoded message this end sends (default 64 MiB).
    pub fn max_message_size(&self) -> usize {
        self.raw.max_message_size()
    }

    /// Sets the largest encoded message this end sends; a larger one fails
    /// [`send`](Self::send) with [`SendErrorKind::TooLarge`] and nothing is written.
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.raw.set_max_message_size(limit);
    }

    /// Writes every buffered message to the socket.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the receiving end is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: unwritten bytes stay buffered for the next flush or send, and are delivered
    /// by a background thread if the sender is dropped first.
    pub async fn flush(&mut self) -> Result<(), SendError> {
        std::future::poll_fn(|cx| self.poll_sink_flush(cx)).await
    }

    /// Writes every buffered message (the [`Sink`] flush, and [`flush`](Self::flush)).
    fn poll_sink_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.raw
            .poll_flush(cx)
            .map_err(|kind| SendError::new((), kind))
    }

    /// Sends `bytes` as one message, as they are (Python's `Connection.send_bytes`), and waits
    /// until it is handed to the kernel.
    ///
    /// The bytes go to the socket straight from `bytes`, in one `sendmsg` with the frame header,
    /// without the copy into the send buffer that encoding a typed message costs: for bulk
    /// data this is the fast way. They are not encoded, so the receiving side takes them with
    /// [`Receiver::recv_bytes`](super::Receiver::recv_bytes);
    /// [`recv`](super::Receiver::recv) would try to decode them as its type (an error, unless
    /// the bytes happen to encode one). Typed and byte messages keep their order.
    ///
    /// # Errors
    /// [`SendErrorKind::TooLarge`] above [`max_message_size`](Self::max_message_size) (nothing is
    /// written and the pipe stays usable), [`SendErrorKind::Closed`] when the receiving end is
    /// gone.
    ///
    /// # Cancel safety
    /// The message is accepted when the future is first polled. If the future is dropped before
    /// every byte was written, the rest is copied into the send buffer and delivered with the
    /// next send or flush, or by a background thread when the sender is dropped: a cancelled
    /// send never loses or tears a message.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<()>()?;
    /// tx.send_bytes(b"raw bytes").await?;
    /// assert_eq!(rx.recv_bytes().await?, Some(b"raw bytes".to_vec()));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.raw
            .send_bytes(bytes)
            .await
            .map_err(|kind| SendError::new((), kind))
    }

    /// Sends `bytes` as one message, blocking the thread; see [`send_bytes`](Self::send_bytes).
    ///
    /// # Errors
    /// As [`send_bytes`](Self::send_bytes).
    pub fn blocking_send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        match self.raw.blocking_send_bytes(bytes, None) {
            Ok(_) => Ok(()),
            Err(kind) => Err(SendError::new((), kind)),
        }
    }
}

impl<T: Serialize> Sender<T> {
    fn push(&mut self, msg: &T) -> Result<(), SendErrorKind> {
        self.raw.push_message(msg)
    }

    /// Sends `msg` and waits until it is handed to the kernel.
    ///
    /// # Errors
    /// The message comes back inside [`SendError`] when it cannot be encoded, exceeds
    /// [`max_message_size`](Self::max_message_size) (nothing is written in either case, and the
    /// pipe stays usable), or the receiving end is gone.
    ///
    /// # Cancel safety
    /// The message is encoded and accepted before the first wait. If the future is dropped
    /// after that, the message is still delivered (with the next send or flush, or by a
    /// background thread when the sender is dropped), so a cancelled send never loses or tears
    /// a message.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<String>()?;
    /// tx.send("hello".to_string()).await?;
    /// assert_eq!(rx.recv().await?, Some("hello".to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&mut self, msg: T) -> Result<(), SendError<T>> {
        if let Err(kind) = self.push(&msg) {
            return Err(SendError::new(msg, kind));
        }
        match std::future::poll_fn(|cx| self.raw.poll_flush(cx)).await {
            Ok(()) => Ok(()),
            Err(kind) => Err(SendError::new(msg, kind)),
        }
    }

    /// Sends `msg`, blocking the thread until it is handed to the kernel. For non-async code.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn blocking_send(&mut self, msg: T) -> Result<(), SendError<T>> {
        if let Err(kind) = self.push(&msg) {
            return Err(SendError::new(msg, kind));
        }
        match self.raw.blocking_flush(None) {
            Ok(_) => Ok(()),
            Err(kind) => Err(SendError::new(msg, kind)),
        }
    }

    /// Like [`blocking_send`](Self::blocking_send), but gives up waiting for buffer space after
    /// `timeout`. The message was accepted either way and stays queued for the next flush;
    /// returns `Ok(false)` when it is not yet written. A `timeout` too large for the clock
    /// (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn blocking_send_timeout(
        &mut self,
        msg: T,
        timeout: Duration,
    ) -> Result<bool, SendError<T>> {
        if let Err(kind) = self.push(&msg) {
            return Err(SendError::new(msg, kind));
        }
        self.raw
            .blocking_flush(deadline_after(timeout))
            .map_err(|kind| SendError::new(msg, kind))
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends the message `msg` refers to and waits until it is handed to the kernel: as
    /// [`send`](Self::send), but the caller keeps the value, so a sender that sends one value
    /// many times (or builds each message in a reused value) clones and allocates nothing per
    /// message.
    ///
    /// The bytes on the wire are the same as for `send(msg.clone())`. Handles inside `msg`
    /// (pipe ends, locks, shared memory) travel as duplicates of their descriptors, exactly as
    /// when sent by value; the ones here stay usable. A pipe end sent this way is shared with
    /// the receiving process, as when its clone is sent.
    ///
    /// For batches, [`feed_ref`](Self::feed_ref) does the same without writing per message.
    ///
    /// # Errors
    /// As [`send`](Self::send), without a value to give back: the message cannot be encoded,
    /// exceeds [`max_message_size`](Self::max_message_size) (nothing is written in either case,
    /// and the pipe stays usable), or the receiving end is gone.
    ///
    /// # Cancel safety
    /// As [`send`](Self::send): the message is encoded and accepted before the first wait, so a
    /// cancelled send never loses or tears it.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<String>()?;
    /// let greeting = "hello".to_string();
    /// tx.send_ref(&greeting).await?;
    /// tx.send_ref(&greeting).await?;
    /// assert_eq!(rx.recv().await?.as_deref(), Some("hello"));
    /// assert_eq!(rx.recv().await?, Some(greeting));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_ref(&mut self, msg: &T) -> Result<(), SendError> {
        self.push(msg).map_err(|kind| SendError::new((), kind))?;
        self.flush().await
    }

    /// Queues the message `msg` refers to for the next [`flush`](Self::flush), without copying
    /// or allocating anything but its encoding in the send buffer: how to stream small messages
    /// fast from a value the caller keeps (the [`Sink`]'s `feed`, by reference).
    ///
    /// Nothing is written until the buffer holds 256 KiB (then this flushes first, waiting for
    /// the socket if it is full) or a receiver parked on the shared ring needs waking; call
    /// [`flush`](Self::flush) after the batch. Messages sent any way keep their order.
    ///
    /// # Errors
    /// As [`send_ref`](Self::send_ref).
    ///
    /// # Cancel safety
    /// Cancel safe: the message is accepted only in the poll that returns `Ready`, after any
    /// flush it waited for; a future dropped before that accepted nothing, and buffered
    /// messages stay buffered.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<Vec<u32>>()?;
    /// let mut msg = Vec::new();
    /// for i in 0..3 {
    ///     msg.push(i); // one value, reused
    ///     tx.feed_ref(&msg).await?;
    /// }
    /// tx.flush().await?;
    /// assert_eq!(rx.recv().await?, Some(vec![0]));
    /// assert_eq!(rx.recv().await?, Some(vec![0, 1]));
    /// assert_eq!(rx.recv().await?, Some(vec![0, 1, 2]));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn feed_ref(&mut self, msg: &T) -> Result<(), SendError> {
        std::future::poll_fn(|cx| self.poll_sink_ready(cx)).await?;
        self.push(msg).map_err(|kind| SendError::new((), kind))
    }

    /// Sends the message `msg` refers to, blocking the thread until it is handed to the kernel;
    /// see [`send_ref`](Self::send_ref).
    ///
    /// # Errors
    /// As [`send_ref`](Self::send_ref).
    pub fn blocking_send_ref(&mut self, msg: &T) -> Result<(), SendError> {
        self.push(msg).map_err(|kind| SendError::new((), kind))?;
        match self.raw.blocking_flush(None) {
            Ok(_) => Ok(()),
            Err(kind) => Err(SendError::new((), kind)),
        }
    }

    /// The [`Sink`] readiness, also before [`feed_ref`](Self::feed_ref): flushes first above
    /// the high-water mark or when a wake-up for a parked receiver is queued.
    fn poll_sink_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        if self.raw.buffered() >= SINK_HIGH_WATER || self.raw.wake_queued() {
            ready!(self.poll_sink_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Messages by value: `start_send` encodes the item into the send buffer; see the [`Sender`]
/// docs on batching.
impl<T: Serialize> Sink<T> for Sender<T> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sink_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        self.get_mut()
            .push(&item)
            .map_err(|kind| SendError::new((), kind))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sink_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().poll_sink_flush(cx)
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("fd", self.raw.shared_fd())
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.to_end().serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let end = ChannelEnd::deserialize(deserializer)?;
        channel::split_end(end)
            .map(|(tx, _)| Sender::from_raw(tx))
            .map_err(serde::de::Error::custom)
    }
}
