//! The spawn rows (issue 18): `spawn_join` against the fork floor, and the concurrent-spawn
//! workloads `spawn_concurrent_{1,8,64}`.
//!
//! A concurrent-spawn round starts `k` children at once, then joins them all (in the order
//! they were started); a trial runs `n / k` rounds and reports processes per second. Every
//! implementation runs the same rounds:
//! - `multiproc`: `k` times `multiproc::spawn((), noop)`, then `.await` each handle;
//! - `fork-exit-wait`: `k` times `fork()` whose child `_exit(0)`s at once, then `waitpid` each
//!   (core's hidden `proc::fork_floor`): the machine's floor for a process;
//! - `raw-os`: `k` times `fork` + `exec` of this executable, which exits at the top of `main`
//!   (`std::process::Command`), then `wait` each: the floor for a re-executed child;
//! - `python-mp`: `k` times `get_context("fork").Process(target=noop).start()`, then `join()`
//!   each (`python/bench_spawn.py`).
//!
//! `spawn_join` (one child at a time, milliseconds per process) gets the `fork-exit-wait` row
//! here; its other rows are in `multiproc_impl` and `raw`.

use std::io;
use std::process::{Child, Command};
use std::time::Instant;

use multiproc_core::proc::fork_floor;

use crate::{EXIT_AT_ONCE_ENV, Impl, Workload, other};

/// Children started at once by a concurrent-spawn workload; `None` for other workloads.
pub(crate) fn concurrency(w: Workload) -> Option<usize> {
    match w {
        Workload::SpawnConcurrent1 => Some(1),
        Workload::SpawnConcurrent8 => Some(8),
        Workload::SpawnConcurrent64 => Some(64),
        _ => None,
    }
}

/// Processes per trial of a concurrent-spawn workload: whole rounds of `k`.
pub(crate) fn n(w: Workload, quick: bool) -> u64 {
    match (w, quick) {
        (Workload::SpawnConcurrent1, false) => 100,
        (Workload::SpawnConcurrent1, true) => 40,
        (Workload::SpawnConcurrent8, false) => 200,
        (Workload::SpawnConcurrent8, true) => 64,
        (_, false) => 320,
        (_, true) => 128,
    }
}

/// Runs one trial of `imp` on a spawn workload: milliseconds per process for `spawn_join`
/// (`fork-exit-wait` only), processes per second for the concurrent ones.
pub(crate) fn run(rt: &tokio::runtime::Runtime, w: Workload, imp: Impl, n: u64) -> io::Result<f64> {
    if w == Workload::SpawnJoin {
        return match imp {
            Impl::ForkExitWait => {
                let secs = timed(1, 2, n, fork_floor::fork_exit_wait)?;
                Ok(secs * 1e3 / n as f64)
            }
            _ => Err(io::Error::other("spawn_join: not a fork-floor impl")),
        };
    }
    let k = concurrency(w).ok_or_else(|| io::Error::other("not a spawn workload"))?;
    let secs = match imp {
        Impl::Multiproc => timed(k, 1, n, |k| rt.block_on(multiproc_round(k)))?,
        Impl::ForkExitWait => timed(k, 1, n, fork_floor::fork_exit_wait)?,
        Impl::RawOs => timed(k, 1, n, reexec_round)?,
        _ => return Err(io::Error::other("no such spawn implementation")),
    };
    Ok(n as f64 / secs)
}

/// Seconds for `n / k` rounds of `round(k)`, after `warm_up` untimed rounds.
fn timed(
    k: usize,
    warm_up: usize,
    n: u64,
    mut round: impl FnMut(usize) -> io::Result<()>,
) -> io::Result<f64> {
    for _ in 0..warm_up {
        round(k)?;
    }
    let rounds = (n / k as u64).max(1);
    let t0 = Instant::now();
    for _ in 0..rounds {
        round(k)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The trivial child.
fn noop(_: ()) {}

/// Starts `k` multiproc children, then joins them all.
async fn multiproc_round(k: usize) -> io::Result<()> {
    let handles: Vec<_> = (0..k).map(|_| multiproc::spawn((), noop)).collect();
    for handle in handles {
        handle.await.map_err(other)?;
    }
    Ok(())
}

/// Starts `k` re-executed copies of this program that exit at once, then waits for them all.
fn reexec_round(k: usize) -> io::Result<()> {
    let mut children: Vec<Child> = Vec::with_capacity(k);
    let mut failed = None;
    for _ in 0..k {
        match Command::new("/proc/self/exe")
            .env(EXIT_AT_ONCE_ENV, "1")
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    for mut child in children {
        match child.wait() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                failed.get_or_insert_with(|| other(format!("spawn-of-self child: {status}")));
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}
