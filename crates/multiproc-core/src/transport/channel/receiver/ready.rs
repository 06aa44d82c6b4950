//! Waiting until a receive would not wait, without taking anything (Python's `poll`).

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::RecvError;

use super::RawReceiver;
use super::frames::{Direct, Next, Whole};

impl RawReceiver {
    /// Ready once a receive would not wait: a whole frame is buffered, the peer closed, or the
    /// stream failed. Reads into the receive buffer as needed but hands nothing out; the frame
    /// stays for the next receive of either kind.
    ///
    /// An error found while looking (a frame over the size limit, a corrupt stream) is returned
    /// here and not again by the next receive, exactly as a receive would have returned it.
    ///
    /// # Cancel safety
    /// Cancel safe: everything read stays in `self`.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        loop {
            if self.dead {
                return Poll::Ready(Ok(()));
            }
            let next = match self.next(Direct::Never)? {
                Next::Whole(whole) => {
                    if let Whole::Direct(direct) = whole {
                        // `next` moved the finished frame out of `direct`: put it back. (A
                        // ring frame stays at the ring's front.)
                        self.direct = Some(direct);
                    }
                    return Poll::Ready(Ok(()));
                }
                next => next,
            };
            if self.eof {
                return Poll::Ready(self.at_eof(&next).map(|_| ()));
            }
            let socket = Arc::clone(&self.socket);
            let registered = match socket.readable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
            };
            let mut guard = match registered.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
                Poll::Pending => match self.park_on_ring() {
                    Ok(true) => continue,
                    Ok(false) => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                },
            };
            if let Err(e) = self.read_when_ready(&next, &mut guard) {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Whether a receive would not wait, found out now: reads what the socket holds with
    /// non-blocking `recvmsg` calls (into the receive buffer, handing nothing out) instead of
    /// trusting the readiness the runtime last saw. Python's `poll(0)`.
    ///
    /// An error found while looking is returned here and not again, as for
    /// [`poll_ready`](Self::poll_ready).
    ///
    /// # Errors
    /// As [`poll_ready`](Self::poll_ready).
    pub fn try_ready(&mut self) -> Result<bool, RecvError> {
        loop {
            if self.dead {
                return Ok(true);
            }
            let next = match self.next(Direct::Never)? {
                Next::Whole(whole) => {
                    if let Whole::Direct(direct) = whole {
                        self.direct = Some(direct);
                    }
                    return Ok(true);
                }
                next => next,
            };
            if self.eof {
                return self.at_eof(&next).map(|_| true);
            }
            match self.read_once(&next) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    /// Whether a frame has arrived, looked at as a spin over several receivers can afford to
    /// look: the shared ring's front and the frames already buffered, and a non-blocking read
    /// of the socket only when the ring's sender counted a frame sent there that has not been
    /// delivered (or when no ring is in use: then as [`try_ready`](Self::try_ready)).
    ///
    /// Nothing is registered and the ring is not marked parked, so a sender whose frame a
    /// looping caller finds this way pays for no wake-up. Such a caller must wait with
    /// [`poll_ready`](Self::poll_ready) (which parks) before it stops looking; an end-of-stream
    /// may go unseen here until then.
    ///
    /// # Errors
    /// As [`try_ready`](Self::try_ready).
    pub fn try_ready_spinning(&mut self) -> Result<bool, RecvError> {
        let quiet = self
            .ring
            .as_ref()
            .is_some_and(|ring| ring.ring_on() && !ring.news().1);
        if !quiet || self.dead {
            return self.try_ready();
        }
        // The socket holds no frame the ring's sender knows of: what is here is all.
        match self.next(Direct::Never)? {
            Next::Whole(whole) => {
                if let Whole::Direct(direct) = whole {
                    self.direct = Some(direct);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether the sender last sent from another CPU than the one this thread runs on now, by
    /// the shared ring's cue; `None` without a ring in use (nobody knows). A spin that waits
    /// for this sender may then busy-wait: a yield would only add a system call, since the
    /// sender does not need this CPU (see `wait::spin`, "The peer's CPU").
    pub fn sender_runs_elsewhere(&self) -> Option<bool> {
        self.ring_cue().map(|cue| cue.peer_apart())
    }
}
