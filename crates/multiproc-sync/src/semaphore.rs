//! [`Semaphore`] and [`BoundedSemaphore`]: cross-process counting semaphores.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{AcquireError, AcquireTimeoutError, CreateError, ReleaseError, TryAcquireError};
use crate::owner;
use crate::wait::{LIVENESS_TICK, SPIN, WaitQueue, fast_then_slow};

// Layout of the shared page.
const FLAGS: usize = 4; // u32: bit 0 = a release above the bound was attempted
const COUNT: usize = 8; // u64: available permits
const BOUND: usize = 16; // u64: most permits a release may reach
const KIND: usize = 24; // u64: KIND_PLAIN or KIND_BOUNDED
const TABLE: usize = 64; // SLOTS x (owner u64, held u64)
const SLOTS: usize = 128;
const LEN: usize = TABLE + SLOTS * 16;

const KIND_PLAIN: u64 = 1;
const KIND_BOUNDED: u64 = 2;
const OVER_RELEASED: u32 = 1;
/// Owner value of a slot being reclaimed from a dead process.
const RECLAIMING: u64 = u64::MAX;

/// The engine shared by both semaphore kinds.
#[derive(Clone)]
struct Engine {
    core: WaitQueue,
    /// This process's guess at its slot in the holder table.
    hint: Arc<AtomicUsize>,
}

impl Engine {
    fn new(permits: usize, bound: u64, kind: u64) -> Result<Self, CreateError> {
        let core = WaitQueue::new(LEN)?;
        core.region()
            .atomic_u64(COUNT)
            .store(permits as u64, Ordering::SeqCst);
        core.region()
            .atomic_u64(BOUND)
            .store(bound, Ordering::SeqCst);
        core.region().atomic_u64(KIND).store(kind, Ordering::SeqCst);
        Ok(Self {
            core,
            hint: Arc::default(),
        })
    }

    fn decode(core: WaitQueue, kind: u64) -> Result<Self, String> {
        core.check_len(LEN)?;
        if core.region().atomic_u64(KIND).load(Ordering::SeqCst) != kind {
            return Err("received shared state is not a semaphore of this kind".into());
        }
        Ok(Self {
            core,
            hint: Arc::default(),
        })
    }

    fn count(&self) -> &AtomicU64 {
        self.core.region().atomic_u64(COUNT)
    }

    fn flags(&self) -> &AtomicU32 {
        self.core.region().atomic_u32(FLAGS)
    }

    fn bound(&self) -> u64 {
        self.core.region().atomic_u64(BOUND).load(Ordering::Relaxed)
    }

    fn slot_owner(&self, i: usize) -> &AtomicU64 {
        self.core.region().atomic_u64(TABLE + i * 16)
    }

    fn slot_held(&self, i: usize) -> &AtomicU64 {
        self.core.region().atomic_u64(TABLE + i * 16 + 8)
    }

    fn take(&self) -> bool {
        self.count()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok()
    }

