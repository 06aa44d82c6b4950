//! [`Connection`]: the typed end a listener or a client gets.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use multiproc_channel::pipe::Duplex;
use multiproc_core::message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{RecvError, RecvTimeoutError, SendError, SendErrorKind, TryRecvError};
use crate::framed::{FramedIo, Io};
use crate::handshake::Established;
use crate::peer::Peer;

/// Buffered bytes above which the [`Sink`] writes before accepting more (stream transports).
const SINK_HIGH_WATER: usize = 256 << 10;

/// One end of a connection between unrelated processes: sends `S`, receives `R`. The same
/// API as a [`pipe::Duplex`](multiproc_channel::pipe::Duplex) (`send`/`recv`, timeouts,
/// [`Stream`] and [`Sink`]).
///
/// Over a Unix socket it *is* a duplex pipe end ([`into_duplex`](Self::into_duplex) gives
/// it), so handles (pipe ends, locks, queues, shared memory) travel inside messages. Over TCP
/// or TLS the messages travel as bytes, and a message holding a handle fails to send with
/// [`SendErrorKind::HandlesNotSupported`]: nothing is sent, and the connection stays usable.
///
/// Messages are postcard, framed as Python's `multiprocessing.connection` frames them over
/// TCP, and as multiproc pipes frame them over Unix sockets; talking to Python itself takes
/// [`python::Connection`](crate::python::Connection).
pub struct Connection<S, R> {
    inner: Inner<S, R>,
    peer: Peer,
}

enum Inner<S, R> {
    Unix(Duplex<S, R>),
    Stream(FramedIo, PhantomData<fn(S) -> R>),
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecvError> {
    message::decode(bytes, Vec::new()).map_err(RecvError::Decode)
}

impl<S, R> Connection<S, R> {
    pub(crate) fn from_established(
        established: Established,
        peer: Peer,
    ) -> std::io::Result<Connection<S, R>> {
        let inner = match established {
            Established::Unix(stream) => {
                let fd = std::os::fd::OwnedFd::from(stream.into_std()?);
                Inner::Unix(Duplex::from_socket(fd)?)
            }
            Established::Channel(end) => Inner::Unix(Duplex::from_channel_end(end)?),
            Established::Tcp(stream) => {
                Inner::Stream(FramedIo::from_io(Io::Tcp(stream)), PhantomData)
            }
            Established::Stream(stream) => Inner::Stream(FramedIo::new(stream), PhantomData),
        };
        Ok(Connection { inner, peer })
    }

    /// What is known of the other end (as [`Listener::accept`](crate::Listener::accept) and
    /// [`connect`](crate::connect) reported it).
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// True over a Unix socket, where handles travel in messages.
    pub fn carries_handles(&self) -> bool {
        matches!(self.inner, Inner::Unix(_))
    }

    /// The duplex pipe end underneath, over a Unix socket; the connection back otherwise.
    ///
    /// # Errors
    /// Gives `self` back over TCP or TLS.
    // The connection itself is what comes back, as a failed send gives its message back.
    #[allow(clippy::result_large_err)]
    pub fn into_duplex(self) -> Result<Duplex<S, R>, Self> {
        match self.inner {
            Inner::Unix(duplex) => Ok(duplex),
            inner => Err(Connection {
                inner,
                peer: self.peer,
            }),
        }
    }

    /// Sets the largest encoded message sent and accepted by this end (default 64 MiB). A
    /// larger incoming message is skipped with [`RecvError::TooLarge`] and the connection
    /// stays usable.
    pub fn set_max_message_size(&mut self, limit: usize) {
        match &mut self.inner {
            Inner::Unix(d) => d.set_max_message_size(limit),
            Inner::Stream(f, _) => f.set_max_message_size(limit),
        }
    }

    /// Writes every buffered message.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the peer is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: unwritten bytes stay buffered for the next flush or send.
    pub async fn flush(&mut self) -> Result<(), SendError> {
        match &mut self.inner {
            Inner::Unix(d) => d.flush().await,
            Inner::Stream(f, _) => std::future::poll_fn(|cx| f.poll_flush(cx))
                .await
                .map_err(|kind| SendError::new((), kind)),
        }
    }

