//! [`Semaphore`] and [`BoundedSemaphore`]: cross-process counting semaphores.
//!
//! A semaphore's state (count, bound, kind, waiter count) is a 64-byte slot of one of the
//! process's [arenas](multiproc_core::wait::arena), so 100,000 of them cost a few descriptors.
//! So that permits of a process that dies come back, the permits each handle holds are also
//! counted in the arena's [owner table](crate::table), which every semaphore of the arena
//! shares: one entry per handle and process that has acquired (owner: pid and start time;
//! value: the semaphore's slot and the permits held), claimed at the handle's first acquire and
//! released when the process's last clone of that handle is dropped. A dead owner's entry is
//! reclaimed by whoever sweeps the table (a waiter, every 50 ms; a `try_acquire` that finds no
//! permit; a claim that finds the table full), which returns the permits to the semaphore the
//! entry names (waking its waiters if it is the sweeper's own; the others' waiters find them at
//! their next 50 ms tick).
//!
//! The count in an entry cannot overflow (a process holds at most `MAX_PERMITS`). The number of
//! entries is the one limit: [`Semaphore::MAX_HOLDERS`] handles holding (or having held)
//! permits of the semaphores of one arena at once, in all processes; 16 bytes of address space
//! each, touched only when used. Past it, the acquire fails with an error naming the limit and
//! the permit stays in the semaphore: a permit that could not be recovered is never handed out.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use multiproc_core::shm::SharedRegion;
use multiproc_core::wait::arena::{
    ARENA_SLOTS, SLOT_LEN, TABLE_AT, TABLE_ENTRIES, TABLE_WINDOW_AT,
};
use multiproc_core::wait::{LIVENESS_TICK, WaitQueue};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{AcquireError, AcquireTimeoutError, CreateError, ReleaseError, TryAcquireError};
use crate::fast_then_slow::fast_then_slow;
use crate::table::{Layout, Liveness, Table};

// Layout of the semaphore's slot.
const FLAGS: usize = 4; // u32: bit 0 = a release above the bound was attempted
const COUNT: usize = 8; // u64: available permits
const BOUND: usize = 16; // u64: most permits a release may reach
const KIND: usize = 24; // u64: KIND_PLAIN or KIND_BOUNDED
const LEN: usize = 32;
/// The arena's owner table: one entry per handle and process that has held permits, valued
/// with the semaphore's slot (high half) and how many permits it holds now (low half).
const HOLDERS: Layout = Layout {
    window_at: TABLE_WINDOW_AT,
    base: TABLE_AT,
    capacity: TABLE_ENTRIES,
};

const KIND_PLAIN: u64 = 1;
const KIND_BOUNDED: u64 = 2;
const OVER_RELEASED: u32 = 1;

/// No entry claimed yet.
const NO_ENTRY: usize = usize::MAX;

/// Serializes this process's claims of entries, so that a handle never claims two.
static CLAIMS: Mutex<()> = Mutex::new(());

/// Where this process's next claim starts looking: after its last one, so that claims do not
/// scan every live entry of the arena.
static NEXT_CLAIM: AtomicUsize = AtomicUsize::new(0);

/// The owner table could not record a holder: [`Semaphore::MAX_HOLDERS`] live entries
/// already exist in the arena.
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
    /// This handle's entry in the arena's owner table, shared by its clones in this process.
    holder: Arc<Holder>,
}

/// A handle's entry in the owner table (claimed at its first acquire); released when the
/// process's last clone of the handle is dropped, when it holds no permit (every permit
/// borrows or owns a clone).
struct Holder {
    region: SharedRegion,
    entry: AtomicUsize,
}

