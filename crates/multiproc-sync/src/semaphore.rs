//! [`Semaphore`] and [`BoundedSemaphore`]: cross-process counting semaphores.
//!
//! The count is one shared word. So that permits of a process that dies come back, each
//! process's permits are also counted in a [holder table](crate::table): one slot per process
//! (pid and start time), claimed at its first acquire, kept until it dies, then reclaimed by
//! whoever sweeps the table (a waiter, every 50 ms; a `try_acquire` that finds no permit; a
//! claim that finds the table full), which returns the count it held.
//!
//! The count in a slot cannot overflow (a process holds at most `MAX_PERMITS`). The number of
//! slots is the one limit: [`Semaphore::MAX_HOLDERS`] processes holding permits at once. A
//! table sized for every process Linux can run at once (2^22) would need no limit at all,
//! and would cost nothing in memory (the memfd is sparse and scans stop at the part in use),
//! but 64 MiB of address space per semaphore, which a program run under an address-space
//! limit (`ulimit -v`) would soon exhaust; 65,536 processes at once is beyond what one
//! machine runs in practice, and costs 1 MiB of address space. Past it, the
//! acquire fails with an error naming the limit and the permit stays in the semaphore: a
//! permit that could not be recovered is never handed out. Each process's searches for its
//! slot are serialized (within the process), so a process never takes two slots.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use multiproc_core::wait::{LIVENESS_TICK, WaitQueue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{AcquireError, AcquireTimeoutError, CreateError, ReleaseError, TryAcquireError};
use crate::fast_then_slow::fast_then_slow;
use crate::owner;
use crate::table::{Layout, Liveness, Table};

// Layout of the shared page.
const FLAGS: usize = 4; // u32: bit 0 = a release above the bound was attempted
const COUNT: usize = 8; // u64: available permits
const BOUND: usize = 16; // u64: most permits a release may reach
const KIND: usize = 24; // u64: KIND_PLAIN or KIND_BOUNDED
const WINDOW: usize = 32; // u64: the holder table's window
/// The holder table: one slot per process that has held permits, valued with how many it
/// holds now (see [`Engine::track`]).
const HOLDERS: Layout = Layout {
    window_at: WINDOW,
    base: 64,
    capacity: Semaphore::MAX_HOLDERS,
};
const LEN: usize = HOLDERS.len();

const KIND_PLAIN: u64 = 1;
const KIND_BOUNDED: u64 = 2;
const OVER_RELEASED: u32 = 1;

/// Serializes this process's searches for its slot in any holder table, so that it never
/// claims two: the table's capacity is then a number of processes.
static CLAIMS: Mutex<()> = Mutex::new(());

/// The holder table could not record a holder: [`Semaphore::MAX_HOLDERS`] live processes
/// already have a slot.
#[derive(Debug)]
struct HoldersFull;

impl From<HoldersFull> for AcquireError {
    fn from(_: HoldersFull) -> Self {
        AcquireError(std::io::Error::other(TryAcquireError::TooManyHolders))
    }
}

impl From<HoldersFull> for AcquireTimeoutError {
    fn from(e: HoldersFull) -> Self {
        AcquireTimeoutError::Failed(e.into())
    }
}

