//! [`JoinableQueue<T>`]: a [`Queue`] whose get hands out a [`Task`], acknowledged on the
//! server by [`Task::task_done`], and whose [`join`](JoinableQueue::join) waits until every
//! stored item is done.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{Queue, pull_deadline};
use crate::error::{GetError, GetTimeoutError, JoinTimeoutError, RemoteError, TaskDoneError};

/// How often [`JoinableQueue::join`] asks the server how many items are left, at most.
const JOIN_POLL_MAX: Duration = Duration::from_millis(200);

/// A distributed [`Queue`] with at-least-once processing: [`get`](Self::get) gives a [`Task`]
/// whose [`task_done`](Task::task_done) acknowledges it, and an item whose task is never
/// done (its holder died, hung, or dropped it) is delivered again.
///
/// Derefs to [`Queue`] for `put`, `len`, `shutdown`...
///
/// # Crash behavior
/// An item taken by a process that dies before `task_done` is delivered to another getter
/// after the queue's ack timeout ([`QueueBuilder::ack_timeout`](super::QueueBuilder)); a
/// [`Task`] dropped without `task_done` is handed back at once. Long work should call
/// [`Task::in_progress`] more often than the ack timeout.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let jobs = nats.joinable_queue::<String>("jobs").await?;
/// jobs.put("resize a.png".into()).await?;
/// let task = jobs.get().await?;
/// println!("working on {}", *task);
/// task.task_done().await?;
/// jobs.join().await?;
/// # Ok(()) }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.queue).finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> JoinableQueue<T> {
    pub(crate) fn from_queue(queue: Queue<T>) -> Self {
        Self { queue }
    }

    /// Items put and not yet done, on every host (waiting or taken).
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn unfinished_tasks(&self) -> Result<usize, RemoteError> {
        self.queue.len().await
    }

    /// Waits until every item put is done ([`Task::task_done`]), on every host.
    ///
    /// The server is asked for the count with a growing interval (up to 200 ms).
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (only reads).
    pub async fn join(&self) -> Result<(), RemoteError> {
        match self.join_deadline(None).await {
            Ok(()) => Ok(()),
            Err(JoinTimeoutError::Remote(e)) => Err(e),
            Err(JoinTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// As [`join`](Self::join), for at most `timeout`.
    ///
    /// # Errors
    /// [`JoinTimeoutError::Timeout`], or the server failed.
    ///
    /// # Cancel safety
    /// Cancel safe (only reads).
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        self.join_deadline(Some(Instant::now() + timeout)).await
    }

    async fn join_deadline(&self, deadline: Option<Instant>) -> Result<(), JoinTimeoutError> {
        let mut pause = Duration::from_millis(2);
        loop {
            if self.queue.engine.stored().await? == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() + pause > d) {
                return Err(JoinTimeoutError::Timeout);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(JOIN_POLL_MAX);
        }
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// Takes the next item as a [`Task`], waiting for one.
    ///
    /// # Errors
    /// As [`Queue::get`]; a message of the wrong type is terminated on the server (never
    /// delivered again) and reported as [`GetError::Decode`].
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that no item is lost: an item the server handed to a dropped
    /// get is delivered again after the ack timeout.
    pub async fn get(&self) -> Result<Task<T>, GetError> {
        match self.get_deadline(None).await {
            Ok(v) => Ok(v),
            Err(GetTimeoutError::Failed(e)) => Err(e),
            Err(GetTimeoutError::Closed | GetTimeoutError::Timeout) => Err(GetError::Closed),
        }
    }

    /// As [`get`](Self::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`GetTimeoutError::Timeout`], or as [`get`](Self::get).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<Task<T>, GetTimeoutError> {
        self.get_deadline(Some(Instant::now() + timeout)).await
    }

    async fn get_deadline(&self, deadline: Option<Instant>) -> Result<Task<T>, GetTimeoutError> {
        let msg = pull_deadline(&self.queue.engine, deadline).await?;
        match super::decode::<T>(&msg.payload) {
            Ok(value) => Ok(Task {
                value: Some(value),
                msg: Some(msg),
            }),
            Err(e) => {
                let _ = msg.ack_with(AckKind::Term).await;
                Err(GetTimeoutError::Failed(e))
            }
        }
    }
}

/// An item taken from a [`JoinableQueue`], not yet acknowledged. Derefs to the item.
///
/// [`task_done`](Self::task_done) acknowledges it (the server forgets it);
/// [`in_progress`](Self::in_progress) resets the server's ack timer for long work. Dropped
/// without `task_done`, it is handed back to the queue at once (a negative acknowledgement),
/// to be delivered again.
pub struct Task<T> {
    // `Some` until `task_done` takes it.
    value: Option<T>,
    msg: Option<jetstream::Message>,
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("delivery", &self.delivery())
            .finish_non_exhaustive()
    }
}

impl<T> Deref for Task<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
            .as_ref()
            .expect("a task holds its item until task_done")
    }
}

impl<T> DerefMut for Task<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.value
            .as_mut()
            .expect("a task holds its item until task_done")
    }
}

impl<T> Task<T> {
    /// Which delivery of this item this is: 1 the first time, more after a redelivery.
    pub fn delivery(&self) -> u64 {
        self.msg
            .as_ref()
            .and_then(|m| m.info().ok())
            .map_or(1, |i| i.delivered.max(1) as u64)
    }

    /// Tells the server the work goes on: the ack timeout starts again.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn in_progress(&self) -> Result<(), RemoteError> {
        match &self.msg {
            Some(msg) => msg
                .ack_with(AckKind::Progress)
                .await
                .map_err(|e| RemoteError::new("progress ack", e)),
            None => Ok(()),
        }
    }

    /// Marks the item done and returns it: the server acknowledges it and it will not be
    /// delivered again.
    ///
    /// # Errors
    /// The server did not confirm the acknowledgement (it may be delivered again).
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have acknowledged the item.
    pub async fn task_done(mut self) -> Result<T, TaskDoneError> {
        let msg = self.msg.take().expect("a task is acknowledged once");
        msg.double_ack()
            .await
            .map_err(|e| TaskDoneError(RemoteError::new("ack", e)))?;
        // `self` has no message left, so its drop sends nothing.
        Ok(self
            .value
            .take()
            .expect("a task holds its item until task_done"))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(msg) = self.msg.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}
