//! Options for a pool: worker count, initializer, worker lifetime, chunk size.

use std::sync::Arc;

use multiproc_core::message;
use multiproc_core::proc::limits::{self, ResourceLimits};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::driver::run_slot;
use super::error::PoolError;
use super::state::{Config, Initializer, Shared};
use super::task::{Plain, init_fn};
use super::worker_protocol::ToWorker;
use crate::function::ChildOutput;

/// The error of a zero chunk size, wherever it is set.
pub(crate) const CHUNKSIZE_ZERO: &str = "chunksize must be at least 1";

/// Options for a [`Pool`]; finish with [`build`](Self::build).
///
/// # Examples
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::Pool;
///
/// fn setup(greeting: String) {
///     eprintln!("{greeting} from worker {}", std::process::id());
/// }
///
/// let pool = Pool::builder()
///     .workers(4)
///     .initializer("hello".to_string(), setup)
///     .max_tasks_per_worker(1000)
///     .build()?;
/// assert_eq!(pool.apply(|x: u32| x + 1, 41).await?, 42);
/// # Ok(())
/// # }
/// ```
pub struct PoolBuilder {
    workers: Option<usize>,
    max_tasks_per_worker: Option<usize>,
    chunksize: Option<usize>,
    initializer: Option<Result<Initializer, PoolError>>,
    name: String,
    limits: ResourceLimits,
    recycle_above: Option<u64>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("max_tasks_per_worker", &self.max_tasks_per_worker)
            .field("chunksize", &self.chunksize)
            .field("initializer", &self.initializer.is_some())
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("recycle_above", &self.recycle_above)
            .finish()
    }
}

impl PoolBuilder {
    /// Defaults: one worker per CPU, no initializer, workers live as long as the pool, Python's
    /// chunk sizes.
    pub fn new() -> Self {
        Self {
            workers: None,
            max_tasks_per_worker: None,
            chunksize: None,
            initializer: None,
            name: "multiproc-pool-worker".to_string(),
            limits: ResourceLimits::default(),
            recycle_above: None,
        }
    }

    /// The number of worker processes (default: the number of CPUs available, capped by the
    /// CPU quota of this process's cgroup). Zero makes
    /// [`build`](Self::build) fail.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Runs `f(args)` once in every worker before its first task, including the workers that
    /// replace dead or retired ones (Python's `initializer` and `initargs`).
    ///
    /// `args` may contain handles (a [`Lock`](https://docs.rs/multiproc), a queue, a pipe
    /// end...): each worker gets its own copy, usable there. `f` is a `fn` item or a closure
    /// that captures nothing, sync or async; its return value is ignored. Typically it stores
    /// what it received in a `static` (a `OnceLock`) for the tasks to use.
    ///
    /// If the initializer panics, the pool cannot run tasks: every task fails with an error
    /// for which [`PoolError::is_initializer_failure`] is true (Python's pool would start
    /// workers forever instead).
    pub fn initializer<A, R, M, F>(mut self, args: A, f: F) -> Self
    where
        A: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
    {
        let func = init_fn::<_, A, M>(Plain(f));
        let encode: Initializer = Box::new(move |buf| {
            message::encode_into(&ToWorker::Init { func: Some(func) }, buf)?;
            message::encode_fixed_into(&args, buf)
        });
        // Find out now, not in every worker, whether the arguments can be encoded.
        let checked = match encode(&mut Vec::new()) {
            Ok(_) => Ok(encode),
            Err(e) => Err(PoolError::encode_initializer(e)),
        };
        self.initializer = Some(checked);
        self
    }

    /// Replaces a worker after it has run this many chunks of tasks (Python's
    /// `maxtasksperchild`); the default is never. Frees whatever a worker accumulates (memory,
    /// descriptors) at the price of a process start every `n` chunks. Zero makes
    /// [`build`](Self::build) fail (Python refuses it too).
    pub fn max_tasks_per_worker(mut self, tasks: usize) -> Self {
        self.max_tasks_per_worker = Some(tasks);
        self
    }

