use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use multiproc_core::SharedFd;
use multiproc_core::transport::channel;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Lent, Receiver, Sender};
use crate::error::{RecvError, RecvTimeoutError, SendError, TryRecvError};

/// One end of a duplex pipe: sends `S` and receives `R`.
///
/// Created in pairs by [`duplex`](super::duplex); the other end sends `R` and receives `S`.
/// Both directions share one socket. An end is a handle: pass it to a child or send it inside
/// a message, and it works there (while it also keeps working here).
///
/// [`split`](Self::split) gives independent halves, to send from one task while another
/// receives.
pub struct Duplex<S, R> {
    tx: Sender<S>,
    rx: Receiver<R>,
}

impl<S, R> Duplex<S, R> {
    pub(crate) fn from_end(end: channel::ChannelEnd) -> std::io::Result<Self> {
        let (tx, rx) = channel::split_end(end)?;
        Ok(Self {
            tx: Sender::from_raw(tx),
            rx: Receiver::from_raw(rx),
        })
    }

    /// An end over a channel end of the transport layer: a socket, and the shared ring the two
    /// sides agreed on, if any (a connection accepted by `multiproc::connection` and its client
    /// have one, set up by `multiproc_core::transport::channel::offer_ring`).
    ///
    /// # Errors
    /// When the end's descriptor is not a socket, or its ring region is malformed.
    pub fn from_channel_end(end: channel::ChannelEnd) -> std::io::Result<Self> {
        Self::from_end(end)
    }

    /// An end over a connected Unix stream socket whose peer speaks the same frames: the other
    /// end of a socket pair, or a connection a listener accepted (see `multiproc::connection`).
    ///
    /// # Errors
    /// When `socket` is not a socket.
    pub fn from_socket(socket: std::os::fd::OwnedFd) -> std::io::Result<Self> {
        Self::from_end(channel::ChannelEnd::from_fd(SharedFd::new(socket)))
    }

    /// Splits the end into its sending and receiving halves.
    pub fn split(self) -> (Sender<S>, Receiver<R>) {
        (self.tx, self.rx)
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut Sender<S> {
        &mut self.tx
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut Receiver<R> {
        &mut self.rx
    }

    /// Sets the largest encoded message sent and accepted by this end (default 64 MiB).
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.tx.set_max_message_size(limit);
        self.rx.set_max_message_size(limit);
    }

    /// Writes every buffered message; see [`Sender::flush`].
    ///
    /// # Errors
    /// As [`Sender::flush`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Sender::flush`].
    pub async fn flush(&mut self) -> Result<(), SendError> {
        self.tx.flush().await
    }

    /// Sends `bytes` as one message, as they are; see [`Sender::send_bytes`].
    ///
    /// # Errors
    /// As [`Sender::send_bytes`].
    ///
    /// # Cancel safety
    /// As [`Sender::send_bytes`]: once the future has been polled the message will be delivered.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.tx.send_bytes(bytes).await
    }

    /// Sends `bytes` as one message, blocking the thread; see [`Sender::blocking_send_bytes`].
    ///
    /// # Errors
    /// As [`Sender::send_bytes`].
    pub fn blocking_send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.tx.blocking_send_bytes(bytes)
    }

    /// Waits until a receive would not wait, taking nothing; see [`Receiver::ready`].
    ///
    /// # Errors
    /// As [`Receiver::ready`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::ready`].
    pub async fn ready(&mut self) -> Result<(), RecvError> {
        self.rx.ready().await
    }

    /// Python's `poll(timeout)`; see [`Receiver::ready_timeout`].
    ///
    /// # Errors
    /// As [`Receiver::ready`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::ready`].
    pub async fn ready_timeout(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        self.rx.ready_timeout(timeout).await
    }

    /// Receives the next message as plain bytes; see [`Receiver::recv_bytes`].
    ///
    /// # Errors
    /// As [`Receiver::recv_bytes`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::recv_bytes`].
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        self.rx.recv_bytes().await
    }

    /// Receives the next message as plain bytes, blocking the thread; see
    /// [`Receiver::blocking_recv_bytes`].
    ///
    /// # Errors
    /// As [`Receiver::recv_bytes`].
    pub fn blocking_recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        self.rx.blocking_recv_bytes()
    }
}

impl<S: Serialize, R> Duplex<S, R> {
    /// Sends `msg`; see [`Sender::send`].
    ///
    /// # Errors
    /// As [`Sender::send`].
    ///
    /// # Cancel safety
    /// As [`Sender::send`]: once the future has been polled the message will be delivered.
    pub async fn send(&mut self, msg: S) -> Result<(), SendError<S>> {
        self.tx.send(msg).await
    }

    /// Sends `msg`, blocking the thread; see [`Sender::blocking_send`].
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub fn blocking_send(&mut self, msg: S) -> Result<(), SendError<S>> {
        self.tx.blocking_send(msg)
    }

