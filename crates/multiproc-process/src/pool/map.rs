//! `map`, `starmap` and the `imap` streams: many items, results in order or as they finish.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::builder::CHUNKSIZE_ZERO;
use super::error::PoolError;
use super::submit::{Batches, ChunkResults};

/// Sets the chunk size of a submission not started yet; zero replaces it with the error.
fn set_chunksize<T, E, A, R>(
    submission: &mut Result<T, E>,
    chunksize: usize,
    batches: impl FnOnce(&mut T) -> &mut Batches<A, R>,
    error: impl FnOnce(PoolError) -> E,
) where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    match (&mut *submission, chunksize) {
        (Ok(_), 0) => *submission = Err(error(PoolError::invalid_option(CHUNKSIZE_ZERO))),
        (Ok(started), n) => batches(started).set_chunksize(n),
        (Err(_), _) => {}
    }
}

/// Results of a submission in input order, holding back chunks that finish early.
struct Ordered<A, R> {
    batches: Batches<A, R>,
    early: BTreeMap<usize, ChunkResults<R>>,
    current: ChunkResults<R>,
    next_chunk: usize,
}

impl<A, R> Ordered<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    fn new(batches: Batches<A, R>) -> Self {
        Self {
            batches,
            early: BTreeMap::new(),
            current: ChunkResults::default(),
            next_chunk: 0,
        }
    }

    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<R, PoolError>>> {
        loop {
            if let Some(result) = self.current.next() {
                return Poll::Ready(Some(result));
            }
            if let Some(chunk) = self.early.remove(&self.next_chunk) {
                self.current = chunk;
                self.next_chunk += 1;
                continue;
            }
            match self.batches.poll_chunk(cx) {
                Poll::Ready(Some((index, results))) => {
                    self.early.insert(index, results);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Results of a submission in completion order.
struct Unordered<A, R> {
    batches: Batches<A, R>,
    current: ChunkResults<R>,
}

impl<A, R> Unordered<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<R, PoolError>>> {
        loop {
            if let Some(result) = self.current.next() {
                return Poll::Ready(Some(result));
            }
            match self.batches.poll_chunk(cx) {
                Poll::Ready(Some((_, results))) => self.current = results,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A pending [`Pool::map`](super::Pool::map) or [`Pool::starmap`](super::Pool::starmap):
/// set options, then `.await` it for the results in input order.
///
/// Nothing is submitted until it is awaited.
#[must_use = "a map does nothing until it is awaited"]
pub struct Map<A, R> {
    batches: Result<Batches<A, R>, PoolError>,
    len: usize,
    timeout: Option<Duration>,
}

impl<A, R> Map<A, R> {
    pub(crate) fn new(batches: Result<Batches<A, R>, PoolError>, len: usize) -> Self {
        Self {
            batches,
            len,
            timeout: None,
        }
    }
}

impl<A, R> Map<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// Sends the items to the workers `chunksize` at a time (default: the pool's chunk size,
    /// else Python's choice, about four chunks per worker, at most 1,024 items). Bigger chunks
    /// cost fewer messages; smaller ones balance uneven tasks better. Zero makes the map fail
    /// ([`PoolError::is_invalid_option`]) without running anything.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        set_chunksize(&mut self.batches, chunksize, |b| b, |e| e);
        self
    }

    /// Gives up after `timeout`: the map then fails with a timeout error
    /// ([`PoolError::is_timeout`]) and its unfinished work is cancelled.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<A, R> IntoFuture for Map<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Output = Result<Vec<R>, PoolError>;
    type IntoFuture = MapFuture<A, R>;

    fn into_future(self) -> MapFuture<A, R> {
        MapFuture {
            ordered: self.batches.map(Ordered::new),
            values: Vec::with_capacity(self.len),
            deadline: self.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        }
    }
}

/// The future of an awaited [`Map`].
///
/// # Cancel safety
/// Dropping it cancels the map: chunks not yet started are skipped, and a worker running only
/// this map's chunks is killed and replaced, so the work stops promptly.
#[must_use = "futures do nothing unless polled"]
pub struct MapFuture<A, R> {
    ordered: Result<Ordered<A, R>, PoolError>,
    values: Vec<R>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

// No field is pinned structurally (the deadline is boxed).
impl<A, R> Unpin for MapFuture<A, R> {}

impl<A, R> Future for MapFuture<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Output = Result<Vec<R>, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let ordered = match &mut this.ordered {
            Ok(ordered) => ordered,
            Err(e) => return Poll::Ready(Err(e.clone())),
        };
        loop {
            // Whole chunks without failures are moved in one go.
            if let Some(values) = ordered.current.take_if_all_ok() {
                this.values.extend(values);
            }
            match ordered.poll_next_item(cx) {
                Poll::Ready(Some(Ok(value))) => this.values.push(value),
                // A task lost with a worker is not the failure: the task that was running is.
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into_cause())),
                Poll::Ready(None) => return Poll::Ready(Ok(std::mem::take(&mut this.values))),
                Poll::Pending => break,
            }
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(PoolError::timed_out()));
        }
        Poll::Pending
    }
}

/// The results of [`Pool::imap`](super::Pool::imap) as a [`Stream`], in input order.
///
/// Each item is `Ok(value)` or the error of that item's task (its panic, its worker's death...);
/// one failure does not end the stream. Items are consumed from the input only as fast as the
/// workers go.
///
/// # Cancel safety
/// Dropping the stream cancels the work not yet done, as for [`MapFuture`].
#[must_use = "streams do nothing unless polled"]
pub struct Imap<A, R> {
    inner: Result<Ordered<A, R>, Option<PoolError>>,
}

impl<A, R> Imap<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(batches: Result<Batches<A, R>, PoolError>) -> Self {
        Self {
            inner: batches.map(Ordered::new).map_err(Some),
        }
    }

    /// Sends the items to the workers `chunksize` at a time (default: the pool's chunk size,
    /// else 1, as in Python). Call before the first poll. Zero makes the stream yield one
    /// error ([`PoolError::is_invalid_option`]) and end, without running anything.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        set_chunksize(&mut self.inner, chunksize, |o| &mut o.batches, Some);
        self
    }
}

