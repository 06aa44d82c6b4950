//! The accepting engine under [`Listener`](crate::Listener) and
//! [`python::Listener`](crate::python::Listener): a tokio task that accepts connections and
//! runs their handshakes concurrently, each under the handshake timeout, and queues the
//! outcomes for `accept`.
//!
//! Handshakes run in the task, not in `accept`'s future: a silent client never delays another
//! one, handshakes progress while the program is busy elsewhere, and dropping an `accept`
//! future loses nothing (the queue keeps what is done). At most [`MAX_PENDING`] connections
//! wait in handshakes or in the queue; beyond that the task stops accepting and the kernel's
//! backlog holds new clients. Running out of descriptors (`EMFILE`) pauses accepting briefly
//! instead of failing the listener.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use crate::address::Address;
use crate::auth::Auth;
use crate::bind::{PathGuard, bind_path};
use crate::error::{AcceptError, BindError, HandshakeError, HandshakeErrorKind};
use crate::handshake::{self, Established, Raw, Side};
use crate::peer::Peer;

/// Most connections in handshakes or waiting for `accept` at once.
pub const MAX_PENDING: usize = 4096;
/// Finished handshakes queued for `accept`.
const QUEUE: usize = 64;
/// Pause after the process ran out of descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(50);

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

pub(crate) struct Acceptor {
    rx: mpsc::Receiver<Accepted>,
    task: tokio::task::AbortHandle,
    local: Address,
    // Removes the socket file after the task is told to stop.
    _guard: Option<PathGuard>,
}

impl Acceptor {
    pub(crate) async fn bind(address: Address, auth: Auth) -> Result<Acceptor, BindError> {
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
        let task = tokio::spawn(run(listener, auth, tx)).abort_handle();
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
        self.rx
            .poll_recv(cx)
            .map(|item| item.unwrap_or_else(|| Err(AcceptError::closed())))
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handshake_one(raw: Raw, auth: Auth) -> Accepted {
    let peer = handshake::peer_of(&raw);
    match tokio::time::timeout(
        auth.timeout,
        handshake::run(raw, &peer, &auth, Side::Server),
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

/// `accept(2)` errors after which the listener goes on: the connection died before we took it,
/// or we are out of descriptors or memory for a moment.
fn transient(e: &std::io::Error) -> Option<Duration> {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for resources to free up.
    const SHORTAGE: [i32; 4] = [24, 23, 105, 12];
    // EBADF, EINVAL, ENOTSOCK, EOPNOTSUPP: the listening socket itself is broken.
    const BROKEN: [i32; 4] = [9, 22, 88, 95];
    match e.raw_os_error() {
        Some(code) if SHORTAGE.contains(&code) => Some(EMFILE_PAUSE),
        Some(code) if BROKEN.contains(&code) => None,
        _ => Some(Duration::ZERO),
    }
}

async fn run(listener: RawListener, auth: Auth, tx: mpsc::Sender<Accepted>) {
    let mut pending = FuturesUnordered::new();
    let mut done: VecDeque<Accepted> = VecDeque::new();
    let mut stopped = false;
    loop {
        if stopped && pending.is_empty() && done.is_empty() {
            return;
        }
        let room = !stopped && pending.len() + done.len() < MAX_PENDING;
        tokio::select! {
            permit = tx.reserve(), if !done.is_empty() => match permit {
                Ok(permit) => permit.send(done.pop_front().expect("checked non-empty")),
                Err(_) => return,
            },
            Some(outcome) = pending.next(), if !pending.is_empty() => done.push_back(outcome),
            accepted = listener.accept(), if room => match accepted {
                Ok(raw) => pending.push(handshake_one(raw, auth.clone())),
                Err(e) => match transient(&e) {
                    Some(pause) if pause.is_zero() => {}
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => {
                        done.push_back(Err(AcceptError::stopped(e)));
                        stopped = true;
                    }
                },
            },
            () = tx.closed(), if done.is_empty() => return,
        }
    }
}
