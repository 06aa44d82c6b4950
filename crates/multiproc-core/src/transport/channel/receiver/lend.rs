//! Lending receives: a frame's payload stays where it arrived and is lent out until the next
//! receive, so that a borrowed decode allocates and copies nothing.
//!
//! A lending receive consumes the frame like any other (ring and wait bookkeeping, its
//! descriptors) and records where its bytes are ([`Lent`]); [`RawReceiver::lent`] borrows
//! them. Nothing moves them before the next call to `next` (every receive and readiness check
//! starts there, and needs `&mut self`, so no borrow of the bytes outlives them): the receive
//! buffer is compacted or grown only by a read, the ring's scratch is rewritten only by the
//! next look at the ring's front, and a frame read into a buffer of its own is kept here.

use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use crate::error::RecvError;
use crate::message::Payload;

use super::frames::{Direct, Next, Parsed, Taken, Whole};
use super::{RawReceiver, TryRecv};

/// Where the payload of the frame a lending receive handed out last is.
pub(super) enum Lent {
    /// Nothing lent.
    None,
    /// `buf[start..end]`.
    Buffered { start: usize, end: usize },
    /// The ring's scratch.
    Ring,
    /// A frame read into a buffer of its own.
    Direct(Vec<u8>),
}

impl RawReceiver {
    /// Consumes the frame and keeps its payload for [`lent`](Self::lent).
    #[inline]
    fn lend(&mut self, whole: Whole) -> Vec<OwnedFd> {
        let (taken, fds) = self.take_whole(whole);
        self.lent = match taken {
            Taken::Buffered { start, end } => Lent::Buffered { start, end },
            Taken::Ring => Lent::Ring,
            // A frame a cancelled typed receive began without its length prefix gets it back
            // (a copy, only then).
            Taken::Direct(direct) if direct.prefix > 0 => {
                Lent::Direct(Payload::ByteString(direct.payload).into_vec())
            }
            Taken::Direct(direct) => Lent::Direct(direct.payload),
        };
        fds
    }

    /// Ends the loan of the last lent payload (the next receive begins).
    pub(super) fn release_lent(&mut self) {
        if let Lent::Buffered { .. } = std::mem::replace(&mut self.lent, Lent::None) {
            self.shrink_if_idle();
        }
    }

    /// The payload of the frame the last lending receive (`*_recv_lent`) handed out, where it
    /// arrived: in the receive buffer, the shared ring's scratch, or (for a large frame) a
    /// buffer of its own. Empty when the last receive was not a lending one, or found no
    /// frame. Lent until the next receive of any kind.
    #[inline]
    pub fn lent(&self) -> &[u8] {
        match &self.lent {
            Lent::None => &[],
            Lent::Buffered { start, end } => self.buf.get(*start..*end).unwrap_or_default(),
            Lent::Ring => self.ring.as_ref().map_or(&[], |ring| &ring.scratch[..]),
            Lent::Direct(bytes) => bytes,
        }
    }

    /// Receives one frame without copying its payload out: it stays in the receiver and
    /// [`lent`](Self::lent) borrows it until the next receive. Returns the frame's descriptors.
    /// A large frame is read into a buffer of its own, as by
    /// [`poll_recv_bytes`](Self::poll_recv_bytes).
    ///
    /// `Ready(Ok(None))` is end-of-stream. Frames, size limits and errors are as for
    /// [`poll_recv_with`](Self::poll_recv_with).
    ///
    /// # Cancel safety
    /// Cancel safe: the frame is consumed only in the poll that returns it.
    pub fn poll_recv_lent(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Vec<OwnedFd>>, RecvError>> {
        self.poll_recv_inner(cx, Direct::Large, Self::lend)
    }

    /// Receives up to `max` frames: waits for the first, as
    /// [`poll_recv_lent`](Self::poll_recv_lent), then takes every whole frame that has arrived
    /// behind it (in the shared ring or the receive buffer; no further read), lending each
    /// payload to `f` in turn with its descriptors. `Ready(Ok(n))` counts the frames `f` got;
    /// `0` is end-of-stream (or `max == 0`).
    ///
    /// The per-frame work of a receive call (the future, the wait's bookkeeping) is paid once
    /// per batch, so a stream of small frames costs less per frame than with one receive each.
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with). An error met after some frames ends the
    /// batch and is returned; the frames before it were handed to `f` (and are consumed).
    ///
    /// # Cancel safety
    /// Cancel safe: frames are consumed only in the poll that returns, each as `f` gets it.
    pub fn poll_recv_lent_many(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        mut f: impl FnMut(&[u8], Vec<OwnedFd>),
    ) -> Poll<Result<usize, RecvError>> {
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        let Some(fds) = ready!(self.poll_recv_lent(cx))? else {
            return Poll::Ready(Ok(0));
        };
        f(self.lent(), fds);
        let mut n = 1;
        while n < max {
            n += self.lend_buffered_run(max - n, &mut f)?;
            if n == max {
                break;
            }
            // Only what is here already: a frame still arriving waits for the next call.
            let Next::Whole(whole) = self.next(Direct::Never)? else {
                break;
            };
            let fds = self.lend(whole);
            f(self.lent(), fds);
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    /// The fast path of a batch receive: lends whole frames from the receive buffer to `f`,
    /// one after another, while no record of the shared ring can be due between them (see
    /// [`RxRing::owned_before_record`]); the ring's count of delivered frames is updated once
    /// for the run. Returns how many `f` got (`0`: take the next frame the general way,
    /// [`next`](Self::next)).
    ///
    /// [`RxRing::owned_before_record`]: crate::transport::channel::ring::RxRing::owned_before_record
    fn lend_buffered_run(
        &mut self,
        max: usize,
        f: &mut impl FnMut(&[u8], Vec<OwnedFd>),
    ) -> Result<usize, RecvError> {
        if self.direct.is_some() {
            return Ok(0);
        }
        let mut room = match &self.ring {
            // After a read, the ring needs a look first.
            Some(_) if self.read_since_look => return Ok(0),
            Some(ring) => match ring.owned_before_record() {
                Some(room) => room,
                None => return Ok(0),
            },
            None => u64::MAX,
        };
        self.release_lent();
        let (mut n, mut owned) = (0, 0);
        let ended = loop {
            if n == max {
                break Ok(());
            }
            match self.parse() {
                Ok(Parsed::Frame {
                    start,
                    end,
                    fds,
                    owned: is_owned,
                }) => {
                    if is_owned {
                        if room == 0 {
                            break Ok(());
                        }
                        room -= 1;
                        owned += 1;
                    }
                    let fds = self.take_fds(fds);
                    self.start = end;
                    f(&self.buf[start..end], fds);
                    n += 1;
                }
                Ok(_) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if owned > 0
            && let Some(ring) = &self.ring
        {
            ring.owned_delivered_n(owned);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        ended.map(|()| n)
    }

    /// [`poll_recv_lent`](Self::poll_recv_lent) without waiting, as
    /// [`try_recv_with`](Self::try_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn try_recv_lent(&mut self) -> Result<TryRecv<Vec<OwnedFd>>, RecvError> {
        self.try_recv_inner(Direct::Large, Self::lend)
    }

    /// [`poll_recv_lent`](Self::poll_recv_lent), blocking the thread, as
    /// [`blocking_recv_with`](Self::blocking_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn blocking_recv_lent(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<TryRecv<Vec<OwnedFd>>, RecvError> {
        self.blocking_recv_inner(deadline, Direct::Large, Self::lend)
    }
}
