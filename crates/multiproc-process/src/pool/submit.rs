//! Turning items into encoded chunks for the queue, and chunk results back into values:
//! the engine under `map`, the `imap` streams and `apply`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::vec;

use multiproc_core::message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::error::PoolError;
use super::state::{Job, JobMeta, ResultSink, Shared};
use super::stats::Counters;
use super::worker_protocol::{ChunkOutput, Failure, TaskFn, ToWorker};

/// The results of one chunk: the values of the tasks that returned, in order, and the errors
/// of the others by position in the chunk (increasing).
pub(crate) struct ChunkResults<R> {
    values: vec::IntoIter<R>,
    errors: std::iter::Peekable<vec::IntoIter<(usize, PoolError)>>,
    position: usize,
}

impl<R> ChunkResults<R> {
    fn new(values: Vec<R>, errors: Vec<(usize, PoolError)>) -> Self {
        Self {
            values: values.into_iter(),
            errors: errors.into_iter().peekable(),
            position: 0,
        }
    }

    /// The remaining values, when none of the remaining tasks failed.
    pub(crate) fn take_if_all_ok(&mut self) -> Option<vec::IntoIter<R>> {
        if self.errors.peek().is_some() {
            return None;
        }
        Some(std::mem::take(&mut self.values))
    }
}

impl<R> Iterator for ChunkResults<R> {
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let position = self.position;
        self.position += 1;
        if let Some((_, error)) = self.errors.next_if(|(at, _)| *at == position) {
            return Some(Err(error));
        }
        self.values.next().map(Ok)
    }
}

