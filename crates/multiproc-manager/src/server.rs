//! The manager process: accepts connections and serves requests on each.
//!
//! [`manager_main`] is the function the manager child runs. It owns the receiving end of the
//! *connector*, a `SOCK_SEQPACKET` socket pair whose other end every proxy carries: a process
//! that uses a proxy for the first time makes a pipe, sends one end through the connector as a
//! packet (the end travels as a descriptor), and talks over its own pipe from then on. No
//! process shares a connection with another, so nothing a process does (or a kill in the middle
//! of a write) can corrupt another's stream. Only the manager holds the connector's receiving
//! end: when it dies, sending on the connector fails and every connection reaches end-of-file,
//! which is how clients learn that the manager is gone.
//!
//! [`serve`] serves one connection given as any `Stream` of requests and `Sink` of responses:
//! the local pipes here, and any other transport that carries the same messages.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use multiproc_channel::pipe;
use multiproc_core::SharedFd;
use multiproc_core::message;
use multiproc_core::transport::packet::{PacketRecv, PacketSocket};
use serde::{Deserialize, Serialize};

use crate::state::State;
use crate::wire::{Failure, Op, Reply, Request, Response, Stored};

/// What the manager child is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct ServerArgs {
    /// The connector's receiving end.
    pub(crate) connector: SharedFd,
    /// Closed or written to by the owner: time to stop.
    pub(crate) stop: pipe::Receiver<()>,
    /// What to serve from the start.
    pub(crate) restore: Option<Stored>,
}

/// The state every connection of one manager shares.
pub(crate) type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    // A panic never happens while the lock is held (update functions run under catch_unwind),
    // but if one did, the state is still consistent: every operation changes it in one step.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The manager child's function: serve until the owner says stop (or is gone).
pub(crate) async fn manager_main(args: ServerArgs) {
    let ServerArgs {
        connector,
        mut stop,
        restore,
    } = args;
    let state: Shared = Arc::new(Mutex::new(restore.map(State::restore).unwrap_or_default()));
    tokio::select! {
        _ = stop.recv() => {}
        () = accept_loop(connector, state) => {}
    }
}

/// Takes new connections off the connector and serves each on its own task.
async fn accept_loop(connector: SharedFd, state: Shared) {
    let Ok(socket) = PacketSocket::new(connector) else {
        return;
    };
    let Ok(readable) = socket.readable_registration() else {
        return;
    };
    loop {
        let Ok(mut ready) = readable.readable().await else {
            return;
        };
        match socket.try_recv() {
            Ok(PacketRecv::Packet(incoming)) => {
                let Ok((bytes, fds)) = incoming.open(0, 1 << 16) else {
                    continue;
                };
                // Anything that is not a pipe end is dropped: the sender gets no answer and,
                // having sent its end, sees end-of-file.
                if let Ok(end) = message::decode::<pipe::Duplex<Response, Request>>(&bytes, fds) {
                    tokio::spawn(serve(state.clone(), end));
                }
            }
            Ok(PacketRecv::Empty) => ready.clear_ready(),
            Ok(PacketRecv::Closed) => return,
            Err(_) => {}
        }
    }
}

/// Serves one connection until the client closes it (or sends something unreadable).
///
/// Requests that are already waiting are applied before their answers are flushed, so a
/// pipelining client gets many answers per write.
pub(crate) async fn serve<C, E>(state: Shared, mut conn: C)
where
    C: Stream<Item = Result<Request, E>> + Sink<Response> + Unpin,
{
    loop {
        let Some(Ok(request)) = conn.next().await else {
            return;
        };
        if let Some(Op::Watch(id)) = request.ops.first() {
            let id = *id;
            watch(&state, conn, request, id).await;
            return;
        }
        if conn.feed(answer(&state, request)).await.is_err() {
            return;
        }
        // Apply whatever else is already here before writing the answers.
        while let Some(next) = conn.next().now_or_never() {
            let Some(Ok(request)) = next else {
                let _ = conn.flush().await;
                return;
            };
            if matches!(request.ops.first(), Some(Op::Watch(_))) {
                // A watch must open its own connection; refuse it here.
                let response = Response::Done {
                    id: request.id,
                    results: vec![Err(Failure::BadWatch)],
                };
                if conn.feed(response).await.is_err() {
                    return;
                }
                continue;
            }
            if conn.feed(answer(&state, request)).await.is_err() {
                return;
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Applies every operation of `request` under one lock: a batch is atomic.
fn answer(state: &Shared, request: Request) -> Response {
    let mut state = lock(state);
    let results = request.ops.into_iter().map(|op| state.apply(op)).collect();
    Response::Done {
        id: request.id,
        results,
    }
}

/// Serves a watch: confirms, then forwards every change until the client goes away.
async fn watch<C, E>(state: &Shared, mut conn: C, request: Request, id: u32)
where
    C: Stream<Item = Result<Request, E>> + Sink<Response> + Unpin,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let registered = if request.ops.len() == 1 {
        lock(state).watch(id, tx)
    } else {
        Err(Failure::BadWatch)
    };
    let failed = registered.is_err();
    let done = Response::Done {
        id: request.id,
        results: vec![registered.map(|()| Reply::Done)],
    };
    if conn.send(done).await.is_err() || failed {
        return;
    }
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                if conn.feed(Response::Event(event)).await.is_err() {
                    return;
                }
                while let Ok(event) = rx.try_recv() {
                    if conn.feed(Response::Event(event)).await.is_err() {
                        return;
                    }
                }
                if conn.flush().await.is_err() {
                    return;
                }
            }
            // The client sends nothing more on a watch: anything here is its end closing.
            _ = conn.next() => return,
        }
    }
}