    /// The default chunk size of `map`, `starmap` and the `imap` streams (by default for
    /// `map`, Python's choice of about four chunks per worker, at most 1,024 items; 1 for
    /// `imap`). Each call can still set its own. Zero makes [`build`](Self::build) fail.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = Some(chunksize);
        self
    }

    /// The name of the worker processes (their `argv[0]`, shown by `ps`), followed by `-<slot>`;
    /// default `multiproc-pool-worker`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Limits each worker's memory to `bytes` of address space, as
    /// [`Builder::memory_limit`](crate::Builder::memory_limit). A task that allocates past it
    /// kills its worker; its error (and that of the tasks of its chunk) says so:
    /// [`PoolError::is_out_of_memory`], with the limit. The pool starts a new worker and goes on.
    pub fn worker_memory_limit(mut self, bytes: u64) -> Self {
        self.limits.memory = Some(bytes);
        self
    }

    /// Limits each worker's CPU time, as [`Builder::cpu_time_limit`](crate::Builder::cpu_time_limit)
    /// (the worker's total, over all its tasks: combine with
    /// [`max_tasks_per_worker`](Self::max_tasks_per_worker)).
    pub fn worker_cpu_time_limit(mut self, limit: std::time::Duration) -> Self {
        self.limits.set_cpu_time(limit);
        self
    }

    /// Limits each worker's open descriptors, as
    /// [`Builder::open_files_limit`](crate::Builder::open_files_limit).
    pub fn worker_open_files_limit(mut self, files: u64) -> Self {
        self.limits.open_files = Some(files);
        self
    }

    /// Retires a worker, between tasks, once its resident memory (`/proc/<pid>/statm`) is
    /// above `bytes`: it takes no new job, finishes those it holds, exits, and a fresh worker
    /// takes its place. For tasks that leak or fragment memory (Celery's
    /// `worker_max_memory_per_child`).
    pub fn recycle_above_memory(mut self, bytes: u64) -> Self {
        self.recycle_above = Some(bytes);
        self
    }

    /// Starts the pool: its workers start in the background and take tasks as soon as they are
    /// ready.
    ///
    /// # Errors
    /// Outside a tokio runtime; with an option out of range (zero workers, zero
    /// `max_tasks_per_worker`, zero chunk size: [`PoolError::is_invalid_option`]); or when the
    /// initializer's arguments cannot be encoded. A worker that cannot be started is reported
    /// by the tasks ([`PoolError::is_spawn_failure`]).
    pub fn build(self) -> Result<Pool, PoolError> {
        // Checked here, on the values as last set, so that a later call can correct an earlier.
        let zero = [
            (self.workers, "a pool needs at least one worker"),
            (
                self.max_tasks_per_worker,
                "max_tasks_per_worker must be at least 1",
            ),
            (self.chunksize, CHUNKSIZE_ZERO),
        ]
        .into_iter()
        .find(|(value, _)| *value == Some(0));
        if let Some((_, why)) = zero {
            return Err(PoolError::invalid_option(why));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PoolError::no_runtime())?;
        let workers = self.workers.unwrap_or_else(default_workers);
        let initializer = self.initializer.transpose()?;
        let shared = Arc::new(Shared::new(Config {
            workers,
            max_tasks_per_worker: self.max_tasks_per_worker,
            chunksize: self.chunksize,
            initializer,
            name: self.name,
            limits: self.limits,
            recycle_above: self.recycle_above,
        }));
        for slot in 0..workers {
            runtime.spawn(run_slot(shared.clone(), slot));
        }
        Ok(Pool { shared })
    }
}

/// The default number of workers: the CPUs this process may use (its affinity mask), capped by
/// the CPU quota of its cgroup (`cpu.max`, or v1's `cpu.cfs_quota_us`), at least one.
pub(crate) fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    limits::cpu_quota()
        .map_or(cpus, |quota| cpus.min(quota))
        .max(1)
}
