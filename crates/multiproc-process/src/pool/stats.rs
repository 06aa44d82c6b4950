//! [`PoolStats`]: counters a service can export, and the atomics the pool keeps them in.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`Pool`](super::Pool)'s workers and tasks ([`Pool::stats`](super::Pool::stats)).
///
/// Counted in tasks (items), not chunks. Each count is exact when read, but they are read one
/// after another while the pool runs, so a task moving on may be seen in two counts or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Worker processes the pool keeps (its size).
    pub workers: usize,
    /// Worker processes running now.
    pub workers_alive: usize,
    /// Workers started to replace one that died or retired (`max_tasks_per_worker`).
    pub workers_replaced: u64,
    /// Tasks submitted and waiting for a worker.
    pub tasks_queued: u64,
    /// Tasks handed to a worker and not answered yet.
    pub tasks_running: u64,
    /// Tasks that returned a value.
    pub tasks_done: u64,
    /// Tasks that ended with an error: a panic, a dead worker, termination, a result that could
    /// not be carried back; or were cancelled after reaching a worker.
    pub tasks_failed: u64,
}

/// The counters behind [`PoolStats`], shared by the pool, its drivers and result sinks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub running: AtomicU64,
    pub replaced: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: usize) {
        counter.fetch_sub(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