impl<A, R> Unpin for Imap<A, R> {}

impl<A, R> Stream for Imap<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, PoolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().inner {
            Ok(ordered) => ordered.poll_next_item(cx),
            // A pool that takes no work yields its error once, then ends.
            Err(error) => Poll::Ready(error.take().map(Err)),
        }
    }
}

/// The results of [`Pool::imap_unordered`](super::Pool::imap_unordered) as a [`Stream`], in the
/// order they finish.
///
/// As [`Imap`], but without holding back results that finish early; the errors say which
/// item failed ([`PoolError::item`]).
///
/// # Cancel safety
/// Dropping the stream cancels the work not yet done, as for [`MapFuture`].
#[must_use = "streams do nothing unless polled"]
pub struct ImapUnordered<A, R> {
    inner: Result<Unordered<A, R>, Option<PoolError>>,
}

impl<A, R> ImapUnordered<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(batches: Result<Batches<A, R>, PoolError>) -> Self {
        Self {
            inner: batches
                .map(|batches| Unordered {
                    batches,
                    current: ChunkResults::default(),
                })
                .map_err(Some),
        }
    }

    /// Sends the items to the workers `chunksize` at a time (default: the pool's chunk size,
    /// else 1, as in Python). Call before the first poll. Zero makes the stream yield one
    /// error ([`PoolError::is_invalid_option`]) and end, without running anything.
    pub fn chunksize(mut self, chunksize: usize) -> Self {
        set_chunksize(&mut self.inner, chunksize, |u| &mut u.batches, Some);
        self
    }
}

impl<A, R> Unpin for ImapUnordered<A, R> {}

impl<A, R> Stream for ImapUnordered<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Item = Result<R, PoolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().inner {
            Ok(unordered) => unordered.poll_next_item(cx),
            Err(error) => Poll::Ready(error.take().map(Err)),
        }
    }
}
