//! The `pthread-robust` peer of the lock workloads (`lock_uncontended`, `lock_contended_2p`):
//! glibc's process-shared robust `pthread_mutex_t` in a shared page (core's
//! `peer::RobustPthreadMutex`, where its `unsafe` lives), what a C program sharing a lock
//! through shared memory uses, and what a robust lock (a holder that dies hands the next locker
//! `EOWNERDEAD`) costs in glibc.
//!
//! The contended workload is the multiproc one's protocol: two real, separate processes started
//! with `multiproc::spawn`, `n / 2` locked increments of a plain counter in the shared page
//! each, the clock from the barrier to the last report, the final count checked to be `n`.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use multiproc::core::peer::RobustPthreadMutex;
use multiproc::{Barrier, Queue, SharedMemory};
use serde::{Deserialize, Serialize};

use crate::sync_bench::{PATIENCE, Timed, clock_ns, timed_gang};
use crate::{Sample, Workload, other};

/// Where the mutex lives in the page.
const MUTEX_AT: usize = 0;
/// Where the counter lives: a cache line of its own after the mutex.
const COUNTER_AT: usize = 128;
const PAGE: usize = 256;

/// Runs one trial of a lock workload with the robust pthread mutex.
pub(crate) fn run(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<Sample> {
    match w {
        Workload::LockUncontended => uncontended(n).map(Sample::from),
        Workload::LockContended2p => rt.block_on(contended(n)).map(Sample::from),
        _ => Err(io::Error::other("no pthread-robust variant")),
    }
}

fn new_mutex() -> io::Result<(SharedMemory, RobustPthreadMutex)> {
    const _: () = assert!(MUTEX_AT + RobustPthreadMutex::LEN <= COUNTER_AT);
    let shm = SharedMemory::new(PAGE).map_err(other)?;
    let mutex = RobustPthreadMutex::init(shm.region(), MUTEX_AT)?;
    Ok((shm, mutex))
}

/// Lock and unlock a free mutex `n` times in one process: ns per pair.
fn uncontended(n: u64) -> io::Result<f64> {
    let (_shm, mutex) = new_mutex()?;
    for _ in 0..n / 10 + 1 {
        mutex.lock()?;
        mutex.unlock()?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        mutex.lock()?;
        mutex.unlock()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e9 / n as f64)
}

#[derive(Serialize, Deserialize)]
struct Args {
    shm: SharedMemory,
    ops: u64,
    barrier: Barrier,
    reports: Queue<Result<Timed<u64>, String>>,
}

async fn child(a: Args) {
    let r = child_body(&a).await;
    let _ = a.reports.put(r).await;
}

async fn child_body(a: &Args) -> Result<Timed<u64>, String> {
    let mutex = RobustPthreadMutex::attach(a.shm.region(), MUTEX_AT).map_err(|e| e.to_string())?;
    let value = a.shm.region().atomic_u64(COUNTER_AT);
    a.barrier
        .wait_timeout(PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let start = clock_ns();
    for _ in 0..a.ops {
        mutex.lock().map_err(|e| e.to_string())?;
        // A plain read-modify-write under the lock, as the other implementations do.
        let v = value.load(Ordering::Relaxed);
        value.store(v + 1, Ordering::Relaxed);
        mutex.unlock().map_err(|e| e.to_string())?;
    }
    Ok(Timed::since(start, a.ops))
}

/// Two processes, `n / 2` locked increments each: increments per second; the count must be `n`.
async fn contended(n: u64) -> io::Result<f64> {
    let per = n / 2;
    let barrier = Barrier::new(3).map_err(other)?;
    let reports: Queue<Result<Timed<u64>, String>> = Queue::new()?;
    let (shm, _mutex) = new_mutex()?;
    let children = (0..2)
        .map(|_| {
            let args = Args {
                shm: shm.clone(),
                ops: per,
                barrier: barrier.clone(),
                reports: reports.clone(),
            };
            multiproc::spawn(args, child)
        })
        .collect();
    let (secs, _) = timed_gang(&barrier, &reports, children).await?;
    let total = shm.region().atomic_u64(COUNTER_AT).load(Ordering::SeqCst);
    if total != 2 * per {
        return Err(io::Error::other(format!(
            "lock_contended_2p pthread-robust: the counter is {total}, expected {}",
            2 * per
        )));
    }
    Ok((2 * per) as f64 / secs)
}
