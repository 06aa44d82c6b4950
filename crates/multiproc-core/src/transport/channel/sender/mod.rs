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
use crate::transport::frame::{HEADER_LEN, Header};
use crate::transport::socket::Socket;

use super::split;

mod flush_thread;
mod outbox;
mod send_bytes;

use outbox::Outbox;
pub use send_bytes::SendBytes;

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
        }
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
        let header = Header {
            len: len as u32,
            fds: fds.len() as u32,
        };
        self.outbox.buf[start..start + HEADER_LEN].copy_from_slice(&header.encode());
        if !fds.is_empty() {
            self.outbox.attach.push_back((start, fds));
        }
        Ok(())
    }

    fn fail(&mut self, e: io::Error) -> SendErrorKind {
        let kind = SendErrorKind::from_io(e);
        // Whatever is buffered can no longer be delivered.
        self.closed = true;
        self.outbox = Outbox::default();
        kind
    }

    /// Writes buffered frames until the buffer is empty, waiting for the socket when it is full.
    ///
    /// # Errors
    /// [`SendErrorKind::Closed`] when the peer is gone (buffered frames are dropped).
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendErrorKind>> {
        // Writes rarely block: try the socket first and touch the reactor only on EAGAIN.
        loop {
            if self.outbox.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match self.outbox.write_once(&self.socket) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
            let registered = match self.socket.writable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            let mut guard = match ready!(registered.poll_write_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            match self.outbox.write_once(&self.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
        }
    }

    /// Writes buffered frames, blocking the thread; gives up at `deadline` (returns `Ok(false)`).
    ///
    /// # Errors
    /// As [`poll_flush`](Self::poll_flush).
    pub fn blocking_flush(&mut self, deadline: Option<Instant>) -> Result<bool, SendErrorKind> {
        loop {
            if self.outbox.is_empty() {
                return Ok(true);
            }
            match self.outbox.write_once(&self.socket) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline) {
                        Ok(true) => {}
                        Ok(false) => return Ok(false),
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }
}
