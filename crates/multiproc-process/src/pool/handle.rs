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
/// The task runs whether or not the handle is polled, like Python's `apply_async`.
///
/// # Cancel safety
/// Dropping the handle before the task finished cancels it: a task not started yet never
/// runs, and a worker running it (and nothing else) is killed and replaced. To wait with a
/// deadline without cancelling, use [`result_timeout`](Self::result_timeout).
#[must_use = "dropping a task handle cancels the task"]
pub struct TaskHandle<R> {
    results: Results<R>,
    error: Option<PoolError>,
}

impl<R: DeserializeOwned + Send + 'static> TaskHandle<R> {
    pub(crate) fn new(results: Results<R>) -> Self {
        Self {
            results,
            error: None,
        }
    }

    /// True when the result is ready (Python's `AsyncResult.ready()`): awaiting the handle
    /// will not wait.
    pub fn is_finished(&self) -> bool {
        self.error.is_some() || self.results.outstanding() == 0 || self.results.has_ready()
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

impl<R> std::fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskHandle").finish_non_exhaustive()
    }
}
