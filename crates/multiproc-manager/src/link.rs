//! A process's connection to a manager: made on first use, shared by the proxies of that
//! manager in this process, failed for good once the manager is gone.
//!
//! A [`Connector`] is what travels: the manager's id and the sending end of its connector
//! socket (see `server`). [`Connector::open`] makes a new pipe and sends the manager one end of
//! it; [`Link`] is the request/answer exchange over such a pipe. Requests carry increasing ids;
//! an operation whose future was dropped after sending leaves its answer behind, which the next
//! one skips by id, so cancelling never mixes up answers.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use multiproc_channel::pipe;
use multiproc_core::SharedFd;
use multiproc_core::message;
use multiproc_core::transport::packet::{Packet, PacketSocket};
use serde::{Deserialize, Serialize};

use crate::error::OpError;
use crate::wire::{Failure, Op, Reply, Request, Response};

/// The pipe end a client keeps.
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
        let (bytes, fds) = message::encode(&theirs).map_err(OpError::encode)?;
        drop(theirs);
        let packet = Packet::new(&bytes, fds).map_err(OpError::io)?;
        let socket = PacketSocket::new(self.socket.clone()).map_err(OpError::io)?;
        loop {
            match socket.try_send(&[], &packet) {
                Ok(()) => return Ok(mine),
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

enum State {
    Unconnected,
    Open { end: Box<ClientEnd>, next_id: u64 },
    Gone,
}

/// One connection to a manager, shared by every proxy of that manager in this process.
pub(crate) struct Link {
    pub(crate) connector: Connector,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("connector", &self.connector)
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
            connector,
            state: tokio::sync::Mutex::new(State::Unconnected),
        });
        links.insert(id, Arc::downgrade(&link));
        link
    }

    /// Sends `ops` as one request and waits for their results.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone (now or before).
    pub(crate) async fn call(&self, ops: Vec<Op>) -> Result<Vec<Result<Reply, Failure>>, OpError> {
        let mut state = self.state.lock().await;
        if let State::Unconnected = *state {
            match self.connector.open().await {
                Ok(end) => {
                    *state = State::Open {
                        end: Box::new(end),
                        next_id: 0,
                    }
                }
                Err(e) => {
                    if e.is_manager_gone() {
                        *state = State::Gone;
                    }
                    return Err(e);
                }
            }
        }
        let State::Open { end, next_id } = &mut *state else {
            return Err(OpError::gone());
        };
        let id = *next_id;
        *next_id += 1;
        let n = ops.len();
        let result = exchange(end, Request { id, ops }).await;
        if let Err(e) = &result {
            if e.is_manager_gone() {
                *state = State::Gone;
            }
        }
        let results = result?;
        if results.len() != n {
            return Err(OpError::protocol(
                "the manager answered a different number of operations",
            ));
        }
        Ok(results)
    }
}

/// Sends `request` and reads answers until its own (skipping those of cancelled requests).
async fn exchange(
    end: &mut ClientEnd,
    request: Request,
) -> Result<Vec<Result<Reply, Failure>>, OpError> {
    let id = request.id;
    end.send(request).await.map_err(|e| {
        if e.is_closed() {
            OpError::gone()
        } else {
            OpError::send(e.into_parts().1)
        }
    })?;
    read_answer(end, id).await
}

/// Reads answers until the one for request `id`.
pub(crate) async fn read_answer(
    end: &mut ClientEnd,
    id: u64,
) -> Result<Vec<Result<Reply, Failure>>, OpError> {
    loop {
        match end.recv().await {
            Ok(Some(Response::Done { id: got, results })) if got == id => return Ok(results),
            Ok(Some(_)) => continue,
            Ok(None) => return Err(OpError::gone()),
            Err(e) if e.is_fatal() => return Err(OpError::gone_with(e)),
            Err(e) => return Err(OpError::protocol_with(e)),
        }
    }
}
