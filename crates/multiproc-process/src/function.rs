//! What a child can run: a `fn` or non-capturing closure, returning a value or a future.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Marker: the function returns its result directly.
#[derive(Debug)]
pub enum Returns {}
/// Marker: the function returns a future of its result (an `async fn` or `async` block).
#[derive(Debug)]
pub enum ReturnsFuture {}

/// The return value of a child function: a serde value, or a future of one.
///
/// Implemented for every `R: Serialize + DeserializeOwned` (marker [`Returns`]) and every
/// `Future` whose output is such a value (marker [`ReturnsFuture`]); you never implement it.
pub trait ChildOutput<M>: 'static {
    /// The value sent back to the parent.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Whether the child needs a tokio runtime to produce the value.
    const ASYNC: bool;

    /// Turns the return value into the value to send, running it on `runtime` if needed.
    fn resolve(self, runtime: Option<&tokio::runtime::Runtime>) -> Self::Output;
}

impl<R> ChildOutput<Returns> for R
where
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = R;
    const ASYNC: bool = false;

    fn resolve(self, _runtime: Option<&tokio::runtime::Runtime>) -> R {
        self
    }
}

impl<F> ChildOutput<ReturnsFuture> for F
where
    F: Future + 'static,
    F::Output: Serialize + DeserializeOwned + Send + 'static,
{
    type Output = F::Output;
    const ASYNC: bool = true;

    fn resolve(self, runtime: Option<&tokio::runtime::Runtime>) -> F::Output {
        runtime
            .expect("async child function without a runtime")
            .block_on(self)
    }
}
