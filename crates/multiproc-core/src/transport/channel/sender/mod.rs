//! The sending half: frames batched in an outbox and written with as few `sendmsg` calls as the
//! descriptors allow, on tokio readiness or blocking on `poll(2)`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use crate::SharedFd;
use crate::error::{EncodeError, SendErrorKind};
use crate::message::DEFAULT_MAX_MESSAGE_SIZE;
use crate::sys::{self, Direction};
use crate::transport::frame::{HEADER_LEN, Header, Kind};
use crate::transport::socket::Socket;

use super::ring::{ChannelEnd, TxRing};
use super::split;

mod flush_thread;
mod outbox;
mod send_bytes;
mod write_through;

use outbox::Outbox;
pub use send_bytes::SendBytes;
#[cfg(test)]
pub(super) use write_through::WRITE_THROUGH_MIN;

/// The sending half of an untyped channel.
///
/// Messages are appended to an internal buffer by [`push`](Self::push) and written by
/// [`poll_flush`](Self::poll_flush) / [`blocking_flush`](Self::blocking_flush). If the sender is
/// dropped with bytes still buffered, a background thread finishes writing them (or gives up when
/// the peer closes), so a cancelled flush never loses an accepted message.
pub struct RawSender {
    socket: Arc<Socket>,
    outbox: Outbox,
    limit: usize,
    closed: bool,
    /// The pair's shared ring, for an end made by [`pair`](super::pair).
    pub(super) ring: Option<Box<TxRing>>,
    /// A wake frame sits in the outbox.
    wake_queued: bool,
}

impl RawSender {
    /// A sender writing to `fd`, which must be a stream socket.
    ///
    /// # Errors
    /// When `fd` is not a socket.
    pub fn new(fd: SharedFd) -> io::Result<Self> {
        Ok(split(fd)?.0)
    }

