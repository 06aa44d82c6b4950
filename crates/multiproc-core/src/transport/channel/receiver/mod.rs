//! The receiving half: reads large chunks and hands out whole frames, on tokio readiness or
//! blocking on `poll(2)`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::SharedFd;
use crate::error::RecvError;
use crate::message::{DEFAULT_MAX_MESSAGE_SIZE, Payload};
use crate::sys::{self, Direction};
use crate::transport::frame::HEADER_LEN;
use crate::transport::socket::Socket;
use crate::wait::ParkApart;
use crate::wait::spin::{self, SpinPolicy};

use super::ring::{ChannelEnd, RxRing, new_token};
use super::split;

mod frames;
mod lend;
mod ready;
mod spin_then_park;

#[cfg(test)]
pub(super) use frames::DIRECT_MIN;
use frames::{Direct, DirectFrame, FIRST_READ, Next, Whole};
use lend::Lent;

const READ_CHUNK: usize = 64 << 10;

/// The receiving half of an untyped channel.
///
/// # Waiting
/// A receive that finds nothing parks (tokio's reactor, or `poll(2)` on the blocking path),
/// except when an answer is due: if the socket sent something since data last arrived, the
/// receiver first yields the CPU and retries the socket for up to 50 us, which spares a sleep
/// and a wake-up when the peer answers within that time. The spinning adapts: it backs off per
/// receiver while it finds nothing, and stops for the whole process while the CPU is busy with
/// other processes. So a receive may hold its thread (and, on tokio, the thread's other tasks)
/// for up to about 50 us plus one yield; see `docs/ARCHITECTURE.md`. With a shared ring (an
/// end made by [`pair`](super::pair)), the spin reads the ring's words instead, without a
/// system call, and a parked receive is woken by the sender (see the module docs).
pub struct RawReceiver {
    socket: Arc<Socket>,
    /// Initialised storage; `buf[start..end]` holds unread bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// Remaining bytes and descriptor count of a frame being skipped.
    skip: Option<(usize, usize)>,
    /// A frame being read into its own buffer; it comes before anything in `buf`.
    pub(super) direct: Option<DirectFrame>,
    eof: bool,
    /// A fatal error was reported; from now on the end is at end-of-stream.
    dead: bool,
    limit: usize,
    /// Whether waits spin before they park.
    pub(super) spin: SpinPolicy,
    /// The wait in progress, if any: it lasts until a read returns something.
    pub(super) waiting: Waiting,
    /// The pair's shared ring, for an end made by [`pair`](super::pair).
    pub(in crate::transport::channel) ring: Option<Box<RxRing>>,
    /// Whether a ring wait with the sender on this CPU parks or takes turns.
    pub(super) park_apart: ParkApart,
    /// The socket was read since the ring's `head` was last looked at (see
    /// `RxRing::front_looking`).
    pub(super) read_since_look: bool,
    /// The last frame was read into a buffer of its own: the next read is at most a page, so
    /// that the next large frame's first bytes are not read into `buf` only to be copied out.
    pub(super) after_direct: bool,
    /// The payload of the frame a lending receive handed out last, kept until the next
    /// receive (see [`lent`](Self::lent)).
    lent: Lent,
}

/// Where a receiver is in a wait for data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Not waiting: the last read returned something.
    No,
    /// Parked, since then, where the spin policy chose not to spin: the wait's length tells it
    /// whether spinning would have paid.
    Timed(Instant),
    /// Parked after a spin that ran out of budget, or with no answer due.
    Untimed,
}

impl RawReceiver {
    /// A receiver reading from `fd`, which must be a stream socket.
    ///
    /// # Errors
    /// When `fd` is not a socket.
    pub fn new(fd: SharedFd) -> io::Result<Self> {
        Ok(split(fd)?.1)
    }

