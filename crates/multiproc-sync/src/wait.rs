//! The private engine under every primitive: a shared region whose first word counts waiters,
//! and an eventfd that is written only when that count is non-zero.
//!
//! Waiting: announce (count += 1), take an edge-triggered registration of the eventfd, then
//! loop { check the shared state; wait for an edge }. Notifying: change the shared state, then
//! write the eventfd if the count is non-zero. All of it is `SeqCst`, so either the waiter's
//! check sees the new state or the notifier sees the waiter (the futex argument). Wake-ups are
//! broadcasts that nobody consumes, so dropping a waiter mid-wait loses nothing for the others.
//!
//! Registrations are reused: each handle (with its clones in this process) keeps one async
//! registration (for the runtime that made it) and one blocking one, and a wait takes it
//! *exclusively* and puts it back when it ends, however it ends. A registration only has to
//! exist before the waiter's last check, which a cached one does; what it carries over from
//! earlier waits is at most a stale readiness, which costs one spurious re-check. It must never
//! serve two waits at once: one waiter's `clear_ready` could then swallow the edge another
//! waiter has not yet looked at. A wait that finds the slot empty (another wait of this process
//! holds it) or holding another runtime's registration makes a fresh one, as every wait did
//! before; whichever is put back last stays cached.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use multiproc_core::eventfd::{BlockingWaiter, EventFd, Waiter};
use multiproc_core::shm::SharedRegion;
use serde::{Deserialize, Serialize};

/// Byte offset of the waiter count in every primitive's region.
const WAITERS: usize = 0;

/// How often a waiter that watches for a dead owner re-checks liveness.
pub(crate) const LIVENESS_TICK: Duration = Duration::from_millis(50);

/// Spins of the uncontended retry before parking.
pub(crate) const SPIN: u32 = 64;

/// A region plus its wait queue. Serializes as both descriptors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Core {
    pub(crate) region: SharedRegion,
    pub(crate) efd: EventFd,
    /// This process's reusable registrations of `efd`, shared by the clones of the handle.
    #[serde(skip)]
    cache: Arc<Registrations>,
}

/// The cached registrations of one [`Core`]'s eventfd; see the [module docs](self).
#[derive(Default)]
struct Registrations {
    /// An async registration and the runtime whose reactor it belongs to.
    tokio: Slot<(tokio::runtime::Id, Waiter)>,
    blocking: Slot<BlockingWaiter>,
}

impl std::fmt::Debug for Registrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrations").finish_non_exhaustive()
    }
}