    /// Sends the message `msg` refers to, which the caller keeps; see [`Sender::send_ref`].
    ///
    /// # Errors
    /// As [`Sender::send_ref`].
    ///
    /// # Cancel safety
    /// As [`Sender::send_ref`]: once the future has been polled the message will be delivered.
    pub async fn send_ref(&mut self, msg: &S) -> Result<(), SendError> {
        self.tx.send_ref(msg).await
    }

    /// Queues the message `msg` refers to for the next flush; see [`Sender::feed_ref`].
    ///
    /// # Errors
    /// As [`Sender::send_ref`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Sender::feed_ref`].
    pub async fn feed_ref(&mut self, msg: &S) -> Result<(), SendError> {
        self.tx.feed_ref(msg).await
    }

    /// Sends the message `msg` refers to, blocking the thread; see
    /// [`Sender::blocking_send_ref`].
    ///
    /// # Errors
    /// As [`Sender::send_ref`].
    pub fn blocking_send_ref(&mut self, msg: &S) -> Result<(), SendError> {
        self.tx.blocking_send_ref(msg)
    }
}

impl<S, R> Duplex<S, R> {
    /// Receives the next message as a `V` borrowing from the receive buffer; see
    /// [`Receiver::recv_borrowed`].
    ///
    /// # Errors
    /// As [`Receiver::recv_borrowed`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::recv_borrowed`].
    pub async fn recv_borrowed<'a, V: Deserialize<'a>>(
        &'a mut self,
    ) -> Result<Option<V>, RecvError> {
        self.rx.recv_borrowed().await
    }

    /// Receives up to `limit` messages in one call, each lent to `f`; see
    /// [`Receiver::recv_many_borrowed`].
    ///
    /// # Errors
    /// As [`Receiver::recv_many_borrowed`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::recv_many_borrowed`].
    pub async fn recv_many_borrowed(
        &mut self,
        limit: usize,
        f: impl FnMut(Lent<'_>),
    ) -> Result<usize, RecvError> {
        self.rx.recv_many_borrowed(limit, f).await
    }

    /// Receives a borrowed `V` without waiting; see [`Receiver::try_recv_borrowed`].
    ///
    /// # Errors
    /// As [`Receiver::try_recv_borrowed`].
    pub fn try_recv_borrowed<'a, V: Deserialize<'a>>(&'a mut self) -> Result<V, TryRecvError> {
        self.rx.try_recv_borrowed()
    }

    /// Receives a borrowed `V`, blocking the thread; see [`Receiver::blocking_recv_borrowed`].
    ///
    /// # Errors
    /// As [`Receiver::recv_borrowed`].
    pub fn blocking_recv_borrowed<'a, V: Deserialize<'a>>(
        &'a mut self,
    ) -> Result<Option<V>, RecvError> {
        self.rx.blocking_recv_borrowed()
    }
}

impl<S, R: DeserializeOwned> Duplex<S, R> {
    /// Receives the next message; see [`Receiver::recv`].
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<R>, RecvError> {
        self.rx.recv().await
    }

    /// Receives without waiting; see [`Receiver::try_recv`].
    ///
    /// # Errors
    /// As [`Receiver::try_recv`].
    pub fn try_recv(&mut self) -> Result<R, TryRecvError> {
        self.rx.try_recv()
    }

    /// Receives, waiting at most `timeout`; see [`Receiver::recv_timeout`].
    ///
    /// # Errors
    /// As [`Receiver::recv_timeout`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Receiver::recv`].
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<R>, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).await
    }

    /// Receives, blocking the thread; see [`Receiver::blocking_recv`].
    ///
    /// # Errors
    /// As [`Receiver::recv`].
    pub fn blocking_recv(&mut self) -> Result<Option<R>, RecvError> {
        self.rx.blocking_recv()
    }

    /// Receives, blocking the thread at most `timeout`; see [`Receiver::blocking_recv_timeout`].
    ///
    /// # Errors
    /// As [`Receiver::recv_timeout`].
    pub fn blocking_recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<R>, RecvTimeoutError> {
        self.rx.blocking_recv_timeout(timeout)
    }
}

impl<S, R: DeserializeOwned> Stream for Duplex<S, R> {
    type Item = Result<R, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().rx).poll_next(cx)
    }
}

impl<S: Serialize, R> Sink<S> for Duplex<S, R> {
    type Error = SendError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().tx).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: S) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().tx).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().tx).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().tx).poll_close(cx)
    }
}

impl<S, R> fmt::Debug for Duplex<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplex")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<S, R> Serialize for Duplex<S, R> {
    fn serialize<Ser: Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.tx.serialize(serializer)
    }
}

impl<'de, S, R> Deserialize<'de> for Duplex<S, R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let end = channel::ChannelEnd::deserialize(deserializer)?;
        Duplex::from_end(end).map_err(serde::de::Error::custom)
    }
}
