//! The start of a wait for data: spin for an answer that is due, or park at once, as the spin
//! policy decides (see the `RawReceiver` docs, "Waiting").

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::RecvError;
use crate::wait::spin::{CpuContention, SLOW_STEP, Spin};

use super::frames::Next;
use super::{RawReceiver, Waiting, nothing_yet};

impl RawReceiver {
    /// A wait for data begins: how long to spin before parking, if at all.
    ///
    /// Spinning pays when an answer is due soon, so a receiver spins only if its socket sent
    /// something since data last arrived and since the previous wait began (a request, or the
    /// reply that lets the peer send its next request), and the spin policy agrees. A wait
    /// that follows no such send (a consumer waiting on a stream, a pool driver idle between
    /// jobs that another task must hand it) parks at once and does not count for the policy.
    pub(super) fn begin_wait(&mut self) -> Option<Duration> {
        if !self.socket.take_sent() {
            self.waiting = Waiting::Untimed;
            return None;
        }
        let now = Instant::now();
        let budget = self.spin.begin_wait(now, CpuContention::global());
        if budget.is_none() {
            self.waiting = Waiting::Timed(now);
        }
        budget
    }

    /// Spins for data at the start of a wait, if [`begin_wait`](Self::begin_wait) says so:
    /// yields the CPU (which runs the peer when it shares this CPU) and tries the socket, until
    /// something arrives or the budget is spent. `Ok(true)` when a read returned something.
    /// Spins at most once per wait, and only with tokio's cooperative budget left, as a read
    /// that finds data would use it.
    pub(super) fn poll_spin(
        &mut self,
        cx: &mut Context<'_>,
        next: &Next,
    ) -> Result<bool, RecvError> {
        if self.waiting != Waiting::No {
            // Woken in the middle of a wait that already spun or chose to park.
            return Ok(false);
        }
        let Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
            // Out of budget: the task yields first (tokio wakes it), and the wait has not begun.
            return Ok(false);
        };
        let Some(budget) = self.begin_wait() else {
            return Ok(false);
        };
        let caught = self.spin_reads(budget, |rx| match rx.read_once(next) {
            Ok(_) => Ok(true),
            Err(e) if nothing_yet(&e) => Ok(false),
            Err(e) => Err(rx.read_error(e)),
        })?;
        if caught {
            coop.made_progress();
        }
        Ok(caught)
    }

    /// Yields and calls `attempt` until it returns `Ok(true)` or `budget` is spent, and tells
    /// the spin policy how that went. A slow step (the yield ran another busy process) ends the
    /// spin at once.
    pub(super) fn spin_reads(
        &mut self,
        budget: Duration,
        mut attempt: impl FnMut(&mut Self) -> Result<bool, RecvError>,
    ) -> Result<bool, RecvError> {
        let start = Instant::now();
        let mut step_start = start;
        loop {
            std::thread::yield_now();
            let caught = attempt(self)?;
            let now = Instant::now();
            let how = if now - step_start > SLOW_STEP {
                Spin::Contended
            } else if caught {
                Spin::Caught(now - start)
            } else if now - start >= budget {
                Spin::Missed
            } else {
                step_start = now;
                continue;
            };
            self.spin.spun(how, now, CpuContention::global());
            if !caught {
                self.waiting = Waiting::Untimed;
            }
            return Ok(caught);
        }
    }
}
