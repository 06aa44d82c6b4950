//! A pool of worker processes: Python's `multiprocessing.Pool`, async, and without its hangs.
//!
//! [`Pool`] keeps long-lived workers (this program, re-executed like [`spawn`](crate::spawn)'s
//! children) and feeds them tasks over Unix sockets, many per message. Results come back as
//! futures and streams. Task functions are `fn` items or closures that capture nothing, sync
//! or `async`; arguments and results are serde types and may contain handles (locks, queues,
//! pipe ends), which arrive usable in the worker.
//!
//! # When a worker dies
//! A worker killed by a signal (an OOM kill, a segfault, `SIGKILL`), or exiting from inside a
//! task, turns each task it held into an error for which [`PoolError::is_worker_died`] is
//! true, promptly, with the worker's pid and how it ended. A fresh worker (initializer
//! included) takes its place and the pool goes on serving. Python's pool hangs forever here.
//!
//! A task that panics fails alone ([`PoolError::is_panic`], with the message and location);
//! its worker survives and runs the next task.
//!
//! # Lifetime
//! [`close`](Pool::close) stops new submissions and lets the submitted work finish (including
//! tasks whose [`TaskHandle`] was dropped: dropping detaches);
//! [`join`](Pool::join) then waits until every worker has exited. [`terminate`](Pool::terminate)
//! kills the workers at once and fails what they held. Dropping the pool closes it: work whose
//! futures are still alive finishes, then the workers exit; none outlives this process (they
//! are daemon children).

mod builder;
mod driver;
mod error;
mod handle;
mod map;
mod result_ring;
mod state;
mod stats;
mod submit;
mod task;
mod worker;
mod worker_protocol;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use builder::PoolBuilder;
pub use error::PoolError;
use handle::AbortOnDrop;
pub use handle::TaskHandle;
pub use map::{Imap, ImapUnordered, Map, MapFuture};
pub use stats::PoolStats;
pub use task::StarmapFn;

use crate::function::ChildOutput;
use state::Shared;
use submit::{Batches, Items, Results};
use task::{Plain, Spread, chunk_fn};

