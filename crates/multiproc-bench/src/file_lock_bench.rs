//! Issue 13's file-lock workloads (`file_lock_uncontended`, `file_lock_contended_2p`) for
//! `multiproc` (`FileLock::lock().await`) and `multiproc-blocking` (`blocking_lock`), both in
//! `flock` mode, against Python's `fcntl.flock` (`python/bench_mp.py`) on a file of their own.
//!
//! The contended workload runs two children that each take and release the lock `n / 2`
//! times, incrementing a plain counter in shared memory under it (checked at the end, so a
//! broken exclusion fails the trial), timed as the other multi-process workloads are.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use multiproc::sync::FileLock;
use multiproc::{Barrier, Queue, SharedMemory};
use serde::{Deserialize, Serialize};

use crate::sync_bench::{PATIENCE, Timed, clock_ns, timed_gang};
use crate::{Impl, Sample, Workload, other};

/// Runs one trial of a file-lock workload.
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    imp: Impl,
    n: u64,
) -> io::Result<Sample> {
    let blocking = match imp {
        Impl::Multiproc => false,
        Impl::MultiprocBlocking => true,
        _ => return Err(io::Error::other(format!("no {} variant", imp.name()))),
    };
    let path = lock_path();
    let result = match w {
        Workload::FileLockUncontended => rt.block_on(uncontended(&path, n, blocking)),
        Workload::FileLockContended2p => rt.block_on(contended(&path, n, blocking)),
        _ => Err(io::Error::other("not a file-lock workload")),
    };
    let _ = std::fs::remove_file(&path);
    result.map(Sample::from)
}

fn lock_path() -> PathBuf {
    std::env::temp_dir().join(format!("multiproc-bench-{}.lock", std::process::id()))
}

/// Lock and unlock `n` times in one process: ns per lock/unlock pair.
async fn uncontended(path: &Path, n: u64, blocking: bool) -> io::Result<f64> {
    let lock = FileLock::open_flock(path).map_err(other)?;
    let t0 = Instant::now();
    for _ in 0..n {
        let guard = if blocking {
            lock.blocking_lock().map_err(other)?
        } else {
            lock.lock().await.map_err(other)?
        };
        drop(guard);
    }
    Ok(t0.elapsed().as_nanos() as f64 / n as f64)
}

#[derive(Serialize, Deserialize)]
struct Args {
    path: PathBuf,
    blocking: bool,
    ops: u64,
    counter: SharedMemory,
    barrier: Barrier,
    reports: Queue<Result<Timed<u64>, String>>,
}

async fn child(a: Args) {
    let r = child_body(&a).await;
    let _ = a.reports.put(r).await;
}

async fn child_body(a: &Args) -> Result<Timed<u64>, String> {
    let lock = FileLock::open_flock(&a.path).map_err(|e| e.to_string())?;
    let value = a.counter.region().atomic_u64(0);
    a.barrier
        .wait_timeout(PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let start = clock_ns();
    for _ in 0..a.ops {
        let guard = if a.blocking {
            lock.blocking_lock().map_err(|e| e.to_string())?
        } else {
            lock.lock().await.map_err(|e| e.to_string())?
        };
        // A plain read-modify-write under the lock.
        let v = value.load(Ordering::Relaxed);
        value.store(v + 1, Ordering::Relaxed);
        drop(guard);
    }
    Ok(Timed::since(start, a.ops))
}

/// Two processes, `n / 2` lock/unlock pairs each: pairs per second, all processes together.
async fn contended(path: &Path, n: u64, blocking: bool) -> io::Result<f64> {
    let per = n / 2;
    let barrier = Barrier::new(3).map_err(other)?;
    let reports: Queue<Result<Timed<u64>, String>> = Queue::new()?;
    let counter = SharedMemory::new(64).map_err(other)?;
    let children = (0..2)
        .map(|_| {
            let args = Args {
                path: path.to_owned(),
                blocking,
                ops: per,
                counter: counter.clone(),
                barrier: barrier.clone(),
                reports: reports.clone(),
            };
            multiproc::spawn(args, child)
        })
        .collect();
    let (secs, _) = timed_gang(&barrier, &reports, children).await?;
    let total = counter.region().atomic_u64(0).load(Ordering::SeqCst);
    if total != 2 * per {
        return Err(io::Error::other(format!(
            "file_lock_contended_2p: the counter is {total}, expected {}: exclusion failed",
            2 * per
        )));
    }
    Ok((2 * per) as f64 / secs)
}
