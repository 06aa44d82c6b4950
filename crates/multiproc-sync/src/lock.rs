//! [`Lock`]: a cross-process mutual exclusion lock, the public face of core's
//! [`RobustLock`] (which holds the owner word, the dead-holder takeover and the waiting).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use multiproc_core::wait::RobustLock;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CreateError, LockError, LockTimeoutError, TryLockError};
use crate::fast_then_slow::fast_then_slow;

/// A lock shared by any number of processes: Python's `multiprocessing.Lock`, with `.await`.
///
/// `Lock` is a handle: clone it within a process, pass it to `multiproc::spawn` as (part of) an
/// argument, or send it inside a pipe or queue message; every copy in every process is the same
/// lock. Its state is one word in a 64-byte slot of a shared arena, changed with atomics: taking
/// a free lock or releasing one nobody waits for makes no system call. Waiters park on one of
/// the arena's few eventfds, registered with their own process's tokio reactor, so waiting never
/// blocks a runtime thread. Thousands of locks share an arena's memfd and eventfds, so a process
/// can hold 100,000 locks under a 1,024-descriptor limit, and sending many locks of one arena
/// sends its descriptors once.
///
/// Ownership belongs to the *process*: any task of the holding process may drop the guard.
/// The lock is not re-entrant: locking it again from the holding process waits forever (use
/// [`RLock`](crate::RLock)).
///
/// # Crash behavior
/// The holder's process identity (pid plus start time, so a recycled pid is never mistaken for
/// it) is recorded in the lock. When the holding process dies (or exits) without releasing,
/// waiters notice within about 50 ms, one of them takes the lock, and its guard reports
/// [`LockGuard::owner_died`] so the program can repair whatever the lock protected.
/// [`Lock::try_lock`] checks the holder's liveness too. Timed waits still return on time.
///
/// # Examples
/// ```
/// use multiproc::Lock;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lock = Lock::new()?;
/// let other = lock.clone(); // or: pass `lock` to a child process
/// {
///     let guard = lock.lock().await?;
///     assert!(!guard.owner_died());
///     assert!(other.try_lock().is_err());
/// } // released here
/// assert!(other.try_lock().is_ok());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lock {
    raw: RobustLock,
}

impl Lock {
    /// Creates an unlocked lock.
    ///
    /// # Errors
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
    pub fn new() -> Result<Self, CreateError> {
        Ok(Self {
            raw: RobustLock::new()?,
        })
    }

