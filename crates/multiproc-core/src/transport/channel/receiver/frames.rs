//! Frame assembly in the receive buffer: what its front holds, which read makes progress, and
//! large frames moved to a buffer of their own.

use std::os::fd::OwnedFd;

use crate::error::RecvError;
use crate::message::{Payload, byte_string_prefix_len};
use crate::sys::MAX_FDS_PER_SENDMSG;
use crate::transport::channel::KEEP_CAPACITY;
use crate::transport::frame::{HEADER_LEN, Header, Kind};

use super::lend::Lent;
use super::{READ_CHUNK, RawReceiver};

/// What the receive buffer holds at its front.
pub(super) enum Parsed {
    /// A whole frame: payload range in the buffer and its descriptor count.
    Frame {
        start: usize,
        end: usize,
        fds: usize,
        owned: bool,
    },
    /// The header of a frame whose payload has not all arrived.
    Incomplete { len: usize, fds: usize, owned: bool },
    /// Need at least this many buffered bytes.
    NeedBytes(usize),
}

/// A frame read straight into a buffer of its own ([`RawReceiver::poll_recv_bytes`]), so that
/// its bytes are never copied in user space.
pub(in crate::transport::channel) struct DirectFrame {
    /// The bytes received so far; the capacity is exactly the frame's payload length, so a
    /// read into the spare capacity never reads past the frame (and needs no zero-filling).
    pub(super) payload: Vec<u8>,
    pub(in crate::transport::channel) len: usize,
    pub(super) fds: usize,
    /// Sent by the owner of the shared ring (counted when delivered).
    pub(super) owned: bool,
    /// Bytes at the front of the frame's payload that were left out: the length prefix of a
    /// frame that is one byte string ([`Direct::ByteString`]), else zero.
    pub(in crate::transport::channel) prefix: usize,
}

/// Which incomplete large frames a receive reads into a buffer of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direct {
    /// None: every frame is assembled in the receive buffer.
    Never,
    /// Every large one (bytes receives).
    Large,
    /// Large ones that are exactly one byte string, without their length prefix (typed
    /// receives).
    ByteString,
}

/// A whole frame, ready to hand out.
pub(super) enum Whole {
    /// In the receive buffer.
    Buffered {
        start: usize,
        end: usize,
        fds: usize,
        owned: bool,
    },
    /// In a buffer of its own.
    Direct(DirectFrame),
    /// At the front of the shared ring (its payload copied out).
    Ring,
}

/// A frame handed out, and where its payload is until the next receive.
pub(super) enum Taken {
    /// `buf[start..end]`.
    Buffered { start: usize, end: usize },
    /// The ring's scratch.
    Ring,
    /// A buffer of its own.
    Direct(DirectFrame),
}

/// What the receiver does next.
pub(super) enum Next {
    /// Hand out this frame.
    Whole(Whole),
    /// Read into the receive buffer until it holds this many bytes.
    Fill(usize),
    /// Read into the direct frame.
    FillDirect,
}

/// Frames with a payload above this size that have not all arrived yet are read into a buffer
/// of their own by the `*_recv_bytes` methods.
pub(in crate::transport::channel) const DIRECT_MIN: usize = READ_CHUNK;

/// The size of a receiver's first buffer, unless its first frame needs more, and of the read
/// after a frame read into its own buffer: one page.
pub(super) const FIRST_READ: usize = 4096;