/// A pool of worker processes running Rust functions (Python's `multiprocessing.Pool`).
///
/// See the [module docs](self) for what happens when a worker dies and how a pool ends.
///
/// # Examples
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use multiproc::Pool;
///
/// let pool = Pool::new(4)?;
/// let squares = pool.map(|x: u64| x * x, 0..10).await?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
///
/// let powers = pool.starmap(|x: u64, y: u32| x.pow(y), [(2, 10), (3, 3)]).await?;
/// assert_eq!(powers, [1024, 27]);
///
/// let mut lengths = pool.imap(|s: String| s.len(), ["a", "bb"].map(String::from));
/// while let Some(len) = lengths.next().await {
///     println!("{}", len?);
/// }
///
/// let task = pool.submit(|x: u64| x + 1, 41);
/// assert_eq!(task.await?, 42);
///
/// pool.close();
/// pool.join().await?;
/// # Ok(())
/// # }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// A pool of `workers` processes with the default options; see [`Pool::builder`].
    ///
    /// # Errors
    /// Outside a tokio runtime, or with zero workers.
    pub fn new(workers: usize) -> Result<Pool, PoolError> {
        PoolBuilder::new().workers(workers).build()
    }

    /// Options for a pool: worker count, initializer, maximum tasks per worker, chunk size.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    /// The number of worker processes the pool keeps.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// The pids of the workers alive now (fewer than [`workers`](Self::workers) while some
    /// start or are replaced).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// Runs `f` on every item in the workers; `.await` it for the results in input order
    /// (Python's `map`).
    ///
    /// The items are collected first (as Python does) to choose the chunk size: about four
    /// chunks per worker, at most 1,024 items, unless [`Map::chunksize`] or the pool's default
    /// says otherwise. An
    /// empty input gives an empty result at once.
    ///
    /// # Errors
    /// The first failed item in input order, as its [`PoolError`] (with
    /// [`item`](PoolError::item)); the rest of the map is then cancelled. Use
    /// [`imap`](Self::imap) to see every item's outcome.
    ///
    /// # Cancel safety
    /// Dropping the future cancels the map; see [`MapFuture`].
    pub fn map<A, R, M, F>(&self, f: F, items: impl IntoIterator<Item = A>) -> Map<A, R::Output>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
    {
        self.map_with(chunk_fn::<_, A, M>(Plain(f)), items)
    }

    /// Like [`map`](Self::map), for a function of several arguments called with the fields of
    /// each tuple item: `starmap(|x, y| x + y, [(1, 2), (3, 4)])` gives `[3, 7]`.
    pub fn starmap<Args, M, F>(
        &self,
        f: F,
        items: impl IntoIterator<Item = Args>,
    ) -> Map<Args, <F::Ret as ChildOutput<M>>::Output>
    where
        Args: Serialize + DeserializeOwned + Send + 'static,
        F: StarmapFn<Args>,
        F::Ret: ChildOutput<M>,
    {
        self.map_with(chunk_fn::<_, Args, M>(Spread(f)), items)
    }

    fn map_with<A, R>(
        &self,
        func: worker_protocol::TaskFn,
        items: impl IntoIterator<Item = A>,
    ) -> Map<A, R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        let len = items.len();
        let chunksize = self
            .shared
            .config
            .chunksize
            .unwrap_or_else(|| default_chunksize(len, self.workers()));
        let batches = self.shared.check_open().map(|()| {
            Batches::new(
                self.shared.clone(),
                func,
                Items::Collected(items.into_iter()),
                chunksize,
            )
        });
        Map::new(batches, len)
    }

    /// Runs `f` on every item in the workers and streams the results in input order (Python's
    /// `imap`): each is available as soon as it and those before it are done.
    ///
    /// Items are taken from the iterator only as fast as the workers go, so it may be long or
    /// endless. The chunk size is 1 (as in Python) unless [`Imap::chunksize`] or the pool's
    /// default says otherwise.
    pub fn imap<A, R, M, F, I>(&self, f: F, items: I) -> Imap<A, R::Output>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        Imap::new(self.stream_batches(chunk_fn::<_, A, M>(Plain(f)), items))
    }

    /// Like [`imap`](Self::imap), but streams the results in the order they finish (Python's
    /// `imap_unordered`); errors say which item failed ([`PoolError::item`]).
    pub fn imap_unordered<A, R, M, F, I>(&self, f: F, items: I) -> ImapUnordered<A, R::Output>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        ImapUnordered::new(self.stream_batches(chunk_fn::<_, A, M>(Plain(f)), items))
    }

    fn stream_batches<A, R, I>(
        &self,
        func: worker_protocol::TaskFn,
        items: I,
    ) -> Result<Batches<A, R>, PoolError>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        self.shared.check_open()?;
        let chunksize = self.shared.config.chunksize.unwrap_or(1);
        Ok(Batches::new(
            self.shared.clone(),
            func,
            Items::Streamed(Box::new(items.into_iter())),
            chunksize,
        ))
    }

    /// Submits `f(args)` to run in a worker now and returns a handle to await its result later
    /// (Python's `apply_async`).
    ///
    /// The task runs whether or not the handle is kept: dropping it detaches the task, and
    /// [`close`](Self::close) + [`join`](Self::join) wait for it; [`TaskHandle::abort`]
    /// cancels it. A pool that takes no more work gives a handle that resolves to that error.
    pub fn submit<A, R, M, F>(&self, f: F, args: A) -> TaskHandle<R::Output>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
    {
        let mut results = Results::new(self.shared.clone(), false);
        let func = chunk_fn::<_, A, M>(Plain(f));
        let job = results.encode(func, 0, 0, std::slice::from_ref(&args));
        results.submit(job.into_iter().collect());
        TaskHandle::new(results)
    }

    /// Runs `f(args)` in a worker and returns its result (Python's `apply`).
    ///
    /// # Errors
    /// The task's [`PoolError`]: its panic, its worker's death, a closed pool...
    ///
    /// # Cancel safety
    /// Dropping the future cancels the task, as [`TaskHandle::abort`] does (unlike dropping a
    /// [`TaskHandle`], which detaches it).
    pub async fn apply<A, R, M, F>(&self, f: F, args: A) -> Result<R::Output, PoolError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
    {
        AbortOnDrop(self.submit(f, args)).await
    }

    /// Stops accepting work (later submissions fail with [`PoolError::is_closed`]); what was
    /// submitted still runs, then the workers exit.
    pub fn close(&self) {
        multiproc_core::trace_info!("pool closed: finishing the submitted work");
        self.shared.close();
    }

    /// Counters a service can export: workers alive and replaced, tasks queued, running, done
    /// and failed (see [`PoolStats`]). Cheap: a few atomic loads and a walk of the queue.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = multiproc::Pool::new(2)?;
    /// assert_eq!(pool.map(|x: u32| x * 2, 0..10).await?.len(), 10);
    /// let stats = pool.stats();
    /// assert_eq!(stats.tasks_done, 10);
    /// assert_eq!(stats.tasks_queued + stats.tasks_running, 0);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> PoolStats {
        let counters = &self.shared.counters;
        PoolStats {
            workers: self.shared.config.workers,
            workers_alive: self.shared.pids().len(),
            workers_replaced: stats::Counters::get(&counters.replaced),
            tasks_queued: self.shared.tasks_queued(),
            tasks_running: stats::Counters::get(&counters.running),
            tasks_done: stats::Counters::get(&counters.done),
            tasks_failed: stats::Counters::get(&counters.failed),
        }
    }

    /// Kills every worker now. Tasks not finished fail with [`PoolError::is_terminated`];
    /// later submissions fail with [`PoolError::is_closed`]. Await [`join`](Self::join) to wait
    /// until the workers are gone.
    pub fn terminate(&self) {
        multiproc_core::trace_info!("pool terminated: killing its workers");
        self.shared.terminate();
    }

    /// Waits until every worker has exited, after [`close`](Self::close) (once the submitted
    /// work is done) or [`terminate`](Self::terminate).
    ///
    /// # Errors
    /// When the pool was neither closed nor terminated (it would wait forever).
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn join(&self) -> Result<(), PoolError> {
        if !self.shared.is_closed() {
            return Err(PoolError::not_closed());
        }
        self.shared.all_drivers_finished().await;
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .field("pids", &self.worker_pids())
            .finish()
    }
}

