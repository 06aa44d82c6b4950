//! State shared by a pool's handle, its submissions and its worker drivers: the queue of jobs
//! not yet given to a worker, and the pool's phase.

use multiproc_core::proc::limits::ResourceLimits;
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

use super::error::PoolError;
use super::stats::Counters;
use super::worker_protocol::{TaskFn, ToWorker};

/// A chunk of tasks, encoded and waiting for a worker.
pub(crate) struct Job {
    /// A `ToWorker::Run` header and the chunk's arguments.
    pub frame: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    pub meta: JobMeta,
}

/// What the pool remembers of a job while a worker runs it.
pub(crate) struct JobMeta {
    pub id: u64,
    /// The function its tasks run (the pool learns each function's pace).
    pub func: TaskFn,
    /// Position of the chunk in its submission.
    pub chunk: usize,
    /// Position of the chunk's first item in its submission.
    pub first_item: usize,
    /// Number of tasks in the chunk.
    pub items: usize,
    pub sink: Arc<dyn ResultSink>,
}

/// Where the results of a submission's chunks go.
pub(crate) trait ResultSink: Send + Sync {
    /// The worker's encoded `Vec<Outcome<R>>` for the chunk.
    fn done(&self, job: &JobMeta, body: &[u8], fds: Vec<OwnedFd>);
    /// The chunk failed as a whole; every task gets `error`. `running`: the position of the
    /// task that was running when the chunk's worker died, which the error blames.
    fn failed(&self, job: &JobMeta, error: PoolError, running: Option<usize>);
    /// Nobody waits for these results any more.
    fn is_cancelled(&self) -> bool;
}

impl JobMeta {
    pub(crate) fn fail(self, error: PoolError) {
        self.sink.failed(&self, error, None);
    }

    /// Fails the job of a worker that died (`error`) while running its task at `running`.
    pub(crate) fn fail_running(self, error: PoolError, running: Option<usize>) {
        self.sink.failed(&self, error, running);
    }
}

/// Where jobs go in the queue.
#[derive(Clone, Copy)]
enum Placement {
    /// New work: behind what is queued.
    Back,
    /// Work a dead worker held but never started: first.
    Front,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    /// No new work; what was submitted still runs.
    Closed,
    /// Everything stops now.
    Terminated,
}

struct State {
    jobs: VecDeque<Job>,
    phase: Phase,
    /// Set when the pool cannot run tasks any more (the initializer panicked, workers cannot
    /// be started); every job fails with it.
    broken: Option<PoolError>,
}

/// How the pool was configured.
pub(crate) struct Config {
    pub workers: usize,
    pub max_tasks_per_worker: Option<usize>,
    pub chunksize: Option<usize>,
    pub initializer: Option<Initializer>,
    pub name: String,
    /// Every worker's resource limits.
    pub limits: ResourceLimits,
    /// Retire a worker, between tasks, once its resident memory passed this many bytes.
    pub recycle_above: Option<u64>,
}

/// Encodes the initializer's frame (`ToWorker::Init` and its argument), afresh for each worker
/// so every one gets its own copies of the handles inside.
pub(crate) type Initializer =
    Box<dyn Fn(&mut Vec<u8>) -> Result<Vec<OwnedFd>, multiproc_core::EncodeError> + Send + Sync>;