    pub(super) fn with_socket(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            buf: Vec::new(),
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            skip: None,
            direct: None,
            eof: false,
            dead: false,
            limit: DEFAULT_MAX_MESSAGE_SIZE,
            spin: SpinPolicy::new(),
            waiting: Waiting::No,
            ring: None,
            park_apart: ParkApart::new(),
            read_since_look: true,
            after_direct: false,
            lent: Lent::None,
        }
    }

    /// This end as it travels to another process: the socket and the shared ring, if any.
    pub fn to_end(&self) -> ChannelEnd {
        let fd = self.socket.shared_fd().clone();
        match &self.ring {
            Some(ring) => ChannelEnd::with_ring(fd, ring.share().clone(), new_token()),
            None => ChannelEnd::from_fd(fd),
        }
    }

    /// Whether this receiver has a shared ring (it was made by [`pair`](super::pair) or
    /// received as such an end).
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Something arrived (a frame is delivered, or the peer closed): the wait, if any, is over.
    /// A read alone does not count: it may have brought only part of a frame, or only a
    /// wake-up frame left over from an earlier park, and counting that would end each wait
    /// before it began (no spin for the answer due, so every wait parked, and every park left
    /// another stale wake-up frame behind).
    #[inline]
    fn arrived(&mut self) {
        if !matches!(self.waiting, Waiting::No) {
            self.arrived_after_waiting();
        }
        // Whatever was sent before has had its answer, if it wanted one.
        self.socket.clear_sent();
        if let Some(ring) = &self.ring {
            ring.unpark();
        }
    }

    /// [`arrived`](Self::arrived) ends a wait: the spin policy learns how long a park lasted,
    /// and a receiver woken on its sender's CPU moves off it.
    #[cold]
    fn arrived_after_waiting(&mut self) {
        let waited = std::mem::replace(&mut self.waiting, Waiting::No);
        if let Waiting::Timed(since) = waited {
            self.spin.parked(since.elapsed());
        }
        // Parked: did the wake-up move the two apart? If the sender is still on this CPU,
        // move off it, or take turns for a while (see `ParkApart`).
        match self.ring_cue().map(|cue| cue.peer_apart()) {
            Some(false) => self.park_apart.still_together(),
            Some(true) => self.park_apart.woke_apart(),
            None => {}
        }
    }

    /// The socket this receiver reads from.
    pub fn shared_fd(&self) -> &SharedFd {
        self.socket.shared_fd()
    }

    /// The largest incoming message accepted; larger ones are skipped with an error.
    pub fn max_message_size(&self) -> usize {
        self.limit
    }

    /// Sets the largest incoming message accepted.
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// True once the end reported end-of-stream or a fatal error.
    #[cfg(test)]
    pub(crate) fn is_terminated(&self) -> bool {
        self.dead
    }

    fn fatal(&mut self, e: RecvError) -> RecvError {
        crate::trace_warn!(error = %e, "channel closed: the peer is lost or the stream is damaged");
        self.dead = true;
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.fds.clear();
        self.direct = None;
        self.lent = Lent::None;
        e
    }

    /// One `recvmsg` for `next` (a [`Next::Fill`] or [`Next::FillDirect`]), `Err(WouldBlock)`
    /// when nothing is there.
    fn read_once(&mut self, next: &Next) -> io::Result<ReadOutcome> {
        let fds_before = self.fds.len();
        let reset_is_eof = self.ring.is_some();
        let (got, room) = match (next, self.direct.as_mut()) {
            (Next::FillDirect, Some(direct)) => {
                let room = direct.len - direct.payload.len();
                let got = closed_on_reset(
                    sys::recv_into_spare(self.socket.as_fd(), &mut direct.payload),
                    reset_is_eof,
                )?;
                (got, room)
            }
            (Next::Fill(need), _) => {
                self.reserve(*need);
                let mut room = self.buf.len() - self.end;
                if std::mem::take(&mut self.after_direct) {
                    let missing = need.saturating_sub(self.end - self.start);
                    room = room.min(missing.max(FIRST_READ));
                }
                let got = closed_on_reset(
                    sys::recv_with_fds(
                        self.socket.as_fd(),
                        &mut self.buf[self.end..self.end + room],
                        &mut self.fds,
                    ),
                    reset_is_eof,
                )?;
                self.end += got.bytes;
                (got, room)
            }
            _ => unreachable!("a read is only asked for to fill a frame"),
        };
        self.read_since_look = true;
        if got.fds_truncated {
            return Err(io::Error::other(DescriptorsTruncated));
        }
        if got.bytes == 0 {
            self.eof = true;
            self.arrived();
        }
        // A stream socket returns less than asked either because its queue is empty, or because
        // the kernel stops after a segment that carried descriptors. (It would also stop between
        // writers with SO_PASSCRED, which we never set.)
        let drained = got.bytes > 0 && got.bytes < room && self.fds.len() == fds_before;
        Ok(ReadOutcome { drained })
    }

    fn read_error(&mut self, e: io::Error) -> RecvError {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<DescriptorsTruncated>())
        {
            let arrived = self.fds.len();
            return self.fatal(RecvError::LostDescriptors {
                declared: arrived + 1,
                arrived,
            });
        }
        if e.kind() == io::ErrorKind::ConnectionReset {
            self.eof = true;
        }
        self.fatal(RecvError::Io(e))
    }

    /// What to report once the peer has closed: end-of-stream, or a truncated frame.
    fn at_eof(&mut self, next: &Next) -> Result<Option<()>, RecvError> {
        if let Some(direct) = &self.direct {
            let before = HEADER_LEN + direct.prefix;
            let (received, expected) = (before + direct.payload.len(), before + direct.len);
            return Err(self.fatal(RecvError::Truncated { received, expected }));
        }
        let received = self.end - self.start;
        if received == 0 && self.skip.is_none() {
            crate::trace_debug!("channel peer closed: end-of-stream");
            self.dead = true;
            return Ok(None);
        }
        let expected = match (self.skip, next) {
            (Some((remaining, _)), _) => remaining,
            (None, Next::Fill(need)) => *need,
            (None, _) => received,
        };
        Err(self.fatal(RecvError::Truncated { received, expected }))
    }

    /// The receive loop: `take` consumes the whole frame found (see [`deliver`](Self::deliver)
    /// and [`lend`](Self::lend)).
    fn poll_recv_inner<R>(
        &mut self,
        cx: &mut Context<'_>,
        direct: Direct,
        take: impl FnOnce(&mut Self, Whole) -> R,
    ) -> Poll<Result<Option<R>, RecvError>> {
        loop {
            if self.dead {
                return Poll::Ready(Ok(None));
            }
            let next = match self.next(direct)? {
                Next::Whole(whole) => return Poll::Ready(Ok(Some(take(self, whole)))),
                next => next,
            };
            if self.eof {
                return Poll::Ready(self.at_eof(&next).map(|_| None));
            }
            let socket = Arc::clone(&self.socket);
            let registered = match socket.readable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
            };
            let mut guard = match registered.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
                // Nothing is known to be there: spin for it if that has been paying off, else
                // park (the registration woken by the reactor is in place either way).
                Poll::Pending => match self.poll_spin(cx, &next) {
                    Ok(true) => continue,
                    Ok(false) => match self.park_on_ring() {
                        Ok(true) => continue,
                        Ok(false) => return Poll::Pending,
                        Err(e) => return Poll::Ready(Err(e)),
                    },
                    Err(e) => return Poll::Ready(Err(e)),
                },
            };
            if let Err(e) = self.read_when_ready(&next, &mut guard) {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// One read after readiness was reported, clearing the readiness when the socket is
    /// drained. `Err` is fatal (the end is dead).
    fn read_when_ready(
        &mut self,
        next: &Next,
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, SharedFd>,
    ) -> Result<(), RecvError> {
        match self.read_once(next) {
            // The read drained the socket: drop readiness now instead of paying a failing
            // recvmsg later (tokio keeps readiness from any newer edge).
            Ok(ReadOutcome { drained: true }) => guard.clear_ready(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(self.read_error(e)),
        }
        Ok(())
    }

    fn try_recv_inner<R>(
        &mut self,
        direct: Direct,
        take: impl FnOnce(&mut Self, Whole) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        loop {
            if self.dead {
                return Ok(TryRecv::Closed);
            }
            let next = match self.next(direct)? {
                Next::Whole(whole) => return Ok(TryRecv::Frame(take(self, whole))),
                next => next,
            };
            if self.eof {
                return self.at_eof(&next).map(|_| TryRecv::Closed);
            }
            // Keep reading while bytes come: a large frame may need several reads.
            match self.read_once(&next) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TryRecv::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    fn blocking_recv_inner<R>(
        &mut self,
        deadline: Option<Instant>,
        direct: Direct,
        take: impl FnOnce(&mut Self, Whole) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        let mut take = Some(take);
        let mut out = None;
        loop {
            let mut attempt = |rx: &mut Self| {
                let once = |rx: &mut Self, whole| {
                    (take.take().expect("frame handler used twice"))(rx, whole)
                };
                match rx.try_recv_inner(direct, once)? {
                    TryRecv::Empty => Ok(false),
                    done => {
                        out = Some(done);
                        Ok(true)
                    }
                }
            };
            if attempt(self)? {
                break;
            }
            if self.waiting == Waiting::No && self.answer_due() {
                // A wait begins: spin first, never past `deadline`.
                let mut policy = std::mem::take(&mut self.spin);
                let on_ring = self.ring_cue();
                let spun = match &on_ring {
                    // On the ring: busy reads of shared words while the sender runs on another
                    // CPU; the receive proper follows.
                    Some(cue) => {
                        // Parks at once while the sender runs on this CPU (see
                        // `spin_then_park`); yields between looks on a single CPU.
                        let park_apart = self.park_apart.may_park();
                        let ring = self.ring.as_ref().expect("a cue comes from the ring");
                        let mut apart = || cue.peer_apart();
                        let apart: Option<&mut dyn FnMut() -> bool> = match park_apart {
                            true => Some(&mut apart),
                            false => None,
                        };
                        spin::spin(&mut policy, deadline, apart, || {
                            let (record, owned) = ring.news();
                            (record || owned).then_some(Ok(()))
                        })
                    }
                    None => spin::spin(&mut policy, deadline, None, || {
                        attempt(self).map(|caught| caught.then_some(())).transpose()
                    }),
                };
                self.spin = policy;
                if self.caught(spun)? {
                    if on_ring.is_some() {
                        continue;
                    }
                    break;
                }
            }
            if self.park_on_ring()? {
                continue;
            }
            match sys::wait_ready(self.socket.as_fd(), Direction::Read, deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(TryRecv::Empty),
                Err(e) => return Err(self.fatal(RecvError::Io(e))),
            }
        }
        Ok(out.expect("a receive that ended has its outcome"))
    }

    /// Receives one frame and hands it to `f` (typically a decoder), straight from the buffer.
    ///
    /// `Ready(Ok(None))` is end-of-stream: the peer closed and every frame was delivered.
    ///
    /// # Cancel safety
    /// Cancel safe: all progress lives in `self`; dropping the caller's future loses nothing.
    pub fn poll_recv_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Poll<Result<Option<R>, RecvError>> {
        self.poll_recv_inner(cx, Direct::Never, |rx, whole| {
            rx.deliver(whole, |p, fds| f(p.contiguous().as_slice(), fds))
        })
    }

    /// Receives one frame without waiting; [`TryRecv`] tells a frame, nothing yet, or
    /// end-of-stream apart.
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn try_recv_with<R>(
        &mut self,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.try_recv_inner(Direct::Never, |rx, whole| {
            rx.deliver(whole, |p, fds| f(p.contiguous().as_slice(), fds))
        })
    }

    /// Hands `f` a frame only if one is already whole in the receive buffer; never reads the
    /// socket (no system call). `Ok(None)` when no whole frame is buffered, or at end-of-stream.
    ///
    /// A caller that knows by other means that nothing more was sent can then wait with
    /// [`blocking_wait`](Self::blocking_wait) instead of paying a read that finds nothing.
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with), for what is buffered.
    pub fn try_recv_buffered_with<R>(
        &mut self,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<Option<R>, RecvError> {
        if self.dead {
            return Ok(None);
        }
        match self.next(Direct::Never)? {
            Next::Whole(whole) => {
                Ok(Some(self.deliver(whole, |p, fds| {
                    f(p.contiguous().as_slice(), fds)
                })))
            }
            Next::Fill(_) | Next::FillDirect => Ok(None),
        }
    }

    /// Blocks the thread until the socket has bytes to read or the peer closed, without
    /// reading; `Ok(false)` once `deadline` passes. Frames already in the receive buffer do not
    /// count: take them first ([`try_recv_buffered_with`](Self::try_recv_buffered_with)). Nor
    /// do frames in a shared ring (an end made by [`pair`](super::pair)): this wait is for ends
    /// over a bare socket.
    ///
    /// # Errors
    /// Only on an unexpected `poll(2)` failure.
    ///
    /// # References
    /// - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)
    pub fn blocking_wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::wait_ready(self.socket.as_fd(), Direction::Read, deadline)
    }

    /// Receives one frame, blocking the thread; `Ok(TryRecv::Empty)` when `deadline` passes.
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn blocking_recv_with<R>(
        &mut self,
        deadline: Option<Instant>,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.blocking_recv_inner(deadline, Direct::Never, |rx, whole| {
            rx.deliver(whole, |p, fds| f(p.contiguous().as_slice(), fds))
        })
    }

    /// Receives one frame and hands `f` its payload, which for a large frame is read straight
    /// into a `Vec` of the announced length ([`Payload::Owned`]) instead of passing through the
    /// receive buffer: no copy in user space. Smaller frames arrive as [`Payload::Borrowed`].
    ///
    /// Frames are the same whichever method receives them, and size limits, descriptors and
    /// errors behave as in [`poll_recv_with`](Self::poll_recv_with).
    ///
    /// # Cancel safety
    /// Cancel safe: a frame read part-way stays in `self` and is finished by the next receive
    /// of any kind.
    pub fn poll_recv_bytes<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Poll<Result<Option<R>, RecvError>> {
        self.poll_recv_inner(cx, Direct::Large, |rx, whole| rx.deliver(whole, f))
    }

    /// [`poll_recv_bytes`](Self::poll_recv_bytes), blocking the thread, as
    /// [`blocking_recv_with`](Self::blocking_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn blocking_recv_bytes<R>(
        &mut self,
        deadline: Option<Instant>,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.blocking_recv_inner(deadline, Direct::Large, |rx, whole| rx.deliver(whole, f))
    }

    /// Receives one frame for a typed decode ([`decode_payload`](crate::message::decode_payload)):
    /// a large frame that is exactly one byte string is read straight into a `Vec` of its own
    /// without its length prefix ([`Payload::ByteString`]), which the decode makes the value
    /// (a `ByteBuf`, `String`, `Vec<u8>`) without copying it. Other frames arrive as in
    /// [`poll_recv_bytes`](Self::poll_recv_bytes).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`poll_recv_bytes`](Self::poll_recv_bytes).
    pub fn poll_recv_typed<R>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Poll<Result<Option<R>, RecvError>> {
        self.poll_recv_inner(cx, Direct::ByteString, |rx, whole| rx.deliver(whole, f))
    }

    /// [`poll_recv_typed`](Self::poll_recv_typed) without waiting, as
    /// [`try_recv_with`](Self::try_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn try_recv_typed<R>(
        &mut self,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.try_recv_inner(Direct::ByteString, |rx, whole| rx.deliver(whole, f))
    }

    /// [`poll_recv_typed`](Self::poll_recv_typed), blocking the thread, as
    /// [`blocking_recv_with`](Self::blocking_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn blocking_recv_typed<R>(
        &mut self,
        deadline: Option<Instant>,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.blocking_recv_inner(deadline, Direct::ByteString, |rx, whole| {
            rx.deliver(whole, f)
        })
    }
}

