//! [`RLock`]: a cross-process re-entrant lock.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use multiproc_core::wait::{LIVENESS_TICK, WaitQueue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CreateError, LockError, LockTimeoutError, ReleaseError, TryLockError};
use crate::fast_then_slow::fast_then_slow;
use crate::owner::{self, CLAIMING};

const OWNER: usize = 8; // u64: holder process identity (| CLAIMING while it fills in the rest)
const TASK: usize = 16; // u64: holder task within the process
const DEPTH: usize = 24; // u64: how many times the holder acquired it
const LEN: usize = 64;

/// A re-entrant lock shared by any number of processes: Python's `multiprocessing.RLock`, with
/// `.await`.
///
/// The owner is one *task* (the tokio task, or the thread outside a task) of one process: it may
/// acquire the lock again without waiting, and the lock is free once every acquisition has been
/// released. Other tasks, in this or any other process, wait. [`RLock::release`] by anyone but
/// the owner is an error, as in Python.
///
/// # Crash behavior
/// As [`Lock`](crate::Lock): when the owning process dies, a waiter takes the lock (with a
/// depth of one) and its guard reports [`RLockGuard::owner_died`].
///
/// # Examples
/// ```
/// use multiproc::RLock;
/// use multiproc::error::ReleaseError;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lock = RLock::new()?;
/// let outer = lock.lock().await?;
/// let inner = lock.lock().await?; // same task: no wait
/// assert_eq!(lock.depth(), 2);
/// drop(inner);
/// drop(outer);
/// assert!(!lock.is_locked());
/// assert_eq!(lock.release(), Err(ReleaseError::NotOwner));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RLock {
    core: WaitQueue,
}

