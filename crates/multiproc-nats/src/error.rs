//! Error types, one per operation, for the distributed queues, sync primitives, connection and
//! pool.
//!
//! They mirror the local ones in `multiproc` (same names, same variants and predicates) with
//! one kind more: [`RemoteError`], the server or the network failed. No `async-nats` type is
//! constructible from here; the NATS error is reachable through
//! [`source()`](std::error::Error::source) and never repeated in `Display`.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The NATS server or the network failed an operation (not reachable, timed out, refused).
///
/// The cause (the `async-nats` error) is the [`source`](std::error::Error::source).
pub struct RemoteError {
    what: &'static str,
    source: Option<BoxError>,
}

impl RemoteError {
    pub(crate) fn new(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            what,
            source: Some(source.into()),
        }
    }
    /// What was being done (`"publish"`, `"fetch"`, `"key update"`...).
    pub fn operation(&self) -> &'static str {
        self.what
    }
}

impl fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteError")
            .field("operation", &self.what)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats {} failed", self.what)
    }
}

impl StdError for RemoteError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Why [`NatsBuilder::connect`](crate::NatsBuilder::connect) did not connect.
#[derive(Debug)]
pub struct ConnectError {
    kind: ConnectKind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectKind {
    Invalid,
    Auth,
    Tls,
    Io,
    Unreachable,
}

impl ConnectError {
    pub(crate) fn invalid(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ConnectKind::Invalid,
            source: Some(source.into()),
        }
    }
    pub(crate) fn io(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ConnectKind::Io,
            source: Some(source.into()),
        }
    }
    pub(crate) fn from_nats(e: async_nats::ConnectError) -> Self {
        use async_nats::ConnectErrorKind as K;
        let kind = match e.kind() {
            K::AuthorizationViolation | K::Authentication => ConnectKind::Auth,
            K::Tls => ConnectKind::Tls,
            K::ServerParse => ConnectKind::Invalid,
            _ => ConnectKind::Unreachable,
        };
        Self {
            kind,
            source: Some(Box::new(e)),
        }
    }
    /// True when the server refused the credentials (wrong user, password, token or nkey).
    pub fn is_auth(&self) -> bool {
        self.kind == ConnectKind::Auth
    }
    /// True when the TLS handshake or configuration failed.
    pub fn is_tls(&self) -> bool {
        self.kind == ConnectKind::Tls
    }
    /// True when no server answered at the address.
    pub fn is_unreachable(&self) -> bool {
        self.kind == ConnectKind::Unreachable
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ConnectKind::Invalid => "invalid nats connection options",
            ConnectKind::Auth => "the nats server refused the credentials",
            ConnectKind::Tls => "tls with the nats server failed",
            ConnectKind::Io => "cannot read the nats connection's configuration",
            ConnectKind::Unreachable => "cannot reach the nats server",
        })
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// A queue, lock or pool name was not usable: empty, too long, or with characters outside
/// `[A-Za-z0-9_-]` (they become parts of stream names, subjects and keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
pub struct InvalidName {
    pub(crate) name: String,
}

/// Why a distributed object (queue, lock, pool...) could not be opened on the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name is not usable.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The server refused to create or look up its stream or bucket.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// What went wrong in a [`put`](crate::Queue::put).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutErrorKind {
    /// The queue was [shut down](crate::Queue::shutdown) (or its stream deleted).
    #[error("the queue is shut down")]
    Closed,
    /// The message could not be encoded; nothing was put.
    #[error("cannot encode the message")]
    Encode(#[source] postcard::Error),
    /// The encoded message exceeds the queue's size limit; nothing was put.
    #[error("message of {len} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The queue's limit.
        limit: usize,
    },
    /// The server did not confirm that it stored the message. It may or may not have.
    #[error(transparent)]
    Remote(RemoteError),
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
    /// True when the server or the network failed.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, PutErrorKind::Remote(_))
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

impl<T> StdError for PutError<T> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        StdError::source(&self.kind)
    }
}

/// Why [`try_put`](crate::Queue::try_put) did not enqueue a message; carries the message back.
pub enum TryPutError<T> {
    /// The queue holds its capacity of messages right now.
    Full(T),
    /// The queue is [shut down](crate::Queue::shutdown).
    Closed(T),
    /// The message cannot be put (never [`PutErrorKind::Closed`]).
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

impl<T> StdError for TryPutError<T> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Failed(e) => StdError::source(e),
            _ => None,
        }
    }
}

