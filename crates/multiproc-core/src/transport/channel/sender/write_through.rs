//! Typed frames that are one large byte string, written from the value's own bytes:
//! [`RawSender::push_message`].

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

use serde::Serialize;

use crate::error::SendErrorKind;
use crate::message::{self, byte_string_prefix, with_byte_string};
use crate::sys;
use crate::transport::frame::{HEADER_LEN, Header, Kind};

use super::RawSender;

/// Byte strings from this size on are written from the value when nothing is buffered; smaller
/// ones are copied into the buffer with the others, where batching pays more.
pub(in crate::transport::channel) const WRITE_THROUGH_MIN: usize = 64 << 10;

impl RawSender {
    /// Appends one frame holding `value`'s postcard encoding, as [`push`](Self::push) with
    /// [`message::encode_into`] does.
    ///
    /// A value that is exactly one byte string of at least 64 KiB (a `serde_bytes::ByteBuf`,
    /// a `String`, a `Vec<u8>` with `serde_bytes`, through newtypes), pushed when nothing else
    /// is buffered, is written to the socket at once, straight from the value's bytes, as far
    /// as the socket takes them (one non-blocking `sendmsg`); only the rest is copied into the
    /// buffer, and goes out with the next flush as usual. The bytes on the wire are the same.
    ///
    /// # Errors
    /// As [`push`](Self::push). A failed write is not reported here: the frame is then
    /// buffered whole and the next flush meets the failure.
    pub fn push_message<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendErrorKind> {
        if !self.closed && self.outbox.is_empty() && !crate::fd::encoding() {
            let pushed = with_byte_string(value, |bytes| {
                (bytes.len() >= WRITE_THROUGH_MIN).then(|| self.push_byte_string(bytes))
            });
            if let Some(Some(pushed)) = pushed {
                return pushed;
            }
        }
        self.push(|buf| message::encode_into(value, buf))
    }

    /// [`push_message`](Self::push_message) of a large byte string, with nothing buffered.
    fn push_byte_string(&mut self, bytes: &[u8]) -> Result<(), SendErrorKind> {
        let (prefix, k) = byte_string_prefix(bytes.len());
        let len = k + bytes.len();
        if len > self.limit {
            return Err(SendErrorKind::TooLarge {
                len,
                limit: self.limit,
            });
        }
        // Ring records written before this frame are published before it reaches the socket
        // (a parked receiver's wake-up then goes first, through the buffer).
        self.wake_if_parked();
        let mut kind = Kind::Plain;
        let mut wake = false;
        if let Some(ring) = &mut self.ring {
            if ring.backlogged() && sys::peer_closed(self.socket.as_fd()) {
                self.closed = true;
                return Err(SendErrorKind::Closed);
            }
            if ring.tag_socket_frame() {
                kind = Kind::Owned;
            }
            wake = ring.take_wake_pending();
        }
        let header = Header {
            len: len as u32,
            fds: 0,
            kind,
        }
        .encode();
        let mut head = [0u8; HEADER_LEN + 10];
        head[..HEADER_LEN].copy_from_slice(&header);
        head[HEADER_LEN..HEADER_LEN + k].copy_from_slice(&prefix[..k]);
        let head = &head[..HEADER_LEN + k];
        let written = if self.outbox.is_empty() {
            self.write_through(head, bytes)
        } else {
            0
        };
        // What the socket did not take goes out with the next flush.
        self.outbox.push_rest(head, bytes, written);
        if wake {
            self.queue_wake();
        }
        Ok(())
    }

    /// One non-blocking `sendmsg` of `head` and `bytes`: how many bytes went out. A failure
    /// counts as nothing written; the flush that sends the rest meets it again and reports it.
    fn write_through(&mut self, head: &[u8], bytes: &[u8]) -> usize {
        let parts = [IoSlice::new(head), IoSlice::new(bytes)];
        loop {
            match sys::send_vectored(self.socket.as_fd(), &parts) {
                Ok(n) => {
                    self.socket.note_sent();
                    return n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return 0,
            }
        }
    }
}