impl From<HoldersFull> for TryAcquireError {
    fn from(_: HoldersFull) -> Self {
        TryAcquireError::TooManyHolders
    }
}

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

    fn holders(&self) -> Table<'_> {
        Table::new(self.core.region(), HOLDERS)
    }

    fn slot_owner(&self, i: usize) -> &AtomicU64 {
        self.holders().owner(i)
    }

    fn slot_held(&self, i: usize) -> &AtomicU64 {
        self.holders().value(i)
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

    /// Records one more permit held by this process; returns its slot in the holder table.
    ///
    /// Each process has at most one slot (found through a per-handle hint, then a search under
    /// [`CLAIMS`]), kept until it dies; dead processes' slots are reclaimed (their permits
    /// returned) by the next claim that finds the table's window full, or by [`Self::recover`].
    /// So the table fills only with [`Semaphore::MAX_HOLDERS`] *live* holders; `Err` then,
    /// and the caller gives the permit back rather than hand out one that could not be
    /// recovered.
    fn track(&self) -> Result<usize, HoldersFull> {
        let me = owner::me();
        let hint = self.hint.load(Ordering::Relaxed);
        if self.slot_owner(hint).load(Ordering::SeqCst) == me {
            self.slot_held(hint).fetch_add(1, Ordering::SeqCst);
            return Ok(hint);
        }
        self.track_slow(me)
    }

    /// The search of [`Self::track`] when the hint misses: once per handle and process.
    #[cold]
    #[inline(never)]
    fn track_slow(&self, me: u64) -> Result<usize, HoldersFull> {
        let holders = self.holders();
        let _claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match holders.find(me) {
            Some(i) => i,
            None => {
                let mut recovered = 0u64;
                let slot = holders.claim(&mut Liveness::default(), |held| {
                    recovered = recovered.saturating_add(held);
                });
                if recovered > 0 {
                    self.give_capped(recovered);
                }
                slot.ok_or(HoldersFull)?
            }
        };
        self.hint.store(slot, Ordering::Relaxed);
        self.slot_held(slot).fetch_add(1, Ordering::SeqCst);
        Ok(slot)
    }

    fn untrack(&self, slot: usize) {
        self.slot_held(slot).fetch_sub(1, Ordering::SeqCst);
    }

    /// Returns the permits of dead holders to the count; frees their slots.
    fn recover(&self) {
        let mut recovered = 0u64;
        self.holders().sweep(&mut Liveness::default(), |held| {
            recovered = recovered.saturating_add(held);
        });
        if recovered > 0 {
            self.give_capped(recovered);
        }
    }

    /// Takes a permit if one is available (first returning dead holders' permits if `recover`)
    /// and records it.
    fn attempt(&self, recover: bool) -> Option<Result<usize, HoldersFull>> {
        if recover {
            self.recover();
        }
        if !self.take() {
            return None;
        }
        Some(self.track().inspect_err(|_| {
            let _ = self.give(1);
        }))
    }

    #[inline]
    fn acquire(&self) -> impl Future<Output = Result<SemaphorePermit<'_>, AcquireError>> + '_ {
        fast_then_slow(
            self,
            |engine: &Engine| match engine.attempt(false) {
                Some(got) => Ok(engine.permit(got)),
                None => Err(()),
            },
            |engine: &Engine, ()| engine.acquire_slow(),
        )
    }

    /// The part of `acquire` that parks, once the fast attempts have failed.
    async fn acquire_slow(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        let got = self
            .core
            .wait_forever(LIVENESS_TICK, |t| self.attempt(t))
            .await?;
        self.permit(got)
    }

    fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        let got = self.attempt(false).or_else(|| self.attempt(true));
        self.permit(got.ok_or(TryAcquireError::NoPermits)?)
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
        self.permit(got.ok_or(AcquireTimeoutError::Timeout)?)
    }

    fn blocking_acquire(&self) -> Result<SemaphorePermit<'_>, AcquireError> {
        let got = match self.attempt(false) {
            Some(got) => got,
            None => self
                .core
                .blocking_wait_forever(LIVENESS_TICK, |t| self.attempt(t))?,
        };
        self.permit(got)
    }

    fn blocking_acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphorePermit<'_>, AcquireTimeoutError> {
        let got = self
            .core
            .blocking_wait_timeout(timeout, Some(LIVENESS_TICK), |t| self.attempt(t))
            .map_err(AcquireError)?;
        self.permit(got.ok_or(AcquireTimeoutError::Timeout)?)
    }

    /// The permit of a successful [`Self::attempt`], or the error of one that could not record
    /// its holder (the permit already given back).
    #[inline]
    fn permit<E: From<HoldersFull>>(
        &self,
        got: Result<usize, HoldersFull>,
    ) -> Result<SemaphorePermit<'_>, E> {
        Ok(SemaphorePermit {
            engine: self,
            slot: got?,
            live: true,
        })
    }

    fn available(&self) -> usize {
        usize::try_from(self.count().load(Ordering::SeqCst)).unwrap_or(usize::MAX)
    }
}

/// A permit of a [`Semaphore`] or [`BoundedSemaphore`]; released when dropped.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    engine: &'a Engine,
    slot: usize,
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

impl<'a> SemaphorePermit<'a> {
    /// Hands the permit over to an owned one: its slot, with this guard no longer releasing it.
    fn into_owned(mut self) -> OwnedSemaphorePermit {
        self.live = false;
        OwnedSemaphorePermit {
            engine: self.engine.clone(),
            slot: self.slot,
            live: true,
        }
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

/// A permit of a [`Semaphore`] or [`BoundedSemaphore`] that owns a clone of the handle
/// (`acquire_owned`), so it is `'static` and can move into a spawned task; released when
/// dropped.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct OwnedSemaphorePermit {
    engine: Engine,
    slot: usize,
    live: bool,
}

impl OwnedSemaphorePermit {
    /// As [`SemaphorePermit::forget`].
    pub fn forget(mut self) {
        self.engine.untrack(self.slot);
        self.live = false;
    }
}

impl Drop for OwnedSemaphorePermit {
    fn drop(&mut self) {
        if self.live {
            self.engine.untrack(self.slot);
            let _ = self.engine.give(1);
        }
    }
}

impl fmt::Debug for OwnedSemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedSemaphorePermit")
            .finish_non_exhaustive()
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

