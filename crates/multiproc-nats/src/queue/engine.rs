//! The untyped engine under [`Queue`](super::Queue) and [`JoinableQueue`](super::JoinableQueue):
//! one JetStream work-queue stream and one durable pull consumer that every getter shares.
//!
//! How each queue operation maps to JetStream:
//! - put: publish to the stream's subject and wait for the server's acknowledgement (the item is
//!   stored). A bounded queue is a stream with `max_msgs` = capacity and `discard: new`: a put
//!   into a full stream is refused by the server ("maximum messages exceeded") and retried with
//!   a backoff until there is room. Since a work-queue stream removes an item only when it is
//!   acknowledged, the capacity counts items taken but not yet done, on every host.
//! - get: a pull request for one message on the shared durable consumer (the server hands each
//!   message to one puller), then an acknowledgement.
//! - shutdown: the stream's subject is moved to a private one, so a publish finds no stream
//!   (`Closed`) while the items already stored can still be taken; a get that finds the queue
//!   empty and the subject moved returns `Closed`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::StreamExt;

use crate::connect::Nats;
use crate::error::RemoteError;

/// The JetStream error code of a publish refused because the stream is full.
const STREAM_STORE_FAILED: u64 = 10077;
/// The longest a single pull request waits before the getter re-checks for shutdown.
const PULL_SLICE: Duration = Duration::from_secs(1);

/// Options of a queue stream.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) capacity: Option<usize>,
    pub(crate) max_message_size: usize,
    pub(crate) ack_timeout: Duration,
    pub(crate) max_deliveries: Option<u32>,
}

/// Outcome of one publish.
pub(crate) enum Published {
    Stored,
    Full,
    Closed,
}

/// A queue stream and its shared consumer.
pub(crate) struct Engine {
    pub(crate) name: String,
    pub(crate) options: Options,
    js: jetstream::Context,
    stream_name: String,
    subject: String,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("stream", &self.stream_name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates the stream and consumer if they do not exist, or opens them.
    pub(crate) async fn open(
        nats: &Nats,
        name: &str,
        options: Options,
    ) -> Result<Self, RemoteError> {
        let stream_name = nats.stream_name("q", name);
        let subject = nats.subject("q", name);
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_messages: options.capacity.map_or(-1, |c| c as i64),
            max_message_size: i32::try_from(options.max_message_size).unwrap_or(i32::MAX),
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = nats
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| RemoteError::new("stream creation", e))?;
        let consumer = stream
            .get_or_create_consumer(
                "get",
                pull::Config {
                    durable_name: Some("get".to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: options.ack_timeout,
                    max_deliver: options.max_deliveries.map_or(-1, i64::from),
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| RemoteError::new("consumer creation", e))?;
        Ok(Self {
            name: name.to_string(),
            options,
            js: nats.js.clone(),
            stream_name,
            subject,
            consumer,
            closed: AtomicBool::new(false),
        })
    }

    /// Publishes one encoded item and waits for the server to store it (or refuse it).
    pub(crate) async fn publish(&self, payload: Bytes) -> Result<Published, RemoteError> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(Published::Closed);
        }
        let ack = self
            .js
            .publish(self.subject.clone(), payload)
            .await
            .map_err(|e| RemoteError::new("publish", e))?;
        match ack.await {
            Ok(_) => Ok(Published::Stored),
            Err(e) => {
                use async_nats::jetstream::context::PublishErrorKind;
                if e.kind() == PublishErrorKind::StreamNotFound {
                    self.closed.store(true, Ordering::Relaxed);
                    return Ok(Published::Closed);
                }
                let full = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<jetstream::Error>())
                    .is_some_and(|j| {
                        j.error_code().0 == STREAM_STORE_FAILED
                            || j.to_string().contains("maximum messages")
                    });
                if full {
                    Ok(Published::Full)
                } else {
                    Err(RemoteError::new("publish", e))
                }
            }
        }
    }

    /// Takes one message, waiting at most `wait` (`None`: do not wait at all).
    pub(crate) async fn pull(
        &self,
        wait: Option<Duration>,
    ) -> Result<Option<jetstream::Message>, RemoteError> {
        let next = match wait {
            None => {
                let mut batch = self
                    .consumer
                    .fetch()
                    .max_messages(1)
                    .messages()
                    .await
                    .map_err(|e| RemoteError::new("fetch", e))?;
                batch.next().await
            }
            Some(wait) => {
                let wait = wait.clamp(Duration::from_millis(10), PULL_SLICE);
                let mut batch = self
                    .consumer
                    .batch()
                    .max_messages(1)
                    .expires(wait)
                    .messages()
                    .await
                    .map_err(|e| RemoteError::new("fetch", e))?;
                batch.next().await
            }
        };
        match next {
            None => Ok(None),
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => Err(RemoteError::new("fetch", e)),
        }
    }

    /// Number of items stored: waiting, and taken but not yet acknowledged.
    pub(crate) async fn stored(&self) -> Result<u64, RemoteError> {
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| RemoteError::new("stream info", e))?;
        Ok(stream.cached_info().state.messages)
    }

    /// True once the queue was shut down (checked on the server, then cached).
    pub(crate) async fn check_closed(&self) -> Result<bool, RemoteError> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| RemoteError::new("stream info", e))?;
        let closed = !stream.cached_info().config.subjects.contains(&self.subject);
        if closed {
            self.closed.store(true, Ordering::Relaxed);
        }
        Ok(closed)
    }

    /// The cached shutdown flag (no round trip).
    pub(crate) fn is_closed_cached(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Moves the stream's subject away: no more puts, gets drain what is stored.
    pub(crate) async fn shutdown(&self) -> Result<(), RemoteError> {
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| RemoteError::new("stream info", e))?;
        let mut config = stream.cached_info().config.clone();
        config.subjects = vec![format!("{}-shutdown", self.subject)];
        self.js
            .update_stream(config)
            .await
            .map_err(|e| RemoteError::new("stream update", e))?;
        self.closed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the stream and everything in it.
    pub(crate) async fn delete(&self) -> Result<(), RemoteError> {
        self.js
            .delete_stream(&self.stream_name)
            .await
            .map_err(|e| RemoteError::new("stream deletion", e))?;
        self.closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The backoff between retries of a put into a full queue: doubles from 1 ms up to 50 ms.
pub(crate) fn full_backoff(attempt: u32) -> Duration {
    Duration::from_millis(1u64 << attempt.min(6)).min(Duration::from_millis(50))
}
