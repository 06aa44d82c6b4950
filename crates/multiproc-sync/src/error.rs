//! Error types of the synchronization primitives, one per operation.
//!
//! Waiting operations fail only when the process cannot wait at all: outside a tokio runtime
//! (with time enabled), or out of descriptors. Those failures carry the underlying
//! [`std::io::Error`] as their source. Beyond that, two tables have a documented size:
//! [`Condition::MAX_WAITERS`](crate::Condition::MAX_WAITERS) waiting tasks and
//! [`Semaphore::MAX_HOLDERS`](crate::Semaphore::MAX_HOLDERS) processes holding permits, at
//! once; the errors past them name the limit.

use std::io;

use multiproc_core::error::LimitError;

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
    /// live holder entries exist already among the semaphores of its arena, so this one could
    /// not be recorded as a holder (and its permit recovered if it died); the permit stays in
    /// the semaphore.
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
///
/// When a limit was reached (the process's descriptor limit, the system's file limit, memory
/// or the mapping count), the message names it, e.g. "the process's open-descriptor limit
/// (RLIMIT_NOFILE, soft 1024) is reached", and [`is_descriptor_limit`](Self::is_descriptor_limit)
/// or [`is_resource_limit`](Self::is_resource_limit) say so; the source is then the system's
/// error (`EMFILE`, ...). Before the first primitive the process's soft descriptor limit is
/// raised to its hard limit, so this happens only at the hard limit.
#[derive(Debug)]
pub struct CreateError(pub(crate) io::Error);

impl CreateError {
    /// The underlying I/O error ([`InvalidInput`](io::ErrorKind::InvalidInput) for a size the
    /// primitive cannot have).
    pub fn io_error(&self) -> &io::Error {
        &self.0
    }

    fn limit(&self) -> Option<&LimitError> {
        LimitError::find(&self.0)
    }

    /// Whether the process's open-descriptor limit (`RLIMIT_NOFILE`) was reached.
    pub fn is_descriptor_limit(&self) -> bool {
        self.limit().is_some_and(LimitError::is_descriptor_limit)
    }

    /// Whether any limit was reached: the descriptor limit, the system's file limit, memory or
    /// the mapping count.
    pub fn is_resource_limit(&self) -> bool {
        self.limit().is_some()
    }
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit() {
            Some(limit) => limit.fmt(f),
            None => f.write_str("cannot create shared synchronization state"),
        }
    }
}

impl std::error::Error for CreateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.limit() {
            // The limit is the message: the system's error is next.
            Some(limit) => std::error::Error::source(limit),
            None => Some(&self.0),
        }
    }
}

impl From<io::Error> for CreateError {
    fn from(e: io::Error) -> Self {
        Self(e)
    }
}

/// Error of [`FileLock::open`](crate::FileLock::open) and
/// [`FileLock::open_flock`](crate::FileLock::open_flock): the file could not be opened or
/// created.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the lock file")]
pub struct OpenFileLockError(#[source] pub(crate) io::Error);

impl OpenFileLockError {
    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.0
    }
}

/// Error of [`FileLock::lock`](crate::FileLock::lock),
/// [`FileLock::lock_shared`](crate::FileLock::lock_shared) and their blocking twins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileLockError {
    /// This process already holds a lock on an overlapping range of the file (through this or
    /// another `FileLock`).
    #[error("this process already holds a lock on this part of the file")]
    HeldByThisProcess,
    /// The kernel refused the lock, or the process could not wait.
    #[error("cannot lock the file")]
    Io(#[source] io::Error),
}

impl FileLockError {
    /// Whether this process already holds an overlapping lock.
    pub fn is_held_by_this_process(&self) -> bool {
        matches!(self, Self::HeldByThisProcess)
    }
}

