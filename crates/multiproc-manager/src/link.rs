//! A process's connection to a manager: made on first use, shared by the proxies of that
//! manager in this process, failed for good once the manager is gone.
//!
//! A [`Connector`] is what travels: the manager's id and the sending end of its connector
//! socket (see `server`). [`Connector::open`] makes a new pipe and sends the manager one end of
//! it. A remote manager is reached through an [`Endpoint::Remote`] instead: an address and its
//! authentication, each connection made with `multiproc_connection::connect`. Either way a
//! connection is a [`Requests`] sink and a [`Responses`] stream, and [`Link`] is the
//! request/answer exchange over one. Requests carry increasing ids; an operation whose future
//! was dropped after sending leaves its answer behind, which is dropped by id, so cancelling
//! never mixes up answers.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use std::pin::Pin;

use futures::{Sink, SinkExt, Stream, StreamExt};
use multiproc_channel::pipe;
#[cfg(feature = "remote")]
use multiproc_connection::{Address, Auth};
use multiproc_core::transport::packet::{Packet, PacketSocket};
use multiproc_core::{RecvError, SendError, SharedFd, message};
use serde::{Deserialize, Serialize};

use crate::codec::{OpWire, OpsBuf};
use crate::decode::malformed;
use crate::error::OpError;
use crate::wire::{Failure, Reply, Request, Response, Results};

/// The sending side of a connection to a manager.
pub(crate) type Requests = Pin<Box<dyn Sink<Request, Error = OpError> + Send>>;
/// The receiving side of a connection to a manager; its end means the manager is gone.
pub(crate) type Responses = Pin<Box<dyn Stream<Item = Result<Response, OpError>> + Send>>;

/// Any typed end of the protocol (a pipe end, an endpoint's connection) as the two sides.
pub(crate) fn sides<C>(end: C) -> (Requests, Responses)
where
    C: Stream<Item = Result<Response, RecvError>>
        + Sink<Request, Error = SendError>
        + Send
        + 'static,
{
    let (tx, rx) = end.split();
    let tx = tx.sink_map_err(send_error);
    let rx = rx.map(|r| {
        r.map_err(|e| {
            if e.is_fatal() {
                OpError::gone_with(e)
            } else {
                OpError::protocol_with(e)
            }
        })
    });
    (Box::pin(tx), Box::pin(rx))
}

/// What a failed send means.
pub(crate) fn send_error<T>(e: SendError<T>) -> OpError {
    if e.is_closed() {
        OpError::gone()
    } else {
        OpError::send(e.into_parts().1)
    }
}

/// How this process reaches a manager.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// A manager of this program tree, through its connector.
    Local(Connector),
    /// A manager served at an address (`Manager::serve`), reached with `connect`.
    #[cfg(feature = "remote")]
    Remote {
        /// Random, drawn by `Manager::connect`: tells links apart.
        id: u64,
        address: Address,
        auth: Auth,
    },
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Local(c) => c.fmt(f),
            #[cfg(feature = "remote")]
            Endpoint::Remote { address, .. } => f
                .debug_struct("Remote")
                .field("address", address)
                .finish_non_exhaustive(),
        }
    }
}

impl Endpoint {
    /// The connector, for a local manager: what a proxy serializes as.
    ///
    /// # Errors
    /// For a remote manager, whose proxies would have to carry the key.
    pub(crate) fn connector<E: serde::ser::Error>(&self) -> Result<&Connector, E> {
        match self {
            Endpoint::Local(c) => Ok(c),
            #[cfg(feature = "remote")]
            Endpoint::Remote { .. } => Err(E::custom(
                "a proxy of a remote manager cannot be sent to another process (connect there)",
            )),
        }
    }

    /// Tells managers apart within a process.
    pub(crate) fn manager(&self) -> u64 {
        match self {
            Endpoint::Local(c) => c.manager,
            #[cfg(feature = "remote")]
            Endpoint::Remote { id, .. } => *id,
        }
    }

    /// Opens a new connection to the manager.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager cannot be reached.
    pub(crate) async fn open(&self) -> Result<(Requests, Responses), OpError> {
        match self {
            Endpoint::Local(connector) => Ok(sides(connector.open().await?)),
            #[cfg(feature = "remote")]
            Endpoint::Remote { address, auth, .. } => {
                let conn = multiproc_connection::connect::<Request, Response>(
                    address.clone(),
                    auth.clone(),
                )
                .await
                .map_err(OpError::connect)?;
                // Over a Unix socket the connection is a pipe end: use it as one.
                match conn.into_duplex() {
                    Ok(duplex) => Ok(sides(duplex)),
                    Err(conn) => Ok(sides(conn)),
                }
            }
        }
    }
}

