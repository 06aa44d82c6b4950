//! The start of a wait for data: spin for an answer that is due, or park at once, as the one
//! spin policy decides (see the `RawReceiver` docs, "Waiting", and `wait::spin`).

use std::task::{Context, Poll};

use crate::error::RecvError;
use crate::wait::spin::{self, Spun};

use super::super::ring::CpuCue;
use super::frames::Next;
use super::{RawReceiver, Waiting, nothing_yet};

impl RawReceiver {
    /// Whether a wait for data that begins now may spin.
    ///
    /// Spinning pays when an answer is due soon, so a receiver spins only if its socket sent
    /// something since data last arrived and since the previous wait began (a request, or the
    /// reply that lets the peer send its next request); then the spin policy decides. A wait
    /// that follows no such send (a consumer waiting on a stream, a pool driver idle between
    /// jobs that another task must hand it) parks at once and does not count for the policy.
    pub(super) fn answer_due(&mut self) -> bool {
        let due = self.socket.take_sent();
        if !due {
            self.waiting = Waiting::Untimed;
        }
        due
    }

    /// Spins for data at the start of a wait, by the one rule for async waits
    /// ([`spin::poll_spin`]), if an [answer is due](Self::answer_due): yields the CPU (which
    /// runs the peer when it shares this CPU) and tries the socket, until something arrives or
    /// the policy's budget is spent. `Ok(true)` when a read returned something. Spins at most
    /// once per wait.
    pub(super) fn poll_spin(
        &mut self,
        cx: &mut Context<'_>,
        next: &Next,
    ) -> Result<bool, RecvError> {
        if self.waiting != Waiting::No {
            // Woken in the middle of a wait that already spun or chose to park.
            return Ok(false);
        }
        if !self.answer_due() {
            return Ok(false);
        }
        let mut policy = std::mem::take(&mut self.spin);
        let spun = match self.ring_cue() {
            // On the ring: busy reads of shared words while the sender runs on another CPU (no
            // system call), and a read of the socket only once an owned frame was sent there.
            // While the sender last ran on this CPU and the process may run on another, the
            // wait parks at once (`ParkApart`): a yield would run the sender, but then the two
            // keep taking turns on one CPU (about 5 us a round trip) while the other CPU idles;
            // after the park, a receiver that wakes still beside the sender moves itself to
            // another CPU, and the two spin apart (about 1 us). With a single CPU (pinned, or a
            // quota of one) the spin yields between looks instead, and so it does for a while
            // when moving did not last (the other CPU is busy: taking turns is then the cheaper
            // way, see `arrived`).
            Some(cue) => {
                let mut apart = || cue.peer_apart();
                let apart: Option<&mut dyn FnMut() -> bool> = match self.park_apart.may_park() {
                    true => Some(&mut apart),
                    false => None,
                };
                spin::poll_spin(cx, &mut policy, None, apart, || {
                    let (record, owned) = self.ring.as_ref()?.news();
                    if record {
                        return Some(Ok(()));
                    }
                    if !owned {
                        return None;
                    }
                    match self.read_once(next) {
                        Ok(_) => Some(Ok(())),
                        Err(e) if nothing_yet(&e) => None,
                        Err(e) => Some(Err(self.read_error(e))),
                    }
                })
            }
            None => spin::poll_spin(cx, &mut policy, None, None, || match self.read_once(next) {
                Ok(_) => Some(Ok(())),
                Err(e) if nothing_yet(&e) => None,
                Err(e) => Some(Err(self.read_error(e))),
            }),
        };
        self.spin = policy;
        match spun {
            // Out of cooperative budget: the task yields first (tokio wakes it), and the wait
            // has not begun.
            Poll::Pending => {
                self.socket.note_sent();
                Ok(false)
            }
            Poll::Ready(spun) => self.caught(spun),
        }
    }

    /// Whether a spin caught something; if not, the wait parks from now on (timed for the
    /// policy when it chose not to spin).
    pub(super) fn caught(&mut self, spun: Spun<Result<(), RecvError>>) -> Result<bool, RecvError> {
        match spun {
            Spun::Caught(r) => r.map(|()| true),
            Spun::Park(since) => {
                self.waiting = since.map_or(Waiting::Untimed, Waiting::Timed);
                Ok(false)
            }
        }
    }
}

impl RawReceiver {
    /// The spin cue of the shared ring, when the receiver waits on one that is in use.
    pub(super) fn ring_cue(&self) -> Option<CpuCue> {
        self.ring.as_ref()?.cue()
    }

    /// Before a wait parks on the socket: says so in the shared ring, so that the sender's next
    /// record comes with a wake-up frame. `Ok(true)` when a record arrived meanwhile (do not
    /// park: receive it). Nothing to do without a ring in use.
    pub(super) fn park_on_ring(&mut self) -> Result<bool, RecvError> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(false);
        };
        if !ring.ring_on() {
            return Ok(false);
        }
        match ring.park() {
            Ok(true) => {
                ring.unpark();
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(self.fatal(RecvError::Corrupt {
                reason: e.to_string(),
            })),
        }
    }
}
