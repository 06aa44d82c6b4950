use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use multiproc_core::message;
use multiproc_core::transport::channel::{self, ChannelEnd, RawReceiver, TryRecv};
use multiproc_core::wait::deadline_after;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Lent;
use crate::error::{RecvError, RecvTimeoutError, TryRecvError};

/// The receiving end of a one-way pipe, or the receiving half of a duplex end.
///
/// Created by [`simplex`](super::simplex) or [`Duplex::split`](super::Duplex::split). It is a
/// handle: it can be a spawn argument or a field of a message.
///
/// Receiving returns `Ok(None)` (or ends the [`Stream`]) once every copy of the sending end, in
/// every process, is closed and all messages sent before were delivered.
pub struct Receiver<T> {
    raw: RawReceiver,
    _marker: PhantomData<fn() -> T>,
}

fn decode<T: DeserializeOwned>(
    payload: message::Payload<'_>,
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<T, RecvError> {
    message::decode_payload(payload, fds).map_err(RecvError::Decode)
}

fn decode_borrowed<'a, V: Deserialize<'a>>(
    bytes: &'a [u8],
    fds: Vec<std::os::fd::OwnedFd>,
) -> Result<V, RecvError> {
    message::decode_borrowed(bytes, fds).map_err(RecvError::Decode)
}

impl<T> Receiver<T> {
    pub(crate) fn from_raw(raw: RawReceiver) -> Self {
        Self {
            raw,
            _marker: PhantomData,
        }
    }

    /// The largest incoming message accepted (default 64 MiB); a larger one is skipped and
    /// reported as [`RecvError::TooLarge`], and the pipe stays usable.
    pub fn max_message_size(&self) -> usize {
        self.raw.max_message_size()
    }

    /// Sets the largest incoming message accepted.
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.raw.set_max_message_size(limit);
    }

    /// Receives the next message as plain bytes (Python's `Connection.recv_bytes`): one sent
    /// with [`Sender::send_bytes`](super::Sender::send_bytes). `Ok(None)` once the sending end
    /// is closed and drained.
    ///
    /// A large message is read from the socket straight into the returned `Vec`, sized from
    /// the frame header, with no copy in user space. A typed message received this way gives
    /// its postcard encoding.
    ///
    /// # Errors
    /// As [`recv`](Self::recv). A message carrying handles (a typed message with pipe ends,
    /// locks...) cannot be plain bytes: it is skipped with [`RecvError::Decode`], its
    /// descriptors are closed, and the pipe stays usable.
    ///
    /// # Cancel safety
    /// Cancel safe: a message read part-way stays in the receiver and is finished by the next
    /// receive, of either kind.
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        let received =
            std::future::poll_fn(|cx| self.raw.poll_recv_bytes(cx, message::decode_bytes)).await;
        match received {
            Ok(Some(bytes)) => Ok(Some(bytes?)),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Receives the next message as plain bytes, blocking the thread; see
    /// [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes).
    pub fn blocking_recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        match self.raw.blocking_recv_bytes(None, message::decode_bytes)? {
            TryRecv::Frame(bytes) => Ok(Some(bytes?)),
            TryRecv::Empty | TryRecv::Closed => Ok(None),
        }
    }
}

impl<T> Receiver<T> {
    /// Polls until a receive would not wait; see [`ready`](Self::ready).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        self.raw.poll_ready(cx)
    }

    /// Waits until a receive would not wait (a whole message has arrived, or the sending end
    /// is closed), without taking the message: Python's `conn.poll(None)`.
    ///
    /// # Errors
    /// What the next receive would have reported (a message over the size limit, a corrupt
    /// stream); it is reported here instead, once.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken; bytes read stay buffered for the next receive.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<u32>()?;
    /// assert!(!rx.ready_timeout(Duration::from_millis(10)).await?); // Python: poll(0.01)
    /// tx.send(5).await?;
    /// rx.ready().await?;
    /// assert!(rx.ready_timeout(Duration::ZERO).await?); // still there: nothing was taken
    /// assert_eq!(rx.recv().await?, Some(5));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ready(&mut self) -> Result<(), RecvError> {
        std::future::poll_fn(|cx| self.raw.poll_ready(cx)).await
    }

    /// Like [`ready`](Self::ready), waiting at most `timeout`: `Ok(true)` when a receive would
    /// not wait, `Ok(false)` on timeout (Python's `conn.poll(timeout)`). A zero timeout only
    /// looks, with a non-blocking read of the socket.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver (`enable_time`), for a non-zero timeout.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`ready`](Self::ready).
    pub async fn ready_timeout(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        if timeout.is_zero() {
            // A real non-blocking read, not the readiness the runtime last saw: a
            // `while !ready_timeout(ZERO)` loop sees data even on a current-thread runtime.
            return self.raw.try_ready();
        }
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// Whether a message has arrived, looked at without a system call as far as possible: for
    /// an event loop that spins over several receivers before it waits.
    ///
    /// Unlike [`ready`](Self::ready) and [`poll_ready`](Self::poll_ready), a look that finds
    /// nothing does not mark the pipe's shared ring as waited on, so the sender's next small
    /// message costs it no wake-up. The caller must wait with [`poll_ready`](Self::poll_ready)
    /// before it stops looking; an end-of-stream may go unseen here until then.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    pub fn try_ready_spinning(&mut self) -> Result<bool, RecvError> {
        self.raw.try_ready_spinning()
    }

    /// Whether the sending end last sent from a CPU other than the one this thread runs on
    /// now; `None` when that is not known (the ends share no ring). A loop that spins for this
    /// sender may busy-wait while it runs elsewhere, and should yield (or wait) while it runs
    /// here, where spinning only keeps it from running.
    pub fn sender_runs_elsewhere(&self) -> Option<bool> {
        self.raw.sender_runs_elsewhere()
    }
}