impl RawReceiver {
    /// Looks at the buffered bytes: a whole frame, a skip in progress, or how much is missing.
    #[inline]
    pub(super) fn parse(&mut self) -> Result<Parsed, RecvError> {
        loop {
            let avail = self.end - self.start;
            if let Some((remaining, fds)) = self.skip {
                let n = remaining.min(avail);
                self.start += n;
                if n < remaining {
                    self.skip = Some((remaining - n, fds));
                    return Ok(Parsed::NeedBytes(1));
                }
                self.skip = None;
                if self.fds.len() < fds {
                    let arrived = self.fds.len();
                    return Err(self.fatal(RecvError::LostDescriptors {
                        declared: fds,
                        arrived,
                    }));
                }
                self.fds.drain(..fds);
                continue;
            }
            if avail < HEADER_LEN {
                return Ok(Parsed::NeedBytes(HEADER_LEN));
            }
            let raw: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
                .try_into()
                .expect("header slice");
            let header = match Header::decode(raw) {
                Ok(h) => h,
                Err(e) => {
                    return Err(self.fatal(RecvError::Corrupt {
                        reason: e.to_string(),
                    }));
                }
            };
            let len = header.len as usize;
            let fds = header.fds as usize;
            if header.kind == Kind::Wake {
                if len != 0 || fds != 0 {
                    return Err(self.fatal(RecvError::Corrupt {
                        reason: format!("a wake-up frame with {len} bytes and {fds} descriptors"),
                    }));
                }
                // A wake-up for a parked wait: it has done its job.
                self.start += HEADER_LEN;
                continue;
            }
            let owned = header.kind == Kind::Owned;
            if len > self.limit {
                if owned && let Some(ring) = &self.ring {
                    // Skipped, but it counts: ring records sent after it may come now.
                    ring.owned_delivered();
                }
                self.start += HEADER_LEN;
                self.skip = Some((len, fds));
                return Err(RecvError::TooLarge {
                    len,
                    limit: self.limit,
                });
            }
            if avail < HEADER_LEN + len {
                return Ok(Parsed::Incomplete { len, fds, owned });
            }
            if self.fds.len() < fds {
                let arrived = self.fds.len();
                return Err(self.fatal(RecvError::LostDescriptors {
                    declared: fds,
                    arrived,
                }));
            }
            let start = self.start + HEADER_LEN;
            return Ok(Parsed::Frame {
                start,
                end: start + len,
                fds,
                owned,
            });
        }
    }

    /// What to do next: hand out a whole frame, or which read makes progress. A large frame
    /// that has not all arrived may move to a buffer of its own, as `direct` says.
    pub(super) fn next(&mut self, direct: Direct) -> Result<Next, RecvError> {
        if !matches!(self.lent, Lent::None) {
            self.release_lent();
        }
        // The shared ring first: its front record is deliverable only once every owned socket
        // frame sent before it was delivered, and it comes before any socket frame still here.
        if let Some(ring) = &mut self.ring {
            // New records need a look only with nothing buffered or after a read (a record due
            // before a buffered frame was published before that frame's bytes were read):
            // see `RxRing::front_looking`.
            let look = std::mem::take(&mut self.read_since_look) || self.start == self.end;
            match ring.front_looking(look) {
                Ok(Some(record)) if record.len > self.limit => {
                    ring.consume();
                    return Err(RecvError::TooLarge {
                        len: record.len,
                        limit: self.limit,
                    });
                }
                Ok(Some(_)) => return Ok(Next::Whole(Whole::Ring)),
                Ok(None) => {}
                Err(e) => {
                    return Err(self.fatal(RecvError::Corrupt {
                        reason: e.to_string(),
                    }));
                }
            }
        }
        if let Some(direct) = &self.direct {
            if direct.payload.len() < direct.len {
                return Ok(Next::FillDirect);
            }
            let direct = self.direct.take().expect("checked above");
            self.after_direct = true;
            if self.fds.len() < direct.fds {
                let arrived = self.fds.len();
                return Err(self.fatal(RecvError::LostDescriptors {
                    declared: direct.fds,
                    arrived,
                }));
            }
            return Ok(Next::Whole(Whole::Direct(direct)));
        }
        match self.parse()? {
            Parsed::Frame {
                start,
                end,
                fds,
                owned,
            } => Ok(Next::Whole(Whole::Buffered {
                start,
                end,
                fds,
                owned,
            })),
            // Descriptors come with the frame's first bytes (read by now) unless there are more
            // than one `sendmsg` carries; the rest of the frame can then be read with `recv`.
            Parsed::Incomplete { len, fds, owned }
                if direct != Direct::Never
                    && len > DIRECT_MIN
                    && fds <= MAX_FDS_PER_SENDMSG
                    && self.fds.len() >= fds =>
            {
                let arrived = &self.buf[self.start + HEADER_LEN..self.end];
                let prefix = match direct {
                    Direct::ByteString if fds == 0 => byte_string_prefix_len(arrived, len),
                    Direct::ByteString => None,
                    _ => Some(0),
                };
                let Some(prefix) = prefix.filter(|&p| p <= arrived.len()) else {
                    return Ok(Next::Fill(HEADER_LEN + len));
                };
                let body = len - prefix;
                let mut payload = Vec::with_capacity(body);
                if payload.capacity() != body {
                    // `Vec` promises an exact capacity; without it, read the usual way.
                    return Ok(Next::Fill(HEADER_LEN + len));
                }
                // Nothing after this frame is buffered (it is incomplete): move what arrived
                // of it to its own buffer, and read the rest straight there.
                payload.extend_from_slice(&arrived[prefix..]);
                self.direct = Some(DirectFrame {
                    payload,
                    len: body,
                    fds,
                    owned,
                    prefix,
                });
                self.start = 0;
                self.end = 0;
                if self.buf.len() > KEEP_CAPACITY {
                    self.buf = Vec::new();
                }
                Ok(Next::FillDirect)
            }
            Parsed::Incomplete { len, .. } => Ok(Next::Fill(HEADER_LEN + len)),
            Parsed::NeedBytes(n) => Ok(Next::Fill(n)),
        }
    }