/// The pipe end a local client keeps.
pub(crate) type ClientEnd = pipe::Duplex<Request, Response>;

/// How to reach a manager: what a proxy carries (no secret: a descriptor only processes that
/// were given it hold).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Connector {
    /// Random, drawn at start: tells managers apart within a process.
    pub(crate) manager: u64,
    pub(crate) socket: SharedFd,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("manager", &format_args!("{:016x}", self.manager))
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Opens a new connection to the manager.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager's end is closed.
    pub(crate) async fn open(&self) -> Result<ClientEnd, OpError> {
        let (mine, theirs) = pipe::duplex::<Request, Response>().map_err(OpError::io)?;
        self.hand_over(theirs).await?;
        Ok(mine)
    }

    /// Sends the manager the server's end of a connection, which it then serves.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager's end is closed.
    pub(crate) async fn hand_over(
        &self,
        end: pipe::Duplex<Response, Request>,
    ) -> Result<(), OpError> {
        let (bytes, fds) = message::encode(&end).map_err(OpError::encode)?;
        drop(end);
        let packet = Packet::new(&bytes, fds).map_err(OpError::io)?;
        let socket = PacketSocket::new(self.socket.clone()).map_err(OpError::io)?;
        loop {
            match socket.try_send(&[], &packet) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let registration = socket.writable_registration().map_err(OpError::io)?;
                    let mut ready = registration.writable().await.map_err(OpError::io)?;
                    ready.clear_ready();
                }
                Err(e) if is_gone(&e) => return Err(OpError::gone()),
                Err(e) => return Err(OpError::io(e)),
            }
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

/// An open connection, shared by every caller in this process.
///
/// Callers send under `tx` and take turns reading under `rx`: whoever holds `rx` reads one
/// answer and, if it is another caller's, leaves it in `arrived` for that caller (who waits for
/// `rx` in the queue, and looks in `arrived` first once it has it). So concurrent operations of
/// one process are in flight together, and every answer reaches its caller without a task of
/// its own (the link works from any runtime, and from none between calls).
struct Conn {
    tx: tokio::sync::Mutex<Requests>,
    rx: tokio::sync::Mutex<Responses>,
    next_id: AtomicU64,
    /// One entry per caller waiting for an answer, filled by whoever read it.
    arrived: Mutex<HashMap<u64, Option<Results>>>,
}

