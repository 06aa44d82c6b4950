//! Frames waiting to be written, and the one `sendmsg` that moves them on.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, MAX_FDS_PER_SENDMSG};
use crate::transport::channel::KEEP_CAPACITY;
use crate::transport::frame::{HEADER_LEN, Header, Kind};
use crate::transport::socket::Socket;

/// Frames waiting to be written, with the descriptors that must ride along.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pub(super) pos: usize,
    /// Descriptors to attach to the `sendmsg` that starts at the given offset of `buf`.
    pub(super) attach: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Where the frames that [`push`](super::RawSender::push) appended and nobody tagged yet
    /// begin (see [`RawSender::tag_buffered`](super::RawSender::tag_buffered)): whole frames
    /// from here to the end.
    pub(super) untagged: usize,
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

    /// The payload of the one frame the buffer holds, if it holds exactly one untouched
    /// untagged frame without descriptors.
    pub(super) fn lone_frame(&self) -> Option<&[u8]> {
        if self.pos != 0 || self.untagged != 0 || !self.attach.is_empty() {
            return None;
        }
        let raw: &[u8; HEADER_LEN] = self.buf.get(..HEADER_LEN)?.try_into().ok()?;
        let header = Header::decode_own(raw);
        (header.kind == Kind::Plain
            && header.fds == 0
            && HEADER_LEN + header.len as usize == self.buf.len())
        .then(|| &self.buf[HEADER_LEN..])
    }

    /// Appends what a direct write left of a frame (`head` then `body`, of which the first
    /// `written` bytes went out). The frame was counted when it was accepted: it is not
    /// tagged again.
    pub(super) fn push_rest(&mut self, head: &[u8], body: &[u8], written: usize) {
        if written < head.len() {
            self.buf.extend_from_slice(&head[written..]);
            self.buf.extend_from_slice(body);
        } else {
            self.buf.extend_from_slice(&body[written - head.len()..]);
        }
        self.untagged = self.buf.len();
    }

    /// Empties the buffer (everything in it was written, or its one frame went elsewhere),
    /// keeping its allocation unless it grew past [`KEEP_CAPACITY`].
    pub(super) fn clear(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if buf.capacity() > KEEP_CAPACITY {
            buf = Vec::new();
        }
        *self = Outbox {
            buf,
            ..Outbox::default()
        };
    }

    /// Marks the frames appended since the last call as the ring owner's (when `owned`) and
    /// returns how many there are; wake frames are passed over.
    pub(super) fn tag_untagged(&mut self, owned: bool) -> u64 {
        let mut at = self.untagged;
        let mut frames = 0;
        while at + HEADER_LEN <= self.buf.len() {
            let raw: &[u8; HEADER_LEN] = self.buf[at..at + HEADER_LEN]
                .try_into()
                .expect("header slice");
            let header = Header::decode_own(raw);
            if header.kind != Kind::Wake {
                frames += 1;
                if owned {
                    let tagged = Header {
                        kind: Kind::Owned,
                        ..header
                    };
                    self.buf[at..at + HEADER_LEN].copy_from_slice(&tagged.encode());
                }
            }
            at += HEADER_LEN + header.len as usize;
        }
        debug_assert_eq!(at, self.buf.len(), "untagged bytes are whole frames");
        self.untagged = self.buf.len();
        frames
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
            self.clear();
        }
        Ok(())
    }
}
