//! [`Condition`]: a cross-process condition variable over a [`Lock`] or an [`RLock`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ConditionWaitError, CreateError, LockError, TryLockError};
use crate::lock::{Lock, LockGuard};
use crate::owner;
use crate::rlock::{RLock, RLockGuard};
use crate::wait::{WaitQueue, deadline_after};

const TICKET: usize = 8; // u64: last ticket handed out
const TABLE: usize = 64; // SLOTS x (state u64 = ticket << 2 | status, owner u64)
const SLOTS: usize = 128;
const LEN: usize = TABLE + SLOTS * 16;

const WAITING: u64 = 1;
const NOTIFIED: u64 = 2;

/// A condition variable shared by any number of processes: Python's
/// `multiprocessing.Condition`, with `.await`.
///
/// A `Condition` pairs a [`Lock`] (or an [`RLock`], see [`Condition::with_rlock`]) with a queue
/// of waiters in shared memory. Waiting and
/// notifying go through the [`ConditionGuard`] returned by [`Condition::lock`], so doing either
/// without holding the lock (Python's `RuntimeError`) cannot compile.
/// [`notify(n)`](ConditionGuard::notify) wakes exactly `min(n, waiting)` waiters, oldest
/// first; [`notify_all`](ConditionGuard::notify_all) wakes every current waiter.
///
/// Up to 128 tasks (across all processes) can wait at once; more get
/// [`ConditionWaitError::TooManyWaiters`].
///
/// # Crash behavior
/// The lock behaves as [`Lock`] (a waiter re-acquiring it after its holder died sees
/// [`ConditionGuard::owner_died`]). A process that dies while waiting keeps its place in the
/// queue: a later `notify(1)` may pick it, and that notification is lost.
///
/// # Examples
/// ```
/// use multiproc_sync::{Condition, SharedValue};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cond = Condition::new()?;
/// let ready = SharedValue::new(0u32)?;
/// let (c2, r2) = (cond.clone(), ready.clone()); // or: pass them to a child process
/// let waiter = tokio::spawn(async move {
///     let guard = c2.lock().await?;
///     let _guard = guard.wait_for(|| r2.get() == 1).await?;
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
/// });
/// {
///     let guard = cond.lock().await?;
///     ready.set(1);
///     guard.notify_all();
/// }
/// waiter.await?.unwrap();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Condition {
    core: WaitQueue,
    lock: CondLock,
}

/// The lock under a condition.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum CondLock {
    Lock(Lock),
    RLock(RLock),
}

