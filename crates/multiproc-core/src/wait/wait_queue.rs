//! The wait queue; its protocol is argued in the [area docs](super).

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::{SharedRegion, Window};
use crate::wait::arena::{SLOT_LEN, Slot, SlotWire};
use crate::wait::eventfd::{BlockingWaiter, EventFd, Waiter};
use crate::wait::spin::{self, Contention, SpinPolicy, Spun};

/// How often a waiter that watches for a dead owner (a lock's holder, a queue slot's writer)
/// re-checks its liveness: the `tick` every such wait of multiproc passes.
pub const LIVENESS_TICK: Duration = Duration::from_millis(50);

/// A waiter count in a shared region plus an eventfd: a cross-process wait queue (see the
/// [module docs](crate::wait)). Serializes as its descriptors.
///
/// The waiter count is the `AtomicU32` at byte `WAITERS_AT` of the queue's state: 0 for a
/// primitive with a region or arena slot of its own; state that needs several wait queues in one
/// region gives each its own offset. A constant, so that the waker's bounds check folds away on
/// unlock paths.
///
/// The state is either a region of its own ([`WaitQueue::new`], [`WaitQueue::in_region`]) or
/// a 64-byte slot of an [arena](crate::wait::arena) shared with thousands of other primitives
/// ([`WaitQueue::in_arena`]), which parks on one of the arena's few eventfds. Offsets given to
/// [`WaitQueue::atomic_u32`] and [`WaitQueue::atomic_u64`] are relative to the state's start in
/// both cases.
///
/// Either way the state is at least [`SLOT_LEN`] bytes, checked once when the queue is made: a
/// word in the first [`SLOT_LEN`] bytes at a constant offset (a lock's owner word, a
/// semaphore's count) is then reached with no bounds check at all, so a fast path is the atomic
/// instruction on it and little else.
#[derive(Clone, Debug)]
pub struct WaitQueue<const WAITERS_AT: usize = 0> {
    /// The state: the bytes of a region of its own from 0, or of an arena's region from the
    /// slot's offset; at least [`SLOT_LEN`] of them (checked once, when the queue is made).
    state: Window,
    efd: EventFd,
    /// This process's reusable registrations of `efd`, shared by the clones of the handle (and,
    /// in an arena, by every slot of the lane).
    cache: Arc<Registrations>,
    /// Whether this handle's waits spin, from how their spins went.
    spin: Arc<Mutex<SpinPolicy>>,
    /// The arena slot the state lives in, if it does.
    slot: Option<Arc<Slot>>,
}

// A state's first `SLOT_LEN` bytes are reached without a check (see `WaitQueue`).
const _: () = assert!(SLOT_LEN == Window::MIN_LEN);

/// The cached registrations of one eventfd; see the [module docs](crate::wait).
#[derive(Default)]
pub(crate) struct Registrations {
    /// An async registration and the runtime whose reactor it belongs to.
    tokio: Slot1<(tokio::runtime::Id, Waiter)>,
    blocking: Slot1<BlockingWaiter>,
}

impl std::fmt::Debug for Registrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrations").finish_non_exhaustive()
    }
}

/// At most one cached value, taken exclusively.
struct Slot1<T>(Mutex<Option<T>>);

impl<T> Default for Slot1<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> Slot1<T> {
    fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Caches `v`, dropping (outside the lock) whatever was cached.
    fn put(&self, v: T) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(v);
        drop(old);
    }
}

/// A registration taken from a [`Slot`] (or made fresh) for one wait; goes back on drop.
struct Taken<'a, T> {
    slot: &'a Slot1<T>,
    value: Option<T>,
}

impl<T> Taken<'_, T> {
    fn get(&self) -> &T {
        self.value.as_ref().expect("present until dropped")
    }
}

impl<T> Drop for Taken<'_, T> {
    fn drop(&mut self) {
        if let Some(v) = self.value.take() {
            self.slot.put(v);
        }
    }
}

/// The high bit of the waiter word: a wake-up was written since a parked waiter last looked.
/// The other bits count the parked waiters.
const WOKEN: u32 = 1 << 31;

/// Decrements the waiter count when a wait ends, however it ends (including cancellation).
struct Announced<'a>(&'a AtomicU32);