    pub(super) fn with_socket(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            outbox: Outbox::default(),
            limit: DEFAULT_MAX_MESSAGE_SIZE,
            closed: false,
            ring: None,
            wake_queued: false,
        }
    }

    /// This end as it travels to another process: the socket and the shared ring, if any. A
    /// copy made this way takes over the ring from this one (see the module docs, "Copies of
    /// an end"); this sender keeps working, through the socket if both are used.
    pub fn to_end(&self) -> ChannelEnd {
        let fd = self.socket.shared_fd().clone();
        match &self.ring {
            Some(ring) => {
                let (share, token) = ring.hand_off();
                ChannelEnd::with_ring(fd, share, token)
            }
            None => ChannelEnd::from_fd(fd),
        }
    }

    /// Whether this sender has a shared ring (it was made by [`pair`](super::pair) or received
    /// as such an end).
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// The socket this sender writes to.
    pub fn shared_fd(&self) -> &SharedFd {
        self.socket.shared_fd()
    }

    /// The largest encoded message this sender accepts.
    pub fn max_message_size(&self) -> usize {
        self.limit
    }

    /// Sets the largest encoded message this sender accepts (at most `u32::MAX`).
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.limit = limit.min(u32::MAX as usize);
    }

    /// Bytes accepted but not yet written to the socket.
    pub fn buffered(&self) -> usize {
        self.outbox.buf.len() - self.outbox.pos
    }

    /// Appends one frame whose payload `encode` writes into the buffer and whose descriptors it
    /// returns. Nothing is written to the socket yet. On error the buffer is left as it was.
    ///
    /// # Errors
    /// `encode`'s error, [`SendErrorKind::TooLarge`] above the limit, or
    /// [`SendErrorKind::Closed`] once a write has found the peer gone.
    pub fn push(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<Vec<OwnedFd>, EncodeError>,
    ) -> Result<(), SendErrorKind> {
        if self.closed {
            return Err(SendErrorKind::Closed);
        }
        let start = self.outbox.buf.len();
        self.outbox.buf.extend_from_slice(&[0; HEADER_LEN]);
        let fds = match encode(&mut self.outbox.buf) {
            Ok(fds) => fds,
            Err(e) => {
                self.outbox.buf.truncate(start);
                return Err(SendErrorKind::Encode(e));
            }
        };
        let len = self.outbox.buf.len() - start - HEADER_LEN;
        if len > self.limit {
            self.outbox.buf.truncate(start);
            return Err(SendErrorKind::TooLarge {
                len,
                limit: self.limit,
            });
        }
        // Plain for now: whether it goes into the shared ring, or through the socket tagged as
        // the ring owner's, is decided when it is written (`prepare_write`).
        let header = Header {
            len: len as u32,
            fds: fds.len() as u32,
            kind: Kind::Plain,
        };
        self.outbox.buf[start..start + HEADER_LEN].copy_from_slice(&header.encode());
        if !fds.is_empty() {
            self.outbox.attach.push_back((start, fds));
        }
        Ok(())
    }

    /// Before buffered frames are written. A frame that goes out alone (one frame buffered,
    /// small, without descriptors) goes into the shared ring instead, if it has room: no system
    /// call, and a spinning receiver sees it at once. A batch goes through the socket, one
    /// `sendmsg` for many frames, cheaper per frame than the ring's copy and cache-line
    /// traffic; its frames are tagged as the ring owner's first ([`tag_buffered`]). Then the
    /// ring's records are published, and a parked receiver is woken.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the ring has stalled and the peer is gone (the buffered
    /// frame is dropped).
    ///
    /// [`tag_buffered`]: Self::tag_buffered
    pub(super) fn prepare_write(&mut self) -> Result<(), SendErrorKind> {
        let Some(ring) = &mut self.ring else {
            return Ok(());
        };
        if let Some(payload) = self.outbox.lone_frame() {
            if ring.backlogged() && sys::peer_closed(self.socket.as_fd()) {
                self.close();
                return Err(SendErrorKind::Closed);
            }
            if ring.try_write(payload) {
                self.outbox.clear();
                self.socket.note_sent();
            }
        }
        self.tag_buffered();
        self.wake_if_parked();
        Ok(())
    }

    /// Tags the frames pushed since the last time as the ring owner's (the receiver keeps
    /// ring records written after them behind them), with one store to the shared count.
    /// Called before any of them is written, and before a record is.
    pub(super) fn tag_buffered(&mut self) {
        let Some(ring) = &mut self.ring else {
            return;
        };
        if self.outbox.untagged == self.outbox.buf.len() {
            return;
        }
        let owned = ring.usable();
        let frames = self.outbox.tag_untagged(owned);
        if owned && frames > 0 {
            ring.tag_socket_frames(frames);
        }
    }

    /// Publishes the ring's records and queues a wake frame if the receiver is parked.
    pub(super) fn wake_if_parked(&mut self) {
        if let Some(ring) = &mut self.ring
            && ring.wake_due()
        {
            self.queue_wake();
        }
    }

    fn queue_wake(&mut self) {
        let wake = Header {
            len: 0,
            fds: 0,
            kind: Kind::Wake,
        };
        self.outbox.push_wake(&wake.encode());
        self.wake_queued = true;
    }

    /// Whether a wake-up for a parked receiver waits in the buffer: a sender feeding a batch
    /// (a `Sink`) should flush now rather than at the end of the batch, or the receiver sleeps
    /// through it.
    pub fn wake_queued(&self) -> bool {
        self.wake_queued
    }

    fn fail(&mut self, e: io::Error) -> SendErrorKind {
        self.close();
        SendErrorKind::from_io(e)
    }

    /// The peer is gone: later sends fail, and whatever is buffered can no longer be delivered.
    fn close(&mut self) {
        self.closed = true;
        self.outbox = Outbox::default();
        self.wake_queued = false;
    }

    /// A flush's write failed. When only wake frames were left and the receiver took every
    /// record from the ring, every message was delivered before the peer closed: the send
    /// succeeded; later sends fail.
    fn fail_flush(&mut self, e: io::Error) -> Result<(), SendErrorKind> {
        let handed_over =
            self.outbox.only_wakes_left() && self.ring.as_ref().is_none_or(|r| r.all_taken());
        match self.fail(e) {
            SendErrorKind::Closed if handed_over => Ok(()),
            kind => Err(kind),
        }
    }

    /// Writes buffered frames until the buffer is empty, waiting for the socket when it is full.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the peer is gone (buffered frames are dropped).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendErrorKind>> {
        if let Err(e) = self.prepare_write() {
            return Poll::Ready(Err(e));
        }
        // Writes rarely block: try the socket first and touch the reactor only on EAGAIN.
        loop {
            if self.outbox.is_empty() {
                self.wake_queued = false;
                return Poll::Ready(Ok(()));
            }
            match self.outbox.write_once(&self.socket) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(self.fail_flush(e)),
            }
            let registered = match self.socket.writable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(self.fail_flush(e)),
            };
            let mut guard = match ready!(registered.poll_write_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(self.fail_flush(e)),
            };
            match self.outbox.write_once(&self.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(self.fail_flush(e)),
            }
        }
    }

    /// Writes buffered frames, blocking the thread; gives up at `deadline` (returns `Ok(false)`).
    ///
    /// # Errors
    /// As [`poll_flush`](Self::poll_flush).
    pub fn blocking_flush(&mut self, deadline: Option<Instant>) -> Result<bool, SendErrorKind> {
        self.prepare_write()?;
        loop {
            if self.outbox.is_empty() {
                self.wake_queued = false;
                return Ok(true);
            }
            match self.outbox.write_once(&self.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline) {
                        Ok(true) => {}
                        Ok(false) => return Ok(false),
                        Err(e) => return self.fail_flush(e).map(|()| true),
                    }
                }
                Err(e) => return self.fail_flush(e).map(|()| true),
            }
        }
    }
}