    /// Adds `n` permits; `Err` (count unchanged) if that would pass the bound.
    fn give(&self, n: u64) -> Result<(), ReleaseError> {
        let bound = self.bound();
        let r = self
            .count()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                c.checked_add(n).filter(|&v| v <= bound)
            });
        match r {
            Ok(_) => {
                self.core.wake();
                Ok(())
            }
            Err(_) => {
                self.flags().fetch_or(OVER_RELEASED, Ordering::SeqCst);
                Err(ReleaseError::TooManyReleases)
            }
        }
    }

    /// Adds up to `n` recovered permits, never passing the bound.
    fn give_capped(&self, n: u64) {
        let bound = self.bound();
        let _ = self
            .count()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some(c.saturating_add(n).min(bound.max(c)))
            });
        self.core.wake();
    }

    /// Records one more permit held by this process; returns the slot, or `None` when the
    /// table is full of live holders (the permit is then not recoverable).
    fn track(&self) -> Option<usize> {
        let me = owner::me();
        let hint = self.hint.load(Ordering::Relaxed);
        if self.slot_owner(hint).load(Ordering::SeqCst) == me {
            self.slot_held(hint).fetch_add(1, Ordering::SeqCst);
            return Some(hint);
        }
        for round in 0..2 {
            if let Some(i) = (0..SLOTS).find(|&i| self.slot_owner(i).load(Ordering::SeqCst) == me) {
                self.hint.store(i, Ordering::Relaxed);
                self.slot_held(i).fetch_add(1, Ordering::SeqCst);
                return Some(i);
            }
            for i in 0..SLOTS {
                let o = self.slot_owner(i);
                if o.load(Ordering::SeqCst) == 0
                    && o.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    self.hint.store(i, Ordering::Relaxed);
                    self.slot_held(i).fetch_add(1, Ordering::SeqCst);
                    return Some(i);
                }
            }
            if round == 0 {
                self.recover();
            }
        }
        None
    }

    fn untrack(&self, slot: Option<usize>) {
        if let Some(i) = slot {
            self.slot_held(i).fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Returns the permits of dead holders to the count; frees their slots.
    fn recover(&self) {
        let me = owner::me();
        for i in 0..SLOTS {
            let o = self.slot_owner(i).load(Ordering::SeqCst);
            if o == 0 || o == RECLAIMING || o == me || owner::is_alive(o) {
                continue;
            }
            if self
                .slot_owner(i)
                .compare_exchange(o, RECLAIMING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let held = self.slot_held(i).swap(0, Ordering::SeqCst);
                self.slot_owner(i).store(0, Ordering::SeqCst);
                if held > 0 {
                    self.give_capped(held);
                }
            }
        }
    }

    fn attempt(&self, recover: bool) -> Option<Option<usize>> {
        if recover {
            self.recover();
        }
        self.take().then(|| self.track())
    }

    /// Spins briefly while no permit is available; out of line, the uncontended path never
    /// needs it.
    #[cold]
    #[inline(never)]
    fn spin(&self) -> Option<Option<usize>> {
        for _ in 0..SPIN {
            if self.count().load(Ordering::Relaxed) > 0 {
                if let Some(slot) = self.attempt(false) {
                    return Some(slot);
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    #[inline]
    fn acquire(&self) -> impl Future<Output = Result<SemaphorePermit<'_>, AcquireError>> + '_ {
        fast_then_slow(
            self,
            |engine: &Engine| match engine.attempt(false) {
                Some(slot) => Ok(Ok(engine.permit(slot))),
                None => engine.spin().map(|slot| Ok(engine.permit(slot))).ok_or(()),
            },
            |engine: &Engine, ()| engine.acquire_slow(),
        )
    }

    /// The part of `acquire` that parks, once the fast attempts have failed.
    async fn acquire_slow(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        let slot = self
            .core
            .wait_forever(LIVENESS_TICK, |t| self.attempt(t))
            .await?;
        Ok(self.permit(slot))
    }

    fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        if let Some(slot) = self.attempt(false) {
            return Ok(self.permit(slot));
        }
        self.attempt(true)
            .map(|slot| self.permit(slot))
            .ok_or(TryAcquireError::NoPermits)
    }

    async fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
        let got = self
            .core
            .wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.attempt(t))
            .await
            .map_err(AcquireError)?;
        got.map(|slot| self.permit(slot))
            .ok_or(AcquireTimeoutError::Timeout)
    }

    fn blocking_acquire(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        if let Some(slot) = self.spin() {
            return Ok(self.permit(slot));
        }
        let slot = self
            .core
            .blocking_wait_forever(LIVENESS_TICK, |t| self.attempt(t))?;
        Ok(self.permit(slot))
    }

    fn blocking_acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
        let got = self
            .core
            .blocking_wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.attempt(t))
            .map_err(AcquireError)?;
        got.map(|slot| self.permit(slot))
            .ok_or(AcquireTimeoutError::Timeout)
    }

    fn permit(&self, slot: Option<usize>) -> SemaphorePermit<'_> {
        SemaphorePermit {
            engine: self,
            slot,
            live: true,
        }
    }

    fn available(&self) -> usize {
        usize::try_from(self.count().load(Ordering::SeqCst)).unwrap_or(usize::MAX)
    }
}