/// One held level of the lock under a condition.
enum Held<'a> {
    Lock(LockGuard<'a>),
    RLock(RLockGuard<'a>),
}

impl Condition {
    /// Creates a condition with its own new [`Lock`] (Python's default is an `RLock`: use
    /// [`Condition::with_rlock`] for that).
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    pub fn new() -> Result<Self, CreateError> {
        Self::with_lock(Lock::new()?)
    }

    /// Creates a condition over an existing lock (Python's `Condition(lock)`).
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    pub fn with_lock(lock: Lock) -> Result<Self, CreateError> {
        Ok(Self {
            core: WaitQueue::new(LEN)?,
            lock: CondLock::Lock(lock),
        })
    }

    /// Creates a condition over a re-entrant lock (Python's default `Condition()` uses an
    /// `RLock`). Waiting releases every level the waiting task holds and restores them all
    /// when it wakes.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    pub fn with_rlock(lock: RLock) -> Result<Self, CreateError> {
        Ok(Self {
            core: WaitQueue::new(LEN)?,
            lock: CondLock::RLock(lock),
        })
    }

    /// The underlying lock, when it is a [`Lock`].
    pub fn get_lock(&self) -> Option<&Lock> {
        match &self.lock {
            CondLock::Lock(l) => Some(l),
            CondLock::RLock(_) => None,
        }
    }

    /// The underlying lock, when it is an [`RLock`].
    pub fn get_rlock(&self) -> Option<&RLock> {
        match &self.lock {
            CondLock::RLock(l) => Some(l),
            CondLock::Lock(_) => None,
        }
    }

    async fn acquire(&self) -> Result<Held<'_>, LockError> {
        Ok(match &self.lock {
            CondLock::Lock(l) => Held::Lock(l.lock().await?),
            CondLock::RLock(l) => Held::RLock(l.lock().await?),
        })
    }

    /// Acquires the lock.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Lock::lock`].
    pub async fn lock(&self) -> Result<ConditionGuard<'_>, LockError> {
        Ok(ConditionGuard {
            cond: self,
            held: self.acquire().await?,
        })
    }

    /// Acquires the lock if it is free now.
    ///
    /// # Errors
    /// As [`Lock::try_lock`].
    pub fn try_lock(&self) -> Result<ConditionGuard<'_>, TryLockError> {
        let held = match &self.lock {
            CondLock::Lock(l) => Held::Lock(l.try_lock()?),
            CondLock::RLock(l) => Held::RLock(l.try_lock()?),
        };
        Ok(ConditionGuard { cond: self, held })
    }

    fn state(&self, i: usize) -> &AtomicU64 {
        self.core.region().atomic_u64(TABLE + i * 16)
    }

    fn slot_owner(&self, i: usize) -> &AtomicU64 {
        self.core.region().atomic_u64(TABLE + i * 16 + 8)
    }

    /// Enqueues the caller (holding the lock); returns its slot and ticket.
    fn enqueue(&self) -> Result<(usize, u64), ConditionWaitError> {
        let ticket = self
            .core
            .region()
            .atomic_u64(TICKET)
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let ticket = ticket & (u64::MAX >> 2);
        let value = (ticket << 2) | WAITING;
        for i in 0..SLOTS {
            if self.state(i).load(Ordering::SeqCst) == 0
                && self
                    .state(i)
                    .compare_exchange(0, value, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                self.slot_owner(i).store(owner::me(), Ordering::SeqCst);
                return Ok((i, ticket));
            }
        }
        Err(ConditionWaitError::TooManyWaiters)
    }

    /// Marks up to `n` waiting slots notified, oldest first; returns how many.
    fn notify_n(&self, n: usize) -> usize {
        let mut woken = 0;
        if n >= SLOTS {
            for i in 0..SLOTS {
                let s = self.state(i).load(Ordering::SeqCst);
                if s & 3 == WAITING
                    && self
                        .state(i)
                        .compare_exchange(
                            s,
                            (s & !3) | NOTIFIED,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok()
                {
                    woken += 1;
                }
            }
        } else {
            while woken < n {
                let oldest = (0..SLOTS)
                    .filter_map(|i| {
                        let s = self.state(i).load(Ordering::SeqCst);
                        (s & 3 == WAITING).then_some((s >> 2, i, s))
                    })
                    .min();
                let Some((_, i, s)) = oldest else { break };
                if self
                    .state(i)
                    .compare_exchange(s, (s & !3) | NOTIFIED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    woken += 1;
                }
            }
        }
        if woken > 0 {
            self.core.wake();
        }
        woken
    }
}

/// A waiter's place in the queue; withdraws it (passing on a notification it already got) if
/// the wait ends without consuming it.
struct Place<'a> {
    cond: &'a Condition,
    slot: usize,
    ticket: u64,
    consumed: bool,
}

impl Place<'_> {
    fn notified(&mut self) -> Option<()> {
        let s = self.cond.state(self.slot).load(Ordering::SeqCst);
        if s == (self.ticket << 2) | NOTIFIED {
            self.cond.state(self.slot).store(0, Ordering::SeqCst);
            self.consumed = true;
            Some(())
        } else {
            None
        }
    }

    /// Leaves the queue; returns whether a notification had arrived (it is consumed).
    fn withdraw(&mut self) -> bool {
        let waiting = (self.ticket << 2) | WAITING;
        self.consumed = true;
        match self.cond.state(self.slot).compare_exchange(
            waiting,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => false,
            Err(_) => {
                self.cond.state(self.slot).store(0, Ordering::SeqCst);
                true
            }
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.consumed && self.withdraw() {
            // Cancelled after being notified: hand the notification to the next waiter.
            self.cond.notify_n(1);
        }
    }
}