impl<R> Default for ChunkResults<R> {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

/// Receives the chunk results of one submission and passes them on, decoded.
struct ChunkSink<R> {
    tx: mpsc::UnboundedSender<(usize, ChunkResults<R>)>,
    /// Whether errors name the item's index (a map) or not (a single `apply`).
    indexed: bool,
    /// Nobody wants the results any more: the work not done yet is dropped.
    cancelled: AtomicBool,
    /// The pool's, for the tasks done and failed.
    counters: Arc<Counters>,
}

impl<R> ChunkSink<R> {
    fn error(&self, error: PoolError, job: &JobMeta, i: usize) -> PoolError {
        if self.indexed {
            error.at_item(job.first_item + i)
        } else {
            error
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> ResultSink for ChunkSink<R> {
    fn done(&self, job: &JobMeta, body: &[u8], fds: Vec<OwnedFd>) {
        if self.is_cancelled() {
            Counters::add(&self.counters.failed, job.items);
            return;
        }
        let output = match message::decode_fixed::<ChunkOutput<R>>(body, fds) {
            Ok(output) => output,
            Err(e) => return self.failed(job, PoolError::bad_result(e.to_string()), None),
        };
        // The worker is our own code, but its output is still input: check it adds up.
        let positions_ok = output.failures.windows(2).all(|pair| pair[0].0 < pair[1].0)
            && output
                .failures
                .last()
                .is_none_or(|(at, _)| (*at as usize) < job.items);
        if !positions_ok || output.values.len() + output.failures.len() != job.items {
            let why = "the worker's results do not match the chunk's tasks".to_string();
            return self.failed(job, PoolError::bad_result(why), None);
        }
        Counters::add(&self.counters.done, output.values.len());
        Counters::add(&self.counters.failed, output.failures.len());
        let errors = output
            .failures
            .into_iter()
            .map(|(at, failure)| {
                let error = match failure {
                    Failure::Panicked { message, location } => {
                        PoolError::panicked(message, location)
                    }
                    Failure::Unsendable(why) => PoolError::bad_result(why),
                };
                (at as usize, self.error(error, job, at as usize))
            })
            .collect();
        // A receiver that is gone no longer wants the results.
        let _ = self
            .tx
            .send((job.chunk, ChunkResults::new(output.values, errors)));
    }

    fn failed(&self, job: &JobMeta, error: PoolError, running: Option<usize>) {
        Counters::add(&self.counters.failed, job.items);
        if self.is_cancelled() {
            return;
        }
        let errors = (0..job.items)
            .map(|i| {
                let error = match running {
                    // A task lost with the worker that died running another one of its chunk.
                    // (The position is the dead worker's word: one out of range blames none.)
                    Some(at) if at != i && at < job.items && self.indexed => {
                        error.clone().while_running(job.first_item + at)
                    }
                    _ => error.clone(),
                };
                (i, self.error(error, job, i))
            })
            .collect();
        let _ = self
            .tx
            .send((job.chunk, ChunkResults::new(Vec::new(), errors)));
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// The receiving end of a submission: chunk results in completion order, tagged with the
/// chunk's position.
///
/// [`cancel`](Self::cancel) drops the work still outstanding: queued chunks are skipped, and
/// a worker busy only with cancelled chunks is killed and replaced. Dropping it cancels too,
/// unless it was made to [`detach`](Self::detach) instead.
pub(crate) struct Results<R> {
    shared: Arc<Shared>,
    sink: Arc<ChunkSink<R>>,
    rx: mpsc::UnboundedReceiver<(usize, ChunkResults<R>)>,
    outstanding: usize,
    /// Dropping leaves the work running (a task handle) rather than cancelling it (a map).
    detach_on_drop: bool,
    /// The span current when the work was submitted, which its chunks carry to the workers.
    span: Option<crate::RemoteSpan>,
}

impl<R> Results<R> {
    /// Cancels the work not done yet; results already in stay takeable.
    pub(crate) fn cancel(&self) {
        if !self.sink.cancelled.swap(true, Ordering::AcqRel) {
            // Drivers must look again: queued chunks go, a worker running one is stopped.
            self.shared.cancelled();
        }
    }

    /// Chunks encoded whose results have not been taken yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// True once [`cancel`](Self::cancel) was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.sink.cancelled.load(Ordering::Acquire)
    }
}

impl<R: DeserializeOwned + Send + 'static> Results<R> {
    pub(crate) fn new(shared: Arc<Shared>, indexed: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let cancelled = AtomicBool::new(false);
        let counters = shared.counters.clone();
        Self {
            shared,
            sink: Arc::new(ChunkSink {
                counters,
                tx,
                indexed,
                cancelled,
            }),
            rx,
            outstanding: 0,
            detach_on_drop: false,
            span: crate::trace::current_remote(),
        }
    }

    /// Makes dropping leave the work running, its results unread, instead of cancelling it.
    pub(crate) fn detach_on_drop(mut self) -> Self {
        self.detach_on_drop = true;
        self
    }

    /// Encodes `items` as chunk `chunk` (starting at item `first_item`) of `func`; an encoding
    /// failure becomes the chunk's results at once.
    pub(crate) fn encode<A: Serialize>(
        &mut self,
        func: TaskFn,
        chunk: usize,
        first_item: usize,
        items: &[A],
    ) -> Option<Job> {
        self.outstanding += 1;
        let id = self.shared.next_id();
        let meta = JobMeta {
            id,
            func,
            chunk,
            first_item,
            items: items.len(),
            sink: self.sink.clone(),
        };
        // The header, the length and the items at their in-memory size (exact for plain
        // numbers): one allocation for the whole frame in the common case.
        let mut frame = Vec::with_capacity(64 + std::mem::size_of_val(items));
        let span = self.span;
        let encoded = message::encode_into(&ToWorker::Run { id, func, span }, &mut frame)
            .and_then(|_| message::encode_fixed_into(items, &mut frame));
        match encoded {
            Ok(fds) => Some(Job { frame, fds, meta }),
            Err(e) => {
                meta.fail(PoolError::encode(e));
                None
            }
        }
    }

    /// Queues jobs made by [`encode`](Self::encode).
    pub(crate) fn submit(&self, jobs: Vec<Job>) {
        self.shared.submit(jobs);
    }

    /// The next chunk's results; `None` when every chunk encoded so far is in.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, ChunkResults<R>)>> {
        if self.outstanding == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                self.outstanding -= 1;
                Poll::Ready(Some(chunk))
            }
            // We hold a sender (in the sink), so the channel never closes under us.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// True when a result is ready to be taken without waiting.
    pub(crate) fn has_ready(&self) -> bool {
        !self.rx.is_empty()
    }
}

impl<R> Drop for Results<R> {
    fn drop(&mut self) {
        if self.outstanding > 0 && !self.detach_on_drop {
            self.cancel();
        }
    }
}

/// The most items one poll of a submission encodes before it lets the drivers run: a map's
/// first poll used to encode its whole window (all 500,000 items of a small map) while the
/// workers waited; now they start on the first chunks while the next are encoded.
const REFILL_ITEMS: usize = 4096;

/// The most chunks per worker a submission keeps outstanding (queued, running, or done and
/// not taken yet)...
const WINDOW_CHUNKS: usize = 256;
/// ...and the most items per worker, so that a map of big chunks keeps a bounded number of
/// encoded frames alive and the allocator hands the memory of answered ones to the next
/// (a 500,000-item map of 1,024-item chunks kept all 489 frames, 4 MiB faulted in afresh, alive
/// at once)...
const WINDOW_ITEMS: usize = 48 * 1024;
/// ...but never fewer chunks per worker than this, so that every worker has a next one ready.
const MIN_WINDOW_CHUNKS: usize = 4;

/// Where a submission's items come from.
pub(crate) enum Items<A> {
    /// A map's items, all collected already: each chunk is encoded straight from the vector,
    /// with no copy into a chunk of its own and no dynamic call per item.
    Collected(vec::IntoIter<A>),
    /// The `imap` streams' iterator, which may be long or endless.
    Streamed(Box<dyn Iterator<Item = A> + Send>),
}

/// A submission of many items: cut into chunks and queued a window at a time, so a long or
/// endless iterator is consumed only as fast as the workers go.
pub(crate) struct Batches<A, R> {
    func: TaskFn,
    items: Items<A>,
    chunksize: usize,
    /// Workers in the pool (the window is per worker).
    workers: usize,
    next_chunk: usize,
    next_item: usize,
    exhausted: bool,
    results: Results<R>,
}

impl<A, R> Batches<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared>,
        func: TaskFn,
        items: Items<A>,
        chunksize: usize,
    ) -> Self {
        let workers = shared.config.workers;
        debug_assert!(chunksize > 0, "zero chunk size");
        Self {
            func,
            items,
            chunksize,
            workers,
            next_chunk: 0,
            next_item: 0,
            exhausted: false,
            results: Results::new(shared, true),
        }
    }