impl Conn {
    fn arrived(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Option<Results>>> {
        self.arrived.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A caller's entry in `arrived`; removed when the caller stops waiting (or is cancelled), so
/// a late answer is dropped.
struct Waiting<'a> {
    conn: &'a Conn,
    id: u64,
}

impl<'a> Waiting<'a> {
    fn new(conn: &'a Conn, id: u64) -> Self {
        conn.arrived().insert(id, None);
        Self { conn, id }
    }

    fn take(&self) -> Option<Results> {
        self.conn.arrived().get_mut(&self.id).and_then(Option::take)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.conn.arrived().remove(&self.id);
    }
}

/// This process's connection to a manager, shared by every proxy of that manager here.
///
/// A connection's socket is registered with the tokio runtime that opened it, so the link keeps
/// one per runtime: a call from another runtime (a pool task's, a later test's) opens a new
/// connection for it, and the old one closes once its last caller is done.
pub(crate) struct Link {
    pub(crate) endpoint: Endpoint,
    conn: Mutex<Option<(tokio::runtime::Id, Arc<Conn>)>>,
    /// Held while a connection is being opened, so concurrent first calls open one.
    connecting: tokio::sync::Mutex<()>,
    /// Set once the manager was seen gone: every later call fails at once.
    gone: AtomicBool,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The links of this process, by manager id: every proxy of a manager shares one.
static LINKS: Mutex<Option<HashMap<u64, Weak<Link>>>> = Mutex::new(None);

impl Link {
    /// The link of this process to the manager `connector` reaches (made if there is none).
    pub(crate) fn shared(connector: Connector) -> Arc<Link> {
        let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
        let links = links.get_or_insert_with(HashMap::new);
        if let Some(link) = links.get(&connector.manager).and_then(Weak::upgrade) {
            return link;
        }
        links.retain(|_, l| l.strong_count() > 0);
        let id = connector.manager;
        let link = Arc::new(Link {
            endpoint: Endpoint::Local(connector),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            gone: AtomicBool::new(false),
        });
        links.insert(id, Arc::downgrade(&link));
        link
    }

    /// A link of its own to a remote manager.
    #[cfg(feature = "remote")]
    pub(crate) fn remote(id: u64, address: Address, auth: Auth) -> Arc<Link> {
        Arc::new(Link {
            endpoint: Endpoint::Remote { id, address, auth },
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            gone: AtomicBool::new(false),
        })
    }

    /// Notes what `e` says about the manager, and passes it on.
    fn seen(&self, e: OpError) -> OpError {
        if e.is_manager_gone() {
            self.gone.store(true, Ordering::Relaxed);
        }
        e
    }

    /// Sends one operation as a request and waits for its answer (undecoded).
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone (now or before).
    pub(crate) async fn call_one(&self, op: &OpWire) -> Result<Results, OpError> {
        self.call_with(|id| Request::one(id, op).map_err(OpError::encode))
            .await
    }

    /// Sends the operations `ops` holds (encoded already; it is left empty) as one request
    /// and waits for their answer (undecoded); and how many operations it answers.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone (now or before).
    pub(crate) async fn call_encoded(&self, ops: &mut OpsBuf) -> Result<(Results, usize), OpError> {
        let mut n = 0;
        let results = self
            .call_with(|id| {
                let (request, len) = Request::take(id, ops, 0);
                n = len;
                Ok(request)
            })
            .await?;
        Ok((results, n))
    }

    /// Sends the request `request` makes for an id, and waits for its answer.
    async fn call_with(
        &self,
        request: impl FnOnce(u64) -> Result<Request, OpError>,
    ) -> Result<Results, OpError> {
        if self.gone.load(Ordering::Relaxed) {
            return Err(OpError::gone());
        }
        let conn = self.conn().await.map_err(|e| self.seen(e))?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let request = request(id)?;
        let waiting = Waiting::new(&conn, id);
        conn.tx
            .lock()
            .await
            .send(request)
            .await
            .map_err(|e| self.seen(e))?;
        self.answer(&conn, &waiting).await
    }

    /// The connection for the current runtime, opened if there is none.
    async fn conn(&self) -> Result<Arc<Conn>, OpError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| OpError::io(io::Error::other(e)))?
            .id();
        let current = || {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            conn.as_ref()
                .filter(|(id, _)| *id == runtime)
                .map(|(_, c)| c.clone())
        };
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let _opening = self.connecting.lock().await;
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let (tx, rx) = self.endpoint.open().await?;
        let conn = Arc::new(Conn {
            tx: tokio::sync::Mutex::new(tx),
            rx: tokio::sync::Mutex::new(rx),
            next_id: AtomicU64::new(0),
            arrived: Mutex::new(HashMap::new()),
        });
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some((runtime, conn.clone()));
        Ok(conn)
    }

    /// Waits for the answer `waiting` is for, reading answers (for anyone) in turn.
    async fn answer(&self, conn: &Conn, waiting: &Waiting<'_>) -> Result<Results, OpError> {
        loop {
            if let Some(results) = waiting.take() {
                return Ok(results);
            }
            if self.gone.load(Ordering::Relaxed) {
                return Err(OpError::gone());
            }
            let mut rx = conn.rx.lock().await;
            // Another reader may have left it while this one waited for its turn.
            if let Some(results) = waiting.take() {
                return Ok(results);
            }
            if self.gone.load(Ordering::Relaxed) {
                return Err(OpError::gone());
            }
            match rx.next().await {
                Some(Ok(Response::Done { id, results })) if id == waiting.id => {
                    return Ok(results);
                }
                Some(Ok(Response::Done { id, results })) => {
                    if let Some(slot) = conn.arrived().get_mut(&id) {
                        *slot = Some(results);
                    }
                }
                Some(Ok(Response::Event(_))) => {}
                None => return Err(self.seen(OpError::gone())),
                Some(Err(e)) => {
                    // Gone, or an answer that does not decode: whose it was is unknown, so the
                    // link cannot be trusted any more either way.
                    self.gone.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }
}

/// Reads answers until the one for request `id` (dropping others), decoded.
pub(crate) async fn read_answer(
    rx: &mut Responses,
    id: u64,
) -> Result<Vec<Result<Reply, Failure>>, OpError> {
    loop {
        match rx.next().await {
            Some(Ok(Response::Done { id: got, results })) if got == id => {
                return results.decode().map_err(malformed);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e),
            None => return Err(OpError::gone()),
        }
    }
}
