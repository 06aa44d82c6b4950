//! Remote managers: serving a manager on an endpoint ([`Client::serve`]) and connecting to
//! one ([`connect`]), over `multiproc_connection`'s listeners and authentication.
//!
//! The accepting task runs in the process that called `serve`. A client that connected over a
//! Unix socket is a pipe end once authenticated: it is handed to the manager through its
//! connector, exactly as a local client's pipe is, and the manager serves it directly. A TCP
//! (or TLS) connection cannot travel as a descriptor, so the serving process relays it: it
//! opens its own connection to the manager and passes requests one way and answers the other.

use std::fmt;

use futures::{SinkExt, StreamExt};
use multiproc_connection::{Address, Auth, Listener};

use crate::error::{ConnectError, ServeError};
use crate::link::{Endpoint, Link};
use crate::manager::Client;
use crate::wire::{Request, Response};

/// A manager being served on an address; dropping it stops accepting (connections already
/// made keep working).
pub struct Serving {
    address: Address,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// The address clients connect to (for TCP, with the port the system chose for port 0).
    pub fn local_address(&self) -> &Address {
        &self.address
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Serves this manager on `address` (Python's `BaseManager(address, authkey)`): any program
    /// that connects with [`connect`] and passes `auth` uses its values, until the returned
    /// [`Serving`] is dropped.
    ///
    /// Clients of other programs can use every operation but `update`, whose function is
    /// found by address and only in processes of this program (theirs fails with an error).
    /// A client whose authentication fails is refused and the manager goes on serving.
    ///
    /// # Errors
    /// [`ServeError`] when the address cannot be bound (in use, or `auth` does not fit it).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is served until it returns.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use multiproc::connection::{Address, Auth};
    ///
    /// let manager = multiproc::manager::Manager::start().await?;
    /// let serving = manager.serve(Address::tcp("127.0.0.1:0"), Auth::key(b"secret")).await?;
    /// // In another program:
    /// let remote =
    ///     multiproc::manager::connect(serving.local_address().clone(), Auth::key(b"secret")).await?;
    /// remote.map::<String, u32>("m").await?.insert("k".into(), 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve(
        &self,
        address: impl Into<Address>,
        auth: Auth,
    ) -> Result<Serving, ServeError> {
        let listener = Listener::<Response, Request>::bind(address, auth)
            .await
            .map_err(ServeError::new)?;
        let address = listener.local_address().clone();
        let endpoint = self.link().endpoint.clone();
        let task = tokio::spawn(accept_loop(listener, endpoint));
        Ok(Serving { address, task })
    }
}

/// Connects to a manager served at `address` (Python's `BaseManager(address, authkey).connect()`)
/// and waits until it answers.
///
/// The [`Client`] opens values as a local one does; its proxies work in this process only (a
/// proxy of a remote manager would have to carry the key, so it refuses to be sent).
///
/// # Errors
/// [`ConnectError::is_auth`] when the manager refused `auth`; otherwise the manager could not
/// be reached.
///
/// # Cancel safety
/// Cancel safe.
pub async fn connect(address: impl Into<Address>, auth: Auth) -> Result<Client, ConnectError> {
    let link = Link::remote(multiproc_core::random_key()[0], address.into(), auth);
    let client = Client::from_link(link);
    client.ping().await.map_err(ConnectError::new)?;
    Ok(client)
}

/// Takes clients off the listener until it fails or the task is aborted.
async fn accept_loop(mut listener: Listener<Response, Request>, endpoint: Endpoint) {
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _peer)) => conn,
            Err(e) if e.is_fatal() => return,
            // A client that failed to authenticate: refused; serve the others.
            Err(_) => continue,
        };
        match (&endpoint, conn.into_duplex()) {
            (Endpoint::Local(connector), Ok(end)) => {
                if let Err(e) = connector.hand_over(end).await
                    && e.is_manager_gone()
                {
                    return;
                }
            }
            (_, Ok(end)) => {
                tokio::spawn(relay(end, endpoint.clone()));
            }
            (_, Err(conn)) => {
                tokio::spawn(relay(conn, endpoint.clone()));
            }
        }
    }
}

/// Passes a remote client's requests to the manager and its answers back, until either side
/// ends.
async fn relay<C>(mut remote: C, endpoint: Endpoint)
where
    C: futures::Stream<Item = Result<Request, multiproc_core::RecvError>>
        + futures::Sink<Response>
        + Unpin,
{
    let Ok((mut requests, mut responses)) = endpoint.open().await else {
        return;
    };
    loop {
        tokio::select! {
            request = remote.next() => {
                let Some(Ok(request)) = request else { return };
                if requests.send(request).await.is_err() {
                    return;
                }
            }
            response = responses.next() => {
                let Some(Ok(response)) = response else { return };
                if remote.send(response).await.is_err() {
                    return;
                }
            }
        }
    }
}