/// Borrowed receives: the message is decoded where it arrived, borrowing from the receiver.
impl<T> Receiver<T> {
    /// Receives the next message as a `V` that borrows from the receive buffer: nothing is
    /// allocated or copied for the borrowed parts, so a receiver of byte strings or text
    /// (`&[u8]` with `serde_bytes`, `&str`, a struct of such fields) pays no allocation per
    /// message. `Ok(None)` once the sending end is closed and drained.
    ///
    /// `V` is the borrowed form of `T`, with the same encoding: `&str` for `String`,
    /// `&[u8]` (or `&serde_bytes::Bytes`) for `serde_bytes::ByteBuf`, a struct with borrowed
    /// fields for the same struct with owned ones. Owned parts of `V` are copied out as usual.
    /// The value borrows the receiver until it is dropped; the next receive needs it back.
    ///
    /// # Errors
    /// As [`recv`](Self::recv); in each of these cases the message is skipped and the pipe goes
    /// on with the next one:
    /// - the bytes do not form a `V` ([`RecvError::Decode`]);
    /// - the message carries handles (pipe ends, locks, shared memory: it came with
    ///   descriptors), which a borrowed value cannot hold: [`RecvError::Decode`] with
    ///   [`DecodeError::carries_descriptors`](crate::error::DecodeError::carries_descriptors),
    ///   and its descriptors are closed. Receive such messages with [`recv`](Self::recv).
    ///
    /// # Cancel safety
    /// Cancel safe: a message is taken only in the poll that returns it, and decoded at once;
    /// dropping the future (in `select!` or a timeout) never loses a message.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<String>()?;
    /// tx.send("borrowed".to_string()).await?;
    /// drop(tx);
    /// let text: Option<&str> = rx.recv_borrowed().await?;
    /// assert_eq!(text, Some("borrowed"));
    /// assert_eq!(rx.recv_borrowed::<&str>().await?, None); // end-of-stream
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_borrowed<'a, V: Deserialize<'a>>(
        &'a mut self,
    ) -> Result<Option<V>, RecvError> {
        match std::future::poll_fn(|cx| self.raw.poll_recv_lent(cx)).await? {
            Some(fds) => decode_borrowed(self.raw.lent(), fds).map(Some),
            None => Ok(None),
        }
    }

    /// Receives up to `limit` messages in one call: waits for the first, then takes every
    /// message that has arrived behind it, handing each to `f` as a [`Lent`] message (decode
    /// it with [`Lent::decode`], borrowing from the receive buffer). Returns how many `f` got;
    /// `Ok(0)` once the sending end is closed and drained (or when `limit` is 0), like tokio's
    /// `recv_many`.
    ///
    /// This is the cheapest way to drain a stream of small messages: the receive's own work
    /// (the future, the wait, the bookkeeping of the shared ring) is paid once per batch
    /// instead of once per message, and nothing is allocated or copied per message.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), for the receive itself; a message that does not decode is
    /// `f`'s to handle ([`Lent::decode`] returns the error) and the batch goes on. An error
    /// met after some messages ends the batch and is returned: the messages before it were
    /// handed to `f`, so none is lost.
    ///
    /// # Cancel safety
    /// Cancel safe: messages are taken only in the poll that completes the call, each as `f`
    /// gets it; dropping the future before (in `select!` or a timeout) loses none.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<String>()?;
    /// for word in ["one", "two", "three"] {
    ///     tx.send(word.to_string()).await?;
    /// }
    /// drop(tx);
    /// let mut total = 0;
    /// loop {
    ///     let n = rx
    ///         .recv_many_borrowed(64, |msg| {
    ///             let word: &str = msg.decode().expect("a string");
    ///             total += word.len();
    ///         })
    ///         .await?;
    ///     if n == 0 {
    ///         break; // end-of-stream
    ///     }
    /// }
    /// assert_eq!(total, 11);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_many_borrowed(
        &mut self,
        limit: usize,
        mut f: impl FnMut(Lent<'_>),
    ) -> Result<usize, RecvError> {
        std::future::poll_fn(|cx| {
            self.raw
                .poll_recv_lent_many(cx, limit, |bytes, fds| f(Lent::new(bytes, fds)))
        })
        .await
    }