    /// Writes every buffered message and ends this end's sending direction: over TCP the peer
    /// then sees end-of-stream (`Ok(None)`) once it has read everything, and over TLS this
    /// sends the close alert that makes the end clean rather than cut. Over a Unix socket it
    /// only flushes: the socket may be shared with other processes through the handles it
    /// carried, and the peer sees the end when every copy of this end is dropped.
    ///
    /// Dropping a connection makes one non-blocking attempt at the same.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the peer is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: calling it again goes on where the last call stopped.
    pub async fn close(&mut self) -> Result<(), SendError> {
        match &mut self.inner {
            Inner::Unix(d) => d.flush().await,
            Inner::Stream(f, _) => std::future::poll_fn(|cx| f.poll_shutdown(cx))
                .await
                .map_err(|kind| SendError::new((), kind)),
        }
    }

    /// Sends `bytes` as one message, as they are (Python's `send_bytes`); the peer takes it
    /// with [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    ///
    /// # Cancel safety
    /// As [`send`](Self::send).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        match &mut self.inner {
            Inner::Unix(d) => d.send_bytes(bytes).await,
            Inner::Stream(f, _) => {
                f.push(|buf| {
                    buf.extend_from_slice(bytes);
                    Ok(())
                })
                .map_err(|kind| SendError::new((), kind))?;
                std::future::poll_fn(|cx| f.poll_flush(cx))
                    .await
                    .map_err(|kind| SendError::new((), kind))
            }
        }
    }

    /// Receives the next message as plain bytes (Python's `recv_bytes`); `Ok(None)` once the
    /// peer closed and everything was delivered.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`recv`](Self::recv).
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        match &mut self.inner {
            Inner::Unix(d) => d.recv_bytes().await,
            Inner::Stream(f, _) => {
                std::future::poll_fn(|cx| f.poll_frame(cx, <[u8]>::to_vec)).await
            }
        }
    }

    /// Polls until a receive would not wait; see [`ready`](Self::ready).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        match &mut self.inner {
            Inner::Unix(d) => d.receiver().poll_ready(cx),
            Inner::Stream(f, _) => f.poll_ready(cx),
        }
    }

    /// Waits until a receive would not wait (a message has arrived, or the peer closed),
    /// taking nothing: Python's `conn.poll(None)`.
    ///
    /// # Errors
    /// What the next receive would have reported (a message over the size limit, a corrupt
    /// stream), reported here instead.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken.
    pub async fn ready(&mut self) -> Result<(), RecvError> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Python's `conn.poll(timeout)`: `Ok(true)` once a receive would not wait, `Ok(false)`
    /// when `timeout` passes first. A zero timeout only looks, but really looks: over a Unix
    /// socket with a non-blocking read, over TCP and TLS after yielding once to the runtime so
    /// its I/O driver can report what arrived. A `while !ready_timeout(ZERO)` loop therefore
    /// sees data even on a current-thread runtime.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver, for a non-zero timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken.
    pub async fn ready_timeout(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        if timeout.is_zero() {
            return match &mut self.inner {
                Inner::Unix(d) => d.ready_timeout(Duration::ZERO).await,
                Inner::Stream(f, _) => {
                    // Only the reactor reads a stream's readiness: let it run, then look.
                    tokio::task::yield_now().await;
                    let waker = std::task::Waker::noop();
                    match f.poll_ready(&mut Context::from_waker(waker)) {
                        Poll::Ready(r) => r.map(|()| true),
                        Poll::Pending => Ok(false),
                    }
                }
            };
        }
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

impl<S: Serialize, R> Connection<S, R> {
    fn push(f: &mut FramedIo, msg: &S) -> Result<(), SendErrorKind> {
        f.push(|buf| {
            let fds = message::encode_into(msg, buf)?;
            if fds.is_empty() {
                Ok(())
            } else {
                // The duplicated descriptors close here; nothing is sent.
                Err(SendErrorKind::HandlesNotSupported { count: fds.len() })
            }
        })
    }

    /// Sends `msg` and waits until it is handed to the kernel.
    ///
    /// # Errors
    /// The message comes back inside [`SendError`] when it cannot be encoded, exceeds the
    /// size limit, holds handles over a TCP or TLS connection
    /// ([`SendErrorKind::HandlesNotSupported`]; nothing is written in these cases and the
    /// connection stays usable), or the peer is gone.
    ///
    /// # Cancel safety
    /// The message is accepted before the first wait; if the future is dropped after that, it
    /// is written by the next send, flush, or receive (so a request whose send was cancelled by
    /// a timeout, followed by a wait for the answer, does not hang). Over a Unix socket a
    /// dropped connection still delivers it (as a pipe does); over TCP, bytes the socket does
    /// not take at once when the connection is dropped are lost.
    pub async fn send(&mut self, msg: S) -> Result<(), SendError<S>> {
        match &mut self.inner {
            Inner::Unix(d) => d.send(msg).await,
            Inner::Stream(f, _) => {
                if let Err(kind) = Self::push(f, &msg) {
                    return Err(SendError::new(msg, kind));
                }
                match std::future::poll_fn(|cx| f.poll_flush(cx)).await {
                    Ok(()) => Ok(()),
                    Err(kind) => Err(SendError::new(msg, kind)),
                }
            }
        }
    }
}

impl<S, R: DeserializeOwned> Connection<S, R> {
    /// Polls for the next message; see [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<R>, RecvError>> {
        match &mut self.inner {
            Inner::Unix(d) => d.receiver().poll_recv(cx),
            Inner::Stream(f, _) => match ready!(f.poll_frame(cx, decode::<R>)) {
                Ok(Some(Ok(msg))) => Poll::Ready(Ok(Some(msg))),
                Ok(Some(Err(e))) | Err(e) => Poll::Ready(Err(e)),
                Ok(None) => Poll::Ready(Ok(None)),
            },
        }
    }

    /// Receives the next message; `Ok(None)` once the peer closed and everything was
    /// delivered.
    ///
    /// # Errors
    /// [`RecvError`]; [`RecvError::is_fatal`] tells whether the connection is still usable (a
    /// message of the wrong type or over the size limit is skipped; a corrupt or truncated
    /// stream ends it).
    ///
    /// # Cancel safety
    /// Cancel safe: partially received bytes stay buffered in the connection.
    pub async fn recv(&mut self) -> Result<Option<R>, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Receives a message if a whole one has arrived, without waiting.
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is waiting, [`TryRecvError::Closed`] at
    /// end-of-stream, [`TryRecvError::Failed`] as for [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<R, TryRecvError> {
        match &mut self.inner {
            Inner::Unix(d) => d.try_recv(),
            Inner::Stream(..) => {
                let waker = std::task::Waker::noop();
                match self.poll_recv(&mut Context::from_waker(waker)) {
                    Poll::Ready(Ok(Some(msg))) => Ok(msg),
                    Poll::Ready(Ok(None)) => Err(TryRecvError::Closed),
                    Poll::Ready(Err(e)) => Err(TryRecvError::Failed(e)),
                    Poll::Pending => Err(TryRecvError::Empty),
                }
            }
        }
    }

    /// Receives, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time (the connection stays
    /// usable), [`RecvTimeoutError::Failed`] as for [`recv`](Self::recv).
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`recv`](Self::recv).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<R>, RecvTimeoutError> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }
}

