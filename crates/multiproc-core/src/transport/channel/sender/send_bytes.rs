//! Sending a frame straight from the caller's slice, never copied into the outbox unless the
//! send is cancelled part-way: [`RawSender::send_bytes`], its future [`SendBytes`], and the
//! blocking twin.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use crate::error::SendErrorKind;
use crate::sys::{self, Direction};
use crate::transport::frame::{HEADER_LEN, Header, Kind};

use super::RawSender;

/// Where an accepted frame of bytes goes.
enum Accepted {
    /// Published in the shared ring: done, save a wake-up.
    Ring,
    /// Through the socket, after this header.
    Socket([u8; HEADER_LEN]),
}

impl RawSender {
    /// Checks that a frame of `bytes` may be sent and accepts it: into the shared ring when it
    /// fits there, else the header of its socket frame.
    fn accept_bytes(&mut self, bytes: &[u8]) -> Result<Accepted, SendErrorKind> {
        if self.closed {
            return Err(SendErrorKind::Closed);
        }
        let len = bytes.len();
        if len > self.limit {
            return Err(SendErrorKind::TooLarge {
                len,
                limit: self.limit,
            });
        }
        // Frames buffered before this one are counted before a record can follow them.
        self.tag_buffered();
        let mut kind = Kind::Plain;
        if let Some(ring) = &mut self.ring {
            if ring.backlogged() && sys::peer_closed(self.socket.as_fd()) {
                self.closed = true;
                return Err(SendErrorKind::Closed);
            }
            if ring.try_write(bytes) {
                self.socket.note_sent();
                return Ok(Accepted::Ring);
            }
            if ring.tag_socket_frame() {
                kind = Kind::Owned;
            }
        }
        Ok(Accepted::Socket(
            Header {
                len: len as u32,
                fds: 0,
                kind,
            }
            .encode(),
        ))
    }

    /// One `sendmsg` of the part of frame `header` + `bytes` after its first `written` bytes.
    /// Only called with an empty buffer, so the frame goes out in order.
    fn write_direct(
        &mut self,
        header: &[u8; HEADER_LEN],
        bytes: &[u8],
        written: &mut usize,
    ) -> io::Result<()> {
        debug_assert!(self.outbox.is_empty());
        let n = if *written < HEADER_LEN {
            let parts = [IoSlice::new(&header[*written..]), IoSlice::new(bytes)];
            sys::send_vectored(self.socket.as_fd(), &parts)?
        } else {
            let parts = [IoSlice::new(&bytes[*written - HEADER_LEN..])];
            sys::send_vectored(self.socket.as_fd(), &parts)?
        };
        self.socket.note_sent();
        *written += n;
        Ok(())
    }

    /// Sends one frame whose payload is `bytes`, written from `bytes` itself: buffered frames
    /// first, then one `sendmsg` of the header and the slice (more while the socket is full).
    /// The bytes are never copied into the buffer, unless the future is dropped part-way.
    ///
    /// The frame is an ordinary frame without descriptors; the receiver may take it with
    /// [`RawReceiver::poll_recv_bytes`] or any other receive.
    ///
    /// [`RawReceiver::poll_recv_bytes`]: crate::transport::channel::RawReceiver::poll_recv_bytes
    ///
    /// # Errors
    /// [`SendErrorKind::TooLarge`] above the limit and [`SendErrorKind::Closed`] once the peer is
    /// gone, as [`push`](Self::push) and [`poll_flush`](Self::poll_flush).
    ///
    /// # Cancel safety
    /// The frame is accepted at the first poll (after the checks above). If the future is
    /// dropped after that and before it completed, the rest of the frame is copied into the
    /// buffer and delivered with the next flush, or by the background thread if the sender is
    /// dropped: a cancelled send never loses or tears a frame. A future never polled sends
    /// nothing.
    pub fn send_bytes<'a>(&'a mut self, bytes: &'a [u8]) -> SendBytes<'a> {
        SendBytes {
            sender: self,
            bytes,
            header: [0; HEADER_LEN],
            written: 0,
            state: SendBytesState::New,
        }
    }