    /// Changes the chunk size (at least 1); only before the first poll.
    pub(crate) fn set_chunksize(&mut self, chunksize: usize) {
        debug_assert_eq!(self.next_chunk, 0, "chunk size changed after submission");
        debug_assert!(chunksize > 0, "zero chunk size");
        self.chunksize = chunksize;
    }

    /// How many chunks may be outstanding (queued, running, or done and not taken) at once:
    /// [`WINDOW_CHUNKS`] per worker, and no more than [`WINDOW_ITEMS`] items per worker
    /// (but at least [`MIN_WINDOW_CHUNKS`] chunks per worker).
    fn window(&self) -> usize {
        let by_items = (WINDOW_ITEMS / self.chunksize).max(MIN_WINDOW_CHUNKS);
        self.workers.max(1) * by_items.min(WINDOW_CHUNKS)
    }

    /// Encodes and queues chunks until the window is full, the items run out, or
    /// [`REFILL_ITEMS`] items were encoded; returns `true` in the last case (more to encode
    /// now).
    fn refill(&mut self) -> bool {
        let mut jobs = Vec::new();
        let mut encoded = 0;
        let mut more = false;
        let window = self.window();
        while !self.exhausted && self.results.outstanding() < window {
            if encoded >= REFILL_ITEMS {
                more = true;
                break;
            }
            let taken: Vec<A>;
            let chunk: &[A] = match &mut self.items {
                Items::Collected(items) => &items.as_slice()[..self.chunksize.min(items.len())],
                Items::Streamed(items) => {
                    taken = items.by_ref().take(self.chunksize).collect();
                    &taken
                }
            };
            let len = chunk.len();
            let job = (len > 0)
                .then(|| {
                    self.results
                        .encode(self.func, self.next_chunk, self.next_item, chunk)
                })
                .flatten();
            if let Items::Collected(items) = &mut self.items
                && len > 0
            {
                // Drops the encoded items (a pointer move for plain data).
                items.nth(len - 1);
            }
            if len < self.chunksize {
                self.exhausted = true;
            }
            if len == 0 {
                break;
            }
            self.next_chunk += 1;
            self.next_item += len;
            encoded += len;
            jobs.extend(job);
        }
        self.results.submit(jobs);
        more
    }

    /// The next chunk's results, in completion order; `None` when all are in.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, ChunkResults<R>)>> {
        let mut more = self.refill();
        let polled = self.results.poll_chunk(cx);
        if let Poll::Ready(Some(_)) = polled {
            more = self.refill();
        }
        if more && polled.is_pending() {
            // Let the drivers send what is queued, then come back to encode the rest.
            cx.waker().wake_by_ref();
        }
        polled
    }
}