/// Error of [`FileLock::try_lock`](crate::FileLock::try_lock) and
/// [`FileLock::try_lock_shared`](crate::FileLock::try_lock_shared).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryFileLockError {
    /// Another process holds a conflicting lock.
    #[error("the file is locked by another process")]
    WouldBlock,
    /// As [`FileLockError::HeldByThisProcess`].
    #[error("this process already holds a lock on this part of the file")]
    HeldByThisProcess,
    /// The kernel refused the lock.
    #[error("cannot lock the file")]
    Io(#[source] io::Error),
}

impl TryFileLockError {
    /// Whether another process holds a conflicting lock.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Self::WouldBlock)
    }

    /// Whether this process already holds an overlapping lock.
    pub fn is_held_by_this_process(&self) -> bool {
        matches!(self, Self::HeldByThisProcess)
    }
}

/// Error of [`FileLock::lock_timeout`](crate::FileLock::lock_timeout) and
/// [`FileLock::lock_shared_timeout`](crate::FileLock::lock_shared_timeout).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileLockTimeoutError {
    /// Another process still held a conflicting lock when the timeout elapsed.
    #[error("timed out waiting for the file lock")]
    Timeout,
    /// As [`FileLockError::HeldByThisProcess`].
    #[error("this process already holds a lock on this part of the file")]
    HeldByThisProcess,
    /// As [`FileLockError::Io`].
    #[error("cannot lock the file")]
    Io(#[source] io::Error),
}

impl FileLockTimeoutError {
    /// Whether the timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }

    /// Whether this process already holds an overlapping lock.
    pub fn is_held_by_this_process(&self) -> bool {
        matches!(self, Self::HeldByThisProcess)
    }
}

/// What went wrong with a name (shared by the named shared memory errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NamedErrorKind {
    AlreadyExists,
    NotFound,
    Invalid,
    Other,
}

macro_rules! named_error {
    ($(#[$doc:meta])* $name:ident, $msg:literal, $($pred:ident => $kind:ident, $pdoc:literal;)*) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[error($msg, name = self.name)]
        pub struct $name {
            name: String,
            kind: NamedErrorKind,
            #[source]
            source: Box<dyn std::error::Error + Send + Sync>,
        }

        impl $name {
            pub(crate) fn new(
                name: &str,
                kind: NamedErrorKind,
                source: Box<dyn std::error::Error + Send + Sync>,
            ) -> Self {
                Self { name: name.to_owned(), kind, source }
            }

            pub(crate) fn from_io(name: &str, e: io::Error) -> Self {
                Self::new(name, crate::named_memory::kind_of(&e), e.into())
            }

            /// The name the operation was given.
            pub fn name(&self) -> &str {
                &self.name
            }

            /// Whether the name or a size was invalid (empty, too long, a NUL or a `/` in the
            /// name; a zero size).
            pub fn is_invalid(&self) -> bool {
                self.kind == NamedErrorKind::Invalid
            }

            $(
                #[doc = $pdoc]
                pub fn $pred(&self) -> bool {
                    self.kind == NamedErrorKind::$kind
                }
            )*
        }
    };
}

named_error!(
    /// Error of [`SharedMemory::create`](crate::SharedMemory::create) and
    /// [`SharedMemory::create_posix`](crate::SharedMemory::create_posix).
    CreateNamedError,
    "cannot create shared memory named `{name}`",
    is_already_exists => AlreadyExists, "Whether the name exists already (Python's `FileExistsError`).";
);

named_error!(
    /// Error of [`SharedMemory::attach`](crate::SharedMemory::attach) and
    /// [`SharedMemory::attach_posix`](crate::SharedMemory::attach_posix).
    AttachError,
    "cannot attach shared memory named `{name}`",
    is_not_found => NotFound, "Whether nothing exists under the name (Python's `FileNotFoundError`).";
);

named_error!(
    /// Error of [`SharedMemory::unlink`](crate::SharedMemory::unlink).
    UnlinkError,
    "cannot unlink shared memory named `{name}`",
    is_not_found => NotFound, "Whether the name was already gone (Python's `FileNotFoundError`).";
);
