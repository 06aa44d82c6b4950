//! Issue 15's workload (`manager_dict_2p`): two processes setting and getting keys of one
//! served dict, operations per second (both processes together).
//!
//! Protocol, the same for every implementation: a manager serves a map of `String -> u64`; two
//! children and the parent meet at a `Barrier` (the parent's clock starts). Child `p` does
//! `n / 4` rounds of `d["p{p}k{i % 1000}"] = i` then `d[that key]` (so `n / 2` operations), checks
//! every get returns what it set, and puts a report on a queue; the clock stops at the second
//! report.
//!
//! - `multiproc`: `Map::insert(..).await` / `Map::get(..).await`, one round trip each;
//! - `multiproc-batch`: the same operations, 100 per `Batch` (one round trip per 100);
//! - `multiproc-pipeline`: the same operations on a `Pipeline` (the sets' answers forgotten,
//!   the gets' checked after every 500 operations);
//! - `python-mp`: `Manager().dict()` `d[k] = v` / `d[k]` (`python/bench_manager.py`).

use std::io;
use std::time::Instant;

use multiproc::manager::{Manager, Map};
use multiproc::{Barrier, Queue};
use serde::{Deserialize, Serialize};

use crate::sync_bench::PATIENCE;
use crate::{Impl, Sample, other};

/// Operations per batch.
const GROUP: u64 = 100;
/// Operations a pipelining child sends before it checks the answers of its gets.
const PIPELINE_CHECK: u64 = 500;

#[derive(Clone, Copy, Serialize, Deserialize)]
enum Api {
    Single,
    Batch,
    Pipeline,
}

#[derive(Serialize, Deserialize)]
struct WorkerArgs {
    map: Map<String, u64>,
    api: Api,
    id: u64,
    rounds: u64,
    barrier: Barrier,
    reports: Queue<Result<u64, String>>,
}

/// Runs one trial: operations per second.
pub(crate) fn run(rt: &tokio::runtime::Runtime, imp: Impl, n: u64) -> io::Result<Sample> {
    let api = match imp {
        Impl::Multiproc => Api::Single,
        Impl::MultiprocBatch => Api::Batch,
        Impl::MultiprocPipeline => Api::Pipeline,
        _ => return Err(io::Error::other(format!("no {} variant", imp.name()))),
    };
    rt.block_on(trial(api, n)).map(Sample::from)
}

async fn trial(api: Api, n: u64) -> io::Result<f64> {
    let rounds = (n / 4).max(1);
    let manager = Manager::start().await.map_err(other)?;
    let map = manager.map::<String, u64>("d").await.map_err(other)?;
    let barrier = Barrier::new(3).map_err(other)?;
    let reports: Queue<Result<u64, String>> = Queue::new()?;
    let children: Vec<_> = (0..2)
        .map(|id| {
            let args = WorkerArgs {
                map: map.clone(),
                api,
                id,
                rounds,
                barrier: barrier.clone(),
                reports: reports.clone(),
            };
            multiproc::spawn(args, worker)
        })
        .collect();
    barrier.wait_timeout(PATIENCE).await.map_err(other)?;
    let t0 = Instant::now();
    let mut ops = 0;
    for _ in 0..2 {
        ops += reports
            .get_timeout(PATIENCE)
            .await
            .map_err(other)?
            .map_err(io::Error::other)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for child in children {
        child.await.map_err(other)?;
    }
    manager.shutdown().await.map_err(other)?;
    Ok(ops as f64 / secs)
}

async fn worker(args: WorkerArgs) {
    let WorkerArgs {
        map,
        api,
        id,
        rounds,
        barrier,
        reports,
    } = args;
    // Connect before the clock starts, as Python's proxy does when it is unpickled.
    let connected = map.len().await.map_err(|e| e.to_string());
    let _ = barrier.wait_timeout(PATIENCE).await;
    let result = match connected {
        Ok(_) => match api {
            Api::Single => single(&map, id, rounds).await,
            Api::Batch => batched(&map, id, rounds).await,
            Api::Pipeline => pipelined(&map, id, rounds).await,
        },
        Err(e) => Err(e),
    };
    let _ = reports.put(result).await;
}

fn key(id: u64, i: u64) -> String {
    let mut k = String::new();
    key_into(&mut k, id, i);
    k
}

/// Writes operation `i`'s key into `buf` (emptied first): batches and pipelines take keys by
/// reference, so one buffer serves every operation.
fn key_into(buf: &mut String, id: u64, i: u64) {
    use std::fmt::Write;
    buf.clear();
    let _ = write!(buf, "p{id}k{}", i % 1000);
}

fn check(i: u64, got: Option<u64>) -> Result<(), String> {
    if got == Some(i) {
        Ok(())
    } else {
        Err(format!("get after set {i} gave {got:?}"))
    }
}

async fn single(map: &Map<String, u64>, id: u64, rounds: u64) -> Result<u64, String> {
    for i in 0..rounds {
        let k = key(id, i);
        map.insert(k.clone(), i).await.map_err(|e| e.to_string())?;
        check(i, map.get(&k).await.map_err(|e| e.to_string())?)?;
    }
    Ok(rounds * 2)
}

async fn batched(map: &Map<String, u64>, id: u64, rounds: u64) -> Result<u64, String> {
    let e = |e: multiproc::manager::OpError| e.to_string();
    let mut i = 0;
    let mut k = String::new();
    while i < rounds {
        let mut batch = map.batch();
        let mut gets = Vec::new();
        let end = (i + GROUP / 2).min(rounds);
        for j in i..end {
            key_into(&mut k, id, j);
            let _ = batch
                .push(map.ops().insert(&k, &j).map_err(e)?)
                .map_err(e)?;
            gets.push((j, batch.push(map.ops().get(&k).map_err(e)?).map_err(e)?));
        }
        let mut results = batch.run().await.map_err(e)?;
        for (j, slot) in gets {
            check(j, results.take(slot).map_err(e)?)?;
        }
        i = end;
    }
    Ok(rounds * 2)
}

async fn pipelined(map: &Map<String, u64>, id: u64, rounds: u64) -> Result<u64, String> {
    let e = |e: multiproc::manager::OpError| e.to_string();
    let mut p = map.pipeline().await.map_err(e)?;
    let mut gets = Vec::new();
    let mut k = String::new();
    for i in 0..rounds {
        key_into(&mut k, id, i);
        p.push_forget(map.ops().insert(&k, &i).map_err(e)?)
            .await
            .map_err(e)?;
        gets.push((i, p.push(map.ops().get(&k).map_err(e)?).await.map_err(e)?));
        if gets.len() as u64 >= PIPELINE_CHECK / 2 {
            for (j, slot) in gets.drain(..) {
                check(j, p.wait(slot).await.map_err(e)?)?;
            }
        }
    }
    for (j, slot) in gets.drain(..) {
        check(j, p.wait(slot).await.map_err(e)?)?;
    }
    p.finish().await.map_err(e)?;
    Ok(rounds * 2)
}
