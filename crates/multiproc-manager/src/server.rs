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

use crate::codec::{OpRef, Ops, ResultsWriter};
use crate::hub::{End, serve_all};
use crate::state::State;
use crate::wire::{Failure, Reply, Request, Response, Results, Stored};

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
///
/// The request is parsed whole first, so a malformed one is refused whole (one
/// [`Failure::Malformed`]) and nothing of it is applied. A map's `insert` and `get` (of values
/// without handles) are applied straight from the request's bytes and answered with a copy of
/// the stored bytes; every other operation is decoded and applied by [`State::apply`].
pub(crate) fn answer(state: &Shared, request: &Request) -> Response {
    let ops = match Ops::parse(&request.ops, request.fds.len()) {
        Ok(ops) => ops,
        Err(e) => {
            return Response::Done {
                id: request.id,
                results: Results::from_results([&Err(Failure::Malformed(e.to_string()))]),
            };
        }
    };
    let mut out = ResultsWriter::with_capacity(request.ops.len());
    let mut state = lock(state);
    for (i, op) in ops.iter().enumerate() {
        let quiet = i < 64 && request.quiet & (1 << i) != 0;
        match *op {
            OpRef::MapInsert { id, key, value } => match state.fast_map(id) {
                Ok((mut map, false)) => {
                    let old = map.insert(key, value);
                    if quiet {
                        out.done();
                    } else {
                        out.maybe_blob(old.as_ref());
                    }
                    continue;
                }
                // Watched: the general way, which tells the watchers.
                Ok((_, true)) => {}
                Err(failure) => {
                    out.result(&Err(failure));
                    continue;
                }
            },
            OpRef::MapGet { id, key } => {
                match state.fast_map(id) {
                    Ok(_) if quiet => out.done(),
                    Ok((map, _)) => out.maybe_blob(map.get(key)),
                    Err(failure) => out.result(&Err(failure)),
                }
                continue;
            }
            _ => {}
        }
        match op.to_op(&request.fds).and_then(|op| state.apply(op)) {
            Ok(_) if quiet => out.done(),
            result => out.result(&result),
        }
    }
    drop(state);
    let (bytes, fds) = out.finish();
    Response::Done {
        id: request.id,
        results: Results { bytes, fds },
    }
}