impl<'a> Announced<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }

    /// Says this waiter is about to look at the state: the next waker must write again. Call
    /// it after the registration is taken and before every look.
    fn looking(&self) {
        if self.0.load(Ordering::SeqCst) & WOKEN != 0 {
            self.0.fetch_and(!WOKEN, Ordering::SeqCst);
        }
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<const WAITERS_AT: usize> WaitQueue<WAITERS_AT> {
    /// A wait queue with a fresh region of `len` bytes (at least room for the waiter count, and
    /// at least [`SLOT_LEN`]); the rest is the caller's shared state.
    ///
    /// # Errors
    /// When the region or the eventfd cannot be made.
    pub fn new(len: usize) -> io::Result<Self> {
        let region = SharedRegion::new(len.max(WAITERS_AT + 4).max(SLOT_LEN))?;
        Ok(Self::in_region(region, EventFd::new()?))
    }

    /// A wait queue whose state is a fresh, zeroed [`SLOT_LEN`]-byte slot of an
    /// [arena](crate::wait::arena) (the waiter count included): for primitives whose state fits,
    /// so that thousands of them share one memfd and a few eventfds.
    ///
    /// # Errors
    /// When every arena of the process is full and a new one's memfd, mapping or eventfds
    /// cannot be made.
    ///
    /// # Panics
    /// When `WAITERS_AT` lies outside the slot.
    pub fn in_arena() -> io::Result<Self> {
        assert!(WAITERS_AT + 4 <= SLOT_LEN, "waiter count outside the slot");
        Ok(Self::of_slot(Slot::allocate()?))
    }

    fn of_slot(slot: Arc<Slot>) -> Self {
        let lane = slot.lane();
        Self {
            state: Window::of(slot.region().clone(), slot.base(), SLOT_LEN),
            efd: lane.efd.clone(),
            cache: lane.cache.clone(),
            spin: Arc::default(),
            slot: Some(slot),
        }
    }

    /// A wait queue over an existing `region` (its waiter count at `WAITERS_AT`), woken
    /// through `efd`: for state that needs several wait queues in one region.
    ///
    /// # Panics
    /// When the region is shorter than [`SLOT_LEN`] bytes, or `WAITERS_AT` is out of its bounds
    /// or not 4-aligned.
    pub fn in_region(region: SharedRegion, efd: EventFd) -> Self {
        region.atomic_u32(WAITERS_AT);
        let len = region.len();
        Self {
            state: Window::of(region, 0, len),
            efd,
            cache: Arc::default(),
            spin: Arc::default(),
            slot: None,
        }
    }

    /// A wait queue over the same state and eventfd as this one, with its waiter count at byte
    /// `B` of that state: for state that needs several waits (a queue's getters, putters and
    /// joiners, and its lock, all in one arena slot). A wake-up of either wakes the other's
    /// waiters too, which re-check their condition and park again. The two share this
    /// process's cached registrations of the eventfd, as the slots of an arena lane do.
    ///
    /// # Panics
    /// When the waiter count at `B` lies outside the state or is not 4-aligned.
    pub fn beside<const B: usize>(&self) -> WaitQueue<B> {
        self.state.atomic_u32(B);
        WaitQueue {
            state: self.state.clone(),
            efd: self.efd.clone(),
            cache: self.cache.clone(),
            spin: Arc::default(),
            slot: self.slot.clone(),
        }
    }

    /// The shared region of a queue with a region of its own ([`Self::new`],
    /// [`Self::in_region`]).
    ///
    /// # Panics
    /// For a queue in an arena slot, whose region is the whole arena, shared with thousands of
    /// other primitives: offsets into it would land on other primitives' words. Use
    /// [`Self::atomic_u32`] and [`Self::atomic_u64`] (whose offsets start at the slot), or
    /// [`Self::arena_region`] for the arena's shared parts.
    #[inline]
    pub fn region(&self) -> &SharedRegion {
        if self.slot.is_some() {
            region_of_slot();
        }
        self.state.region()
    }

    /// The whole arena, for a queue in an arena slot (see [`arena`](crate::wait::arena) for
    /// its layout); `None` for a queue with a region of its own.
    pub fn arena_region(&self) -> Option<&SharedRegion> {
        self.slot.as_ref().map(|_| self.state.region())
    }

    /// The `AtomicU32` at byte `offset` of the queue's state.
    ///
    /// # Panics
    /// Out of the state's bounds (as [`SharedRegion::atomic_u32`] for a region; past the slot
    /// for an arena slot) or misaligned.
    ///
    /// For a constant `offset` below [`SLOT_LEN`] this is the address computation alone: every
    /// state is at least that long, so the check folds away.
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.state.atomic_u32(offset)
    }

    /// The `AtomicU64` at byte `offset` of the queue's state; panics and folds as
    /// [`Self::atomic_u32`].
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.state.atomic_u64(offset)
    }

    /// The index of the arena slot the state lives in (its offset in [`Self::region`] is
    /// `index * SLOT_LEN`), if it lives in one.
    pub fn arena_slot(&self) -> Option<usize> {
        self.slot.as_ref().map(|s| s.index() as usize)
    }

    /// Whether `self` and `other` are the same queue (the same region, or the same slot).
    pub fn same_queue(&self, other: &Self) -> bool {
        match (&self.slot, &other.slot) {
            (Some(a), Some(b)) => a.same_slot(b),
            (None, None) => self.state.region().same_region(other.state.region()),
            _ => false,
        }
    }

    /// The eventfd.
    #[inline]
    pub fn eventfd(&self) -> &EventFd {
        &self.efd
    }

    /// An async registration for this wait alone: the cached one if it belongs to the current
    /// runtime, else a fresh one. Take it **before** the waiter's last check.
    fn waiter(&self) -> io::Result<Taken<'_, (tokio::runtime::Id, Waiter)>> {
        let slot = &self.cache.tokio;
        let here = tokio::runtime::Handle::try_current().map(|h| h.id());
        let value = match (slot.take(), here) {
            (Some((id, w)), Ok(here)) if id == here => (id, w),
            // Another runtime's registration is dropped here; with no runtime, `waiter()` fails.
            (_, here) => {
                let w = self.efd.waiter()?;
                (here.map_err(io::Error::other)?, w)
            }
        };
        Ok(Taken {
            slot,
            value: Some(value),
        })
    }

    /// The blocking twin of [`Self::waiter`].
    fn blocking_waiter(&self) -> io::Result<Taken<'_, BlockingWaiter>> {
        let slot = &self.cache.blocking;
        let value = match slot.take() {
            Some(w) => w,
            None => self.efd.blocking_waiter()?,
        };
        Ok(Taken {
            slot,
            value: Some(value),
        })
    }

    /// Checks a received region is large enough for the layout.
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn check_len(&self, len: usize) -> Result<(), String> {
        let have = self.state.len();
        if have < len {
            Err(format!(
                "shared state of {have} bytes, expected at least {len}"
            ))
        } else {
            Ok(())
        }
    }

    #[inline]
    fn waiters(&self) -> &AtomicU32 {
        self.atomic_u32(WAITERS_AT)
    }

    /// How many waiters, in every process, are parked on this queue now (spinning ones are not
    /// counted). A snapshot, for statistics.
    pub fn waiting(&self) -> usize {
        (self.waiters().load(Ordering::Relaxed) & !WOKEN) as usize
    }

    /// Wakes every waiter, if there is any. Call after changing the shared state.
    ///
    /// Only the first waker after a parked waiter last looked writes the eventfd: the others
    /// find the wake-up already on its way, and the waiter will look after it, so it sees
    /// their changes too (a parked waiter clears the `WOKEN` bit after each wake-up, before it
    /// looks). So eight producers feeding one parked consumer make one system call, not one
    /// each until the consumer has run.
    #[inline]
    pub fn wake(&self) {
        let word = self.waiters().load(Ordering::SeqCst);
        if word & !WOKEN != 0 && word & WOKEN == 0 {
            self.notify();
        }
    }

    /// The system call of [`Self::wake`], out of line: the uncontended paths never take it.
    #[cold]
    #[inline(never)]
    fn notify(&self) {
        if self.waiters().fetch_or(WOKEN, Ordering::SeqCst) & WOKEN != 0 {
            // Another waker got there first.
            return;
        }
        // A write to an eventfd we hold cannot fail short of a kernel bug; if it did, the
        // waiters' periodic re-checks (where they have one) would still make progress.
        let _ = self.efd.notify();
    }

    /// [`Self::wait_until`], after a spin on `attempt(false)` as the
    /// [spin policy](crate::wait::spin) says (inside `poll`, by the one rule for async waits):
    /// a change that comes within microseconds (a peer answering, a lock handed over) is then
    /// caught without a sleep and a wake-up. The spin runs on the caller's thread, before the
    /// waiter announces itself.
    ///
    /// Cancel safe, as [`Self::wait_until`].
    pub async fn spin_then_wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        self.spin_then_wait_until_in(Contention::Process, deadline, tick, attempt)
            .await
    }

    /// [`Self::spin_then_wait_until`], with the contention record `scope` says: a wait among
    /// contenders (a barrier's parties, a queue's consumers and producers) keeps what it finds
    /// to itself.
    ///
    /// Cancel safe, as [`Self::wait_until`].
    pub async fn spin_then_wait_until_in<T>(
        &self,
        scope: Contention,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let parked_at = match self.spin_first(scope, deadline, &mut attempt).await {
            Spun::Caught(v) => return Ok(Some(v)),
            Spun::Park(at) => at,
        };
        let got = self.wait_until(deadline, tick, attempt).await;
        self.parked(parked_at);
        got
    }

    /// Waits until `attempt` returns `Some`, or until `deadline` (then `Ok(None)`, never early),
    /// parking at once: for a caller that has spun itself, or whose wake-up never comes soon.
    ///
    /// `attempt(ticked)` runs first, after every wake-up, and with `ticked == true` every `tick`
    /// (if given) so it can check for dead owners.
    ///
    /// Cancel safe: dropping the future only withdraws this waiter.
    pub async fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let announced = Announced::new(self.waiters());
        let taken = self.waiter()?;
        let waiter = &taken.get().1;
        let mut ticked = false;
        loop {
            announced.looking();
            if let Some(v) = attempt(ticked) {
                return Ok(Some(v));
            }
            let Some(next) = next_wake(deadline, tick) else {
                return Ok(None);
            };
            ticked = match next {
                None => {
                    waiter.wait().await?;
                    false
                }
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    match tokio::time::timeout_at(at, waiter.wait()).await {
                        Ok(r) => {
                            r?;
                            false
                        }
                        Err(_) => true,
                    }
                }
            };
        }
    }

    /// The spin before an async wait parks; see [`spin::poll_spin`]. The policy is copied out
    /// for the spin, so that this process's other waits on the handle never wait for it (a lost
    /// update only costs the hint).
    async fn spin_first<T>(
        &self,
        scope: Contention,
        deadline: Option<Instant>,
        attempt: &mut impl FnMut(bool) -> Option<T>,
    ) -> Spun<T> {
        let mut policy = self.spin_policy().clone();
        let spun = std::future::poll_fn(|cx| {
            spin::poll_spin_in(scope, cx, &mut policy, deadline, None, || attempt(false))
        })
        .await;
        *self.spin_policy() = policy;
        spun
    }

    /// The blocking twin of [`Self::spin_first`].
    fn blocking_spin_first<T>(
        &self,
        scope: Contention,
        deadline: Option<Instant>,
        attempt: &mut impl FnMut(bool) -> Option<T>,
    ) -> Spun<T> {
        let mut policy = self.spin_policy().clone();
        let spun = spin::spin_in(scope, &mut policy, deadline, None, || attempt(false));
        *self.spin_policy() = policy;
        spun
    }

    /// Tells the spin policy how long a wait that parked without spinning took.
    fn parked(&self, since: Option<Instant>) {
        if let Some(since) = since {
            self.spin_policy().parked(since.elapsed());
        }
    }

    fn spin_policy(&self) -> std::sync::MutexGuard<'_, SpinPolicy> {
        self.spin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The blocking twin of [`Self::spin_then_wait_until`].
    pub fn blocking_spin_then_wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        self.blocking_spin_then_wait_until_in(Contention::Process, deadline, tick, attempt)
    }

    /// The blocking twin of [`Self::spin_then_wait_until_in`].
    pub fn blocking_spin_then_wait_until_in<T>(
        &self,
        scope: Contention,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let parked_at = match self.blocking_spin_first(scope, deadline, &mut attempt) {
            Spun::Caught(v) => return Ok(Some(v)),
            Spun::Park(at) => at,
        };
        let got = self.blocking_wait_until(deadline, tick, attempt);
        self.parked(parked_at);
        got
    }

    /// The blocking twin of [`Self::wait_until`].
    pub fn blocking_wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let announced = Announced::new(self.waiters());
        let taken = self.blocking_waiter()?;
        let waiter = taken.get();
        let mut ticked = false;
        loop {
            announced.looking();
            if let Some(v) = attempt(ticked) {
                return Ok(Some(v));
            }
            let Some(next) = next_wake(deadline, tick) else {
                return Ok(None);
            };
            ticked = !waiter.wait(next)?;
        }
    }

    /// Waits with no deadline until `attempt` succeeds. After the spin of
    /// [`Self::spin_then_wait_until`], `attempt` gets `true` on its first call and at every `tick`,
    /// so a dead owner is noticed at once and then periodically.
    ///
    /// This and [`Self::wait_timeout`] are the shapes of acquiring something other contenders want
    /// too (a lock, a permit): their spins keep CPU contention to themselves
    /// ([`Contention::Unshared`](crate::wait::spin::Contention::Unshared)), so a storm of
    /// contenders does not stop the process's answer-waits (pipes, events, queues) from spinning
    /// after it.
    pub async fn wait_forever<T>(
        &self,
        tick: Duration,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<T> {
        let parked_at = match self
            .spin_first(Contention::Unshared, None, &mut attempt)
            .await
        {
            Spun::Caught(v) => return Ok(v),
            Spun::Park(at) => at,
        };
        let mut first = true;
        let got = self
            .wait_until(None, Some(tick), |ticked| {
                attempt(ticked || std::mem::take(&mut first))
            })
            .await?;
        self.parked(parked_at);
        Ok(got.expect("an unbounded wait ends only with a value"))
    }

    /// The blocking twin of [`Self::wait_forever`].
    pub fn blocking_wait_forever<T>(
        &self,
        tick: Duration,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<T> {
        let parked_at = match self.blocking_spin_first(Contention::Unshared, None, &mut attempt) {
            Spun::Caught(v) => return Ok(v),
            Spun::Park(at) => at,
        };
        let mut first = true;
        let got = self.blocking_wait_until(None, Some(tick), |ticked| {
            attempt(ticked || std::mem::take(&mut first))
        })?;
        self.parked(parked_at);
        Ok(got.expect("an unbounded wait ends only with a value"))
    }

    /// The shape of every `*_timeout`: try now (cheaply, then with the dead-owner check), then
    /// wait until `timeout` has fully elapsed. `Ok(None)` on timeout, never early; a zero
    /// timeout only tries.
    pub async fn wait_timeout<T>(
        &self,
        timeout: Duration,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let deadline = match timed_start(timeout, &mut attempt) {
            TimedStart::Done(v) => return Ok(v),
            TimedStart::Wait(deadline) => deadline,
        };
        self.spin_then_wait_until_in(Contention::Unshared, deadline, tick, attempt)
            .await
    }

    /// The blocking twin of [`Self::wait_timeout`].
    pub fn blocking_wait_timeout<T>(
        &self,
        timeout: Duration,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let deadline = match timed_start(timeout, &mut attempt) {
            TimedStart::Done(v) => return Ok(v),
            TimedStart::Wait(deadline) => deadline,
        };
        self.blocking_spin_then_wait_until_in(Contention::Unshared, deadline, tick, attempt)
    }
}

/// The panic of [`WaitQueue::region`] for a queue in an arena slot, out of line.
#[cold]
#[inline(never)]
#[track_caller]
fn region_of_slot() -> ! {
    panic!("a wait queue in an arena slot has no region of its own: use its atomic accessors")
}

/// A [`WaitQueue`] on the wire (sending).
#[derive(Serialize)]
enum WireRef<'a> {
    Own {
        region: &'a SharedRegion,
        efd: &'a EventFd,
    },
    Slot(SlotWire),
}