/// At most one cached value, taken exclusively.
struct Slot<T>(Mutex<Option<T>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> Slot<T> {
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
    slot: &'a Slot<T>,
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

/// Decrements the waiter count when a wait ends, however it ends (including cancellation).
struct Announced<'a>(&'a AtomicU32);

impl<'a> Announced<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Core {
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        Ok(Self {
            region: SharedRegion::new(len)?,
            efd: EventFd::new()?,
            cache: Arc::default(),
        })
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
    pub(crate) fn check_len(&self, len: usize) -> Result<(), String> {
        if self.region.len() < len {
            Err(format!(
                "shared state of {} bytes, expected at least {len}",
                self.region.len()
            ))
        } else {
            Ok(())
        }
    }

    #[inline]
    fn waiters(&self) -> &AtomicU32 {
        self.region.atomic_u32(WAITERS)
    }

    /// Wakes every waiter, if there is any. Call after changing the shared state.
    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiters().load(Ordering::SeqCst) > 0 {
            self.notify();
        }
    }

    /// The system call of [`Self::wake`], out of line: the uncontended paths never take it.
    #[cold]
    #[inline(never)]
    fn notify(&self) {
        // A write to an eventfd we hold cannot fail short of a kernel bug; if it did, the
        // waiters' periodic re-checks (where they have one) would still make progress.
        let _ = self.efd.notify();
    }

    /// Waits until `attempt` returns `Some`, or until `deadline` (then `Ok(None)`, never early).
    ///
    /// `attempt(ticked)` runs first, after every wake-up, and with `ticked == true` every `tick`
    /// (if given) so it can check for dead owners.
    ///
    /// Cancel safe: dropping the future only withdraws this waiter.
    pub(crate) async fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let _announced = Announced::new(self.waiters());
        let taken = self.waiter()?;
        let waiter = &taken.get().1;
        let mut ticked = false;
        loop {
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

    /// The blocking twin of [`Self::wait_until`].
    pub(crate) fn blocking_wait_until<T>(
        &self,
        deadline: Option<Instant>,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let _announced = Announced::new(self.waiters());
        let taken = self.blocking_waiter()?;
        let waiter = taken.get();
        let mut ticked = false;
        loop {
            if let Some(v) = attempt(ticked) {
                return Ok(Some(v));
            }
            let Some(next) = next_wake(deadline, tick) else {
                return Ok(None);
            };
            ticked = !waiter.wait(next)?;
        }
    }

    /// Waits with no deadline until `attempt` succeeds. `attempt` gets `true` on its first call
    /// and at every `tick`, so a dead owner is noticed at once and then periodically.
    pub(crate) async fn wait_forever<T>(
        &self,
        tick: Duration,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<T> {
        let mut first = true;
        let got = self
            .wait_until(None, Some(tick), |ticked| {
                attempt(ticked || std::mem::take(&mut first))
            })
            .await?;
        Ok(got.expect("an unbounded wait ends only with a value"))
    }

    /// The blocking twin of [`Self::wait_forever`].
    pub(crate) fn blocking_wait_forever<T>(
        &self,
        tick: Duration,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<T> {
        let mut first = true;
        let got = self.blocking_wait_until(None, Some(tick), |ticked| {
            attempt(ticked || std::mem::take(&mut first))
        })?;
        Ok(got.expect("an unbounded wait ends only with a value"))
    }

    /// The shape of every `*_timeout`: try now (cheaply, then with the dead-owner check), then
    /// wait until `timeout` has fully elapsed. `Ok(None)` on timeout, never early; a zero
    /// timeout only tries.
    pub(crate) async fn wait_timeout<T>(
        &self,
        timeout: Duration,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        if let Some(v) = try_now(&mut attempt) {
            return Ok(Some(v));
        }
        let deadline = deadline_after(timeout);
        if Instant::now() >= deadline {
            return Ok(None);
        }
        self.wait_until(Some(deadline), tick, attempt).await
    }

    /// The blocking twin of [`Self::wait_timeout`].
    pub(crate) fn blocking_wait_timeout<T>(
        &self,
        timeout: Duration,
        tick: Option<Duration>,
        mut attempt: impl FnMut(bool) -> Option<T>,
    ) -> io::Result<Option<T>> {
        if let Some(v) = try_now(&mut attempt) {
            return Ok(Some(v));
        }
        let deadline = deadline_after(timeout);
        if Instant::now() >= deadline {
            return Ok(None);
        }
        self.blocking_wait_until(Some(deadline), tick, attempt)
    }
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

/// The shape of every `lock()`/`acquire()`/`wait()`: at the first poll, `fast(ctx)` runs
/// synchronously (no state machine around it, nothing allocated); only when it returns
/// `Err(x)` is `slow(ctx, x)` built, boxed (so the common case never carries its size) and
/// polled to completion.
///
/// `fast` and `slow` are meant to be non-capturing closures (zero-sized): everything they need
/// comes through `ctx` and `x`, so the fast path reads one reference and one tag.
///
/// Lazy like any future: nothing happens before the first poll (so a task identity read by
/// `fast` is that of the polling task). Cancel safe exactly when `slow`'s future is: once
/// `fast` has succeeded the future has already returned its value.
#[inline]
pub(crate) fn fast_then_slow<'a, C: ?Sized, T, X, F, S, Fut>(
    ctx: &'a C,
    fast: F,
    slow: S,
) -> FastThenSlow<'a, C, F, S, Fut>
where
    F: Fn(&'a C) -> Result<T, X> + Unpin,
    S: Fn(&'a C, X) -> Fut + Unpin,
    Fut: Future<Output = T>,
{
    FastThenSlow {
        ctx,
        fast,
        slow,
        state: State::Start,
    }
}

/// The future of [`fast_then_slow`].
pub(crate) struct FastThenSlow<'a, C: ?Sized, F, S, Fut> {
    ctx: &'a C,
    fast: F,
    slow: S,
    state: State<Fut>,
}

enum State<Fut> {
    Start,
    Slow(SlowBox<Fut>),
    Done,
}

/// The boxed slow future, dropped out of line so that dropping a [`FastThenSlow`] that took
/// the fast path stays a tag check.
struct SlowBox<Fut>(Option<Pin<Box<Fut>>>);

impl<Fut> Drop for SlowBox<Fut> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            drop_slow(&mut self.0);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_slow<Fut>(slow: &mut Option<Pin<Box<Fut>>>) {
    *slow = None;
}

impl<'a, C: ?Sized, T, X, F, S, Fut> Future for FastThenSlow<'a, C, F, S, Fut>
where
    F: Fn(&'a C) -> Result<T, X> + Unpin,
    S: Fn(&'a C, X) -> Fut + Unpin,
    Fut: Future<Output = T>,
{
    type Output = T;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let State::Start = this.state {
            return match (this.fast)(this.ctx) {
                Ok(v) => {
                    // `Start` owns nothing: skip the drop glue of the old state.
                    std::mem::forget(std::mem::replace(&mut this.state, State::Done));
                    Poll::Ready(v)
                }
                Err(x) => start_slow(&mut this.state, this.ctx, &this.slow, x, cx),
            };
        }
        poll_slow(&mut this.state, cx)
    }
}

/// Boxes the slow future and polls it: out of line, so the fast path's frame stays small.
#[cold]
#[inline(never)]
fn start_slow<'a, C: ?Sized, X, S, Fut>(
    state: &mut State<Fut>,
    ctx: &'a C,
    slow: &S,
    x: X,
    cx: &mut Context<'_>,
) -> Poll<Fut::Output>
where
    S: Fn(&'a C, X) -> Fut,
    Fut: Future,
{
    *state = State::Slow(SlowBox(Some(Box::pin(slow(ctx, x)))));
    poll_slow(state, cx)
}

/// The parking half of [`FastThenSlow::poll`], out of line like [`start_slow`].
#[cold]
#[inline(never)]
fn poll_slow<Fut: Future>(state: &mut State<Fut>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
    let State::Slow(SlowBox(Some(fut))) = state else {
        panic!("future polled after completion");
    };
    let r = fut.as_mut().poll(cx);
    if r.is_ready() {
        *state = State::Done;
    }
    r
}

/// `now + timeout`, saturating far in the future.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 100))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::task::Waker;

    use super::*;

    /// What the fast and slow halves saw.
    #[derive(Default)]
    struct Probe {
        fast_calls: Cell<u32>,
        fast_ok: Cell<bool>,
        slow_built: Cell<u32>,
        slow_dropped: Cell<bool>,
    }

    /// Pending once, then ready with `v`; records its drop.
    struct PendingOnce<'a> {
        probe: &'a Probe,
        polled: bool,
        v: u32,
    }

    impl Future for PendingOnce<'_> {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(self.v)
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for PendingOnce<'_> {
        fn drop(&mut self) {
            self.probe.slow_dropped.set(true);
        }
    }

    fn future(probe: &Probe) -> impl Future<Output = u32> + '_ {
        fast_then_slow(
            probe,
            |p: &Probe| {
                p.fast_calls.set(p.fast_calls.get() + 1);
                if p.fast_ok.get() { Ok(1) } else { Err(2) }
            },
            |p: &Probe, v| {
                p.slow_built.set(p.slow_built.get() + 1);
                PendingOnce {
                    probe: p,
                    polled: false,
                    v,
                }
            },
        )
    }

    fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn nothing_happens_before_the_first_poll() {
        let probe = Probe::default();
        drop(future(&probe));
        assert_eq!(probe.fast_calls.get(), 0);
        assert_eq!(probe.slow_built.get(), 0);
    }

    #[test]
    fn fast_success_never_builds_the_slow_future() {
        let probe = Probe::default();
        probe.fast_ok.set(true);
        let mut f = std::pin::pin!(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Ready(1));
        assert_eq!(probe.fast_calls.get(), 1);
        assert_eq!(probe.slow_built.get(), 0);
    }

    #[test]
    fn fast_failure_hands_over_to_the_slow_future_once() {
        let probe = Probe::default();
        let mut f = std::pin::pin!(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Pending);
        // Even if the fast half would now succeed, the slow future owns the rest.
        probe.fast_ok.set(true);
        assert_eq!(poll(f.as_mut()), Poll::Ready(2));
        assert_eq!(probe.fast_calls.get(), 1);
        assert_eq!(probe.slow_built.get(), 1);
        // Finished: the slow future is already gone.
        assert!(probe.slow_dropped.get());
    }

    // ---- reused registrations ----

    /// A word beside the waiter count for the tests to wait on.
    fn flag(core: &Core) -> &AtomicU32 {
        core.region.atomic_u32(4)
    }

    /// Sets the flag to `v` from another task once the waiter has parked, and wakes it.
    fn set_later(core: &Core, v: u32) -> tokio::task::JoinHandle<()> {
        let core = core.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            flag(&core).store(v, Ordering::SeqCst);
            core.wake();
        })
    }

    /// Waits (bounded) until the flag is `v`; returns how often the state was checked.
    async fn wait_for(core: &Core, v: u32) -> u32 {
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

    fn cached(core: &Core) -> bool {
        core.cache.tokio.0.lock().unwrap().is_some()
    }

    #[tokio::test]
    async fn one_registration_serves_many_waits() {
        let core = Core::new(8).unwrap();
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
        let core = Core::new(8).unwrap();
        let setter = set_later(&core, 1);
        wait_for(&core, 1).await;
        setter.await.unwrap();
        // Notifications nobody waits for leave readiness on the cached registration (the
        // sleep parks the runtime, so its reactor harvests them).
        core.efd.notify().unwrap();
        core.efd.notify().unwrap();
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
        let core = Core::new(8).unwrap();
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
        let core = Core::new(8).unwrap();
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
        let core = Core::new(8).unwrap();
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

    #[test]
    fn dropping_a_pending_future_drops_the_slow_future() {
        let probe = Probe::default();
        let mut f = Box::pin(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Pending);
        assert!(!probe.slow_dropped.get());
        drop(f);
        assert!(probe.slow_dropped.get());
    }
}