/// Holds the lock of a [`Condition`]; waits and notifies through it. Dropping it releases the
/// lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    held: Held<'a>,
}

impl<'a> ConditionGuard<'a> {
    /// Whether the lock's previous holder died while holding it.
    pub fn owner_died(&self) -> bool {
        match &self.held {
            Held::Lock(g) => g.owner_died(),
            Held::RLock(g) => g.owner_died(),
        }
    }

    async fn wait_inner(
        self,
        deadline: Option<Instant>,
    ) -> Result<(Self, bool), ConditionWaitError> {
        let cond = self.cond;
        let (slot, ticket) = cond.enqueue()?;
        let mut place = Place {
            cond,
            slot,
            ticket,
            consumed: false,
        };
        // Release the lock entirely (every level of an RLock), remembering the depth.
        let depth = match self.held {
            Held::Lock(guard) => {
                drop(guard);
                0
            }
            Held::RLock(guard) => {
                std::mem::forget(guard);
                match &cond.lock {
                    CondLock::RLock(l) => l.release_all(),
                    CondLock::Lock(_) => unreachable!("guard kind matches lock kind"),
                }
            }
        };
        let got = cond
            .core
            .wait_until(deadline, None, |_| place.notified())
            .await;
        let notified = match got {
            Ok(Some(())) => true,
            Ok(None) => place.withdraw(),
            Err(e) => return Err(ConditionWaitError::Failed(e)),
        };
        let held = cond
            .acquire()
            .await
            .map_err(|e| ConditionWaitError::Failed(e.0))?;
        if let (CondLock::RLock(l), true) = (&cond.lock, depth > 1) {
            l.restore_depth(depth);
        }
        Ok((ConditionGuard { cond, held }, notified))
    }

    /// Releases the lock, waits for a notification, re-acquires the lock.
    ///
    /// # Errors
    /// [`ConditionWaitError`] when the queue is full or the process cannot wait; the lock is
    /// then released.
    ///
    /// # Cancel safety
    /// Cancel safe in that no notification is lost: a waiter dropped after being notified
    /// passes the notification on. The lock is released (as the guard is consumed).
    pub async fn wait(self) -> Result<Self, ConditionWaitError> {
        Ok(self.wait_inner(None).await?.0)
    }

    /// As [`wait`](Self::wait), giving up after `timeout`; returns the guard and whether a
    /// notification arrived (Python's return value). The lock is re-acquired either way.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(self, timeout: Duration) -> Result<(Self, bool), ConditionWaitError> {
        self.wait_inner(deadline_after(timeout)).await
    }

    /// Waits until `predicate` (checked with the lock held) returns `true`.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_for(
        mut self,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<Self, ConditionWaitError> {
        while !predicate() {
            self = self.wait().await?;
        }
        Ok(self)
    }

    /// As [`wait_for`](Self::wait_for) with a deadline; returns the guard and the predicate's
    /// last value.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_for_timeout(
        mut self,
        timeout: Duration,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<(Self, bool), ConditionWaitError> {
        let deadline = deadline_after(timeout);
        loop {
            if predicate() {
                return Ok((self, true));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((self, false));
            }
            self = self.wait_inner(deadline).await?.0;
        }
    }

    /// Wakes up to `n` waiters (oldest first); returns how many were woken.
    pub fn notify(&self, n: usize) -> usize {
        self.cond.notify_n(n)
    }

    /// Wakes every current waiter; returns how many were woken.
    pub fn notify_all(&self) -> usize {
        self.cond.notify_n(usize::MAX)
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard").finish_non_exhaustive()
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    core: WaitQueue,
    lock: CondLock,
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            core: self.core.clone(),
            lock: self.lock.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Wire { core, lock } = Wire::deserialize(deserializer)?;
        core.check_len(LEN).map_err(D::Error::custom)?;
        Ok(Self { core, lock })
    }
}