/// A [`WaitQueue`] on the wire (receiving); the variants as in [`WireRef`].
#[derive(Deserialize)]
enum Wire {
    Own { region: SharedRegion, efd: EventFd },
    Slot(SlotWire),
}

impl<const WAITERS_AT: usize> Serialize for WaitQueue<WAITERS_AT> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.slot {
            Some(slot) => WireRef::Slot(slot.to_wire()),
            None => WireRef::Own {
                region: self.state.region(),
                efd: &self.efd,
            },
        }
        .serialize(serializer)
    }
}

impl<'de, const WAITERS_AT: usize> Deserialize<'de> for WaitQueue<WAITERS_AT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Wire::deserialize(deserializer)? {
            Wire::Own { region, efd } => {
                if region.len() < (WAITERS_AT + 4).max(SLOT_LEN) {
                    return Err(D::Error::custom(
                        "shared state too small for its waiter count",
                    ));
                }
                Ok(Self::in_region(region, efd))
            }
            Wire::Slot(wire) => {
                if WAITERS_AT + 4 > SLOT_LEN {
                    return Err(D::Error::custom(
                        "an arena slot cannot hold this wait queue",
                    ));
                }
                Ok(Self::of_slot(
                    Slot::from_wire(wire).map_err(D::Error::custom)?,
                ))
            }
        }
    }
}