    /// Receives a message as a borrowed `V` if a whole one is waiting, without waiting; see
    /// [`recv_borrowed`](Self::recv_borrowed).
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] at
    /// end-of-stream, [`TryRecvError::Failed`] as for [`recv_borrowed`](Self::recv_borrowed).
    pub fn try_recv_borrowed<'a, V: Deserialize<'a>>(&'a mut self) -> Result<V, TryRecvError> {
        match self.raw.try_recv_lent()? {
            TryRecv::Frame(fds) => Ok(decode_borrowed(self.raw.lent(), fds)?),
            TryRecv::Empty => Err(TryRecvError::Empty),
            TryRecv::Closed => Err(TryRecvError::Closed),
        }
    }

    /// Receives the next message as a borrowed `V`, blocking the thread; see
    /// [`recv_borrowed`](Self::recv_borrowed).
    ///
    /// # Errors
    /// As [`recv_borrowed`](Self::recv_borrowed).
    pub fn blocking_recv_borrowed<'a, V: Deserialize<'a>>(
        &'a mut self,
    ) -> Result<Option<V>, RecvError> {
        match self.raw.blocking_recv_lent(None)? {
            TryRecv::Frame(fds) => decode_borrowed(self.raw.lent(), fds).map(Some),
            TryRecv::Empty | TryRecv::Closed => Ok(None),
        }
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Polls for the next message; see [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<T>, RecvError>> {
        match self.raw.poll_recv_typed(cx, decode::<T>) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(Ok(msg)))) => Poll::Ready(Ok(Some(msg))),
            Poll::Ready(Ok(Some(Err(e)))) | Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
        }
    }

    /// Receives the next message; `Ok(None)` once the sending end is closed and drained.
    ///
    /// # Errors
    /// [`RecvError`] says what went wrong; [`RecvError::is_fatal`] tells whether the pipe is
    /// still usable (a message of the wrong type or over the size limit is skipped and the
    /// pipe goes on; a corrupt or truncated stream ends it).
    ///
    /// # Cancel safety
    /// Cancel safe: partially received bytes stay buffered in the receiver, so dropping the
    /// future (in `select!` or a timeout) never loses a message.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (mut tx, mut rx) = multiproc::pipe::simplex::<u32>()?;
    /// tx.send(7).await?;
    /// drop(tx);
    /// assert_eq!(rx.recv().await?, Some(7));
    /// assert_eq!(rx.recv().await?, None); // end-of-stream
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<Option<T>, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Receives a message if a whole one is waiting, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] at
    /// end-of-stream, [`TryRecvError::Failed`] as for [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.raw.try_recv_typed(decode::<T>)? {
            TryRecv::Frame(msg) => Ok(msg?),
            TryRecv::Empty => Err(TryRecvError::Empty),
            TryRecv::Closed => Err(TryRecvError::Closed),
        }
    }

    /// Receives the next message, waiting at most `timeout` (Python's `poll(timeout)` followed
    /// by `recv`). A zero timeout only looks at what has already arrived.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time (the pipe stays usable),
    /// [`RecvTimeoutError::Failed`] as for [`recv`](Self::recv).
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver (`enable_time`).
    ///
    /// # Cancel safety
    /// Cancel safe, like [`recv`](Self::recv).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<T>, RecvTimeoutError> {
        if timeout.is_zero() {
            return match self.try_recv() {
                Ok(msg) => Ok(Some(msg)),
                Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                Err(TryRecvError::Closed) => Ok(None),
                Err(TryRecvError::Failed(e)) => Err(e.into()),
            };
        }
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Receives the next message, blocking the thread. For non-async code.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn blocking_recv(&mut self) -> Result<Option<T>, RecvError> {
        match self.raw.blocking_recv_typed(None, decode::<T>)? {
            TryRecv::Frame(msg) => msg.map(Some),
            TryRecv::Empty | TryRecv::Closed => Ok(None),
        }
    }

    /// Receives the next message, blocking the thread at most `timeout`. A `timeout` too large
    /// for the clock (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout).
    pub fn blocking_recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<T>, RecvTimeoutError> {
        match self
            .raw
            .blocking_recv_typed(deadline_after(timeout), decode::<T>)?
        {
            TryRecv::Frame(msg) => Ok(Some(msg?)),
            TryRecv::Empty => Err(RecvTimeoutError::Timeout),
            TryRecv::Closed => Ok(None),
        }
    }
}

impl<T: DeserializeOwned> Stream for Receiver<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(Result::transpose)
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", self.raw.shared_fd())
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.to_end().serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let end = ChannelEnd::deserialize(deserializer)?;
        channel::split_end(end)
            .map(|(_, rx)| Receiver::from_raw(rx))
            .map_err(serde::de::Error::custom)
    }
}