/// Why [`put_timeout`](crate::Queue::put_timeout) did not enqueue a message; carries it back.
pub enum PutTimeoutError<T> {
    /// The queue stayed full until the timeout.
    Timeout(T),
    /// The queue is [shut down](crate::Queue::shutdown).
    Closed(T),
    /// The message cannot be put (never [`PutErrorKind::Closed`]).
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

impl<T> StdError for PutTimeoutError<T> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Failed(e) => StdError::source(e),
            _ => None,
        }
    }
}

/// Why [`get`](crate::Queue::get) returned no message.
///
/// [`GetError::Decode`] means a message was taken but is not the expected type: it is
/// acknowledged (dropped), so that a poison message cannot loop, and the queue stays usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The queue was [shut down](crate::Queue::shutdown) and is empty: end of the queue.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message arrived but is not the expected type; it was dropped.
    #[error("cannot decode a queue message as `{ty}`; dropped")]
    Decode {
        /// The expected type.
        ty: &'static str,
        /// The postcard error.
        #[source]
        source: postcard::Error,
    },
    /// The server or the network failed; no message was taken.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl GetError {
    /// True for [`GetError::Closed`].
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed)
    }
    /// True for [`GetError::Remote`].
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote(_))
    }
}

/// Why [`try_get`](crate::Queue::try_get) returned no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryGetError {
    /// No message is waiting right now.
    #[error("the queue is empty")]
    Empty,
    /// The queue was [shut down](crate::Queue::shutdown) and is empty.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message could not be taken or delivered (never [`GetError::Closed`]).
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
    /// The queue was [shut down](crate::Queue::shutdown) and is empty.
    #[error("the queue is shut down and empty")]
    Closed,
    /// A message could not be taken or delivered (never [`GetError::Closed`]).
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

/// Why [`Task::task_done`](crate::Task::task_done) could not confirm the acknowledgement.
///
/// The task may then be delivered again after the ack timeout (processing is at least once).
#[derive(Debug, thiserror::Error)]
#[error("the server did not confirm task_done")]
pub struct TaskDoneError(#[source] pub(crate) RemoteError);

/// Why [`join_timeout`](crate::JoinableQueue::join_timeout) returned before every task was
/// done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinTimeoutError {
    /// Some tasks were still unfinished when the timeout passed.
    #[error("timed out waiting for every task to be done")]
    Timeout,
    /// The server or the network failed while waiting.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl JoinTimeoutError {
    /// True for [`JoinTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// Why a [`Lock::lock`](crate::Lock::lock) or
/// [`Semaphore::acquire`](crate::Semaphore::acquire) failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot acquire the distributed lock")]
pub struct AcquireError(#[source] pub(crate) RemoteError);

/// Why [`lock_timeout`](crate::Lock::lock_timeout) or
/// [`acquire_timeout`](crate::Semaphore::acquire_timeout) did not acquire.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireTimeoutError {
    /// Another holder kept it until the timeout.
    #[error("timed out waiting for the distributed lock")]
    Timeout,
    /// The server or the network failed.
    #[error(transparent)]
    Failed(#[from] AcquireError),
}

impl AcquireTimeoutError {
    /// True for [`AcquireTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// Why [`LockGuard::unlock`](crate::LockGuard::unlock) could not release cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The lease had already been lost (it expired and another holder took it): whatever
    /// this holder did after losing it was not protected.
    #[error("the lease was lost before the release")]
    LeaseLost,
    /// The server or the network failed; the lease will expire by itself.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl ReleaseError {
    /// True for [`ReleaseError::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost)
    }
}

/// Why an [`Event`](crate::Event) operation failed: the server or the network.
#[derive(Debug, thiserror::Error)]
#[error("distributed event operation failed")]
pub struct EventError(#[source] pub(crate) RemoteError);

/// Why a [`Barrier`](crate::Barrier) wait failed: the server or the network.
#[derive(Debug, thiserror::Error)]
#[error("distributed barrier operation failed")]
pub struct BarrierError(#[source] pub(crate) RemoteError);
