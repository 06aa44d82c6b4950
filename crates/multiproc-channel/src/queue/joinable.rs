//! [`JoinableQueue`]: a [`Queue`] that also counts unfinished tasks.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::time::Duration;

use multiproc_core::wait::deadline_after;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::engine::Engine;
use super::error::{JoinTimeoutError, TaskDoneError};
use super::{Queue, QueueBuilder};

/// A [`Queue`] whose consumers report each message done, so that someone can wait until every
/// message put has been processed (Python's `multiprocessing.JoinableQueue`).
///
/// Every message put (by any process, through any handle, [`put`](Queue::put), `try_put`,
/// `put_timeout` or the [`sink`](Queue::sink)) counts as an unfinished task until some process
/// calls [`task_done`](Self::task_done) for it; [`join`](Self::join) waits until none is
/// unfinished. A message taken by `get` that could not be delivered (wrong type...) is counted
/// done automatically, since its consumer never saw it.
///
/// `JoinableQueue<T>` dereferences to [`Queue<T>`]: every queue operation is available. Like a
/// `Queue`, it is a handle that can be cloned, passed to a spawned process or sent in a message.
///
/// # Crash behavior
/// A consumer killed between taking a message and calling `task_done` leaves that task
/// unfinished forever, so `join` would wait forever: use
/// [`join_timeout`](Self::join_timeout) where consumers may die.
///
/// # Examples
/// ```
/// use multiproc::JoinableQueue;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = JoinableQueue::new()?;
/// for job in 0..3u32 {
///     queue.put(job).await?;
/// }
/// let worker = queue.clone();
/// tokio::spawn(async move {
///     while let Ok(_job) = worker.get().await {
///         worker.task_done().unwrap();
///     }
/// });
/// queue.join().await?;
/// assert_eq!(queue.unfinished_tasks(), 0);
/// assert!(queue.task_done().is_err());
/// # queue.shutdown();
/// # Ok(())
/// # }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    pub(crate) fn from_queue(queue: Queue<T>) -> Self {
        Self { queue }
    }

    /// Creates an unbounded joinable queue.
    ///
    /// # Errors
    /// When the process is out of descriptors or memory.
    pub fn new() -> io::Result<Self> {
        Queue::builder().build_joinable()
    }

    /// Creates a joinable queue that holds at most `capacity` messages.
    ///
    /// # Errors
    /// As [`Queue::bounded`]: `capacity` zero or above 65,536, or out of descriptors or memory.
    pub fn bounded(capacity: usize) -> io::Result<Self> {
        Queue::builder().capacity(capacity).build_joinable()
    }

    /// A builder for a joinable queue with a custom capacity or message size limit; finish it
    /// with [`QueueBuilder::build_joinable`].
    pub fn builder() -> QueueBuilder<T> {
        Queue::builder()
    }

    /// Marks one message as processed.
    ///
    /// # Errors
    /// [`TaskDoneError`] when no task is unfinished (called more times than messages were
    /// put); nothing changes then.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        if self.queue.engine.finish_task() {
            Ok(())
        } else {
            Err(TaskDoneError)
        }
    }

    /// Number of messages put and not yet marked done, across all processes.
    pub fn unfinished_tasks(&self) -> usize {
        usize::try_from(self.queue.engine.unfinished()).unwrap_or(usize::MAX)
    }

    /// Waits until every message put has been marked done; returns at once when none is
    /// unfinished. [Shutting the queue down](Queue::shutdown) does not end a join: consumers
    /// still take and finish what is left.
    ///
    /// # Errors
    /// Only when the system fails (out of descriptors, reactor failure).
    ///
    /// # Cancel safety
    /// Cancel safe: joining consumes nothing.
    pub async fn join(&self) -> io::Result<()> {
        self.queue.engine.join().await
    }

    /// Like [`join`](Self::join), but gives up after `timeout`.
    ///
    /// # Errors
    /// [`JoinTimeoutError::Timeout`] when tasks were still unfinished at the deadline, or
    /// [`JoinTimeoutError::Io`] as for [`join`](Self::join).
    ///
    /// # Panics
    /// When called outside a tokio runtime with the time driver enabled.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`join`](Self::join).
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        match tokio::time::timeout(timeout, self.join()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(JoinTimeoutError::Io(e)),
            Err(_) => Err(JoinTimeoutError::Timeout),
        }
    }

    /// Blocks the thread until every message put has been marked done: the twin of
    /// [`join`](Self::join) for code outside a runtime. Do not call it from async code.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn blocking_join(&self) -> io::Result<()> {
        self.queue.engine.blocking_join(None).map(drop)
    }

    /// Like [`blocking_join`](Self::blocking_join), but gives up after `timeout`. A `timeout`
    /// too large for the clock (`Duration::MAX`) waits forever.
    ///
    /// # Errors
    /// As [`join_timeout`](Self::join_timeout).
    pub fn blocking_join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        match self.queue.engine.blocking_join(deadline_after(timeout)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(JoinTimeoutError::Timeout),
            Err(e) => Err(JoinTimeoutError::Io(e)),
        }
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
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
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished_tasks", &self.unfinished_tasks())
            .finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.engine.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let engine = Engine::deserialize(deserializer)?;
        if !engine.is_joinable() {
            return Err(serde::de::Error::custom(
                "expected a JoinableQueue, got a Queue",
            ));
        }
        Ok(Self::from_queue(Queue::from_engine(engine)))
    }
}