    #[inline]
    fn guard(&self, owner_died: bool) -> LockGuard<'_> {
        LockGuard {
            lock: self,
            owner_died,
        }
    }

    /// Acquires the lock, waiting as long as it takes.
    ///
    /// Like an `async fn`, the future does nothing until first polled. That first poll takes a
    /// free lock at once (one compare-and-swap: no allocation, no system call); only a lock
    /// held by someone else sets up a wait.
    ///
    /// # Errors
    /// [`LockError`] when the process cannot wait: outside a tokio runtime with I/O and time
    /// enabled, or out of descriptors.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future before it completes leaves the lock untouched and
    /// takes no wake-up from other waiters.
    #[inline]
    pub fn lock(&self) -> impl Future<Output = Result<LockGuard<'_>, LockError>> + '_ {
        fast_then_slow(
            self,
            |lock: &Lock| match lock.raw.try_acquire(false) {
                Some(died) => Ok(Ok(lock.guard(died))),
                None => Err(()),
            },
            |lock: &Lock, ()| lock.lock_slow(),
        )
    }

    /// The part of [`Lock::lock`] that parks, once the fast attempts have failed.
    async fn lock_slow(&self) -> Result<LockGuard<'_>, LockError> {
        let died = self.raw.acquire().await?;
        Ok(self.guard(died))
    }

    /// Acquires the lock if it is free (or its holder died) right now.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when a live process holds it.
    pub fn try_lock(&self) -> Result<LockGuard<'_>, TryLockError> {
        self.raw
            .try_acquire(true)
            .map(|died| self.guard(died))
            .ok_or(TryLockError::WouldBlock)
    }

    /// Acquires the lock, waiting at most `timeout`. A zero timeout tries once; otherwise a
    /// timeout is reported only once `timeout` has fully elapsed.
    ///
    /// # Errors
    /// [`LockTimeoutError::Timeout`] when still held at the deadline;
    /// [`LockTimeoutError::Failed`] as for [`Lock::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Lock::lock`].
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, LockTimeoutError> {
        let got = self.raw.acquire_timeout(timeout).await.map_err(LockError)?;
        got.map(|died| self.guard(died))
            .ok_or(LockTimeoutError::Timeout)
    }

    /// Acquires the lock from synchronous code, blocking the thread. Do not call it on a
    /// runtime thread.
    ///
    /// # Errors
    /// [`LockError`] when out of descriptors.
    pub fn blocking_lock(&self) -> Result<LockGuard<'_>, LockError> {
        let died = self.raw.blocking_acquire()?;
        Ok(self.guard(died))
    }

    /// The blocking twin of [`Lock::lock_timeout`].
    ///
    /// # Errors
    /// As [`Lock::lock_timeout`].
    pub fn blocking_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<LockGuard<'_>, LockTimeoutError> {
        let got = self
            .raw
            .blocking_acquire_timeout(timeout)
            .map_err(LockError)?;
        got.map(|died| self.guard(died))
            .ok_or(LockTimeoutError::Timeout)
    }

    /// [`Lock::lock`], with a guard that owns a clone of the handle instead of borrowing it, so
    /// it can move into a spawned task (tokio's `Mutex::lock_owned`). Clone the lock first to
    /// keep using it here: a clone is the same lock.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Lock::lock`].
    ///
    /// # Examples
    /// ```
    /// use multiproc::Lock;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let lock = Lock::new()?;
    /// let guard = lock.clone().lock_owned().await?;
    /// let task = tokio::spawn(async move {
    ///     // ... work under the lock ...
    ///     drop(guard);
    /// });
    /// task.await?;
    /// assert!(!lock.is_locked());
    /// # Ok(()) }
    /// ```
    pub async fn lock_owned(self) -> Result<OwnedLockGuard, LockError> {
        let owner_died = self.lock().await?.into_held();
        Ok(OwnedLockGuard {
            lock: self,
            owner_died,
        })
    }

    /// [`Lock::try_lock`], with an owned guard as [`Lock::lock_owned`] gives.
    ///
    /// # Errors
    /// As [`Lock::try_lock`].
    pub fn try_lock_owned(self) -> Result<OwnedLockGuard, TryLockError> {
        let owner_died = self.try_lock()?.into_held();
        Ok(OwnedLockGuard {
            lock: self,
            owner_died,
        })
    }

    /// Whether some process holds the lock (possibly a dead one not yet noticed).
    pub fn is_locked(&self) -> bool {
        self.raw.is_locked()
    }

    /// The pid of the holding process, if any.
    pub fn owner_pid(&self) -> Option<u32> {
        self.raw.owner_pid()
    }

    /// Releases a hold taken by this process, used by `Condition`, which re-acquires later.
    #[inline]
    pub(crate) fn unlock(&self) {
        self.raw.release();
    }

    /// Whether `self` and `other` are the same lock.
    pub fn same_lock(&self, other: &Lock) -> bool {
        self.raw.same_lock(&other.raw)
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("owner_pid", &self.owner_pid())
            .finish()
    }
}

impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            raw: RobustLock::deserialize(deserializer)?,
        })
    }
}

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    owner_died: bool,
}

impl<'a> LockGuard<'a> {
    /// Whether the previous holder died while holding the lock (like a robust mutex's
    /// `EOWNERDEAD`): the state the lock protects may be half-updated.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &'a Lock {
        self.lock
    }

    /// Keeps the lock held past this guard, for an owned guard to release; gives `owner_died`.
    fn into_held(self) -> bool {
        let owner_died = self.owner_died;
        std::mem::forget(self);
        owner_died
    }
}

/// Holds a [`Lock`] through its own clone of the handle ([`Lock::lock_owned`]), so it is
/// `'static` and can move into a spawned task; releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct OwnedLockGuard {
    lock: Lock,
    owner_died: bool,
}

impl OwnedLockGuard {
    /// As [`LockGuard::owner_died`].
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        &self.lock
    }
}

impl Drop for OwnedLockGuard {
    #[inline]
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

impl fmt::Debug for OwnedLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedLockGuard")
            .field("owner_died", &self.owner_died)
            .finish()
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("owner_died", &self.owner_died)
            .finish()
    }
}