/// How a `*_timeout` wait begins.
enum TimedStart<T> {
    /// Over at once: a value, or none because the timeout is zero.
    Done(Option<T>),
    /// Wait until this deadline (`None`: forever).
    Wait(Option<Instant>),
}

/// The shared start of [`WaitQueue::wait_timeout`] and its blocking twin: one immediate try,
/// then the deadline by the one timeout rule ([`deadline_after`]).
fn timed_start<T>(timeout: Duration, attempt: &mut impl FnMut(bool) -> Option<T>) -> TimedStart<T> {
    if let Some(v) = try_now(attempt) {
        return TimedStart::Done(Some(v));
    }
    let deadline = deadline_after(timeout);
    if deadline.is_some_and(|d| Instant::now() >= d) {
        return TimedStart::Done(None);
    }
    TimedStart::Wait(deadline)
}

/// One immediate try: the cheap attempt first, then the one that also checks for a dead owner.
fn try_now<T>(attempt: &mut impl FnMut(bool) -> Option<T>) -> Option<T> {
    attempt(false).or_else(|| attempt(true))
}

/// When a waiter must next wake on its own: the deadline or the next tick, whichever is first.
/// `None` once the deadline has passed; `Some(None)` when there is nothing to wake for.
fn next_wake(deadline: Option<Instant>, tick: Option<Duration>) -> Option<Option<Instant>> {
    let now = Instant::now();
    if deadline.is_some_and(|d| now >= d) {
        return None;
    }
    Some(match (deadline, tick) {
        (d, None) => d,
        (None, Some(t)) => Some(now + t),
        (Some(d), Some(t)) => Some(d.min(now + t)),
    })
}