impl Config {
    /// Encodes the first frame every worker gets: the initializer, or an empty `Init`.
    pub(crate) fn encode_init(
        &self,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<OwnedFd>, multiproc_core::EncodeError> {
        match &self.initializer {
            Some(init) => init(buf),
            None => multiproc_core::message::encode_into(&ToWorker::Init { func: None }, buf),
        }
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    terminated: AtomicBool,
    next_id: AtomicU64,
    /// One per worker slot: wakes its driver on new jobs, cancellations and phase changes.
    wakers: Vec<AtomicWaker>,
    /// Pid of the worker in each slot (0 when none).
    pids: Vec<AtomicU64>,
    live_drivers: AtomicUsize,
    drivers_done: Notify,
    /// Submissions cancelled so far: a driver that sees it change looks for cancelled jobs
    /// among those its worker holds.
    cancels: AtomicU64,
    /// What `Pool::stats` reports (beside what the queue and the pids tell).
    pub counters: Arc<Counters>,
    pub config: Config,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                phase: Phase::Running,
                broken: None,
            }),
            terminated: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            wakers: (0..config.workers).map(|_| AtomicWaker::new()).collect(),
            pids: (0..config.workers).map(|_| AtomicU64::new(0)).collect(),
            live_drivers: AtomicUsize::new(config.workers),
            drivers_done: Notify::new(),
            cancels: AtomicU64::new(0),
            counters: Arc::default(),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue consistent (no invariant spans two
        // statements), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh id for a job.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues jobs for the workers, or fails them at once if the pool takes no more work.
    pub(crate) fn submit(&self, jobs: Vec<Job>) {
        self.enqueue(jobs, Placement::Back);
    }

    /// Puts back jobs a dead worker never started, ahead of the others, in their order. They
    /// were submitted before any `close`, so only `terminate` (or a broken pool) fails them.
    pub(crate) fn requeue(&self, jobs: Vec<Job>) {
        self.enqueue(jobs, Placement::Front);
    }

    fn enqueue(&self, jobs: Vec<Job>, placement: Placement) {
        if jobs.is_empty() {
            return;
        }
        let error = {
            let mut state = self.lock();
            match (&state.broken, state.phase, placement) {
                (Some(broken), _, _) => broken.clone(),
                (None, Phase::Terminated, Placement::Front) => PoolError::terminated(),
                (None, Phase::Closed | Phase::Terminated, Placement::Back) => PoolError::closed(),
                (None, Phase::Running, _) | (None, Phase::Closed, Placement::Front) => {
                    match placement {
                        Placement::Back => state.jobs.extend(jobs),
                        Placement::Front => {
                            for job in jobs.into_iter().rev() {
                                state.jobs.push_front(job);
                            }
                        }
                    }
                    drop(state);
                    self.wake_drivers();
                    return;
                }
            }
        };
        for job in jobs {
            job.meta.fail(error.clone());
        }
    }

    /// Fails `error` if the pool takes no more work (for submissions that check first).
    pub(crate) fn check_open(&self) -> Result<(), PoolError> {
        let state = self.lock();
        match (&state.broken, state.phase) {
            (Some(broken), _) => Err(broken.clone()),
            (None, Phase::Running) => Ok(()),
            (None, _) => Err(PoolError::closed()),
        }
    }

    /// The next job for a worker if `wanted` says so, skipping those nobody waits for any more.
    pub(crate) fn take_job_if(&self, wanted: impl FnOnce(&JobMeta) -> bool) -> Option<Job> {
        let mut state = self.lock();
        while let Some(job) = state.jobs.front() {
            if job.meta.sink.is_cancelled() {
                state.jobs.pop_front();
                continue;
            }
            return match wanted(&job.meta) {
                true => state.jobs.pop_front(),
                false => None,
            };
        }
        None
    }

    /// Tasks (not chunks) waiting for a worker.
    pub(crate) fn tasks_queued(&self) -> u64 {
        self.lock()
            .jobs
            .iter()
            .map(|job| job.meta.items as u64)
            .sum()
    }

    /// True when no job waits for a worker.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.lock().jobs.is_empty()
    }

    /// Stops taking work; what was submitted still runs.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Running {
            state.phase = Phase::Closed;
        }
        drop(state);
        self.wake_drivers();
    }

    /// True once [`close`](Self::close) or [`terminate`](Self::terminate) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().phase != Phase::Running
    }

    /// Stops everything: queued jobs fail now, drivers kill their workers.
    pub(crate) fn terminate(&self) {
        let jobs = {
            let mut state = self.lock();
            state.phase = Phase::Terminated;
            std::mem::take(&mut state.jobs)
        };
        self.terminated.store(true, Ordering::Release);
        self.wake_drivers();
        for job in jobs {
            job.meta.fail(PoolError::terminated());
        }
    }

    /// True once [`terminate`](Self::terminate) was called.
    pub(crate) fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Marks the pool unable to run tasks: queued and future jobs fail with `error`.
    pub(crate) fn break_pool(&self, error: PoolError) {
        let jobs = {
            let mut state = self.lock();
            state.broken.get_or_insert(error.clone());
            std::mem::take(&mut state.jobs)
        };
        self.wake_drivers();
        for job in jobs {
            job.meta.fail(error.clone());
        }
    }

    /// The error every job fails with, once the pool is broken.
    pub(crate) fn broken(&self) -> Option<PoolError> {
        self.lock().broken.clone()
    }

    /// A submission was cancelled: counts it and wakes the drivers (queued jobs are skipped,
    /// held ones are told to their workers).
    pub(crate) fn cancelled(&self) {
        self.cancels.fetch_add(1, Ordering::Release);
        self.wake_drivers();
    }

    /// How many submissions were cancelled so far.
    pub(crate) fn cancels(&self) -> u64 {
        self.cancels.load(Ordering::Acquire)
    }

    /// Wakes every driver to look at the queue and the phase again.
    pub(crate) fn wake_drivers(&self) {
        for waker in &self.wakers {
            waker.wake();
        }
    }

    /// Registers the driver of `slot` to be woken by [`wake_drivers`](Self::wake_drivers).
    pub(crate) fn register(&self, slot: usize, waker: &std::task::Waker) {
        self.wakers[slot].register(waker);
    }

    /// Records the pid of the worker in `slot` (`None` between workers).
    pub(crate) fn set_pid(&self, slot: usize, pid: Option<u32>) {
        self.pids[slot].store(pid.map_or(0, u64::from), Ordering::Relaxed);
    }

    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.pids
            .iter()
            .map(|p| p.load(Ordering::Relaxed) as u32)
            .filter(|&p| p != 0)
            .collect()
    }

    /// Called by each driver as it ends.
    pub(crate) fn driver_finished(&self) {
        if self.live_drivers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drivers_done.notify_waiters();
        }
    }

    /// Waits until every driver has ended (and so every worker is gone).
    pub(crate) async fn all_drivers_finished(&self) {
        loop {
            let notified = self.drivers_done.notified();
            if self.live_drivers.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}
