//! [`QueueBackend`]: one interface over the local `multiproc::Queue` and the distributed
//! [`Queue`], so that code written once runs on either; the backend is chosen where the queue
//! is made. (Both also give a `Stream` and a `Sink`, the other way to write code for either.)

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{GetError, PutError};
use crate::queue::Queue;

/// A queue of `T` on some backend: the local `multiproc::Queue` (processes of one host) or the
/// distributed [`Queue`] (any host).
///
/// # Examples
///
/// ```no_run
/// use multiproc_nats::QueueBackend;
///
/// async fn double_all<Q: QueueBackend<u64>>(input: Q, output: Q, n: usize) {
///     for _ in 0..n {
///         let x = input.get().await.unwrap();
///         output.put(x * 2).await.unwrap();
///     }
/// }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // On one host...
/// let (a, b) = (multiproc_channel::Queue::new()?, multiproc_channel::Queue::new()?);
/// a.put(1).await?;
/// double_all(a, b, 1).await;
/// // ...or across hosts, the same function.
/// let nats = multiproc_nats::Nats::connect("nats://127.0.0.1:4222").await?;
/// let (a, b) = (nats.queue::<u64>("in").await?, nats.queue::<u64>("out").await?);
/// a.put(1).await?;
/// double_all(a, b, 1).await;
/// # Ok(()) }
/// ```
pub trait QueueBackend<T>: Clone + Send + Sync + 'static {
    /// Why a put failed (it gives the item back).
    type PutError: std::error::Error + Send + 'static;
    /// Why a get failed.
    type GetError: std::error::Error + Send + 'static;

    /// Puts `item`, waiting for room (see each backend's `put`, and its cancel safety).
    fn put(&self, item: T) -> impl Future<Output = Result<(), Self::PutError>> + Send;

    /// Takes the next item, waiting for one (see each backend's `get`).
    fn get(&self) -> impl Future<Output = Result<T, Self::GetError>> + Send;
}

impl<T> QueueBackend<T> for Queue<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type PutError = PutError<T>;
    type GetError = GetError;

    fn put(&self, item: T) -> impl Future<Output = Result<(), PutError<T>>> + Send {
        Queue::put(self, item)
    }

    fn get(&self) -> impl Future<Output = Result<T, GetError>> + Send {
        Queue::get(self)
    }
}

impl<T> QueueBackend<T> for multiproc_channel::Queue<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type PutError = multiproc_channel::error::PutError<T>;
    type GetError = multiproc_channel::error::GetError;

    fn put(
        &self,
        item: T,
    ) -> impl Future<Output = Result<(), multiproc_channel::error::PutError<T>>> + Send {
        multiproc_channel::Queue::put(self, item)
    }

    fn get(&self) -> impl Future<Output = Result<T, multiproc_channel::error::GetError>> + Send {
        multiproc_channel::Queue::get(self)
    }
}