    /// Sends one frame whose payload is `bytes`, blocking the thread, as
    /// [`send_bytes`](Self::send_bytes). Gives up waiting at `deadline` and returns `Ok(false)`:
    /// the rest of the frame is then buffered for the next flush.
    ///
    /// # Errors
    /// As [`send_bytes`](Self::send_bytes).
    pub fn blocking_send_bytes(
        &mut self,
        bytes: &[u8],
        deadline: Option<Instant>,
    ) -> Result<bool, SendErrorKind> {
        let header = match self.accept_bytes(bytes)? {
            Accepted::Ring => return self.blocking_flush(deadline),
            Accepted::Socket(header) => header,
        };
        if !self.blocking_flush(deadline)? {
            self.outbox.push_rest(&header, bytes, 0);
            return Ok(false);
        }
        let total = HEADER_LEN + bytes.len();
        let mut written = 0;
        while written < total {
            match self.write_direct(&header, bytes, &mut written) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.outbox.push_rest(&header, bytes, written);
                            return Ok(false);
                        }
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(true)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SendBytesState {
    /// Not polled yet: nothing accepted.
    New,
    /// Accepted: the frame must reach the socket, now or later.
    Accepted,
    /// Published in the ring: what was buffered before it (and a wake-up) is being flushed.
    InRing,
    /// Written, or failed.
    Done,
}

/// Future of [`RawSender::send_bytes`].
#[must_use = "futures do nothing unless polled"]
pub struct SendBytes<'a> {
    sender: &'a mut RawSender,
    bytes: &'a [u8],
    header: [u8; HEADER_LEN],
    /// Bytes of the frame (header included) already written.
    written: usize,
    state: SendBytesState,
}

impl std::future::Future for SendBytes<'_> {
    type Output = Result<(), SendErrorKind>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.state {
            SendBytesState::Done => return Poll::Ready(Ok(())),
            SendBytesState::New => match this.sender.accept_bytes(this.bytes) {
                Ok(Accepted::Socket(header)) => {
                    this.header = header;
                    this.state = SendBytesState::Accepted;
                }
                Ok(Accepted::Ring) => this.state = SendBytesState::InRing,
                Err(e) => {
                    this.state = SendBytesState::Done;
                    return Poll::Ready(Err(e));
                }
            },
            SendBytesState::Accepted => {}
            SendBytesState::InRing => {}
        }
        if this.state == SendBytesState::InRing {
            // Published; what is left is to flush what came before (and wake the receiver),
            // which a dropped future leaves to the next flush or to the sender's drop.
            let result = this.sender.poll_flush(cx);
            if result.is_ready() {
                this.state = SendBytesState::Done;
            }
            return result;
        }
        let result = this.poll_write(cx);
        if result.is_ready() {
            this.state = SendBytesState::Done;
        }
        result
    }
}

impl SendBytes<'_> {
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendErrorKind>> {
        // Frames buffered before this one go first.
        ready!(self.sender.poll_flush(cx))?;
        let total = HEADER_LEN + self.bytes.len();
        loop {
            if self.written == total {
                return Poll::Ready(Ok(()));
            }
            match self
                .sender
                .write_direct(&self.header, self.bytes, &mut self.written)
            {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(self.sender.fail(e))),
            }
            let socket = Arc::clone(&self.sender.socket);
            let registered = match socket.writable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(self.sender.fail(e))),
            };
            let mut guard = match ready!(registered.poll_write_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(self.sender.fail(e))),
            };
            match self
                .sender
                .write_direct(&self.header, self.bytes, &mut self.written)
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.sender.fail(e))),
            }
        }
    }
}

impl Drop for SendBytes<'_> {
    fn drop(&mut self) {
        if self.state == SendBytesState::Accepted {
            // What the direct write did not get to goes out with the next flush (or from the
            // background thread when the sender is dropped): the frame is never torn.
            self.sender
                .outbox
                .push_rest(&self.header, self.bytes, self.written);
        }
    }
}
