//! Frames waiting to be written, and the one `sendmsg` that moves them on.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, MAX_FDS_PER_SENDMSG};
use crate::transport::channel::KEEP_CAPACITY;
use crate::transport::socket::Socket;

/// Frames waiting to be written, with the descriptors that must ride along.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pub(super) pos: usize,
    /// Descriptors to attach to the `sendmsg` that starts at the given offset of `buf`.
    pub(super) attach: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Where the last wake frame in `buf` ends: bytes after it belong to frames with payloads.
    wakes_end: usize,
    /// Where the last frame with a payload before `wakes_end` ends.
    payload_end: usize,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Appends a wake frame: a frame without a payload, which tells a parked receiver to look
    /// at the ring.
    pub(super) fn push_wake(&mut self, frame: &[u8]) {
        let at = self.buf.len();
        if at != self.wakes_end {
            // Frames with payloads came after the last wake frame.
            self.payload_end = at;
        }
        self.buf.extend_from_slice(frame);
        self.wakes_end = self.buf.len();
    }

    /// Whether every unwritten byte belongs to a wake frame: each message buffered here has
    /// gone out already.
    pub(super) fn only_wakes_left(&self) -> bool {
        let payload_end = if self.wakes_end == self.buf.len() {
            self.payload_end
        } else {
            self.buf.len()
        };
        self.pos >= payload_end
    }

    /// One `sendmsg`: bytes up to the next descriptor attachment, with the attachment due here.
    pub(super) fn write_once(&mut self, socket: &Socket) -> io::Result<()> {
        let (end, fds_here) = match self.attach.front() {
            Some((offset, fds)) if *offset == self.pos => {
                let chunk = fds.len().min(MAX_FDS_PER_SENDMSG);
                // More descriptors than one sendmsg takes: send one byte with this batch and
                // leave the rest for the next byte (a frame has more bytes than batches).
                let end = if chunk < fds.len() {
                    self.pos + 1
                } else {
                    self.attach.get(1).map_or(self.buf.len(), |(o, _)| *o)
                };
                (end, chunk)
            }
            Some((offset, _)) => (*offset, 0),
            None => (self.buf.len(), 0),
        };
        let written = {
            let borrowed: Vec<BorrowedFd<'_>> = match self.attach.front() {
                Some((_, fds)) if fds_here > 0 => {
                    fds[..fds_here].iter().map(|f| f.as_fd()).collect()
                }
                _ => Vec::new(),
            };
            sys::send_with_fds(socket.as_fd(), &self.buf[self.pos..end], &borrowed)?
        };
        socket.note_sent();
        if fds_here > 0 {
            // The kernel took the descriptors with the first byte; our copies can close.
            let (offset, fds) = self.attach.front_mut().expect("attachment vanished");
            fds.drain(..fds_here);
            if fds.is_empty() {
                self.attach.pop_front();
            } else {
                *offset = self.pos + 1;
            }
        }
        self.pos += written;
        if self.is_empty() {
            self.pos = 0;
            self.wakes_end = 0;
            self.payload_end = 0;
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        Ok(())
    }
}
