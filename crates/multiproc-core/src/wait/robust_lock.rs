//! [`RobustLock`]: the robust owner-word lock under `multiproc-sync`'s `Lock` and the queue's
//! out-of-band lock, as tokio's semaphore is under its `Mutex`.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::SharedRegion;
use crate::sys::identity;
use crate::wait::eventfd::EventFd;
use crate::wait::{LIVENESS_TICK, WaitQueue};

/// Byte offset of the owner word from the lock's waiter count: 0 when free, else the holder's
/// process identity.
const OWNER: usize = 8;
const LEN: usize = 64;

/// A cross-process lock owned by a *process*, which a waiter takes over when the holder dies.
///
/// The state is one word in a shared page: 0 when free, else the holder's process identity
/// (pid plus start time, so a recycled pid never passes for the holder). Taking a free lock
/// and releasing one nobody waits for are one compare-and-swap each, no system call. A waiter
/// parks on a [`WaitQueue`] and, every [`LIVENESS_TICK`], checks whether the holder died; if
/// so it takes the lock over and is told so (`true`), like a robust mutex's `EOWNERDEAD`.
///
/// A handle: clones in this process and copies sent to other processes (it serializes as its
/// descriptors) are the same lock. It has no guard: the caller pairs each acquisition with one
/// [`release`](Self::release).
///
/// `AT` places the lock in a region: its waiter count at byte `AT`, its owner word at `AT + 8`.
/// A lock of its own has `AT = 0`; state holding a lock among other things (a queue's header)
/// makes it with [`in_region`](Self::in_region), sharing that region and an eventfd, and sends
/// those instead of the lock.
#[derive(Clone)]
pub struct RobustLock<const AT: usize = 0> {
    queue: WaitQueue<AT>,
}

impl RobustLock {
    /// Creates an unlocked lock with a region and an eventfd of its own.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd (out of memory or descriptors).
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            queue: WaitQueue::new(LEN)?,
        })
    }
}

impl<const AT: usize> RobustLock<AT> {
    /// The lock at byte `AT` of `region` (zeroed there: unlocked), woken through `efd`, which
    /// may be shared with other waits on the same state (they then see each other's wake-ups
    /// as spurious ones and re-check).
    ///
    /// # Panics
    /// When `AT + 16` is out of the region's bounds or `AT` is not 8-aligned.
    pub fn in_region(region: SharedRegion, efd: EventFd) -> Self {
        region.atomic_u64(AT + OWNER);
        Self {
            queue: WaitQueue::in_region(region, efd),
        }
    }

    #[inline]
    fn word(&self) -> &AtomicU64 {
        self.queue.region().atomic_u64(AT + OWNER)
    }

    /// One attempt; with `check_dead`, takes the lock from a dead holder. `Some(died)` when
    /// taken, `died` telling whether the previous holder died holding it.
    #[inline]
    pub fn try_acquire(&self, check_dead: bool) -> Option<bool> {
        let me = identity::current();
        let word = self.word();
        match word.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => Some(false),
            Err(holder) if check_dead && holder != me && !identity::is_alive(holder) => word
                .compare_exchange(holder, me, Ordering::SeqCst, Ordering::SeqCst)
                .ok()
                .map(|_| true),
            Err(_) => None,
        }
    }

    /// Parks until the lock is taken; whether the previous holder died.
    ///
    /// # Errors
    /// Outside a tokio runtime with I/O and time enabled, or out of descriptors.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future leaves the lock untouched and takes no wake-up from other
    /// waiters (wake-ups are broadcasts).
    pub async fn acquire(&self) -> io::Result<bool> {
        self.queue
            .wait_forever(LIVENESS_TICK, |t| self.try_acquire(t))
            .await
    }

    /// Takes the lock, waiting at most `timeout` (`Ok(None)` then, never early; a zero timeout
    /// tries once).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> io::Result<Option<bool>> {
        self.queue
            .wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.try_acquire(t))
            .await
    }

    /// Takes the lock, blocking the thread (spinning first, as the spin policy decides).
    ///
    /// # Errors
    /// When out of descriptors.
    pub fn blocking_acquire(&self) -> io::Result<bool> {
        if let Some(died) = self.try_acquire(false) {
            return Ok(died);
        }
        self.queue
            .blocking_wait_forever(LIVENESS_TICK, |t| self.try_acquire(t))
    }

    /// The blocking twin of [`acquire_timeout`](Self::acquire_timeout).
    ///
    /// # Errors
    /// As [`blocking_acquire`](Self::blocking_acquire).
    pub fn blocking_acquire_timeout(&self, timeout: Duration) -> io::Result<Option<bool>> {
        self.queue
            .blocking_wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.try_acquire(t))
    }

    /// Releases a hold taken by this process (nothing if this process does not hold it), and
    /// wakes the waiters, if any.
    #[inline]
    pub fn release(&self) {
        if self
            .word()
            .compare_exchange(identity::current(), 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.queue.wake();
        }
    }

    /// Whether some process holds the lock (possibly a dead one not yet noticed).
    pub fn is_locked(&self) -> bool {
        self.word().load(Ordering::SeqCst) != 0
    }

    /// The pid of the holding process, if any.
    pub fn owner_pid(&self) -> Option<u32> {
        match self.word().load(Ordering::SeqCst) {
            0 => None,
            id => Some(identity::pid_of(id)),
        }
    }

    /// Whether `self` and `other` are the same lock.
    pub fn same_lock(&self, other: &RobustLock<AT>) -> bool {
        self.queue.region().same_region(other.queue.region())
    }
}

impl<const AT: usize> fmt::Debug for RobustLock<AT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobustLock")
            .field("owner_pid", &self.owner_pid())
            .finish()
    }
}

impl Serialize for RobustLock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RobustLock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let queue = WaitQueue::deserialize(deserializer)?;
        queue.check_len(LEN).map_err(D::Error::custom)?;
        Ok(Self { queue })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owner_is_detected_by_try_acquire() {
        let lock = RobustLock::new().unwrap();
        // A holder with our pid but another start time: a recycled pid, i.e. a dead holder.
        lock.word().store(identity::current() ^ 1, Ordering::SeqCst);
        assert!(lock.is_locked());
        let died = lock.try_acquire(true).unwrap();
        assert!(died);
        lock.release();
        assert!(!lock.is_locked());
    }

    #[tokio::test]
    async fn dead_owner_is_detected_by_waiter() {
        let lock = RobustLock::new().unwrap();
        lock.word().store(identity::current() ^ 1, Ordering::SeqCst);
        let died = tokio::time::timeout(Duration::from_secs(10), lock.acquire())
            .await
            .unwrap()
            .unwrap();
        assert!(died);
    }
}