impl RLock {
    /// Creates an unlocked re-entrant lock.
    ///
    /// # Errors
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
    pub fn new() -> Result<Self, CreateError> {
        Ok(Self {
            core: WaitQueue::in_arena()?,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        self.core.atomic_u64(offset)
    }

    fn owned_by_caller(&self) -> bool {
        self.word(OWNER).load(Ordering::SeqCst) == owner::me()
            && self.word(TASK).load(Ordering::SeqCst) == owner::task()
    }

    /// Takes ownership after a successful CAS to `me | CLAIMING`.
    fn finish_claim(&self, me: u64) {
        self.word(TASK).store(owner::task(), Ordering::SeqCst);
        self.word(DEPTH).store(1, Ordering::SeqCst);
        self.word(OWNER).store(me, Ordering::SeqCst);
    }

    fn attempt(&self, check_dead: bool) -> Option<bool> {
        if self.owned_by_caller() {
            self.word(DEPTH).fetch_add(1, Ordering::SeqCst);
            return Some(false);
        }
        let me = owner::me();
        let word = self.word(OWNER);
        match word.compare_exchange(0, me | CLAIMING, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                self.finish_claim(me);
                Some(false)
            }
            Err(holder) if check_dead && holder & !CLAIMING != me && !owner::is_alive(holder) => {
                word.compare_exchange(holder, me | CLAIMING, Ordering::SeqCst, Ordering::SeqCst)
                    .ok()?;
                self.finish_claim(me);
                Some(true)
            }
            Err(_) => None,
        }
    }

    fn guard(&self, owner_died: bool) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            owner_died,
            task: owner::task(),
        }
    }

    /// Acquires the lock (or one more level of it, for the owner), waiting as long as it takes.
    ///
    /// Like an `async fn`, the future does nothing until first polled (the polling task becomes
    /// the owner); that first poll takes a free lock, or another level, without allocating or a
    /// system call.
    ///
    /// # Errors
    /// [`LockError`] when the process cannot wait.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future holds nothing and takes no wake-up from other waiters.
    #[inline]
    pub fn lock(&self) -> impl Future<Output = Result<RLockGuard<'_>, LockError>> + '_ {
        fast_then_slow(
            self,
            |lock: &RLock| {
                lock.attempt(false)
                    .map(|died| Ok(lock.guard(died)))
                    .ok_or(())
            },
            |lock: &RLock, ()| lock.lock_slow(),
        )
    }

    /// The part of [`RLock::lock`] that parks, once the fast attempt has failed.
    async fn lock_slow(&self) -> Result<RLockGuard<'_>, LockError> {
        let died = self
            .core
            .wait_forever(LIVENESS_TICK, |t| self.attempt(t))
            .await?;
        Ok(self.guard(died))
    }

    /// Acquires the lock if free, owned by the caller, or held by a dead process.
    ///
    /// # Errors
    /// [`TryLockError::WouldBlock`] when another live task holds it.
    pub fn try_lock(&self) -> Result<RLockGuard<'_>, TryLockError> {
        self.attempt(true)
            .map(|died| self.guard(died))
            .ok_or(TryLockError::WouldBlock)
    }

    /// Acquires the lock, waiting at most `timeout` (zero: try once; never a timeout before the
    /// full `timeout`).
    ///
    /// # Errors
    /// [`LockTimeoutError::Timeout`] at the deadline, [`LockTimeoutError::Failed`] as `lock`.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`RLock::lock`].
    pub async fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, LockTimeoutError> {
        let got = self
            .core
            .wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.attempt(t))
            .await
            .map_err(LockError)?;
        got.map(|died| self.guard(died))
            .ok_or(LockTimeoutError::Timeout)
    }

    /// Acquires the lock from synchronous code, blocking the thread. The owner is the thread.
    ///
    /// # Errors
    /// [`LockError`] when out of descriptors.
    pub fn blocking_lock(&self) -> Result<RLockGuard<'_>, LockError> {
        let died = self
            .core
            .blocking_wait_forever(LIVENESS_TICK, |t| self.attempt(t))?;
        Ok(self.guard(died))
    }

    /// The blocking twin of [`RLock::lock_timeout`].
    ///
    /// # Errors
    /// As [`RLock::lock_timeout`].
    pub fn blocking_lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RLockGuard<'_>, LockTimeoutError> {
        let got = self
            .core
            .blocking_wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.attempt(t))
            .map_err(LockError)?;
        got.map(|died| self.guard(died))
            .ok_or(LockTimeoutError::Timeout)
    }

    /// Releases one level held by the caller without a guard (pair it with
    /// [`std::mem::forget`] of a guard), like Python's `release()`.
    ///
    /// # Errors
    /// [`ReleaseError::NotOwner`] when the calling task of this process does not hold it.
    pub fn release(&self) -> Result<(), ReleaseError> {
        if !self.owned_by_caller() || self.word(DEPTH).load(Ordering::SeqCst) == 0 {
            return Err(ReleaseError::NotOwner);
        }
        self.release_one();
        Ok(())
    }

    /// Releases one level if task `task` of this process holds the lock.
    fn release_level(&self, task: u64) {
        if self.word(OWNER).load(Ordering::SeqCst) != owner::me()
            || self.word(TASK).load(Ordering::SeqCst) != task
        {
            return;
        }
        self.release_one();
    }

    /// Releases every level held by the caller (which must own the lock); returns how many.
    pub(crate) fn release_all(&self) -> usize {
        let depth = self.word(DEPTH).swap(1, Ordering::SeqCst);
        self.release_one();
        depth as usize
    }

    /// Restores the depth saved by [`Self::release_all`] after re-acquiring.
    pub(crate) fn restore_depth(&self, depth: usize) {
        self.word(DEPTH)
            .store(depth.max(1) as u64, Ordering::SeqCst);
    }

    fn release_one(&self) {
        let previous = self
            .word(DEPTH)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1));
        if previous == Ok(1) {
            self.word(TASK).store(0, Ordering::SeqCst);
            let me = owner::me();
            if self
                .word(OWNER)
                .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.core.wake();
            }
        }
    }

    /// Whether some process holds the lock.
    pub fn is_locked(&self) -> bool {
        self.word(OWNER).load(Ordering::SeqCst) != 0
    }

    /// Whether the calling task of this process holds the lock.
    pub fn is_owned(&self) -> bool {
        self.owned_by_caller()
    }

    /// How many times the holder has acquired the lock (0 when free).
    pub fn depth(&self) -> usize {
        if self.is_locked() {
            self.word(DEPTH).load(Ordering::SeqCst) as usize
        } else {
            0
        }
    }

    /// The pid of the holding process, if any.
    pub fn owner_pid(&self) -> Option<u32> {
        match self.word(OWNER).load(Ordering::SeqCst) {
            0 => None,
            id => Some(owner::pid_of(id)),
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("owner_pid", &self.owner_pid())
            .field("depth", &self.depth())
            .finish()
    }
}

impl Serialize for RLock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RLock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let core = WaitQueue::deserialize(deserializer)?;
        core.check_len(LEN).map_err(D::Error::custom)?;
        Ok(Self { core })
    }
}

/// Holds one level of an [`RLock`]; releases it when dropped.
#[must_use = "the level is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    owner_died: bool,
    task: u64,
}

impl RLockGuard<'_> {
    /// Whether the previous holder died while holding the lock.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        // Only while the task that took this level still owns the lock: a guard that outlived
        // its ownership (e.g. across a cancelled `Condition` wait) must not release another
        // owner's level.
        self.lock.release_level(self.task);
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("owner_died", &self.owner_died)
            .finish()
    }
}
