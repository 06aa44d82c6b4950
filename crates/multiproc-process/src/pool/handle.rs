//! A submitted task: Python's `apply_async` and its `AsyncResult`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::error::PoolError;
use super::submit::Results;

/// A task submitted with [`Pool::submit`](super::Pool::submit); `.await` it for the result.
///
/// The task runs whether or not the handle is polled or kept, like Python's `apply_async`.
/// **Dropping the handle detaches the task** (as dropping a tokio `JoinHandle` does): it still
/// runs, its result is discarded, and [`Pool::close`](super::Pool::close) followed by
/// [`Pool::join`](super::Pool::join) waits for it. To stop a task, call
/// [`abort`](Self::abort).
///
/// # Cancel safety
/// Awaiting is cancel safe: dropping the `.await` (or a [`result_timeout`](Self::result_timeout)
/// future) loses nothing; the handle still holds the task, and dropping the handle detaches it.
pub struct TaskHandle<R> {
    results: Results<R>,
    error: Option<PoolError>,
}

impl<R> TaskHandle<R> {
    /// Cancels the task (tokio's `JoinHandle::abort`). A task not started yet never runs: one
    /// still in the pool's queue is dropped from it, and one already handed to a worker (a
    /// worker running short tasks is given the next ones ahead) is skipped there. A task
    /// running now is stopped by killing its worker process (a fresh one takes its place, and
    /// the other tasks that worker held go to another): the task stops wherever it is, without
    /// unwinding, as with `SIGKILL`. A task already finished is not affected.
    ///
    /// The kill never fails another task: one the worker had just started as the kill came
    /// (the aborted task having finished a moment before) runs again on another worker.
    ///
    /// Awaiting the handle afterwards gives an error for which
    /// [`PoolError::is_cancelled`] is true, or the task's own outcome if it had arrived before
    /// the abort. Calling it again does nothing.
    pub fn abort(&self) {
        self.results.cancel();
    }
}

impl<R: DeserializeOwned + Send + 'static> TaskHandle<R> {
    pub(crate) fn new(results: Results<R>) -> Self {
        Self {
            results: results.detach_on_drop(),
            error: None,
        }
    }

    /// True when the result is ready (Python's `AsyncResult.ready()`): awaiting the handle
    /// will not wait. True after [`abort`](Self::abort).
    pub fn is_finished(&self) -> bool {
        self.error.is_some()
            || self.results.outstanding() == 0
            || self.results.has_ready()
            || self.results.is_cancelled()
    }

    /// Waits at most `timeout` for the result (Python's `AsyncResult.get(timeout)`).
    ///
    /// # Errors
    /// The task's error, or a timeout error ([`PoolError::is_timeout`]) after which the task
    /// keeps running and the handle can be awaited again.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping this future loses nothing; the handle still holds the task.
    pub async fn result_timeout(&mut self, timeout: Duration) -> Result<R, PoolError> {
        match tokio::time::timeout(timeout, poll_fn(|cx| self.poll_result(cx))).await {
            Ok(result) => result,
            Err(_) => Err(PoolError::timed_out()),
        }
    }

    fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, PoolError>> {
        if let Some(error) = &self.error {
            return Poll::Ready(Err(error.clone()));
        }
        match self.results.poll_chunk(cx) {
            Poll::Ready(Some((_, results))) => {
                let result = results
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Err(PoolError::bad_result("no result for the task".into())));
                if let Err(e) = &result {
                    self.error = Some(e.clone());
                }
                Poll::Ready(result)
            }
            // The result was already taken.
            Poll::Ready(None) => Poll::Ready(Err(PoolError::bad_result(
                "the result was already taken".into(),
            ))),
            Poll::Pending if self.results.is_cancelled() => {
                let error = PoolError::cancelled();
                self.error = Some(error.clone());
                Poll::Ready(Err(error))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R> Unpin for TaskHandle<R> {}

impl<R: DeserializeOwned + Send + 'static> Future for TaskHandle<R> {
    type Output = Result<R, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_result(cx)
    }
}

/// A [`TaskHandle`] that aborts its task when dropped unfinished: the future of
/// [`Pool::apply`](super::Pool::apply), which is cancelled by dropping like any future.
pub(crate) struct AbortOnDrop<R>(pub(crate) TaskHandle<R>);

impl<R: DeserializeOwned + Send + 'static> Future for AbortOnDrop<R> {
    type Output = Result<R, PoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        if self.0.results.outstanding() > 0 {
            self.0.abort();
        }
    }
}

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").finish_non_exhaustive()
    }
}