    /// Consumes the frame: the ring and wait bookkeeping, its descriptors, and where its
    /// payload stays until the next receive ([`Taken`]).
    #[inline]
    pub(super) fn take_whole(&mut self, whole: Whole) -> (Taken, Vec<OwnedFd>) {
        match whole {
            Whole::Ring => {
                if let Some(ring) = &mut self.ring {
                    // The payload was copied out to the scratch, which stays as it is until
                    // the ring's front is looked at again.
                    ring.consume();
                }
                self.arrived();
                (Taken::Ring, Vec::new())
            }
            Whole::Buffered {
                start,
                end,
                fds,
                owned,
            } => {
                if owned && let Some(ring) = &self.ring {
                    ring.owned_delivered();
                }
                self.arrived();
                let fds = self.take_fds(fds);
                // The bytes stay where they are until the next read: a read compacts or
                // grows the buffer only after the next call to `next`.
                self.start = end;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                (Taken::Buffered { start, end }, fds)
            }
            Whole::Direct(direct) => {
                if direct.owned
                    && let Some(ring) = &self.ring
                {
                    ring.owned_delivered();
                }
                self.arrived();
                let fds = self.take_fds(direct.fds);
                (Taken::Direct(direct), fds)
            }
        }
    }

    /// Hands the frame to `f` and consumes it.
    pub(super) fn deliver<R>(
        &mut self,
        whole: Whole,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> R {
        match self.take_whole(whole) {
            (Taken::Ring, fds) => {
                let ring = self
                    .ring
                    .as_ref()
                    .expect("a ring frame comes from the ring");
                f(Payload::Borrowed(&ring.scratch), fds)
            }
            (Taken::Buffered { start, end }, fds) => {
                let out = f(Payload::Borrowed(&self.buf[start..end]), fds);
                self.shrink_if_idle();
                out
            }
            (Taken::Direct(direct), fds) => {
                if direct.prefix > 0 {
                    f(Payload::ByteString(direct.payload), fds)
                } else {
                    f(Payload::Owned(direct.payload), fds)
                }
            }
        }
    }

    /// Frees an oversized receive buffer once nothing is left in it.
    #[inline]
    pub(super) fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > KEEP_CAPACITY {
            self.start = 0;
            self.end = 0;
            self.buf = Vec::new();
        }
    }

    /// The first `n` received descriptors, for the frame being delivered (most frames carry
    /// none: then nothing is drained).
    #[inline]
    pub(super) fn take_fds(&mut self, n: usize) -> Vec<OwnedFd> {
        if n == 0 {
            return Vec::new();
        }
        self.drain_fds(n)
    }

    #[cold]
    fn drain_fds(&mut self, n: usize) -> Vec<OwnedFd> {
        self.fds.drain(..n).collect()
    }

    /// Makes room for a read that can complete a frame of `need` bytes.
    pub(super) fn reserve(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let want_total = need.max(READ_CHUNK);
        if self.buf.len() - self.start < want_total || self.buf.len() - self.end < READ_CHUNK / 4 {
            // Compact, then grow (zero-filled: the read side works on initialised memory).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let target = want_total.max(self.end + READ_CHUNK);
            if self.buf.capacity() == 0 {
                // A first buffer is one page (unless the frame needs more): a receiver that
                // only ever gets a few small frames (a child's control socket) zeroes and
                // faults in one page instead of sixteen (`calloc` must clear memory it reuses,
                // as in a child forked from the fork server). The next read grows it.
                self.buf = vec![0; need.max(FIRST_READ)];
            } else if self.buf.len() < target {
                self.buf.resize(target, 0);
            }
        }
    }
}
