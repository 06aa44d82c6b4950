//! The untyped channel: frames of bytes plus descriptors over a Unix stream socket.
//!
//! [`RawSender`] batches frames in a buffer and writes them with as few `sendmsg` calls as the
//! descriptors allow; [`RawReceiver`] reads large chunks and hands out whole frames. Both have an
//! async face (tokio readiness) and a blocking face (`poll(2)`), over the same state, so an end
//! can be used from either kind of code.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use crate::SharedFd;
use crate::error::{EncodeError, RecvError, SendErrorKind};
use crate::frame::{HEADER_LEN, Header};
use crate::socket::Socket;
use crate::sys::{self, Direction, MAX_FDS_PER_SENDMSG};

/// Default largest message, in encoded bytes, an end sends or accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

const READ_CHUNK: usize = 64 << 10;
/// Buffers above this size are released once empty, so one huge message does not pin memory.
const KEEP_CAPACITY: usize = 4 << 20;

/// Creates a connected pair of Unix stream sockets for a channel.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # References
/// - [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html)
pub fn socket_pair() -> io::Result<(SharedFd, SharedFd)> {
    let (a, b) = sys::stream_socketpair()?;
    Ok((SharedFd::new(a), SharedFd::new(b)))
}

/// Splits one socket into its sending and receiving halves, which share a single tokio
/// registration.
///
/// # Errors
/// When `fd` is not a socket.
pub fn split(fd: SharedFd) -> io::Result<(RawSender, RawReceiver)> {
    if !sys::is_socket(&fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "channel descriptor is not a socket",
        ));
    }
    let socket = Arc::new(Socket::new(fd));
    Ok((
        RawSender::with_socket(socket.clone()),
        RawReceiver::with_socket(socket),
    ))
}

