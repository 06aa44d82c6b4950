//! Errors of [`Queue`](crate::Queue) and [`JoinableQueue`](crate::JoinableQueue) operations,
//! re-exported from [`crate::error`].
//!
//! Every error of an operation that took a message gives the message back. `Debug` never
//! requires `T: Debug`.

use std::fmt;
use std::io;

use multiproc_core::error::{DecodeError, EncodeError};
use multiproc_core::transport::packet::PacketRecvError;

/// What went wrong in a [`put`](crate::Queue::put).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutErrorKind {
    /// The queue was [shut down](crate::Queue::shutdown); nothing more can be put.
    #[error("the queue is shut down")]
    Closed,
    /// The message could not be encoded (its `Serialize` failed, or a descriptor in it could not
    /// be duplicated); nothing was put.
    #[error(transparent)]
    Encode(EncodeError),
    /// The encoded message exceeds the queue's size limit; nothing was put.
    #[error("message of {len} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// The message carries more descriptors (handles) than one message can; nothing was put.
    #[error("message carries {count} descriptors; at most {limit} fit in one message")]
    TooManyDescriptors {
        /// Descriptors in the message.
        count: usize,
        /// The most one message may carry.
        limit: usize,
    },
    /// The operating system refused (out of memory or descriptors...); nothing was put.
    #[error("queue i/o error while putting")]
    Io(#[source] io::Error),
}

/// Why [`put`](crate::Queue::put) did not enqueue a message; carries the message back.
pub struct PutError<T> {
    value: T,
    kind: PutErrorKind,
}

impl<T> PutError<T> {
    pub(crate) fn new(value: T, kind: PutErrorKind) -> Self {
        Self { value, kind }
    }
    /// What went wrong.
    pub fn kind(&self) -> &PutErrorKind {
        &self.kind
    }
    /// True when the queue is [shut down](crate::Queue::shutdown).
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, PutErrorKind::Closed)
    }
    /// The message that was not put.
    pub fn into_inner(self) -> T {
        self.value
    }
    /// Splits into the message and what went wrong.
    pub fn into_parts(self) -> (T, PutErrorKind) {
        (self.value, self.kind)
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// Why [`try_put`](crate::Queue::try_put) did not enqueue a message; carries the message back.
pub enum TryPutError<T> {
    /// The queue is full right now.
    Full(T),
    /// The queue is [shut down](crate::Queue::shutdown).
    Closed(T),
    /// The message cannot be put at all (never [`PutErrorKind::Closed`]).
    Failed(PutError<T>),
}

impl<T> TryPutError<T> {
    /// The message that was not put.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(v) | Self::Closed(v) => v,
            Self::Failed(e) => e.into_inner(),
        }
    }
    /// True for [`TryPutError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }
    /// True for [`TryPutError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

impl<T> fmt::Debug for TryPutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for TryPutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("the queue is full"),
            Self::Closed(_) => f.write_str("the queue is shut down"),
            Self::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for TryPutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

/// Why [`put_timeout`](crate::Queue::put_timeout) did not enqueue a message; carries the
/// message back.
pub enum PutTimeoutError<T> {
    /// The queue stayed full for the whole timeout.
    Timeout(T),
    /// The queue is [shut down](crate::Queue::shutdown).
    Closed(T),
    /// The message cannot be put at all (never [`PutErrorKind::Closed`]).
    Failed(PutError<T>),
}

impl<T> PutTimeoutError<T> {
    /// The message that was not put.
    pub fn into_inner(self) -> T {
        match self {
            Self::Timeout(v) | Self::Closed(v) => v,
            Self::Failed(e) => e.into_inner(),
        }
    }
    /// True for [`PutTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }
    /// True for [`PutTimeoutError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

impl<T> fmt::Debug for PutTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(_) => f.write_str("Timeout(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
            Self::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(_) => f.write_str("timed out waiting for room in the queue"),
            Self::Closed(_) => f.write_str("the queue is shut down"),
            Self::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for PutTimeoutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

/// Why [`get`](crate::Queue::get) returned no message.
///
/// Only [`GetError::Closed`] and [`GetError::Io`] mean no message was taken. The others mean a
/// message was taken off the queue but could not be delivered; it is discarded (and, in a
/// [`JoinableQueue`](crate::JoinableQueue), counted as done), and the queue stays usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue was [shut down](crate::Queue::shutdown) and every message has been taken: end
    /// of the queue.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message arrived but is not the expected type; it was discarded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A message larger than the queue's size limit arrived; it was discarded.
    #[error(
        "incoming message of {len} bytes exceeds the queue's limit of {limit} bytes; discarded"
    )]
    TooLarge {
        /// Size in bytes.
        len: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// Something that is not a queue message was on the queue's socket; it was discarded.
    #[error("corrupt queue message: {reason}; discarded")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// Descriptors sent with a message did not arrive (this process is out of descriptors?);
    /// the message was discarded.
    #[error("descriptors sent with a message were lost (out of descriptors?); message discarded")]
    LostDescriptors,
    /// The operating system failed; no message was taken.
    #[error("queue i/o error while getting")]
    Io(#[source] io::Error),
}

impl GetError {
    /// True for [`GetError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }

    pub(crate) fn from_recv(e: PacketRecvError) -> Self {
        match e {
            PacketRecvError::TooLarge { len, limit } => Self::TooLarge { len, limit },
            PacketRecvError::Corrupt { reason } => Self::Corrupt { reason },
            PacketRecvError::LostDescriptors => Self::LostDescriptors,
            PacketRecvError::Io(e) => Self::Io(e),
            other => Self::Corrupt {
                reason: other.to_string(),
            },
        }
    }
}

/// Why [`try_get`](crate::Queue::try_get) returned no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryGetError {
    /// No message is waiting right now.
    #[error("the queue is empty")]
    Empty,
    /// The queue was [shut down](crate::Queue::shutdown) and every message has been taken.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message was taken but could not be delivered (never [`GetError::Closed`]).
    #[error(transparent)]
    Failed(GetError),
}

impl TryGetError {
    /// True for [`TryGetError::Empty`].
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Empty)
    }
    /// True for [`TryGetError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }
}

/// Why [`get_timeout`](crate::Queue::get_timeout) returned no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetTimeoutError {
    /// No message arrived in time.
    #[error("timed out waiting for a message")]
    Timeout,
    /// The queue was [shut down](crate::Queue::shutdown) and every message has been taken.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message was taken but could not be delivered (never [`GetError::Closed`]).
    #[error(transparent)]
    Failed(GetError),
}

impl GetTimeoutError {
    /// True for [`GetTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
    /// True for [`GetTimeoutError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }
}

/// [`task_done`](crate::JoinableQueue::task_done) was called more times than messages were put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than messages were put")]
#[non_exhaustive]
pub struct TaskDoneError;

/// Why [`join_timeout`](crate::JoinableQueue::join_timeout) returned before every task was done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinTimeoutError {
    /// Some tasks were still unfinished when the timeout passed.
    #[error("timed out waiting for every task to be done")]
    Timeout,
    /// The operating system failed while waiting.
    #[error("queue i/o error while joining")]
    Io(#[source] io::Error),
}

impl JoinTimeoutError {
    /// True for [`JoinTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}
