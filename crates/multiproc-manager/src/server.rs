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
//! The connections are served by one loop (`hub`); this module holds what it applies: a
//! request's answer ([`answer`]) and a watch's forwarding ([`watch`]).

use std::sync::{Arc, Mutex, MutexGuard};

use futures::{SinkExt, StreamExt};
use multiproc_channel::pipe;
use multiproc_core::SharedFd;
use multiproc_core::transport::packet::PacketSocket;
use serde::{Deserialize, Serialize};

use crate::hub::{End, serve_all};
use crate::state::State;
use crate::wire::{Failure, Reply, Request, Response, Stored};

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
    let Ok(socket) = PacketSocket::new(connector) else {
        return;
    };
    tokio::select! {
        _ = stop.recv() => {}
        () = serve_all(socket, state) => {}
    }
}

/// Applies every operation of `request` under one lock: a batch is atomic.
pub(crate) fn answer(state: &Shared, request: Request) -> Response {
    let mut state = lock(state);
    let quiet = request.quiet;
    let results = if quiet == 0 {
        request.ops.into_iter().map(|op| state.apply(op)).collect()
    } else {
        request
            .ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| match state.apply(op) {
                Ok(_) if i < 64 && quiet & (1 << i) != 0 => Ok(Reply::Done),
                result => result,
            })
            .collect()
    };
    Response::Done {
        id: request.id,
        results,
    }
}

/// Serves a watch: confirms, then forwards every change until the client goes away.
pub(crate) async fn watch(state: Shared, mut conn: End, request: Request, id: u32) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let registered = if request.ops.len() == 1 {
        lock(&state).watch(id, tx)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Blob, Kind, ListOp, MapOp, Op, encode_key};

    /// A quiet operation's success is answered `Done`, without its value; its failure, and
    /// every other operation's result, in full.
    #[test]
    fn quiet_operations_are_answered_done_unless_they_fail() {
        let state: Shared = Arc::new(Mutex::new(State::default()));
        let open = |name: &str, kind| match lock(&state).apply(Op::Open {
            name: name.into(),
            kind,
            type_name: "t".into(),
            init: Blob::default(),
        }) {
            Ok(Reply::Id(id)) => id,
            other => panic!("{other:?}"),
        };
        let (m, l) = (open("m", Kind::Map), open("l", Kind::List));
        let key = || encode_key(&1u8).unwrap();
        let value = |v: u8| Blob::encode(&v).unwrap();
        let request = Request {
            id: 9,
            ops: vec![
                Op::Map(m, MapOp::Insert(key(), value(1))),
                Op::Map(m, MapOp::Insert(key(), value(2))),
                Op::Map(m, MapOp::Insert(key(), value(3))),
                Op::List(l, ListOp::Remove(0)),
                Op::Map(m, MapOp::Get(key())),
            ],
            quiet: 0b1011,
        };
        let Response::Done { id: 9, results } = answer(&state, request) else {
            panic!("not the answer to request 9");
        };
        assert!(matches!(results[0], Ok(Reply::Done)));
        assert!(matches!(results[1], Ok(Reply::Done)));
        match &results[2] {
            Ok(Reply::MaybeBlob(Some(old))) => assert_eq!(old.decode::<u8>().unwrap(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(results[3], Err(Failure::OutOfRange { .. })));
        match &results[4] {
            Ok(Reply::MaybeBlob(Some(now))) => assert_eq!(now.decode::<u8>().unwrap(), 3),
            other => panic!("{other:?}"),
        }
    }
}