/// Frames waiting to be written, with the descriptors that must ride along.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Descriptors to attach to the `sendmsg` that starts at the given offset of `buf`.
    attach: VecDeque<(usize, Vec<OwnedFd>)>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// One `sendmsg`: bytes up to the next descriptor attachment, with the attachment due here.
    fn write_once(&mut self, socket: BorrowedFd<'_>) -> io::Result<()> {
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
            sys::send_with_fds(socket, &self.buf[self.pos..end], &borrowed)?
        };
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
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        Ok(())
    }
}

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

    fn with_socket(socket: Arc<Socket>) -> Self {
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
            match self.outbox.write_once(self.socket.as_fd()) {
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
            match self.outbox.write_once(self.socket.as_fd()) {
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
            match self.outbox.write_once(self.socket.as_fd()) {
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

impl Drop for RawSender {
    fn drop(&mut self) {
        if self.outbox.is_empty() || self.closed {
            return;
        }
        // One non-blocking attempt first: the common case finishes here.
        while !self.outbox.is_empty() {
            if self.outbox.write_once(self.socket.as_fd()).is_err() {
                break;
            }
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut rest = RawSender {
            socket: self.socket.clone(),
            outbox: std::mem::take(&mut self.outbox),
            limit: self.limit,
            closed: false,
        };
        // The peer is slow: let a thread deliver the rest rather than lose accepted messages.
        let spawned = std::thread::Builder::new()
            .name("multiproc-flush".into())
            .spawn(move || {
                let _ = rest.blocking_flush(None);
            });
        drop(spawned);
    }
}

/// What the receive buffer holds at its front.
enum Parsed {
    /// A whole frame: payload range in the buffer and its descriptor count.
    Frame {
        start: usize,
        end: usize,
        fds: usize,
    },
    /// Need at least this many buffered bytes.
    NeedBytes(usize),
}

/// The receiving half of an untyped channel.
pub struct RawReceiver {
    socket: Arc<Socket>,
    /// Initialised storage; `buf[start..end]` holds unread bytes.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// Remaining bytes and descriptor count of a frame being skipped.
    skip: Option<(usize, usize)>,
    eof: bool,
    /// A fatal error was reported; from now on the end is at end-of-stream.
    dead: bool,
    limit: usize,
}

impl RawReceiver {
    /// A receiver reading from `fd`, which must be a stream socket.
    ///
    /// # Errors
    /// When `fd` is not a socket.
    pub fn new(fd: SharedFd) -> io::Result<Self> {
        Ok(split(fd)?.1)
    }

    fn with_socket(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            buf: Vec::new(),
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            skip: None,
            eof: false,
            dead: false,
            limit: DEFAULT_MAX_MESSAGE_SIZE,
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
    pub fn is_terminated(&self) -> bool {
        self.dead
    }

    fn fatal(&mut self, e: RecvError) -> RecvError {
        self.dead = true;
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.fds.clear();
        e
    }

    /// Looks at the buffered bytes: a whole frame, a skip in progress, or how much is missing.
    fn parse(&mut self) -> Result<Parsed, RecvError> {
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
            if len > self.limit {
                self.start += HEADER_LEN;
                self.skip = Some((len, fds));
                return Err(RecvError::TooLarge {
                    len,
                    limit: self.limit,
                });
            }
            if avail < HEADER_LEN + len {
                return Ok(Parsed::NeedBytes(HEADER_LEN + len));
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
            });
        }
    }

    /// Hands the frame to `f` and consumes it.
    fn take_frame<R>(
        &mut self,
        start: usize,
        end: usize,
        fds: usize,
        f: impl FnOnce(&[u8], Vec<OwnedFd>) -> R,
    ) -> R {
        let fds: Vec<OwnedFd> = self.fds.drain(..fds).collect();
        let out = f(&self.buf[start..end], fds);
        self.start = end;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        out
    }

    /// Makes room for a read that can complete a frame of `need` bytes.
    fn reserve(&mut self, need: usize) {
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
            if self.buf.len() < target {
                self.buf.resize(target, 0);
            }
        }
    }

    /// One `recvmsg`, `Err(WouldBlock)` when nothing is there.
    fn read_once(&mut self, need: usize) -> io::Result<ReadOutcome> {
        self.reserve(need);
        let room = self.buf.len() - self.end;
        let fds_before = self.fds.len();
        let got = sys::recv_with_fds(
            self.socket.as_fd(),
            &mut self.buf[self.end..],
            &mut self.fds,
        )?;
        if got.fds_truncated {
            return Err(io::Error::other(DescriptorsTruncated));
        }
        if got.bytes == 0 {
            self.eof = true;
        }
        self.end += got.bytes;
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
    fn at_eof(&mut self, need: usize) -> Result<Option<()>, RecvError> {
        let received = self.end - self.start;
        if received == 0 && self.skip.is_none() {
            self.dead = true;
            return Ok(None);
        }
        let expected = match self.skip {
            Some((remaining, _)) => remaining,
            None => need,
        };
        Err(self.fatal(RecvError::Truncated { received, expected }))
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
        loop {
            if self.dead {
                return Poll::Ready(Ok(None));
            }
            let need = match self.parse()? {
                Parsed::Frame { start, end, fds } => {
                    return Poll::Ready(Ok(Some(self.take_frame(start, end, fds, f))));
                }
                Parsed::NeedBytes(n) => n,
            };
            if self.eof {
                return Poll::Ready(self.at_eof(need).map(|_| None));
            }
            let socket = Arc::clone(&self.socket);
            let registered = match socket.readable() {
                Ok(r) => r,
                Err(e) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
            };
            let mut guard = match ready!(registered.poll_read_ready(cx)) {
                Ok(g) => g,
                Err(e) => return Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
            };
            match self.read_once(need) {
                // The read drained the socket: drop readiness now instead of paying a failing
                // recvmsg later (tokio keeps readiness from any newer edge).
                Ok(ReadOutcome { drained: true }) => guard.clear_ready(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(self.read_error(e))),
            }
        }
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
        loop {
            if self.dead {
                return Ok(TryRecv::Closed);
            }
            let need = match self.parse()? {
                Parsed::Frame { start, end, fds } => {
                    return Ok(TryRecv::Frame(self.take_frame(start, end, fds, f)));
                }
                Parsed::NeedBytes(n) => n,
            };
            if self.eof {
                return self.at_eof(need).map(|_| TryRecv::Closed);
            }
            // Keep reading while bytes come: a large frame may need several reads.
            match self.read_once(need) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TryRecv::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
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
        let mut f = Some(f);
        loop {
            match self
                .try_recv_with(|b, fds| (f.take().expect("frame handler used twice"))(b, fds))?
            {
                TryRecv::Empty => {}
                done => return Ok(done),
            }
            match sys::wait_ready(self.socket.as_fd(), Direction::Read, deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(TryRecv::Empty),
                Err(e) => return Err(self.fatal(RecvError::Io(e))),
            }
        }
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

/// Marker for the kernel dropping descriptors (`MSG_CTRUNC`).
#[derive(Debug)]
struct DescriptorsTruncated;

impl std::fmt::Display for DescriptorsTruncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kernel truncated the received descriptors")
    }
}

impl std::error::Error for DescriptorsTruncated {}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    /// A small deterministic generator, so a failure reproduces.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn valid_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Header {
            len: payload.len() as u32,
            fds: 0,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// Feeds streams of random bytes, valid frames, damaged frames and lying headers into a
    /// receiver: it must never panic or hang, and must end with end-of-stream.
    #[test]
    fn receiver_survives_arbitrary_byte_streams() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let (a, b) = socket_pair().unwrap();
            let (_, mut rx) = split(b).unwrap();
            rx.set_max_message_size(4096);
            let mut stream = Vec::new();
            for _ in 0..rng.below(8) {
                match rng.below(5) {
                    0 => stream.extend(valid_frame(&vec![
                        rng.next() as u8;
                        rng.below(100) as usize
                    ])),
                    1 => {
                        let len = rng.below(64) as usize;
                        stream.extend((0..len).map(|_| rng.next() as u8));
                    }
                    2 => {
                        let mut f = valid_frame(&[1, 2, 3, 4, 5]);
                        let cut = rng.below(f.len() as u64) as usize;
                        f.truncate(cut);
                        stream.extend(f);
                    }
                    3 => {
                        // A header announcing more descriptors than will ever come.
                        stream.extend(
                            Header {
                                len: 2,
                                fds: rng.below(10) as u32 + 1,
                            }
                            .encode(),
                        );
                        stream.extend([0, 0]);
                    }
                    _ => stream.extend(
                        Header {
                            len: 100_000,
                            fds: 0,
                        }
                        .encode(),
                    ),
                }
            }
            let mut writer = std::os::unix::net::UnixStream::from(a.try_clone_owned().unwrap());
            writer.set_nonblocking(false).unwrap();
            writer.write_all(&stream).unwrap();
            drop(writer);
            drop(a);
            let mut outcomes = 0;
            loop {
                let deadline = Some(Instant::now() + Duration::from_secs(5));
                match rx.blocking_recv_with(deadline, |bytes, fds| (bytes.len(), fds.len())) {
                    Ok(TryRecv::Frame(_)) | Err(_) => outcomes += 1,
                    Ok(TryRecv::Closed) => break,
                    Ok(TryRecv::Empty) => {
                        panic!("round {round}: receiver waited on a closed socket")
                    }
                }
                assert!(
                    outcomes < 10_000,
                    "round {round}: receiver does not make progress"
                );
            }
            assert!(rx.is_terminated());
        }
    }

    #[test]
    fn frames_round_trip_in_one_batch() {
        let (a, b) = socket_pair().unwrap();
        let (mut tx, _) = split(a).unwrap();
        let (_, mut rx) = split(b).unwrap();
        for i in 0..1000u32 {
            tx.push(|buf| {
                buf.extend_from_slice(&i.to_le_bytes()[..(i % 5) as usize]);
                Ok(Vec::new())
            })
            .unwrap();
        }
        assert!(tx.blocking_flush(None).unwrap());
        for i in 0..1000u32 {
            let got = rx
                .blocking_recv_with(None, |bytes, _| bytes.to_vec())
                .unwrap();
            match got {
                TryRecv::Frame(bytes) => assert_eq!(bytes, &i.to_le_bytes()[..(i % 5) as usize]),
                other => panic!("frame {i}: {other:?}"),
            }
        }
    }
}