impl<S, R: DeserializeOwned> Stream for Connection<S, R> {
    type Item = Result<R, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(Result::transpose)
    }
}

impl<S: Serialize, R> Sink<S> for Connection<S, R> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        match &mut self.get_mut().inner {
            Inner::Unix(d) => Pin::new(d).poll_ready(cx),
            Inner::Stream(f, _) => {
                if f.buffered() >= SINK_HIGH_WATER {
                    ready!(f.poll_flush(cx)).map_err(|kind| SendError::new((), kind))?;
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    fn start_send(self: Pin<&mut Self>, item: S) -> Result<(), SendError> {
        match &mut self.get_mut().inner {
            Inner::Unix(d) => Pin::new(d).start_send(item),
            Inner::Stream(f, _) => Self::push(f, &item).map_err(|kind| SendError::new((), kind)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        match &mut self.get_mut().inner {
            Inner::Unix(d) => Pin::new(d).poll_flush(cx),
            Inner::Stream(f, _) => f.poll_flush(cx).map_err(|kind| SendError::new((), kind)),
        }
    }

    /// As [`Connection::close`]: flushes, then over TCP and TLS shuts the stream down.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        match &mut self.get_mut().inner {
            Inner::Unix(d) => Pin::new(d).poll_close(cx),
            Inner::Stream(f, _) => f.poll_shutdown(cx).map_err(|kind| SendError::new((), kind)),
        }
    }
}

impl<S, R> fmt::Debug for Connection<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match &self.inner {
            Inner::Unix(_) => "unix",
            Inner::Stream(..) => "stream",
        };
        f.debug_struct("Connection")
            .field("transport", &transport)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}