/// Serves a watch: confirms, then forwards every change until the client goes away.
pub(crate) async fn watch(state: Shared, mut conn: End, request: Request, id: u32) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let only = Ops::parse(&request.ops, request.fds.len()).is_ok_and(|ops| ops.len() == 1);
    let registered = if only {
        lock(&state).watch(id, tx)
    } else {
        Err(Failure::BadWatch)
    };
    let failed = registered.is_err();
    let done = Response::Done {
        id: request.id,
        results: Results::from_results([&registered.map(|()| Reply::Done)]),
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

    fn results_of(state: &Shared, ops: &[Op], quiet: u64) -> Vec<Result<Reply, Failure>> {
        let request = Request::new(9, ops, quiet).unwrap();
        let Response::Done { id: 9, results } = answer(state, &request) else {
            panic!("not the answer to request 9");
        };
        results.decode().unwrap()
    }

    fn open(state: &Shared, name: &str, kind: Kind) -> u32 {
        match lock(state).apply(Op::Open {
            name: name.into(),
            kind,
            type_name: "t".into(),
            init: Blob::encode(&0i64).unwrap(),
        }) {
            Ok(Reply::Id(id)) => id,
            other => panic!("{other:?}"),
        }
    }

    fn maybe_u64(result: &Result<Reply, Failure>) -> Option<u64> {
        match result {
            Ok(Reply::MaybeBlob(b)) => b.as_ref().map(|b| b.decode::<u64>().unwrap()),
            other => panic!("{other:?}"),
        }
    }

    /// A request whose bytes do not frame is refused whole: one `Malformed` failure, and
    /// none of its operations applied (a batch stays atomic).
    #[test]
    fn a_malformed_request_is_refused_whole() {
        let state: Shared = Arc::new(Mutex::new(State::default()));
        let m = open(&state, "m", Kind::Map);
        let mut request = Request::new(
            3,
            &[
                Op::Map(
                    m,
                    MapOp::Insert(encode_key("k").unwrap(), Blob::encode(&1u64).unwrap()),
                ),
                Op::Map(m, MapOp::Get(encode_key("k").unwrap())),
            ],
            0,
        )
        .unwrap();
        let mut bytes = request.ops.to_vec();
        bytes.pop();
        request.ops = crate::bytes::Bytes::copy_from(&bytes);
        let Response::Done { id: 3, results } = answer(&state, &request) else {
            panic!("not the answer to request 3");
        };
        let results = results.decode().unwrap();
        assert_eq!(results.len(), 1);
        assert!(
            matches!(results[0], Err(Failure::Malformed(_))),
            "{results:?}"
        );
        let get = [Op::Map(m, MapOp::Get(encode_key("k").unwrap()))];
        assert_eq!(maybe_u64(&results_of(&state, &get, 0)[0]), None);
    }

    /// The map operations applied straight from bytes and the general way give the same
    /// answers: unwatched and watched maps, values with and without handles, a missing map,
    /// and a list asked for a map operation.
    #[test]
    fn map_operations_from_bytes_agree_with_the_general_way() {
        let state: Shared = Arc::new(Mutex::new(State::default()));
        let m = open(&state, "m", Kind::Map);
        let w = open(&state, "w", Kind::Map);
        let l = open(&state, "l", Kind::List);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        lock(&state).watch(w, tx).unwrap();
        // Keys equal as Rust values are equal as bytes: a `String` and a `&str`.
        let owned = || encode_key(&"key".to_string()).unwrap();
        let borrowed = || encode_key("key").unwrap();
        let v = |n: u64| Blob::encode(&n).unwrap();
        for map in [m, w] {
            let results = results_of(
                &state,
                &[
                    Op::Map(map, MapOp::Get(borrowed())),
                    Op::Map(map, MapOp::Insert(owned(), v(1))),
                    Op::Map(map, MapOp::Insert(borrowed(), v(2))),
                    Op::Map(map, MapOp::Get(owned())),
                    Op::Map(map, MapOp::Contains(borrowed())),
                ],
                0,
            );
            let got: Vec<_> = results[..4].iter().map(maybe_u64).collect();
            assert_eq!(got, [None, None, Some(1), Some(2)]);
            assert!(matches!(results[4], Ok(Reply::Bool(true))));
        }
        // The watched map's watcher saw both inserts.
        let mut seen = 0;
        while let Ok(event) = rx.try_recv() {
            assert!(matches!(event, crate::wire::Event::MapInserted(..)));
            seen += 1;
        }
        assert_eq!(seen, 2);
        // A value holding a handle goes the general way and comes back with it.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let handle = Blob {
            bytes: crate::bytes::Bytes::copy_from(&[0]),
            fds: vec![multiproc_core::SharedFd::new(a.into())],
        };
        let results = results_of(
            &state,
            &[
                Op::Map(m, MapOp::Insert(owned(), handle)),
                Op::Map(m, MapOp::Get(owned())),
                Op::Map(m, MapOp::Insert(owned(), v(3))),
            ],
            0,
        );
        for r in &results[1..] {
            match r {
                Ok(Reply::MaybeBlob(Some(b))) => assert_eq!(b.fds.len(), 1),
                other => panic!("{other:?}"),
            }
        }
        let results = results_of(
            &state,
            &[
                Op::Map(99, MapOp::Get(owned())),
                Op::Map(99, MapOp::Insert(owned(), v(1))),
                Op::Map(l, MapOp::Get(owned())),
                Op::Map(l, MapOp::Insert(owned(), v(1))),
            ],
            0b1111,
        );
        assert!(matches!(results[0], Err(Failure::NoSuchValue)));
        assert!(matches!(results[1], Err(Failure::NoSuchValue)));
        assert!(matches!(results[2], Err(Failure::WrongKind { .. })));
        assert!(matches!(results[3], Err(Failure::WrongKind { .. })));
    }

    /// A quiet operation's success is answered `Done`, without its value; its failure, and
    /// every other operation's result, in full.
    #[test]
    fn quiet_operations_are_answered_done_unless_they_fail() {
        let state: Shared = Arc::new(Mutex::new(State::default()));
        let (m, l) = (open(&state, "m", Kind::Map), open(&state, "l", Kind::List));
        let key = || encode_key(&1u8).unwrap();
        let value = |v: u8| Blob::encode(&v).unwrap();
        let ops = [
            Op::Map(m, MapOp::Insert(key(), value(1))),
            Op::Map(m, MapOp::Insert(key(), value(2))),
            Op::Map(m, MapOp::Insert(key(), value(3))),
            Op::List(l, ListOp::Remove(0)),
            Op::Map(m, MapOp::Get(key())),
        ];
        let results = results_of(&state, &ops, 0b1011);
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