/// Outcome of a receive that does not wait.
#[derive(Debug)]
pub enum TryRecv<R> {
    /// A frame arrived and was handed to the callback, which returned this.
    Frame(R),
    /// No whole frame is available yet.
    Empty,
    /// The peer closed and every frame was delivered.
    Closed,
}

/// What one read found out about the socket.
struct ReadOutcome {
    /// The socket's queue is empty now.
    drained: bool,
}

/// With a shared ring, a peer that closed while a wake-up frame it did not need was still
/// unread makes the kernel report `ECONNRESET` after the last byte it sent: that is an orderly
/// end-of-stream (every frame it sent has been read), not an error.
fn closed_on_reset(
    read: io::Result<sys::Received>,
    reset_is_eof: bool,
) -> io::Result<sys::Received> {
    match read {
        Err(e) if reset_is_eof && e.kind() == io::ErrorKind::ConnectionReset => Ok(sys::Received {
            bytes: 0,
            truncated: false,
            fds_truncated: false,
        }),
        other => other,
    }
}

/// Whether a failed read only means "nothing there yet".
fn nothing_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Marker for the kernel dropping descriptors (`MSG_CTRUNC`).
#[derive(Debug)]
struct DescriptorsTruncated;

impl std::fmt::Display for DescriptorsTruncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kernel truncated the received descriptors")
    }
}

impl std::error::Error for DescriptorsTruncated {}
