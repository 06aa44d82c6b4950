//! The protocol's CPU cost per operation, without a transport: what one batch of the
//! benchmark's `manager_dict_2p` row costs in this process, from the client's encoding to the
//! manager's answer and the client's decoding of it.
//!
//! Run under callgrind for a load-independent instruction count per operation (the difference
//! between two batch counts, divided by the operations between them):
//!
//! ```text
//! cargo test --release -p multiproc-manager --lib cost -- --ignored --nocapture
//! valgrind --tool=callgrind target/release/deps/multiproc_manager-<hash> \
//!     cost::batches --ignored --exact   # with MANAGER_COST_BATCHES=200 and =1000
//! ```
//!
//! (`cost::batches_forgetting_inserts`: the same with the inserts' results unwanted.)

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use crate::link::{Connector, Link};
use crate::map::Map;
use crate::op::{Batch, BatchResults};
use crate::server::{Shared, answer};
use crate::state::State;
use crate::target::Target;
use crate::wire::{Kind, Op as WireOp, Reply, Request, Response};

/// Operations per batch, as in the benchmark.
const GROUP: u64 = 100;

/// The benchmark's key of operation `i`, written into `buf` as it does.
fn key_into(buf: &mut String, id: u64, i: u64) {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(buf, "p{id}k{}", i % 1000);
}

/// One batch through encode, serve and decode; checks every get. With `quiet`, the inserts'
/// results are not wanted (a pipeline's `push_forget`).
fn one_batch(map: &Map<String, u64>, state: &Shared, buf: &mut Vec<u8>, i: u64, quiet: bool) {
    let mut batch: Batch = map.batch();
    let mut gets = Vec::new();
    let mut k = String::new();
    for j in i..i + GROUP / 2 {
        key_into(&mut k, 0, j);
        let _ = batch.push(map.ops().insert(&k, &j).unwrap()).unwrap();
        gets.push((j, batch.push(map.ops().get(&k).unwrap()).unwrap()));
    }
    buf.clear();
    // Every other operation (the inserts) of the first 64.
    let quiet = if quiet { 0x5555_5555_5555_5555 } else { 0 };
    let (request, _) = Request::take(i, &mut batch.into_ops(), quiet);
    assert!(
        multiproc_core::message::encode_into(&request, buf)
            .unwrap()
            .is_empty()
    );
    let request: Request = multiproc_core::message::decode(buf, Vec::new()).unwrap();
    let response = answer(state, &request);
    buf.clear();
    assert!(
        multiproc_core::message::encode_into(&response, buf)
            .unwrap()
            .is_empty()
    );
    let Response::Done { results, .. } = multiproc_core::message::decode(buf, Vec::new()).unwrap()
    else {
        panic!("not an answer");
    };
    let mut results = BatchResults::new(results, GROUP as usize).unwrap();
    for (j, slot) in gets {
        assert_eq!(results.take(slot).unwrap(), Some(j));
    }
}

#[test]
#[ignore = "a measurement: run under callgrind (see the module docs)"]
fn batches() {
    run(false);
}

/// As [`batches`], with the inserts' results not wanted, as a pipeline's `push_forget` asks.
#[test]
#[ignore = "a measurement: run under callgrind (see the module docs)"]
fn batches_forgetting_inserts() {
    run(true);
}

fn run(quiet: bool) {
    let batches: u64 = std::env::var("MANAGER_COST_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let (a, _b): (OwnedFd, OwnedFd) = std::os::unix::net::UnixStream::pair()
        .map(|(a, b)| (a.into(), b.into()))
        .unwrap();
    let link = Link::shared(Connector {
        manager: 7,
        socket: multiproc_core::SharedFd::new(a),
    });
    let state: Shared = Arc::new(Mutex::new(State::default()));
    let open = WireOp::Open {
        name: "d".into(),
        kind: Kind::Map,
        type_name: "t".into(),
        init: crate::wire::Blob::default(),
    };
    let Ok(Reply::Id(id)) = state.lock().unwrap().apply(open) else {
        panic!("open failed");
    };
    let map: Map<String, u64> = Map::new(Target { link, id });
    let mut buf = Vec::new();
    for b in 0..batches {
        one_batch(&map, &state, &mut buf, b * GROUP / 2, quiet);
    }
}
