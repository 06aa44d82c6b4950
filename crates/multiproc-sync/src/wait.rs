//! The private engine under every primitive: a shared region whose first word counts waiters,
//! and an eventfd that is written only when that count is non-zero.
//!
//! Waiting: announce (count += 1), create an edge-triggered registration of the eventfd, then
//! loop { check the shared state; wait for an edge }. Notifying: change the shared state, then
//! write the eventfd if the count is non-zero. All of it is `SeqCst`, so either the waiter's
//! check sees the new state or the notifier sees the waiter (the futex argument). Wake-ups are
//! broadcasts that nobody consumes, so dropping a waiter mid-wait loses nothing for the others.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multiproc_core::eventfd::EventFd;
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
            // A write to an eventfd we hold cannot fail short of a kernel bug; if it did, the
            // waiters' periodic re-checks (where they have one) would still make progress.
            let _ = self.efd.notify();
        }
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
        let waiter = self.efd.waiter()?;
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
        let waiter = self.efd.blocking_waiter()?;
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

/// `now + timeout`, saturating far in the future.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 100))
}