/// A permit of a [`Semaphore`] or [`BoundedSemaphore`]; released when dropped.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    engine: &'a Engine,
    slot: Option<usize>,
    live: bool,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken forever (Python's `acquire()` without `release()`): the count
    /// stays one lower, and the permit is no longer recovered if this process dies.
    pub fn forget(mut self) {
        self.engine.untrack(self.slot);
        self.live = false;
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if self.live {
            self.engine.untrack(self.slot);
            // Above the bound only after an unmatched `release`, which was accepted then; the
            // flag records it and the count stays at the bound.
            let _ = self.engine.give(1);
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}

macro_rules! semaphore_methods {
    ($ty:ident) => {
        impl $ty {
            /// Acquires a permit, waiting as long as it takes.
            ///
            /// Like an `async fn`, the future does nothing until first polled; that first poll
            /// takes an available permit at once, without allocating or a system call.
            ///
            /// # Errors
            /// [`AcquireError`] when the process cannot wait: outside a tokio runtime with I/O
            /// and time enabled, or out of descriptors.
            ///
            /// # Cancel safety
            /// Cancel safe: a dropped future holds no permit and takes no wake-up from other
            /// waiters.
            #[inline]
            pub fn acquire(
                &self,
            ) -> impl Future<Output = Result<SemaphorePermit<'_>, AcquireError>> + '_ {
                self.engine.acquire()
            }

            /// Acquires a permit if one is available right now (after returning those of dead
            /// holders).
            ///
            /// # Errors
            /// [`TryAcquireError::NoPermits`] when none is available.
            pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
                self.engine.try_acquire()
            }

            /// Acquires a permit, waiting at most `timeout`. A zero timeout tries once;
            /// otherwise a timeout is reported only once `timeout` has fully elapsed.
            ///
            /// # Errors
            /// [`AcquireTimeoutError::Timeout`] when none became available in time;
            /// [`AcquireTimeoutError::Failed`] as for `acquire`.
            ///
            /// # Cancel safety
            /// Cancel safe, as `acquire`.
            pub async fn acquire_timeout(
                &self,
                timeout: Duration,
            ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
                self.engine.acquire_timeout(timeout).await
            }

            /// Acquires a permit from synchronous code, blocking the thread.
            ///
            /// # Errors
            /// [`AcquireError`] when out of descriptors.
            pub fn blocking_acquire(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
                self.engine.blocking_acquire()
            }

            /// The blocking twin of `acquire_timeout`.
            ///
            /// # Errors
            /// As `acquire_timeout`.
            pub fn blocking_acquire_timeout(
                &self,
                timeout: Duration,
            ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
                self.engine.blocking_acquire_timeout(timeout)
            }

            /// The number of permits available now (Python's `get_value()`).
            pub fn available_permits(&self) -> usize {
                self.engine.available()
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("available_permits", &self.available_permits())
                    .finish()
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.engine.core.serialize(serializer)
            }
        }
    };
}

/// A counting semaphore shared by any number of processes: Python's
/// `multiprocessing.Semaphore`, with `.await`.
///
/// A handle like every primitive here: clone it, pass it to a child process, send it in a
/// message. The count lives in a shared page; acquiring an available permit and releasing one
/// nobody waits for make no system call.
///
/// [`acquire`](Self::acquire) returns a [`SemaphorePermit`] that gives the permit back when
/// dropped. [`release`](Self::release) adds permits without a prior acquire (a semaphore used
/// as a signal), up to [`Semaphore::MAX_PERMITS`].
///
/// # Crash behavior
/// Each process's permits (the live [`SemaphorePermit`]s) are counted in a table in the shared
/// page. When a process dies holding permits, they are returned to the semaphore by the next
/// waiter (within about 50 ms) or by the next `try_acquire` that finds none available. The
/// table tracks up to 128 processes holding permits at once; permits of further processes are
/// not recoverable. A process killed in the instant between taking a permit and recording it
/// can lose that one permit.
///
/// # Examples
/// ```
/// use multiproc_sync::Semaphore;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sem = Semaphore::new(2)?;
/// let a = sem.acquire().await?;
/// let _b = sem.acquire().await?;
/// assert!(sem.try_acquire().is_err());
/// drop(a);
/// assert_eq!(sem.available_permits(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    engine: Engine,
}

impl Semaphore {
    /// The most permits a semaphore can hold.
    pub const MAX_PERMITS: usize = u32::MAX as usize;

    /// Creates a semaphore holding `permits` permits.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    ///
    /// # Panics
    /// When `permits` exceeds [`Semaphore::MAX_PERMITS`].
    pub fn new(permits: usize) -> Result<Self, CreateError> {
        assert!(
            permits <= Self::MAX_PERMITS,
            "a semaphore holds at most MAX_PERMITS permits"
        );
        Ok(Self {
            engine: Engine::new(permits, Self::MAX_PERMITS as u64, KIND_PLAIN)?,
        })
    }

