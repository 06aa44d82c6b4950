//! [`Condition`]: a cross-process condition variable over a [`Lock`] or an [`RLock`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multiproc_core::wait::{WaitQueue, deadline_after};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ConditionWaitError, CreateError, LockError, TryLockError};
use crate::lock::{Lock, LockGuard};
use crate::owner::CLAIMING;
use crate::rlock::{RLock, RLockGuard};
use crate::table::{Layout, Liveness, Table};

const TICKET: usize = 8; // u64: last ticket handed out
const WINDOW: usize = 16; // u64: the waiter table's window
/// The waiter table: one slot per waiting task, owned by its process, valued
/// `ticket << 2 | status`.
const WAITERS: Layout = Layout {
    window_at: WINDOW,
    base: 64,
    capacity: Condition::MAX_WAITERS,
};
const LEN: usize = WAITERS.len();

const WAITING: u64 = 1;
const NOTIFIED: u64 = 2;

/// A condition variable shared by any number of processes: Python's
/// `multiprocessing.Condition`, with `.await`.
///
/// A `Condition` pairs a [`Lock`] (or an [`RLock`], see [`Condition::with_rlock`]) with a queue
/// of waiters in shared memory. Waiting and
/// notifying go through the [`ConditionGuard`] returned by [`Condition::lock`], so doing either
/// without holding the lock (Python's `RuntimeError`) cannot compile.
/// [`notify(n)`](ConditionGuard::notify) wakes exactly `min(n, waiting)` live waiters, oldest
/// first; [`notify_all`](ConditionGuard::notify_all) wakes every current waiter.
///
/// Up to [`Condition::MAX_WAITERS`] (65,536) tasks, across all processes, can wait at once;
/// more get [`ConditionWaitError::TooManyWaiters`]. The waiter table is sized for that limit
/// when the condition is created, but only the part in use costs memory (16 bytes a waiter).
///
/// # Crash behavior
/// The lock behaves as [`Lock`] (a waiter re-acquiring it after its holder died sees
/// [`ConditionGuard::owner_died`]). A process that dies while waiting never receives a
/// notification: [`notify`](ConditionGuard::notify) skips dead waiters (it checks each waiter's
/// process, pid and start time, before picking it), counts only live ones, and frees the dead
/// ones' places, as does a new waiter that finds the table full. A waiter that dies after being
/// notified and before its `wait` returned cannot act on it; when its place is freed (by a
/// later waiter that needs room) the notification is passed on to the oldest live waiter.
///
/// # Examples
/// ```
/// use multiproc::{Condition, SharedValue};
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
    /// The most tasks, across all processes, that can wait on one condition at once (65,536).
    pub const MAX_WAITERS: usize = 1 << 16;

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

    fn blocking_acquire(&self) -> Result<Held<'_>, LockError> {
        Ok(match &self.lock {
            CondLock::Lock(l) => Held::Lock(l.blocking_lock()?),
            CondLock::RLock(l) => Held::RLock(l.blocking_lock()?),
        })
    }

    /// Acquires the lock from synchronous code, blocking the thread (the twin of
    /// [`lock`](Self::lock), for code outside tokio). Do not call it on a runtime thread.
    ///
    /// # Errors
    /// As [`Lock::blocking_lock`].
    pub fn blocking_lock(&self) -> Result<ConditionGuard<'_>, LockError> {
        Ok(ConditionGuard {
            cond: self,
            held: self.blocking_acquire()?,
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

    fn table(&self) -> Table<'_> {
        Table::new(self.core.region(), WAITERS)
    }

    fn state(&self, i: usize) -> &AtomicU64 {
        self.table().value(i)
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
        let mut alive = Liveness::default();
        // A reclaimed slot whose waiter died after being notified still holds that
        // notification: pass it on (to waiters older than this one, which is not waiting yet).
        let mut orphaned = 0;
        let slot = self
            .table()
            .claim(&mut alive, |state| {
                orphaned += usize::from(state & 3 == NOTIFIED);
            })
            .ok_or(ConditionWaitError::TooManyWaiters)?;
        if orphaned > 0 {
            self.notify_among(orphaned, &mut alive);
        }
        self.state(slot)
            .store((ticket << 2) | WAITING, Ordering::SeqCst);
        Ok((slot, ticket))
    }

    /// Marks up to `n` waiting slots of live waiters notified, oldest first; returns how many.
    fn notify_n(&self, n: usize) -> usize {
        self.notify_among(n, &mut Liveness::default())
    }

    /// [`Self::notify_n`], with liveness answers already known in this operation. A waiter
    /// whose process died is skipped and its slot reclaimed.
    fn notify_among(&self, n: usize, alive: &mut Liveness) -> usize {
        let table = self.table();
        let mut waiting: Vec<(u64, usize, u64)> = (0..table.window())
            .filter_map(|i| {
                let s = table.value(i).load(Ordering::SeqCst);
                (s & 3 == WAITING).then_some((s >> 2, i, s))
            })
            .collect();
        if n < waiting.len() {
            waiting.sort_unstable();
        }
        let mut owed = n;
        let mut woken = 0;
        for (_, i, s) in waiting {
            if woken >= owed {
                break;
            }
            let o = table.owner(i).load(Ordering::SeqCst);
            if o == 0 || o & CLAIMING != 0 {
                continue; // left meanwhile, or being reclaimed (its waiter died)
            }
            if !alive.is_alive(o) {
                // A racing notifier may have picked it just now: that notification is owed.
                if table
                    .reclaim(i, o, alive)
                    .is_some_and(|s| s & 3 == NOTIFIED)
                {
                    owed = owed.saturating_add(1);
                }
                continue;
            }
            if table
                .value(i)
                .compare_exchange(s, (s & !3) | NOTIFIED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                woken += 1;
            }
        }
        if woken > 0 {
            self.core.wake();
        }
        woken.min(n)
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
            self.cond.table().release(self.slot);
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
        // Only a notifier changes a waiting slot, and only to notified.
        let notified = self
            .cond
            .state(self.slot)
            .compare_exchange(waiting, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_err();
        self.cond.table().release(self.slot);
        notified
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

/// Whether a `wait_for_timeout` is over: `Some(true)` when `predicate` holds, `Some(false)` when
/// it does not and `deadline` has passed, `None` to wait again.
fn settled(deadline: Option<Instant>, predicate: &mut impl FnMut() -> bool) -> Option<bool> {
    if predicate() {
        Some(true)
    } else if deadline.is_some_and(|d| Instant::now() >= d) {
        Some(false)
    } else {
        None
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

    /// The start of every wait: takes a place in the queue, then releases the lock entirely
    /// (every level of an RLock); gives the place and the depth to restore.
    fn begin_wait(self) -> Result<(Place<'a>, usize), ConditionWaitError> {
        let cond = self.cond;
        let (slot, ticket) = cond.enqueue()?;
        let place = Place {
            cond,
            slot,
            ticket,
            consumed: false,
        };
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
        Ok((place, depth))
    }

    /// Whether the wait that `got` ended was notified (withdrawing the place if not).
    fn notified(
        place: &mut Place<'a>,
        got: std::io::Result<Option<()>>,
    ) -> Result<bool, ConditionWaitError> {
        match got {
            Ok(Some(())) => Ok(true),
            Ok(None) => Ok(place.withdraw()),
            Err(e) => Err(ConditionWaitError::Failed(e)),
        }
    }

    /// The end of every wait: the lock re-acquired as `held`, at its old depth.
    fn relocked(cond: &'a Condition, held: Held<'a>, depth: usize) -> Self {
        if let (CondLock::RLock(l), true) = (&cond.lock, depth > 1) {
            l.restore_depth(depth);
        }
        ConditionGuard { cond, held }
    }

    async fn wait_inner(
        self,
        deadline: Option<Instant>,
    ) -> Result<(Self, bool), ConditionWaitError> {
        let cond = self.cond;
        let (mut place, depth) = self.begin_wait()?;
        let got = cond
            .core
            .spin_then_wait_until(deadline, None, |_| place.notified())
            .await;
        let notified = Self::notified(&mut place, got)?;
        let held = cond
            .acquire()
            .await
            .map_err(|e| ConditionWaitError::Failed(e.0))?;
        Ok((Self::relocked(cond, held, depth), notified))
    }

    /// The blocking twin of `wait_inner`.
    fn blocking_wait_inner(
        self,
        deadline: Option<Instant>,
    ) -> Result<(Self, bool), ConditionWaitError> {
        let cond = self.cond;
        let (mut place, depth) = self.begin_wait()?;
        let got = cond
            .core
            .blocking_spin_then_wait_until(deadline, None, |_| place.notified());
        let notified = Self::notified(&mut place, got)?;
        let held = cond
            .blocking_acquire()
            .map_err(|e| ConditionWaitError::Failed(e.0))?;
        Ok((Self::relocked(cond, held, depth), notified))
    }

    /// The blocking twin of [`wait`](Self::wait), for code outside tokio: blocks the thread.
    /// Do not call it on a runtime thread.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn blocking_wait(self) -> Result<Self, ConditionWaitError> {
        Ok(self.blocking_wait_inner(None)?.0)
    }

    /// The blocking twin of [`wait_timeout`](Self::wait_timeout).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn blocking_wait_timeout(
        self,
        timeout: Duration,
    ) -> Result<(Self, bool), ConditionWaitError> {
        self.blocking_wait_inner(deadline_after(timeout))
    }

    /// The blocking twin of [`wait_for`](Self::wait_for).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn blocking_wait_for(
        mut self,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<Self, ConditionWaitError> {
        while !predicate() {
            self = self.blocking_wait()?;
        }
        Ok(self)
    }

    /// The blocking twin of [`wait_for_timeout`](Self::wait_for_timeout).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn blocking_wait_for_timeout(
        mut self,
        timeout: Duration,
        mut predicate: impl FnMut() -> bool,
    ) -> Result<(Self, bool), ConditionWaitError> {
        let deadline = deadline_after(timeout);
        loop {
            if let Some(holds) = settled(deadline, &mut predicate) {
                return Ok((self, holds));
            }
            self = self.blocking_wait_inner(deadline)?.0;
        }
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
            if let Some(holds) = settled(deadline, &mut predicate) {
                return Ok((self, holds));
            }
            self = self.wait_inner(deadline).await?.0;
        }
    }

    /// Wakes up to `n` waiters (oldest first); returns how many were woken. Waiters whose
    /// process died are skipped, not counted, and their places freed.
    pub fn notify(&self, n: usize) -> usize {
        self.cond.notify_n(n)
    }

    /// Wakes every current waiter; returns how many were woken (dead ones skipped, as for
    /// [`notify`](Self::notify)).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner;

    #[test]
    fn notify_skips_a_dead_waiter_and_frees_its_slot() {
        let cond = Condition::new().unwrap();
        let table = cond.table();
        // A waiter of a dead process (this pid, another start time), enqueued first.
        let ticket = cond
            .core
            .region()
            .atomic_u64(TICKET)
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        table.owner(0).store(owner::me() ^ 1, Ordering::SeqCst);
        cond.state(0)
            .store((ticket << 2) | WAITING, Ordering::SeqCst);
        let (slot, ticket) = cond.enqueue().unwrap();
        assert_eq!(slot, 1);
        assert_eq!(cond.notify_n(1), 1);
        assert_eq!(
            cond.state(slot).load(Ordering::SeqCst),
            (ticket << 2) | NOTIFIED
        );
        assert_eq!(table.owner(0).load(Ordering::SeqCst), 0);
        assert_eq!(cond.state(0).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_claim_passes_on_the_notification_of_a_dead_waiter() {
        let cond = Condition::new().unwrap();
        let table = cond.table();
        let (live, ticket) = cond.enqueue().unwrap();
        // Every other slot of the window: dead waiters, one of them notified.
        for i in live + 1..table.window() {
            table.owner(i).store(owner::me() ^ 1, Ordering::SeqCst);
            cond.state(i).store(WAITING, Ordering::SeqCst);
        }
        cond.state(7).store(NOTIFIED, Ordering::SeqCst);
        let (slot, _) = cond.enqueue().unwrap();
        assert_eq!(slot, live + 1, "reclaimed, not grown");
        assert_eq!(
            cond.state(live).load(Ordering::SeqCst),
            (ticket << 2) | NOTIFIED
        );
    }
}
