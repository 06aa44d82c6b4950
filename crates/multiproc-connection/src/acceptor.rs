//! The accepting engine under [`Listener`](crate::Listener) and
//! [`python::Listener`](crate::python::Listener): a tokio task that accepts connections and
//! runs their handshakes concurrently, each under the handshake timeout, and queues the
//! outcomes for `accept`.
//!
//! Handshakes run in tasks of their own (a `JoinSet` owned by the accepting task), not in
//! `accept`'s future: a silent client never delays another one, handshakes progress while the
//! program is busy elsewhere, and dropping an `accept` future loses nothing (the queue keeps
//! what is done). Each connection takes one of [`MAX_PENDING`] slots when accepted and gives it
//! back when `accept` hands it out: beyond that the task stops accepting and the kernel's
//! backlog holds new clients. Dropping the listener aborts the accepting task, which aborts
//! the handshakes with it.
//!
//! An `accept(2)` error never spins the task: running out of descriptors (`EMFILE`) or memory
//! pauses accepting briefly, any other error that repeats backs off (doubling up to a second),
//! and an error that says the listening socket itself is broken stops the listener.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::address::Address;
use crate::auth::Auth;
use crate::bind::{PathGuard, bind_path};
use crate::error::{AcceptError, BindError, HandshakeError, HandshakeErrorKind};
use crate::handshake::{self, Established, Protocol, Raw, Side};
use crate::peer::Peer;

/// Most connections in handshakes or waiting for `accept` at once.
pub const MAX_PENDING: usize = 4096;
/// Finished handshakes queued for `accept` (more wait in their tasks, holding their slots).
const QUEUE: usize = 64;
/// Pause after the process ran out of descriptors or memory.
const EMFILE_PAUSE: Duration = Duration::from_millis(50);
/// Longest pause between attempts when an unknown `accept` error repeats.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) type Accepted = Result<(Established, Peer), AcceptError>;

enum RawListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl RawListener {
    async fn accept(&self) -> std::io::Result<Raw> {
        match self {
            RawListener::Unix(l) => Ok(Raw::Unix(l.accept().await?.0)),
            RawListener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Raw::Tcp(s))
            }
        }
    }
}

/// An outcome and the slot it holds until `accept` takes it.
type Queued = (Accepted, OwnedSemaphorePermit);

pub(crate) struct Acceptor {
    rx: mpsc::Receiver<Queued>,
    task: tokio::task::AbortHandle,
    local: Address,
    // Removes the socket file after the task is told to stop.
    _guard: Option<PathGuard>,
}

impl Acceptor {
    pub(crate) async fn bind(
        address: Address,
        auth: Auth,
        protocol: Protocol,
    ) -> Result<Acceptor, BindError> {
        handshake::fits(&auth, address.is_unix(), true)
            .map_err(|why| BindError::invalid(&address, why))?;
        let (listener, guard, local) = match &address {
            Address::Path(path) => {
                let (l, guard) = bind_path(path).await?;
                (RawListener::Unix(l), Some(guard), address.clone())
            }
            Address::Abstract(_) => {
                let path = address.unix_path().expect("a Unix address");
                let l = UnixListener::bind(path).map_err(|e| BindError::io(&address, e))?;
                (RawListener::Unix(l), None, address.clone())
            }
            Address::Tcp(host_port) => {
                let l = TcpListener::bind(host_port.as_str())
                    .await
                    .map_err(|e| BindError::io(&address, e))?;
                let local = l.local_addr().map_err(|e| BindError::io(&address, e))?;
                (RawListener::Tcp(l), None, Address::from(local))
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(listener, auth, protocol, tx)).abort_handle();
        Ok(Acceptor {
            rx,
            task,
            local,
            _guard: guard,
        })
    }

    pub(crate) fn local_address(&self) -> &Address {
        &self.local
    }

    pub(crate) fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Accepted> {
        // The slot goes back as the outcome is handed out.
        self.rx
            .poll_recv(cx)
            .map(|item| item.map_or_else(|| Err(AcceptError::closed()), |(outcome, _slot)| outcome))
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handshake_one(raw: Raw, auth: Auth, protocol: Protocol) -> Accepted {
    let peer = handshake::peer_of(&raw);
    match tokio::time::timeout(
        auth.timeout,
        handshake::run(raw, &peer, &auth, Side::Server, protocol),
    )
    .await
    {
        Ok(Ok(established)) => Ok((established, peer)),
        Ok(Err(e)) => Err(AcceptError::handshake(e, peer)),
        Err(_) => Err(AcceptError::handshake(
            HandshakeError::new(HandshakeErrorKind::Timeout(auth.timeout)),
            peer,
        )),
    }
}

/// What to do after an `accept(2)` error, the `failures`-th in a row: go on after a pause, or
/// stop (`None`) when the listening socket itself is broken.
fn after_error(e: &std::io::Error, failures: u32) -> Option<Duration> {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources to free up.
    const SHORTAGE: [i32; 4] = [24, 23, 105, 12];
    // EBADF, EINVAL, ENOTSOCK, EOPNOTSUPP: the listening socket itself is broken.
    const BROKEN: [i32; 4] = [9, 22, 88, 95];
    match e.raw_os_error() {
        Some(code) if SHORTAGE.contains(&code) => Some(EMFILE_PAUSE),
        Some(code) if BROKEN.contains(&code) => None,
        // A connection that died before we took it (ECONNABORTED) is retried at once; the same
        // error again and again (a policy refusing every connection, say) backs off, so it
        // costs a wake-up a second rather than a core.
        _ => Some(backoff(failures)),
    }
}

/// No pause for the first error of a run, then 1 ms doubling up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(1u64 << (n - 2).min(10)).min(MAX_BACKOFF),
    }
}

async fn run(listener: RawListener, auth: Auth, protocol: Protocol, tx: mpsc::Sender<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_PENDING));
    let mut handshakes = JoinSet::new();
    let mut failures = 0u32;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Forget the handshakes that finished (their outcomes are queued or dropped).
        while handshakes.try_join_next().is_some() {}
        match listener.accept().await {
            Ok(raw) => {
                failures = 0;
                let (auth, tx) = (auth.clone(), tx.clone());
                handshakes.spawn(async move {
                    let outcome = handshake_one(raw, auth, protocol).await;
                    // The listener may be gone: then so is the connection.
                    let _ = tx.send((outcome, slot)).await;
                });
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                match after_error(&e, failures) {
                    Some(pause) if pause.is_zero() => {}
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => {
                        // Deliver the handshakes under way, then say why accepting stopped.
                        while handshakes.join_next().await.is_some() {}
                        let _ = tx.send((Err(AcceptError::stopped(e)), slot)).await;
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_unknown_error_backs_off_and_a_broken_listener_stops() {
        let unknown = std::io::Error::from_raw_os_error(1); // EPERM, from a policy
        assert_eq!(after_error(&unknown, 1), Some(Duration::ZERO));
        let pauses: Vec<_> = (2..40).map(|n| after_error(&unknown, n).unwrap()).collect();
        assert!(pauses.iter().all(|p| !p.is_zero()), "{pauses:?}");
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), MAX_BACKOFF);
        assert_eq!(after_error(&unknown, u32::MAX), Some(MAX_BACKOFF));
        let emfile = std::io::Error::from_raw_os_error(24);
        assert_eq!(after_error(&emfile, 1), Some(EMFILE_PAUSE));
        let ebadf = std::io::Error::from_raw_os_error(9);
        assert_eq!(after_error(&ebadf, 1), None);
    }
}