/// The most items a default-sized chunk holds (a [`Map::chunksize`] or the pool's own default
/// is taken as given).
///
/// Python's rule alone (four chunks per worker) makes chunks of 62,500 items for a map of
/// 500,000 on two workers: every chunk's buffers (the encoded items, the worker's decoded
/// `Vec`, the encoded and decoded results, hundreds of KiB each) are above the allocator's
/// `mmap` threshold, so each is mapped, faulted in page by page and unmapped again, and the
/// workers wait while the whole input is encoded. Chunks of at most 1,024 items keep every
/// buffer on the heap, let the workers start on the first chunk while the next are encoded,
/// and keep a chunk of small results within one record of the shared result ring (no system
/// call to hand it back).
const MAX_DEFAULT_CHUNK: usize = 1024;

/// The chunk size of a map of `len` items over `workers` workers when none was given:
/// Python's choice (about four chunks per worker), at most [`MAX_DEFAULT_CHUNK`].
fn default_chunksize(len: usize, workers: usize) -> usize {
    len.div_ceil(workers.max(1) * 4).clamp(1, MAX_DEFAULT_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunks_follow_python_below_the_cap() {
        assert_eq!(default_chunksize(0, 2), 1);
        assert_eq!(default_chunksize(10, 2), 2);
        assert_eq!(default_chunksize(8_000, 2), 1_000);
        assert_eq!(default_chunksize(500_000, 2), MAX_DEFAULT_CHUNK);
        assert_eq!(default_chunksize(100, 0), 25);
    }
}