            /// `acquire`, with a permit that owns a clone of the handle instead of borrowing it,
            /// so it can move into a spawned task (tokio's `Semaphore::acquire_owned`). Clone
            /// the semaphore first to keep using it here.
            ///
            /// # Errors
            /// As `acquire`.
            ///
            /// # Cancel safety
            /// Cancel safe, as `acquire`.
            pub async fn acquire_owned(self) -> Result<OwnedSemaphorePermit, AcquireError> {
                Ok(self.acquire().await?.into_owned())
            }

            /// `try_acquire`, with an owned permit as `acquire_owned` gives.
            ///
            /// # Errors
            /// As `try_acquire`.
            pub fn try_acquire_owned(self) -> Result<OwnedSemaphorePermit, TryAcquireError> {
                Ok(self.try_acquire()?.into_owned())
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
/// state, one entry per process (pid and start time). When a process dies holding permits, all
/// of them are returned to the semaphore by the next waiter (within about 50 ms), by the next
/// `try_acquire` that finds none available, or by the next process that needs a new entry
/// while the table is full; the dead process's entry is reused.
///
/// Up to [`Semaphore::MAX_HOLDERS`] (65,536) processes can hold permits at once; the table is
/// sized for that when the semaphore is created, but only the part in use costs memory (16
/// bytes a process). A process beyond the limit is refused rather than given a permit that
/// could not be recovered: `try_acquire` fails with [`TryAcquireError::TooManyHolders`] and
/// the waiting forms with an error whose source it is, and the permit stays in the semaphore.
/// A process killed in the instant between taking a permit and recording it can lose that one
/// permit.
///
/// # Examples
/// ```
/// use multiproc::Semaphore;
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

    /// The most processes that can hold permits of one semaphore at once (65,536); see
    /// `# Crash behavior`.
    pub const MAX_HOLDERS: usize = 1 << 16;

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
/// use multiproc::BoundedSemaphore;
/// use multiproc::error::ReleaseError;
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
        let slot = a.slot;
        assert_eq!(b.slot, slot);
        assert_eq!(sem.engine.slot_held(slot).load(Ordering::SeqCst), 2);
        b.forget();
        drop(a);
        assert_eq!(sem.engine.slot_held(slot).load(Ordering::SeqCst), 0);
        assert_eq!(sem.available_permits(), 2);
    }

    #[test]
    fn one_slot_per_process_across_handles() {
        let sem = Semaphore::new(3).unwrap();
        // A second handle of the same semaphore in this process (as if received twice).
        let other = Semaphore {
            engine: Engine {
                core: sem.engine.core.clone(),
                hint: Arc::default(),
            },
        };
        // Occupy slot 0 with a live stranger (pid 1, any start time) so that the hint misses.
        sem.engine.slot_owner(0).store(1 << 32, Ordering::SeqCst);
        let a = sem.try_acquire().unwrap();
        let b = other.try_acquire().unwrap();
        assert_ne!(a.slot, 0);
        assert_eq!(a.slot, b.slot);
        assert_eq!(sem.engine.slot_held(a.slot).load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_full_table_of_dead_holders_is_reclaimed_on_claim() {
        let sem = Semaphore::new(300).unwrap();
        let e = &sem.engine;
        // 252 dead holders (the first window) with one permit each.
        for i in 0..252 {
            assert!(e.take());
            e.slot_owner(i).store(owner::me() ^ 1, Ordering::SeqCst);
            e.slot_held(i).store(1, Ordering::SeqCst);
        }
        assert_eq!(sem.available_permits(), 48);
        let p = sem.try_acquire().unwrap();
        assert_eq!(p.slot, 0);
        assert_eq!(e.holders().window(), 252, "reclaimed, not grown");
        assert_eq!(sem.available_permits(), 299);
    }

    #[tokio::test]
    async fn a_table_full_of_live_holders_refuses_and_keeps_the_permit() {
        let sem = Semaphore::new(2).unwrap();
        let e = &sem.engine;
        // Every slot held by a live stranger (pid 1, any start time).
        for i in 0..Semaphore::MAX_HOLDERS {
            e.slot_owner(i).store(1 << 32, Ordering::SeqCst);
        }
        assert_eq!(e.holders().claim(&mut Liveness::default(), |_| {}), None);
        assert_eq!(
            sem.try_acquire().unwrap_err(),
            TryAcquireError::TooManyHolders
        );
        let err = sem.acquire().await.unwrap_err();
        let source = err.io_error().get_ref().unwrap().to_string();
        assert_eq!(
            source,
            "too many processes hold permits (the limit is 65536)"
        );
        assert_eq!(sem.available_permits(), 2);
        // A slot freed by its owner is found again.
        e.slot_owner(70).store(0, Ordering::SeqCst);
        let p = sem.try_acquire().unwrap();
        assert_eq!(p.slot, 70);
    }
}