    /// Adds one permit (Python's `release()`), waking a waiter.
    ///
    /// # Errors
    /// [`ReleaseError::TooManyReleases`] above [`Semaphore::MAX_PERMITS`].
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.engine.give(1)
    }

    /// Adds `n` permits, waking waiters.
    ///
    /// # Errors
    /// [`ReleaseError::TooManyReleases`] (and nothing added) above [`Semaphore::MAX_PERMITS`].
    pub fn add_permits(&self, n: usize) -> Result<(), ReleaseError> {
        self.engine.give(n as u64)
    }
}

semaphore_methods!(Semaphore);

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let core = WaitQueue::deserialize(deserializer)?;
        Engine::decode(core, KIND_PLAIN)
            .map(|engine| Self { engine })
            .map_err(D::Error::custom)
    }
}

/// A semaphore whose count may never exceed its initial value: Python's
/// `multiprocessing.BoundedSemaphore`.
///
/// Everything of [`Semaphore`] applies. A [`release`](Self::release) that would raise the
/// count above the initial value fails with [`ReleaseError::TooManyReleases`] and changes
/// nothing; [`over_released`](Self::over_released) stays `true` afterwards in every process, so
/// the bug stays detectable. A permit dropped while the count is already at the bound (only
/// possible after an unmatched `release`) leaves it at the bound and sets the same flag.
///
/// # Crash behavior
/// As [`Semaphore`]; recovered permits never raise the count above the bound.
///
/// # Examples
/// ```
/// use multiproc_sync::BoundedSemaphore;
/// use multiproc_sync::error::ReleaseError;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sem = BoundedSemaphore::new(1)?;
/// sem.acquire().await?.forget();
/// sem.release()?;
/// assert_eq!(sem.release(), Err(ReleaseError::TooManyReleases));
/// assert!(sem.over_released());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    engine: Engine,
}

impl BoundedSemaphore {
    /// Creates a semaphore holding `permits` permits, which is also its bound.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    ///
    /// # Panics
    /// When `permits` exceeds [`Semaphore::MAX_PERMITS`].
    pub fn new(permits: usize) -> Result<Self, CreateError> {
        assert!(
            permits <= Semaphore::MAX_PERMITS,
            "a semaphore holds at most MAX_PERMITS permits"
        );
        Ok(Self {
            engine: Engine::new(permits, permits as u64, KIND_BOUNDED)?,
        })
    }

    /// Adds one permit, unless the count is already at the bound.
    ///
    /// # Errors
    /// [`ReleaseError::TooManyReleases`] (count unchanged) at the bound.
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.engine.give(1)
    }

    /// The initial value, above which the count never goes.
    pub fn bound(&self) -> usize {
        self.engine.bound() as usize
    }

    /// Whether any process ever tried to release above the bound.
    pub fn over_released(&self) -> bool {
        self.engine.flags().load(Ordering::SeqCst) & OVER_RELEASED != 0
    }
}

semaphore_methods!(BoundedSemaphore);

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let core = WaitQueue::deserialize(deserializer)?;
        Engine::decode(core, KIND_BOUNDED)
            .map(|engine| Self { engine })
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_holders_permits_come_back() {
        let sem = Semaphore::new(1).unwrap();
        let e = &sem.engine;
        // Simulate a dead process (our pid, another start time) holding the only permit.
        assert!(e.take());
        e.slot_owner(5).store(owner::me() ^ 1, Ordering::SeqCst);
        e.slot_held(5).store(1, Ordering::SeqCst);
        assert_eq!(sem.available_permits(), 0);
        let p = sem.try_acquire().unwrap();
        assert_eq!(e.slot_owner(5).load(Ordering::SeqCst), 0);
        drop(p);
        assert_eq!(sem.available_permits(), 1);
    }

    #[test]
    fn table_counts_own_permits() {
        let sem = Semaphore::new(3).unwrap();
        let a = sem.try_acquire().unwrap();
        let b = sem.try_acquire().unwrap();
        let slot = a.slot.unwrap();
        assert_eq!(b.slot, Some(slot));
        assert_eq!(sem.engine.slot_held(slot).load(Ordering::SeqCst), 2);
        b.forget();
        drop(a);
        assert_eq!(sem.engine.slot_held(slot).load(Ordering::SeqCst), 0);
        assert_eq!(sem.available_permits(), 2);
    }
}