impl Holder {
    fn new(core: &WaitQueue) -> Arc<Self> {
        Arc::new(Self {
            region: core
                .arena_region()
                .expect("a semaphore lives in an arena")
                .clone(),
            entry: AtomicUsize::new(NO_ENTRY),
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let entry = *self.entry.get_mut();
        if entry != NO_ENTRY {
            Table::new(&self.region, HOLDERS).release(entry);
        }
    }
}

/// The permits an owner-table value records, if it names a semaphore of the arena: its slot
/// and the count. A value written by a broken or hostile process is checked, never trusted.
fn recorded(region: &SharedRegion, value: u64) -> Option<(usize, u64)> {
    let slot = (value >> 32) as usize;
    let held = value & u64::from(u32::MAX);
    if slot == 0 || slot >= ARENA_SLOTS || held == 0 {
        return None;
    }
    let kind = region
        .atomic_u64(slot * SLOT_LEN + KIND)
        .load(Ordering::SeqCst);
    (kind == KIND_PLAIN || kind == KIND_BOUNDED).then_some((slot, held))
}

/// Adds up to `n` recovered permits to the count at `slot` of `region`, never passing the bound.
fn give_capped_at(region: &SharedRegion, slot: usize, n: u64) {
    let bound = region
        .atomic_u64(slot * SLOT_LEN + BOUND)
        .load(Ordering::Relaxed);
    let _ = region.atomic_u64(slot * SLOT_LEN + COUNT).fetch_update(
        Ordering::SeqCst,
        Ordering::SeqCst,
        |c| Some(c.saturating_add(n).min(bound.max(c))),
    );
}

impl Engine {
    fn new(permits: usize, bound: u64, kind: u64) -> Result<Self, CreateError> {
        let core = WaitQueue::in_arena()?;
        core.atomic_u64(COUNT)
            .store(permits as u64, Ordering::SeqCst);
        core.atomic_u64(BOUND).store(bound, Ordering::SeqCst);
        core.atomic_u64(KIND).store(kind, Ordering::SeqCst);
        Ok(Self {
            holder: Holder::new(&core),
            core,
        })
    }

    fn decode(core: WaitQueue, kind: u64) -> Result<Self, String> {
        core.check_len(LEN)?;
        if core.arena_slot().is_none() {
            return Err("received shared state is not a semaphore's arena slot".into());
        }
        if core.atomic_u64(KIND).load(Ordering::SeqCst) != kind {
            return Err("received shared state is not a semaphore of this kind".into());
        }
        Ok(Self {
            holder: Holder::new(&core),
            core,
        })
    }

    #[inline]
    fn count(&self) -> &AtomicU64 {
        self.core.atomic_u64(COUNT)
    }

    fn flags(&self) -> &AtomicU32 {
        self.core.atomic_u32(FLAGS)
    }

    #[inline]
    fn bound(&self) -> u64 {
        self.core.atomic_u64(BOUND).load(Ordering::Relaxed)
    }

    /// This semaphore's slot in its arena.
    fn slot(&self) -> usize {
        self.core
            .arena_slot()
            .expect("a semaphore lives in an arena")
    }

    /// The arena this semaphore's slot is in.
    #[inline]
    fn arena(&self) -> &SharedRegion {
        &self.holder.region
    }

    #[inline]
    fn holders(&self) -> Table<'_> {
        Table::new(self.arena(), HOLDERS)
    }

    #[inline]
    fn entry_value(&self, i: usize) -> &AtomicU64 {
        self.holders().value(i)
    }

    #[inline]
    fn take(&self) -> bool {
        self.count()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
            .is_ok()
    }

    /// Adds `n` permits; `Err` (count unchanged) if that would pass the bound.
    #[inline]
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
            Err(_) => Err(self.over_released()),
        }
    }

    /// Records a release refused at the bound (out of line: never a permit's drop).
    #[cold]
    #[inline(never)]
    fn over_released(&self) -> ReleaseError {
        self.flags().fetch_or(OVER_RELEASED, Ordering::SeqCst);
        ReleaseError::TooManyReleases
    }

    /// Returns the permits a reclaimed entry held to the semaphore it names, waking this
    /// semaphore's waiters if it is this one (another's find them at their next tick).
    fn give_back(&self, value: u64) {
        let region = self.arena();
        if let Some((slot, held)) = recorded(region, value) {
            give_capped_at(region, slot, held);
            if slot == self.slot() {
                self.core.wake();
            }
        }
    }

    /// Records one more permit held by this handle; returns its entry in the owner table.
    ///
    /// Each handle claims one entry (at its first acquire, under [`CLAIMS`]) and keeps it while
    /// a clone of it lives in this process; dead processes' entries are reclaimed (their
    /// permits returned) by the next claim that finds the table's window full, or by
    /// [`Self::recover`]. So the table fills only with [`Semaphore::MAX_HOLDERS`] *live*
    /// entries; `Err` then, and the caller gives the permit back rather than hand out one that
    /// could not be recovered.
    #[inline]
    fn track(&self) -> Result<usize, HoldersFull> {
        let entry = self.holder.entry.load(Ordering::Acquire);
        let entry = if entry == NO_ENTRY {
            self.claim()?
        } else {
            entry
        };
        self.entry_value(entry).fetch_add(1, Ordering::SeqCst);
        Ok(entry)
    }

    /// The claim of [`Self::track`] at a handle's first acquire.
    #[cold]
    #[inline(never)]
    fn claim(&self) -> Result<usize, HoldersFull> {
        let _claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = self.holder.entry.load(Ordering::Acquire);
        if entry != NO_ENTRY {
            return Ok(entry);
        }
        let mut recovered = Vec::new();
        let entry = self.holders().claim_from(
            NEXT_CLAIM.load(Ordering::Relaxed),
            &mut Liveness::default(),
            |value| recovered.push(value),
        );
        for value in recovered {
            self.give_back(value);
        }
        let entry = entry.ok_or(HoldersFull)?;
        NEXT_CLAIM.store(entry + 1, Ordering::Relaxed);
        self.entry_value(entry)
            .store((self.slot() as u64) << 32, Ordering::SeqCst);
        self.holder.entry.store(entry, Ordering::Release);
        Ok(entry)
    }

    #[inline]
    fn untrack(&self, entry: usize) {
        self.entry_value(entry).fetch_sub(1, Ordering::SeqCst);
    }

    /// Returns the permits of this semaphore's dead holders to the count; frees their entries.
    /// (Other semaphores' dead holders are left to them, and to claims that find the table
    /// full, so that a failed `try_acquire` checks the liveness of its own holders only.)
    #[cold]
    #[inline(never)]
    fn recover(&self) {
        let mut recovered = Vec::new();
        let mine = self.slot() as u64;
        self.holders().sweep_if(
            &mut Liveness::default(),
            |value| value >> 32 == mine,
            |value| recovered.push(value),
        );
        for value in recovered {
            self.give_back(value);
        }
    }

    /// Takes a permit if one is available (first returning dead holders' permits if `recover`)
    /// and records it.
    #[inline]
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
            entry: got?,
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
    entry: usize,
    live: bool,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken forever (Python's `acquire()` without `release()`): the count
    /// stays one lower, and the permit is no longer recovered if this process dies.
    pub fn forget(mut self) {
        self.engine.untrack(self.entry);
        self.live = false;
    }
}

