//! Error types of the synchronization primitives, one per operation.
//!
//! Waiting operations fail only when the process cannot wait at all: outside a tokio runtime
//! (with time enabled), or out of descriptors. Those failures carry the underlying
//! [`std::io::Error`] as their source. Beyond that, two tables have a documented size:
//! [`Condition::MAX_WAITERS`](crate::Condition::MAX_WAITERS) waiting tasks and
//! [`Semaphore::MAX_HOLDERS`](crate::Semaphore::MAX_HOLDERS) processes holding permits, at
//! once; the errors past them name the limit.

use std::io;

macro_rules! wait_failure {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[error($msg)]
        pub struct $name(#[source] pub(crate) io::Error);

        impl $name {
            /// The underlying I/O error.
            pub fn io_error(&self) -> &io::Error {
                &self.0
            }
        }

        impl From<io::Error> for $name {
            fn from(e: io::Error) -> Self {
                Self(e)
            }
        }
    };
}

wait_failure!(
    /// Error of [`Lock::lock`](crate::Lock::lock) and
    /// [`Lock::blocking_lock`](crate::Lock::blocking_lock): the process could not wait.
    LockError,
    "cannot wait for the lock"
);

wait_failure!(
    /// Error of [`Semaphore::acquire`](crate::Semaphore::acquire) and its blocking twin: the
    /// process could not wait, or (with [`TryAcquireError::TooManyHolders`] as the source)
    /// could not be recorded as a holder.
    AcquireError,
    "cannot acquire a permit"
);

wait_failure!(
    /// Error of [`Event::wait`](crate::Event::wait),
    /// [`Event::wait_timeout`](crate::Event::wait_timeout) and their blocking twins: the process
    /// could not wait.
    EventWaitError,
    "cannot wait for the event"
);

/// Error of [`Lock::try_lock`](crate::Lock::try_lock) and
/// [`RLock::try_lock`](crate::RLock::try_lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryLockError {
    /// A live owner holds the lock.
    #[error("lock is held")]
    WouldBlock,
}

/// Error of [`Lock::lock_timeout`](crate::Lock::lock_timeout) and similar timed acquisitions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockTimeoutError {
    /// The lock was still held when the timeout elapsed.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// The process could not wait.
    #[error(transparent)]
    Failed(#[from] LockError),
}

impl LockTimeoutError {
    /// Whether the timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// Error of [`Semaphore::try_acquire`](crate::Semaphore::try_acquire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryAcquireError {
    /// No permit is available.
    #[error("no permits available")]
    NoPermits,
    /// A permit was available, but [`Semaphore::MAX_HOLDERS`](crate::Semaphore::MAX_HOLDERS)
    /// other live processes hold permits already, so this one could not be recorded as a
    /// holder (and its permit recovered if it died); the permit stays in the semaphore.
    #[error(
        "too many processes hold permits (the limit is {})",
        crate::Semaphore::MAX_HOLDERS
    )]
    TooManyHolders,
}

/// Error of [`Semaphore::acquire_timeout`](crate::Semaphore::acquire_timeout).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireTimeoutError {
    /// No permit became available before the timeout elapsed.
    #[error("timed out waiting for a permit")]
    Timeout,
    /// The process could not wait.
    #[error(transparent)]
    Failed(#[from] AcquireError),
}

impl AcquireTimeoutError {
    /// Whether the timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// Error of releasing a semaphore or an [`RLock`](crate::RLock) by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Releasing would raise a [`BoundedSemaphore`](crate::BoundedSemaphore) above its initial
    /// value, or a [`Semaphore`](crate::Semaphore) above
    /// [`Semaphore::MAX_PERMITS`](crate::Semaphore::MAX_PERMITS) (Python's `ValueError`).
    #[error("semaphore released too many times")]
    TooManyReleases,
    /// The caller (this process and task) does not hold the lock.
    #[error("lock is not held by the caller")]
    NotOwner,
}

/// Error of [`Condition::wait`](crate::Condition) and its variants. The lock is released
/// when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionWaitError {
    /// [`Condition::MAX_WAITERS`](crate::Condition::MAX_WAITERS) tasks already wait on the
    /// condition.
    #[error(
        "too many waiters on the condition (the limit is {})",
        crate::Condition::MAX_WAITERS
    )]
    TooManyWaiters,
    /// The process could not wait.
    #[error("cannot wait on the condition")]
    Failed(#[source] io::Error),
}

/// Error of [`Barrier::wait`](crate::Barrier::wait) and
/// [`Barrier::wait_timeout`](crate::Barrier::wait_timeout) (Python's `BrokenBarrierError`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierWaitError {
    /// The barrier is broken: a party timed out, aborted, was cancelled, or the barrier was
    /// reset while this party waited.
    #[error("barrier is broken")]
    Broken,
    /// This party's own timeout elapsed; the barrier is now broken for everyone.
    #[error("timed out waiting at the barrier")]
    Timeout,
    /// The process could not wait; the barrier is now broken for everyone.
    #[error("cannot wait at the barrier")]
    Failed(#[source] io::Error),
}

impl BarrierWaitError {
    /// Whether the barrier was (or now is) broken; true for every variant.
    pub fn is_broken(&self) -> bool {
        true
    }
}

/// Error of creating any primitive: the kernel refused a memfd, mapping or eventfd.
#[derive(Debug, thiserror::Error)]
#[error("cannot create shared synchronization state")]
pub struct CreateError(#[source] pub(crate) io::Error);

impl CreateError {
    /// The underlying I/O error ([`InvalidInput`](io::ErrorKind::InvalidInput) for a size the
    /// primitive cannot have).
    pub fn io_error(&self) -> &io::Error {
        &self.0
    }
}

impl From<io::Error> for CreateError {
    fn from(e: io::Error) -> Self {
        Self(e)
    }
}