/// The deadline `timeout` from now, or `None` (no deadline: wait forever) when that lies
/// beyond what an [`Instant`] can hold, as `Duration::MAX` does.
///
/// Every `*_timeout` of multiproc that computes a deadline itself (the `blocking_*` ones, and
/// the async waits of the sync primitives) does it with this function, so a huge timeout
/// means "wait forever" and never panics (`Instant::now() + timeout` would); the other async
/// ones use `tokio::time::timeout`, which treats such a duration the same way. A deadline
/// that can be represented, however far, is waited for as such.
///
/// # Examples
/// ```
/// use std::time::{Duration, Instant};
/// use multiproc_core::wait::deadline_after;
///
/// assert_eq!(deadline_after(Duration::MAX), None);
/// let soon = deadline_after(Duration::from_secs(1)).unwrap();
/// assert!(soon > Instant::now());
/// ```
pub fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::Future;
    use std::task::Poll;

    use super::*;

    // ---- spinning before parking ----

    /// A thread that sets the flag to `v` after `delay`, and wakes the queue.
    fn set_from_thread(core: &WaitQueue, v: u32, delay: Duration) -> std::thread::JoinHandle<()> {
        let core = core.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            flag(&core).store(v, Ordering::SeqCst);
            core.wake();
        })
    }

    #[test]
    fn spinning_waits_end_whether_the_change_comes_soon_or_late() {
        let core = WaitQueue::new(8).unwrap();
        // Soon (within the spin, usually), late (long after it: the wait must park and be
        // woken), and a run of late ones that makes the policy skip spins: none is lost.
        let delays = [0, 20_000, 0, 2_000, 20_000, 20_000, 20_000, 20_000, 0, 0];
        for (v, micros) in (1..).zip(delays) {
            let setter = set_from_thread(&core, v, Duration::from_micros(micros));
            let got = core
                .blocking_spin_then_wait_until(
                    Some(Instant::now() + Duration::from_secs(30)),
                    None,
                    |_| (flag(&core).load(Ordering::SeqCst) == v).then_some(v),
                )
                .unwrap();
            assert_eq!(got, Some(v), "wait {v} timed out: a lost wake-up");
            setter.join().unwrap();
        }
        assert_eq!(core.waiters().load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_spinning_waits_end_and_respect_their_deadline() {
        let core = WaitQueue::new(8).unwrap();
        for (v, micros) in [(1, 0), (2, 20_000), (3, 50)] {
            let setter = set_from_thread(&core, v, Duration::from_micros(micros));
            let wait = core.spin_then_wait_until(None, None, |_| {
                (flag(&core).load(Ordering::SeqCst) == v).then_some(v)
            });
            let got = tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .expect("no lost wake-up");
            assert_eq!(got.unwrap(), Some(v));
            setter.join().unwrap();
        }
        // Nothing comes: the deadline ends the wait, spin or not, and not early.
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        let got = core
            .spin_then_wait_until(Some(deadline), None, |_| None::<()>)
            .await
            .unwrap();
        assert_eq!(got, None);
        assert!(Instant::now() >= deadline);
        assert_eq!(core.waiters().load(Ordering::SeqCst), 0);
    }

    // ---- arena slots ----

    #[test]
    fn a_queue_in_an_arena_addresses_its_own_slot_only() {
        let a = WaitQueue::<0>::in_arena().unwrap();
        let b = WaitQueue::<0>::in_arena().unwrap();
        assert!(!a.same_queue(&b));
        assert!(a.same_queue(&a.clone()));
        a.atomic_u64(8).store(1, Ordering::SeqCst);
        assert_eq!(b.atomic_u64(8).load(Ordering::SeqCst), 0);
        let (ia, ib) = (a.arena_slot().unwrap(), b.arena_slot().unwrap());
        let arena = a.arena_region().unwrap();
        if b.arena_region().unwrap().same_region(arena) {
            assert_ne!(ia, ib);
            assert_eq!(
                arena.atomic_u64(ia * SLOT_LEN + 8).load(Ordering::SeqCst),
                1
            );
        }
        assert!(std::panic::catch_unwind(|| a.atomic_u64(SLOT_LEN)).is_err());
        assert!(std::panic::catch_unwind(|| a.region().len()).is_err());
        assert_eq!(a.check_len(SLOT_LEN), Ok(()));
        assert!(a.check_len(SLOT_LEN + 1).is_err());
    }

    #[test]
    fn wakers_write_once_until_the_parked_waiter_looks_again() {
        let core: WaitQueue = WaitQueue::new(8).unwrap();
        core.wake();
        assert_eq!(core.eventfd().take_count().unwrap(), 0, "nobody waits");
        let parked = Announced::new(core.waiters());
        parked.looking();
        for _ in 0..100 {
            core.wake();
        }
        assert_eq!(
            core.eventfd().take_count().unwrap(),
            1,
            "one write for 100 wakes"
        );
        assert_eq!(core.waiting(), 1);
        // Woken, the waiter looks: the next change must be written again.
        parked.looking();
        core.wake();
        core.wake();
        assert_eq!(core.eventfd().take_count().unwrap(), 1);
        // A second waiter parks while the first has not looked yet: the write already made
        // wakes both (a broadcast), and each clears the flag before it looks.
        let second = Announced::new(core.waiters());
        core.wake();
        assert_eq!(core.eventfd().take_count().unwrap(), 0);
        second.looking();
        core.wake();
        assert_eq!(core.eventfd().take_count().unwrap(), 1);
        assert_eq!(core.waiting(), 2);
        drop((parked, second));
        assert_eq!(core.waiting(), 0);
        core.wake();
        assert_eq!(core.eventfd().take_count().unwrap(), 0);
    }

    // ---- reused registrations ----

    /// A word beside the waiter count for the tests to wait on.
    fn flag(core: &WaitQueue) -> &AtomicU32 {
        core.atomic_u32(4)
    }

    /// Sets the flag to `v` from another task once the waiter has parked, and wakes it.
    fn set_later(core: &WaitQueue, v: u32) -> tokio::task::JoinHandle<()> {
        let core = core.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            flag(&core).store(v, Ordering::SeqCst);
            core.wake();
        })
    }

    /// Waits (bounded) until the flag is `v`; returns how often the state was checked.
    async fn wait_for(core: &WaitQueue, v: u32) -> u32 {
        let mut checks = 0;
        let wait = core.wait_until(None, None, |_| {
            checks += 1;
            (flag(core).load(Ordering::SeqCst) == v).then_some(())
        });
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("no lost wake-up")
            .unwrap()
            .unwrap();
        checks
    }

    fn cached(core: &WaitQueue) -> bool {
        core.cache.tokio.0.lock().unwrap().is_some()
    }

    #[tokio::test]
    async fn one_registration_serves_many_waits() {
        let core = WaitQueue::new(8).unwrap();
        assert!(!cached(&core));
        for v in 1..=300 {
            let setter = set_later(&core, v);
            // The state is checked with the registration taken out of the cache.
            let wait = core.wait_until(None, None, |_| {
                assert!(!cached(&core));
                (flag(&core).load(Ordering::SeqCst) == v).then_some(())
            });
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .expect("no lost wake-up")
                .unwrap()
                .unwrap();
            // ... and put back for the next wait.
            assert!(cached(&core));
            setter.await.unwrap();
        }
    }

    #[tokio::test]
    async fn stale_readiness_costs_only_a_recheck() {
        let core = WaitQueue::new(8).unwrap();
        let setter = set_later(&core, 1);
        wait_for(&core, 1).await;
        setter.await.unwrap();
        // Notifications nobody waits for leave readiness on the cached registration (the
        // sleep parks the runtime, so its reactor harvests them).
        core.eventfd().notify().unwrap();
        core.eventfd().notify().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let checks = Cell::new(0);
        let mut wait = Box::pin(core.wait_until(None, None, |_| {
            checks.set(checks.get() + 1);
            (flag(&core).load(Ordering::SeqCst) == 2).then_some(())
        }));
        // The first poll takes the stale readiness for a wake-up, checks again, and parks.
        let first = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert_eq!(checks.get(), 2);
        // The real notification still wakes it.
        flag(&core).store(2, Ordering::SeqCst);
        core.wake();
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("no lost wake-up")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn concurrent_waits_each_get_their_own_registration() {
        let core = WaitQueue::new(8).unwrap();
        // Cache one registration first, so that the second waiter has to make a fresh one.
        let setter = set_later(&core, 1);
        wait_for(&core, 1).await;
        setter.await.unwrap();
        let (a, b) = (core.clone(), core.clone());
        let first = tokio::spawn(async move { wait_for(&a, 2).await });
        let second = tokio::spawn(async move { wait_for(&b, 2).await });
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        // One notification wakes both; neither swallows the other's edge.
        flag(&core).store(2, Ordering::SeqCst);
        core.wake();
        first.await.unwrap();
        second.await.unwrap();
        assert!(cached(&core));
    }

    #[test]
    fn a_registration_of_a_dropped_runtime_is_replaced() {
        let core = WaitQueue::new(8).unwrap();
        for v in 1..=3 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let setter = set_later(&core, v);
                wait_for(&core, v).await;
                setter.await.unwrap();
            });
            drop(rt);
        }
    }

    #[test]
    fn blocking_registration_serves_many_waits() {
        let core = WaitQueue::new(8).unwrap();
        for v in 1..=100 {
            let setter = {
                let core = core.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    flag(&core).store(v, Ordering::SeqCst);
                    core.wake();
                })
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let got = core
                .blocking_wait_until(Some(deadline), None, |_| {
                    (flag(&core).load(Ordering::SeqCst) == v).then_some(())
                })
                .unwrap();
            assert!(got.is_some(), "no lost wake-up");
            assert!(core.cache.blocking.0.lock().unwrap().is_some());
            setter.join().unwrap();
        }
    }
}