impl<'a> SemaphorePermit<'a> {
    /// Hands the permit over to an owned one: its entry, with this guard no longer releasing it.
    fn into_owned(mut self) -> OwnedSemaphorePermit {
        self.live = false;
        OwnedSemaphorePermit {
            engine: self.engine.clone(),
            entry: self.entry,
            live: true,
        }
    }
}

impl Drop for SemaphorePermit<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.live {
            self.engine.untrack(self.entry);
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
    entry: usize,
    live: bool,
}

impl OwnedSemaphorePermit {
    /// As [`SemaphorePermit::forget`].
    pub fn forget(mut self) {
        self.engine.untrack(self.entry);
        self.live = false;
    }
}

impl Drop for OwnedSemaphorePermit {
    #[inline]
    fn drop(&mut self) {
        if self.live {
            self.engine.untrack(self.entry);
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
/// message. The count lives in a 64-byte slot of a shared arena (thousands of semaphores share
/// one memfd and eight wake-up eventfds); acquiring an available permit and releasing one
/// nobody waits for make no system call.
///
/// [`acquire`](Self::acquire) returns a [`SemaphorePermit`] that gives the permit back when
/// dropped. [`release`](Self::release) adds permits without a prior acquire (a semaphore used
/// as a signal), up to [`Semaphore::MAX_PERMITS`].
///
/// # Crash behavior
/// Each process's permits (the live [`SemaphorePermit`]s) are counted in a table shared by the
/// semaphores of the arena, one entry per handle and process that has acquired (pid and start
/// time; the semaphore; the permits held), released when the process drops the handle. When a
/// process dies holding permits, all of them are returned to the semaphore by the next waiter
/// (within about 50 ms), by the next `try_acquire` that finds none available, or by the next
/// process that needs a new entry while the table is full; the dead process's entry is reused.
///
/// Up to [`Semaphore::MAX_HOLDERS`] (65,536) such entries can be live at once in one arena
/// (whose up to 16,383 semaphores share the table); only the part in use costs memory (16
/// bytes an entry). A process beyond the limit is refused rather than given a permit that
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

    /// The most holder entries (one per semaphore handle and process that has acquired) live
    /// at once among the semaphores of one arena (65,536); see `# Crash behavior`.
    pub const MAX_HOLDERS: usize = 1 << 16;

    /// Creates a semaphore holding `permits` permits.
    ///
    /// # Errors
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
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
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
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
    use crate::owner;

    /// Records `held` permits of `sem` for `owner` in entry `i` of its arena's owner table.
    fn record(sem: &Semaphore, i: usize, owner: u64, held: u64) {
        let e = &sem.engine;
        e.holders().owner(i).store(owner, Ordering::SeqCst);
        e.entry_value(i)
            .store(((e.slot() as u64) << 32) | held, Ordering::SeqCst);
    }

    /// The tests share their arena's owner table: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A free entry of the arena's owner table (the last one free), with the window grown to
    /// include it, for a test to fake a holder in.
    fn spare_entry(sem: &Semaphore) -> usize {
        let table = sem.engine.holders();
        let i = (0..TABLE_ENTRIES)
            .rev()
            .find(|&i| table.owner(i).load(Ordering::SeqCst) == 0)
            .unwrap();
        sem.engine
            .arena()
            .atomic_u64(TABLE_WINDOW_AT)
            .fetch_max((i + 1) as u64, Ordering::SeqCst);
        assert_eq!(table.owner(i).load(Ordering::SeqCst), 0);
        i
    }

    #[test]
    fn dead_holders_permits_come_back() {
        let _serial = serial();
        let sem = Semaphore::new(1).unwrap();
        let e = &sem.engine;
        // A dead process (our pid, another start time) holds the only permit.
        assert!(e.take());
        let fake = spare_entry(&sem);
        record(&sem, fake, owner::me() ^ 1, 1);
        assert_eq!(sem.available_permits(), 0);
        let p = sem.try_acquire().unwrap();
        assert_eq!(e.holders().owner(fake).load(Ordering::SeqCst), 0);
        drop(p);
        assert_eq!(sem.available_permits(), 1);
    }

    #[test]
    fn the_table_counts_a_handles_permits_in_one_entry_and_frees_it_with_the_handle() {
        let _serial = serial();
        let sem = Semaphore::new(3).unwrap();
        let a = sem.try_acquire().unwrap();
        let b = sem.try_acquire().unwrap();
        let entry = a.entry;
        assert_eq!(b.entry, entry);
        let value = sem.engine.entry_value(entry).load(Ordering::SeqCst);
        assert_eq!(value, ((sem.engine.slot() as u64) << 32) | 2);
        b.forget();
        drop(a);
        assert_eq!(
            sem.engine.entry_value(entry).load(Ordering::SeqCst) & 0xffff_ffff,
            0
        );
        assert_eq!(sem.available_permits(), 2);
        let table = sem.engine.holders();
        assert_eq!(table.owner(entry).load(Ordering::SeqCst), owner::me());
        let region = sem.engine.arena().clone();
        drop(sem);
        // The handle is gone: its entry is free again.
        let table = Table::new(&region, HOLDERS);
        assert_ne!(table.owner(entry).load(Ordering::SeqCst), owner::me());
    }

    /// What a claim that finds the table full does: reclaims every dead holder's entry, of
    /// any semaphore of the arena, and gives each one's permits back.
    fn sweep_every_holder(engine: &Engine) {
        let mut values = Vec::new();
        engine
            .holders()
            .sweep(&mut Liveness::default(), |v| values.push(v));
        for v in values {
            engine.give_back(v);
        }
    }

    #[test]
    fn a_dead_holders_permits_go_back_to_the_semaphore_its_entry_names() {
        let _serial = serial();
        let mine = Semaphore::new(1).unwrap();
        let other = BoundedSemaphore::new(2).unwrap();
        assert!(other.engine.take());
        assert!(other.engine.take());
        let i = spare_entry(&mine);
        let o = &other.engine;
        o.holders()
            .owner(i)
            .store(owner::me() ^ 1, Ordering::SeqCst);
        o.entry_value(i)
            .store(((o.slot() as u64) << 32) | 2, Ordering::SeqCst);
        // A sweep by another semaphore of the arena leaves them to `other` ...
        mine.engine.recover();
        assert_eq!(other.available_permits(), 0);
        // ... and a full-window claim's sweep returns them to it, within its bound.
        sweep_every_holder(&mine.engine);
        assert_eq!(other.available_permits(), 2);
        assert_eq!(mine.available_permits(), 1);
        // An entry naming a slot that is no semaphore (a lock's) gives nothing to anyone.
        let lock = crate::Lock::new().unwrap();
        let guard = lock.try_lock().unwrap();
        let lock_slot = (1..ARENA_SLOTS)
            .find(|&s| {
                o.arena()
                    .atomic_u64(s * SLOT_LEN + 8)
                    .load(Ordering::SeqCst)
                    == owner::me()
                    && o.arena()
                        .atomic_u64(s * SLOT_LEN + KIND)
                        .load(Ordering::SeqCst)
                        == 0
            })
            .unwrap();
        o.holders()
            .owner(i)
            .store(owner::me() ^ 1, Ordering::SeqCst);
        o.entry_value(i)
            .store(((lock_slot as u64) << 32) | 5, Ordering::SeqCst);
        sweep_every_holder(&mine.engine);
        assert_eq!(o.holders().owner(i).load(Ordering::SeqCst), 0);
        assert!(lock.is_locked());
        assert_eq!(lock.owner_pid(), Some(std::process::id()));
        drop(guard);
        assert_eq!(mine.available_permits(), 1);
        assert_eq!(other.available_permits(), 2);
    }

    #[tokio::test]
    // The serial guard must span the whole test, and the await inside fails at once.
    #[allow(clippy::await_holding_lock)]
    async fn a_table_full_of_live_holders_refuses_and_keeps_the_permit() {
        let _serial = serial();
        let sem = Semaphore::new(2).unwrap();
        let e = &sem.engine;
        let table = e.holders();
        let taken: Vec<usize> = (0..Semaphore::MAX_HOLDERS)
            .filter(|&i| {
                table
                    .owner(i)
                    .compare_exchange(0, 1 << 32, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .collect();
        assert_eq!(table.claim(&mut Liveness::default(), |_| {}), None);
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
        // An entry freed by its owner is found again.
        let freed = taken[taken.len() / 2];
        table.owner(freed).store(0, Ordering::SeqCst);
        let p = sem.try_acquire().unwrap();
        assert_eq!(p.entry, freed);
        drop(p);
        for i in taken {
            let _ = table
                .owner(i)
                .compare_exchange(1 << 32, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}
