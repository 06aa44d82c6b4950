//! Talking to Python: byte connections that speak `multiprocessing.connection`'s protocol, so a
//! Python `Client(address, authkey=...)` can use a multiproc listener and a multiproc client a
//! Python `Listener`.
//!
//! Python's framing (a 4-byte big-endian length, or -1 and an 8-byte length) and its authkey
//! challenge, in the CPython 3.12+ form (HMAC-SHA256) with the legacy HMAC-MD5 of CPython 3.11
//! and older understood in both directions. Messages are bytes: Python's `send_bytes` /
//! `recv_bytes`. (Python's `send`/`recv` pickle; decode pickles yourself if you must, or better,
//! agree on a format such as JSON.)
//!
//! | Python | multiproc |
//! |---|---|
//! | `Listener(address, authkey=k)` | [`Listener::bind`]`(address, `[`Auth::key`]`(k))` |
//! | `listener.accept()` | [`Listener::accept`]`.await` |
//! | `Client(address, authkey=k)` | [`connect`]`(address, `[`Auth::key`]`(k))` |
//! | `conn.send_bytes(b)`, `conn.recv_bytes()` | [`Connection::send_bytes`], [`Connection::recv_bytes`] |
//! | `conn.poll(t)` | [`Connection::ready_timeout`] |
//!
//! # Examples
//! A multiproc listener and a multiproc client in Python's protocol (a Python program can
//! stand on either side):
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use multiproc::connection::{Address, Auth, python};
//!
//! let mut listener = python::Listener::bind(Address::tcp("127.0.0.1:0"), Auth::key(b"k")).await?;
//! let address = listener.local_address().clone();
//! let client = tokio::spawn(async move {
//!     let mut conn = python::connect(address, Auth::key(b"k")).await?;
//!     conn.send_bytes(b"ping").await?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(conn.recv_bytes().await?)
//! });
//! let (mut conn, _peer) = listener.accept().await?;
//! assert_eq!(conn.recv_bytes().await?.as_deref(), Some(&b"ping"[..]));
//! conn.send_bytes(b"pong").await?;
//! assert_eq!(client.await?.unwrap().as_deref(), Some(&b"pong"[..]));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::acceptor::Acceptor;
use crate::address::Address;
use crate::auth::Auth;
use crate::error::{AcceptError, BindError, ConnectError, RecvError, SendError};
use crate::framed::FramedIo;
use crate::handshake::Protocol;
use crate::peer::Peer;

/// A listener speaking Python's `multiprocessing.connection` protocol; see the
/// [module](self). Like [`crate::Listener`], handshakes run concurrently under a timeout.
pub struct Listener {
    acceptor: Acceptor,
}

impl Listener {
    /// Listens on `address` (Python's `Listener(address, authkey=...)`). Use [`Auth::key`]
    /// for Python's `authkey`, [`Auth::none`] for none.
    ///
    /// # Errors
    /// As [`crate::Listener::bind`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn bind(address: impl Into<Address>, auth: Auth) -> Result<Listener, BindError> {
        Ok(Listener {
            acceptor: Acceptor::bind(address.into(), auth, Protocol::Python).await?,
        })
    }

    /// The address clients connect to.
    pub fn local_address(&self) -> &Address {
        self.acceptor.local_address()
    }

    /// The next client whose handshake succeeded.
    ///
    /// # Errors
    /// As [`crate::Listener::accept`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn accept(&mut self) -> Result<(Connection, Peer), AcceptError> {
        let (established, peer) = std::future::poll_fn(|cx| self.acceptor.poll_accept(cx)).await?;
        Ok((
            Connection::new(FramedIo::from_io(established.into_io()), peer.clone()),
            peer,
        ))
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("python::Listener")
            .field("address", self.local_address())
            .finish_non_exhaustive()
    }
}

/// Connects to a listener speaking Python's protocol (Python's `Client(address, authkey=...)`).
///
/// # Errors
/// As [`crate::connect`].
///
/// # Cancel safety
/// Dropping the future abandons the connection.
pub async fn connect(address: impl Into<Address>, auth: Auth) -> Result<Connection, ConnectError> {
    let (established, peer) =
        crate::connect::establish(&address.into(), &auth, Protocol::Python).await?;
    Ok(Connection::new(
        FramedIo::from_io(established.into_io()),
        peer,
    ))
}

/// A byte connection in Python's protocol: `send_bytes`, `recv_bytes`, `poll`.
pub struct Connection {
    io: FramedIo,
    peer: Peer,
}

impl Connection {
    fn new(io: FramedIo, peer: Peer) -> Connection {
        Connection { io, peer }
    }

    /// What is known of the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The largest message accepted and sent (default 64 MiB); a larger incoming one is
    /// skipped with [`RecvError::TooLarge`] (Python's `recv_bytes(maxlength)` raises instead).
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.io.set_max_message_size(limit);
    }

    /// The largest message accepted and sent.
    pub fn max_message_size(&self) -> usize {
        self.io.max_message_size()
    }

    /// Sends `bytes` as one message (Python's `send_bytes`).
    ///
    /// # Errors
    /// Over the size limit (nothing sent), or the peer is gone.
    ///
    /// # Cancel safety
    /// The message is accepted at the first poll; if the future is dropped, the rest is written
    /// by the next send.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.io
            .push(|buf| {
                buf.extend_from_slice(bytes);
                Ok(())
            })
            .map_err(|kind| SendError::new((), kind))?;
        std::future::poll_fn(|cx| self.io.poll_flush(cx))
            .await
            .map_err(|kind| SendError::new((), kind))
    }

    /// Writes what is buffered and shuts the stream down (Python's `close`, which over TLS
    /// also sends the close alert); the peer then receives `Ok(None)` once it read everything.
    /// Dropping the connection makes one non-blocking attempt at the same.
    ///
    /// # Errors
    /// [`SendError`] when the peer is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: calling it again goes on where the last call stopped.
    pub async fn close(&mut self) -> Result<(), SendError> {
        std::future::poll_fn(|cx| self.io.poll_shutdown(cx))
            .await
            .map_err(|kind| SendError::new((), kind))
    }

    /// Receives one message (Python's `recv_bytes`); `Ok(None)` when the peer closed (Python
    /// raises `EOFError`).
    ///
    /// # Errors
    /// [`RecvError`]: a message over the limit (skipped), a stream that is not frames, a peer
    /// gone mid-message.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv_bytes(&mut self) -> Result<Option<Vec<u8>>, RecvError> {
        std::future::poll_fn(|cx| self.io.poll_frame(cx, <[u8]>::to_vec)).await
    }

    /// Polls until a receive would not wait; see [`ready`](Self::ready).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        ready!(self.io.poll_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Waits until a receive would not wait, taking nothing (Python's `poll(None)`).
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes), reported here instead.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn ready(&mut self) -> Result<(), RecvError> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Python's `poll(timeout)`: `Ok(true)` once a receive would not wait, `Ok(false)` after
    /// `timeout`.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn ready_timeout(&mut self, timeout: Duration) -> Result<bool, RecvError> {
        if timeout.is_zero() {
            // Only the reactor reads a stream's readiness: let it run, then look, so that a
            // `while !poll(0)` loop sees data even on a current-thread runtime.
            tokio::task::yield_now().await;
            let waker = std::task::Waker::noop();
            return match self.poll_ready(&mut Context::from_waker(waker)) {
                Poll::Ready(r) => r.map(|()| true),
                Poll::Pending => Ok(false),
            };
        }
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("python::Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}
