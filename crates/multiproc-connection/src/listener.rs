//! The listening side: [`Listener`], its [`Incoming`] stream.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;

use crate::acceptor::Acceptor;
use crate::address::Address;
use crate::auth::Auth;
use crate::connection::Connection;
use crate::error::{AcceptError, BindError};
use crate::handshake::Protocol;
use crate::peer::Peer;

/// A named endpoint that unrelated processes connect to (Python's
/// `multiprocessing.connection.Listener`), handing out typed ends: each sends `S` and
/// receives `R` (the client's end sends `R` and receives `S`).
///
/// Many clients at once: handshakes run concurrently in a task of the listener, each bounded
/// by the handshake timeout, so a client that connects and says nothing never holds up the
/// others. [`accept`](Self::accept) takes the next client whose handshake succeeded, or
/// reports one whose handshake failed (an [`AcceptError`] that is not
/// [`fatal`](AcceptError::is_fatal): log it and accept again).
///
/// A Unix socket file is created safely (a stale file left by a listener that was killed is
/// reclaimed; of two listeners racing for one path exactly one wins) and removed when the
/// listener is dropped; see `ARCHITECTURE.md`. Dropping the listener stops accepting; accepted
/// connections live on.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use multiproc::connection::{Address, Auth, Listener, connect};
///
/// let mut listener = Listener::<u64, u64>::bind(Address::tcp("127.0.0.1:0"), Auth::none()).await?;
/// let address = listener.local_address().clone(); // the port the system chose
/// let client = tokio::spawn(async move {
///     let mut end = connect::<u64, u64>(address, Auth::none()).await?;
///     end.send(20).await?;
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(end.recv().await?)
/// });
/// let (mut end, peer) = listener.incoming().next().await.expect("a listener never ends")?;
/// assert!(peer.addr().is_some());
/// let n = end.recv().await?.unwrap();
/// end.send(n + 1).await?;
/// assert_eq!(client.await?.unwrap(), Some(21));
/// # Ok(())
/// # }
/// ```
pub struct Listener<S, R> {
    acceptor: Acceptor,
    _marker: PhantomData<fn(S) -> R>,
}

impl<S, R> Listener<S, R> {
    /// Listens on `address`, demanding `auth` of every client.
    ///
    /// # Errors
    /// [`BindError::is_addr_in_use`] when another listener (of any program) has the address;
    /// [`BindError::is_invalid`] when `auth` does not fit the address (same-user over TCP, TLS
    /// over a Unix socket); otherwise the socket error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn bind(address: impl Into<Address>, auth: Auth) -> Result<Self, BindError> {
        Ok(Listener {
            acceptor: Acceptor::bind(address.into(), auth, Protocol::Native).await?,
            _marker: PhantomData,
        })
    }

    /// The address clients connect to: for TCP, with the port the system chose for port 0.
    pub fn local_address(&self) -> &Address {
        self.acceptor.local_address()
    }

    /// Polls for the next client; see [`accept`](Self::accept).
    #[allow(clippy::type_complexity)] // `accept`'s result, spelled out for the reader
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Connection<S, R>, Peer), AcceptError>> {
        let (established, peer) = ready!(self.acceptor.poll_accept(cx))?;
        Poll::Ready(
            match Connection::from_established(established, peer.clone()) {
                Ok(connection) => Ok((connection, peer)),
                Err(e) => Err(AcceptError::handshake(e.into(), peer)),
            },
        )
    }

    /// The next client whose handshake succeeded, with what is known of it.
    ///
    /// # Errors
    /// A client whose handshake failed ([`AcceptError::is_handshake`]; with
    /// [`is_auth`](AcceptError::is_auth) or [`is_timeout`](AcceptError::is_timeout)): the
    /// listener goes on. [`AcceptError::is_fatal`] when the listening socket failed.
    ///
    /// # Cancel safety
    /// Cancel safe: connections are queued in the listener, and a dropped `accept` takes none.
    pub async fn accept(&mut self) -> Result<(Connection<S, R>, Peer), AcceptError> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The clients as a [`Stream`] of [`accept`](Self::accept) outcomes; it never ends
    /// unless the listening socket fails.
    pub fn incoming(&mut self) -> Incoming<'_, S, R> {
        Incoming { listener: self }
    }
}

impl<S, R> fmt::Debug for Listener<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", self.local_address())
            .finish_non_exhaustive()
    }
}

/// The clients of a [`Listener`] as a [`Stream`]; see [`Listener::incoming`].
pub struct Incoming<'a, S, R> {
    listener: &'a mut Listener<S, R>,
}

impl<S, R> Stream for Incoming<'_, S, R> {
    type Item = Result<(Connection<S, R>, Peer), AcceptError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.listener.poll_accept(cx) {
            Poll::Ready(Err(e)) if e.is_closed() => Poll::Ready(None),
            Poll::Ready(item) => Poll::Ready(Some(item)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S, R> fmt::Debug for Incoming<'_, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}
