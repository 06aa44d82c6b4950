//! The untyped channel: frames of bytes plus descriptors over a Unix stream socket.
//!
//! [`RawSender`] batches frames in a buffer and writes them with as few `sendmsg` calls as the
//! descriptors allow; [`RawReceiver`] reads large chunks and hands out whole frames. Both have an
//! async face (tokio readiness) and a blocking face (`poll(2)`), over the same state, so an end
//! can be used from either kind of code. For bulk bytes, [`RawSender::send_bytes`] writes a frame
//! from the caller's slice and [`RawReceiver::poll_recv_bytes`] reads a large frame into a `Vec`
//! of its own, so neither copies the payload in user space.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use crate::SharedFd;
use crate::error::{EncodeError, RecvError, SendErrorKind};
use crate::sys::{self, Direction, MAX_FDS_PER_SENDMSG};
use crate::transport::frame::{HEADER_LEN, Header};
use crate::transport::socket::Socket;
use crate::wait::spin::{self, SpinPolicy, Spun};

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
    fn write_once(&mut self, socket: &Socket) -> io::Result<()> {
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

impl RawSender {
    /// Checks that a frame of `len` payload bytes may be sent; its header.
    fn bytes_header(&self, len: usize) -> Result<[u8; HEADER_LEN], SendErrorKind> {
        if self.closed {
            return Err(SendErrorKind::Closed);
        }
        if len > self.limit {
            return Err(SendErrorKind::TooLarge {
                len,
                limit: self.limit,
            });
        }
        Ok(Header {
            len: len as u32,
            fds: 0,
        }
        .encode())
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

    /// Buffers what a direct write did not get to, to go out with the next flush (or from the
    /// background thread when the sender is dropped): the frame is never torn.
    fn buffer_rest(&mut self, header: &[u8; HEADER_LEN], bytes: &[u8], written: usize) {
        if written < HEADER_LEN {
            self.outbox.buf.extend_from_slice(&header[written..]);
            self.outbox.buf.extend_from_slice(bytes);
        } else {
            self.outbox
                .buf
                .extend_from_slice(&bytes[written - HEADER_LEN..]);
        }
    }

    /// Sends one frame whose payload is `bytes`, written from `bytes` itself: buffered frames
    /// first, then one `sendmsg` of the header and the slice (more while the socket is full).
    /// The bytes are never copied into the buffer, unless the future is dropped part-way.
    ///
    /// The frame is an ordinary frame without descriptors; the receiver may take it with
    /// [`RawReceiver::poll_recv_bytes`] or any other receive.
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
        let header = self.bytes_header(bytes.len())?;
        if !self.blocking_flush(deadline)? {
            self.buffer_rest(&header, bytes, 0);
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
                            self.buffer_rest(&header, bytes, written);
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
            SendBytesState::New => match this.sender.bytes_header(this.bytes.len()) {
                Ok(header) => {
                    this.header = header;
                    this.state = SendBytesState::Accepted;
                }
                Err(e) => {
                    this.state = SendBytesState::Done;
                    return Poll::Ready(Err(e));
                }
            },
            SendBytesState::Accepted => {}
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
            self.sender
                .buffer_rest(&self.header, self.bytes, self.written);
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
            if self.outbox.write_once(&self.socket).is_err() {
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
    /// The header of a frame whose payload has not all arrived.
    Incomplete { len: usize, fds: usize },
    /// Need at least this many buffered bytes.
    NeedBytes(usize),
}

/// A frame read straight into a buffer of its own ([`RawReceiver::poll_recv_bytes`]), so that
/// its bytes are never copied in user space.
struct DirectFrame {
    /// The bytes received so far; the capacity is exactly the frame's payload length, so a
    /// read into the spare capacity never reads past the frame (and needs no zero-filling).
    payload: Vec<u8>,
    len: usize,
    fds: usize,
}

/// A whole frame, ready to hand out.
enum Whole {
    /// In the receive buffer.
    Buffered {
        start: usize,
        end: usize,
        fds: usize,
    },
    /// In a buffer of its own.
    Direct(DirectFrame),
}

/// What the receiver does next.
enum Next {
    /// Hand out this frame.
    Whole(Whole),
    /// Read into the receive buffer until it holds this many bytes.
    Fill(usize),
    /// Read into the direct frame.
    FillDirect,
}

/// The payload of a received frame, borrowed from the receive buffer or in its own buffer.
pub enum Payload<'a> {
    /// In the receive buffer.
    Borrowed(&'a [u8]),
    /// Read into its own buffer (large frames received with `*_recv_bytes`).
    Owned(Vec<u8>),
}

impl Payload<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }

    /// The bytes in a `Vec` of their own (copied only when borrowed).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Borrowed(b) => b.to_vec(),
            Payload::Owned(v) => v,
        }
    }
}

/// Frames with a payload above this size that have not all arrived yet are read into a buffer
/// of their own by the `*_recv_bytes` methods.
const DIRECT_MIN: usize = READ_CHUNK;

/// The receiving half of an untyped channel.
///
/// # Waiting
/// A receive that finds nothing parks (tokio's reactor, or `poll(2)` on the blocking path),
/// except when an answer is due: if the socket sent something since data last arrived, the
/// receiver first yields the CPU and retries the socket for up to 50 us, which spares a sleep
/// and a wake-up when the peer answers within that time. The spinning adapts: it backs off per
/// receiver while it finds nothing, and stops for the whole process while the CPU is busy with
/// other processes. So a receive may hold its thread (and, on tokio, the thread's other tasks)
/// for up to about 50 us plus one yield; see `docs/ARCHITECTURE.md`.
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
    direct: Option<DirectFrame>,
    eof: bool,
    /// A fatal error was reported; from now on the end is at end-of-stream.
    dead: bool,
    limit: usize,
    /// Whether waits spin before they park.
    spin: SpinPolicy,
    /// The wait in progress, if any: it lasts until a read returns something.
    waiting: Waiting,
}

/// Where a receiver is in a wait for data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
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

    fn with_socket(socket: Arc<Socket>) -> Self {
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
        self.direct = None;
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
                return Ok(Parsed::Incomplete { len, fds });
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

    /// What to do next: hand out a whole frame, or which read makes progress. With
    /// `direct_large`, a large frame that has not all arrived moves to a buffer of its own.
    fn next(&mut self, direct_large: bool) -> Result<Next, RecvError> {
        if let Some(direct) = &self.direct {
            if direct.payload.len() < direct.len {
                return Ok(Next::FillDirect);
            }
            let direct = self.direct.take().expect("checked above");
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
            Parsed::Frame { start, end, fds } => {
                Ok(Next::Whole(Whole::Buffered { start, end, fds }))
            }
            // Descriptors come with the frame's first bytes (read by now) unless there are more
            // than one `sendmsg` carries; the rest of the frame can then be read with `recv`.
            Parsed::Incomplete { len, fds }
                if direct_large
                    && len > DIRECT_MIN
                    && fds <= MAX_FDS_PER_SENDMSG
                    && self.fds.len() >= fds =>
            {
                let mut payload = Vec::with_capacity(len);
                if payload.capacity() != len {
                    // `Vec` promises an exact capacity; without it, read the usual way.
                    return Ok(Next::Fill(HEADER_LEN + len));
                }
                // Nothing after this frame is buffered (it is incomplete): move what arrived
                // of it to its own buffer, and read the rest straight there.
                payload.extend_from_slice(&self.buf[self.start + HEADER_LEN..self.end]);
                self.direct = Some(DirectFrame { payload, len, fds });
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

    /// Hands the frame to `f` and consumes it.
    fn deliver<R>(&mut self, whole: Whole, f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R) -> R {
        match whole {
            Whole::Buffered { start, end, fds } => {
                let fds: Vec<OwnedFd> = self.fds.drain(..fds).collect();
                let out = f(Payload::Borrowed(&self.buf[start..end]), fds);
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
            Whole::Direct(direct) => {
                let fds: Vec<OwnedFd> = self.fds.drain(..direct.fds).collect();
                f(Payload::Owned(direct.payload), fds)
            }
        }
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

    /// One `recvmsg` for `next` (a [`Next::Fill`] or [`Next::FillDirect`]), `Err(WouldBlock)`
    /// when nothing is there.
    fn read_once(&mut self, next: &Next) -> io::Result<ReadOutcome> {
        let fds_before = self.fds.len();
        let (got, room) = match (next, self.direct.as_mut()) {
            (Next::FillDirect, Some(direct)) => {
                let room = direct.len - direct.payload.len();
                let got = sys::recv_into_spare(self.socket.as_fd(), &mut direct.payload)?;
                (got, room)
            }
            (Next::Fill(need), _) => {
                self.reserve(*need);
                let room = self.buf.len() - self.end;
                let got = sys::recv_with_fds(
                    self.socket.as_fd(),
                    &mut self.buf[self.end..],
                    &mut self.fds,
                )?;
                self.end += got.bytes;
                (got, room)
            }
            _ => unreachable!("a read is only asked for to fill a frame"),
        };
        if got.fds_truncated {
            return Err(io::Error::other(DescriptorsTruncated));
        }
        if got.bytes == 0 {
            self.eof = true;
        }
        if let Waiting::Timed(since) = std::mem::replace(&mut self.waiting, Waiting::No) {
            self.spin.parked(since.elapsed());
        }
        // Whatever was sent before has had its answer, if it wanted one.
        self.socket.clear_sent();
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
            let (received, expected) = (HEADER_LEN + direct.payload.len(), HEADER_LEN + direct.len);
            return Err(self.fatal(RecvError::Truncated { received, expected }));
        }
        let received = self.end - self.start;
        if received == 0 && self.skip.is_none() {
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

    fn poll_recv_inner<R>(
        &mut self,
        cx: &mut Context<'_>,
        direct_large: bool,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Poll<Result<Option<R>, RecvError>> {
        loop {
            if self.dead {
                return Poll::Ready(Ok(None));
            }
            let next = match self.next(direct_large)? {
                Next::Whole(whole) => return Poll::Ready(Ok(Some(self.deliver(whole, f)))),
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
                    Ok(false) => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                },
            };
            match self.read_once(&next) {
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

    /// Whether a wait for data that begins now may spin.
    ///
    /// Spinning pays when an answer is due soon, so a receiver spins only if its socket sent
    /// something since data last arrived and since the previous wait began (a request, or the
    /// reply that lets the peer send its next request); then the spin policy decides. A wait
    /// that follows no such send (a consumer waiting on a stream, a pool driver idle between
    /// jobs that another task must hand it) parks at once and does not count for the policy.
    fn answer_due(&mut self) -> bool {
        let due = self.socket.take_sent();
        if !due {
            self.waiting = Waiting::Untimed;
        }
        due
    }

    /// Spins for data at the start of a wait, by the one rule for async waits
    /// ([`spin::poll_spin`]), if an [answer is due](Self::answer_due): yields the CPU (which
    /// runs the peer when it shares this CPU) and tries the socket, until something arrives or
    /// the policy's budget is spent. `Ok(true)` when a read returned something. Spins at most
    /// once per wait.
    fn poll_spin(&mut self, cx: &mut Context<'_>, next: &Next) -> Result<bool, RecvError> {
        if self.waiting != Waiting::No {
            // Woken in the middle of a wait that already spun or chose to park.
            return Ok(false);
        }
        if !self.answer_due() {
            return Ok(false);
        }
        let mut policy = std::mem::take(&mut self.spin);
        let spun = spin::poll_spin(cx, &mut policy, None, None, || match self.read_once(next) {
            Ok(_) => Some(Ok(())),
            Err(e) if nothing_yet(&e) => None,
            Err(e) => Some(Err(self.read_error(e))),
        });
        self.spin = policy;
        match spun {
            // Out of cooperative budget: the task yields first (tokio wakes it), and the wait
            // has not begun.
            Poll::Pending => {
                self.socket.note_sent();
                Ok(false)
            }
            Poll::Ready(spun) => self.caught(spun),
        }
    }

    /// Whether a spin caught something; if not, the wait parks from now on (timed for the
    /// policy when it chose not to spin).
    fn caught(&mut self, spun: Spun<Result<(), RecvError>>) -> Result<bool, RecvError> {
        match spun {
            Spun::Caught(r) => r.map(|()| true),
            Spun::Park(since) => {
                self.waiting = since.map_or(Waiting::Untimed, Waiting::Timed);
                Ok(false)
            }
        }
    }

    fn try_recv_inner<R>(
        &mut self,
        direct_large: bool,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        loop {
            if self.dead {
                return Ok(TryRecv::Closed);
            }
            let next = match self.next(direct_large)? {
                Next::Whole(whole) => return Ok(TryRecv::Frame(self.deliver(whole, f))),
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
        direct_large: bool,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        let mut f = Some(f);
        let mut out = None;
        loop {
            let mut attempt = |rx: &mut Self| {
                let once = |payload: Payload<'_>, fds| {
                    (f.take().expect("frame handler used twice"))(payload, fds)
                };
                match rx.try_recv_inner(direct_large, once)? {
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
                let spun = spin::spin(&mut policy, deadline, None, || {
                    attempt(self).map(|caught| caught.then_some(())).transpose()
                });
                self.spin = policy;
                if self.caught(spun)? {
                    break;
                }
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
        self.poll_recv_inner(cx, false, |payload, fds| f(payload.as_slice(), fds))
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
        self.try_recv_inner(false, |payload, fds| f(payload.as_slice(), fds))
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
        match self.next(false)? {
            Next::Whole(whole) => Ok(Some(self.deliver(whole, |p, fds| f(p.as_slice(), fds)))),
            Next::Fill(_) | Next::FillDirect => Ok(None),
        }
    }

    /// Blocks the thread until the socket has bytes to read or the peer closed, without
    /// reading; `Ok(false)` once `deadline` passes. Frames already in the receive buffer do not
    /// count: take them first ([`try_recv_buffered_with`](Self::try_recv_buffered_with)).
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
        self.blocking_recv_inner(deadline, false, |payload, fds| f(payload.as_slice(), fds))
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
        self.poll_recv_inner(cx, true, f)
    }

    /// [`poll_recv_bytes`](Self::poll_recv_bytes) without waiting, as
    /// [`try_recv_with`](Self::try_recv_with).
    ///
    /// # Errors
    /// As [`poll_recv_with`](Self::poll_recv_with).
    pub fn try_recv_bytes<R>(
        &mut self,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<TryRecv<R>, RecvError> {
        self.try_recv_inner(true, f)
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
        self.blocking_recv_inner(deadline, true, f)
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::wait::spin::{CpuContention, SpinOutcome};

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

    /// Feeds streams of random bytes, valid frames (some large enough to be read into a buffer
    /// of their own), damaged frames and lying headers into a receiver that receives with the
    /// typed and the bytes methods at random: it must never panic or hang, and must end with
    /// end-of-stream.
    #[test]
    fn receiver_survives_arbitrary_byte_streams() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let (a, b) = socket_pair().unwrap();
            let (_, mut rx) = split(b).unwrap();
            rx.set_max_message_size(if round % 2 == 0 { 4096 } else { 1 << 20 });
            let mut stream = Vec::new();
            for _ in 0..rng.below(8) {
                match rng.below(7) {
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
                    4 => {
                        // Above `DIRECT_MIN`: the bytes methods read it into its own buffer.
                        let len = DIRECT_MIN + 1 + rng.below(100_000) as usize;
                        stream.extend(valid_frame(&vec![rng.next() as u8; len]));
                    }
                    5 => {
                        // The same, cut short.
                        let len = DIRECT_MIN + 1 + rng.below(100_000) as usize;
                        let mut f = valid_frame(&vec![rng.next() as u8; len]);
                        f.truncate(HEADER_LEN + rng.below(len as u64) as usize);
                        stream.extend(f);
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
            drop(a);
            writer.set_nonblocking(false).unwrap();
            // Large frames do not fit in the socket: write from a thread while receiving.
            let writing = std::thread::spawn(move || {
                let _ = writer.write_all(&stream);
            });
            let mut outcomes = 0;
            loop {
                let deadline = Some(Instant::now() + Duration::from_secs(5));
                let got = if rng.below(2) == 0 {
                    rx.blocking_recv_with(deadline, |bytes, fds| (bytes.len(), fds.len()))
                } else {
                    rx.blocking_recv_bytes(deadline, |payload, fds| {
                        (payload.as_slice().len(), fds.len())
                    })
                };
                match got {
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
            // A writer blocked on a full socket fails once the receiver is gone.
            drop(rx);
            writing.join().unwrap();
        }
    }

    /// Frames of every size, buffered or sent with `send_bytes`, arrive whole and in order,
    /// whichever method receives them.
    #[test]
    fn bytes_and_buffered_frames_interleave_in_order() {
        let sizes = [0, 1, 100, DIRECT_MIN, DIRECT_MIN + 1, 300_000, 3 << 20];
        let messages: Vec<Vec<u8>> = (0..42)
            .map(|i| {
                let len = sizes[i % sizes.len()];
                (0..len).map(|j| (i * 31 + j) as u8).collect()
            })
            .collect();
        let expected = messages.clone();
        let (a, b) = socket_pair().unwrap();
        let (mut tx, _) = split(a).unwrap();
        let (_, mut rx) = split(b).unwrap();
        let sending = std::thread::spawn(move || {
            for (i, m) in messages.iter().enumerate() {
                if i % 3 == 0 {
                    // Left in the buffer now and then: `send_bytes` must write it first.
                    tx.push(|buf| {
                        buf.extend_from_slice(m);
                        Ok(Vec::new())
                    })
                    .unwrap();
                    if i % 2 == 0 {
                        assert!(tx.blocking_flush(None).unwrap());
                    }
                } else {
                    assert!(tx.blocking_send_bytes(m, None).unwrap());
                }
            }
            assert!(tx.blocking_flush(None).unwrap());
        });
        for (i, m) in expected.iter().enumerate() {
            let got = if i % 2 == 0 {
                rx.blocking_recv_bytes(None, |payload, _| payload.into_vec())
            } else {
                rx.blocking_recv_with(None, |bytes, _| bytes.to_vec())
            };
            match got.unwrap() {
                TryRecv::Frame(bytes) => assert!(bytes == *m, "message {i} differs"),
                other => panic!("message {i}: {other:?}"),
            }
        }
        sending.join().unwrap();
        match rx.blocking_recv_bytes(None, |payload, _| payload.into_vec()) {
            Ok(TryRecv::Closed) => {}
            other => panic!("expected end-of-stream, got {other:?}"),
        }
    }

    /// A `send_bytes` dropped part-way buffers the rest of its frame (one never polled sends
    /// nothing); a `recv_bytes` dropped part-way is finished by the next receive, of any kind.
    #[test]
    fn cancelled_bytes_transfers_lose_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = socket_pair().unwrap();
            let (mut tx, _) = split(a).unwrap();
            let (_, mut rx) = split(b).unwrap();
            let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253) as u8).collect();

            drop(tx.send_bytes(&big));
            assert_eq!(tx.buffered(), 0, "a send never polled sent something");
            // The socket holds about 1 MiB: one poll writes part of the frame.
            assert!(futures::FutureExt::now_or_never(tx.send_bytes(&big)).is_none());
            let rest = tx.buffered();
            assert!(rest > 0 && rest < big.len(), "{rest} bytes buffered");

            // Reads what the socket holds, then waits for the rest, which never comes: cancel.
            let receiving =
                std::future::poll_fn(|cx| rx.poll_recv_bytes(cx, |payload, _| payload.into_vec()));
            let waited = tokio::time::timeout(Duration::from_millis(200), receiving).await;
            assert!(waited.is_err(), "received a frame that was not all sent");
            assert!(
                rx.direct.is_some(),
                "a large frame is read into its own buffer"
            );

            let flushing = std::thread::spawn(move || {
                assert!(tx.blocking_flush(None).unwrap());
                assert!(tx.blocking_send_bytes(b"after", None).unwrap());
            });
            let got = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |bytes, _| bytes.to_vec()))
                .await
                .unwrap()
                .unwrap();
            assert!(got == big, "the cancelled frames arrived damaged");
            let after =
                std::future::poll_fn(|cx| rx.poll_recv_bytes(cx, |payload, _| payload.into_vec()))
                    .await
                    .unwrap();
            assert_eq!(after.as_deref(), Some(&b"after"[..]));
            flushing.join().unwrap();
        });
    }

    /// `try_recv_buffered_with` hands out only frames already read, never touching the socket;
    /// `blocking_wait` reports bytes in the socket (or its end) without reading them.
    #[test]
    fn buffered_receive_and_wait_do_not_read() {
        let (a, b) = socket_pair().unwrap();
        let (mut tx, _) = split(a).unwrap();
        let (_, mut rx) = split(b).unwrap();
        let short = Some(Instant::now() + Duration::from_millis(20));
        assert!(
            !rx.blocking_wait(short).unwrap(),
            "an empty socket is not readable"
        );
        for i in 0..3u8 {
            tx.push(|buf| {
                buf.push(i);
                Ok(Vec::new())
            })
            .unwrap();
        }
        assert!(tx.blocking_flush(None).unwrap());
        // In the socket, not in the buffer: nothing to hand out without a read.
        assert!(
            rx.try_recv_buffered_with(|b, _| b.to_vec())
                .unwrap()
                .is_none()
        );
        assert!(rx.blocking_wait(None).unwrap());
        // One read takes all three frames; the other two come from the buffer.
        let first = rx.try_recv_with(|b, _| b.to_vec()).unwrap();
        assert!(
            matches!(first, TryRecv::Frame(ref b) if b == &[0]),
            "{first:?}"
        );
        assert!(
            !rx.blocking_wait(short).unwrap(),
            "the read took every byte"
        );
        for i in 1..3u8 {
            let got = rx.try_recv_buffered_with(|b, _| b.to_vec()).unwrap();
            assert_eq!(got, Some(vec![i]));
        }
        assert!(
            rx.try_recv_buffered_with(|b, _| b.to_vec())
                .unwrap()
                .is_none()
        );
        // The peer's end counts as readable.
        drop(tx);
        assert!(rx.blocking_wait(None).unwrap());
        assert!(matches!(
            rx.try_recv_with(|b, _| b.len()),
            Ok(TryRecv::Closed)
        ));
    }

    fn send_frame(tx: &mut RawSender, payload: &[u8]) {
        tx.push(|buf| {
            buf.extend_from_slice(payload);
            Ok(Vec::new())
        })
        .unwrap();
        assert!(tx.blocking_flush(None).unwrap());
    }

    fn poll_once(rx: &mut RawReceiver) -> Poll<Result<Option<Vec<u8>>, RecvError>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        rx.poll_recv_with(&mut cx, |bytes, _| bytes.to_vec())
    }

    /// Receives one frame on the runtime (the reactor runs while it waits), or panics.
    async fn recv_frame(rx: &mut RawReceiver) -> Vec<u8> {
        let receiving = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |bytes, _| bytes.to_vec()));
        tokio::time::timeout(Duration::from_secs(10), receiving)
            .await
            .expect("no frame within 10 s")
            .unwrap()
            .expect("end-of-stream instead of a frame")
    }

    /// A receiver spins only while an answer to something its socket sent may be on the way:
    /// not before anything was sent, not after the answer came; and a spin that finds nothing
    /// counts as a failure for the policy.
    #[test]
    fn receivers_spin_only_when_an_answer_is_due() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = socket_pair().unwrap();
            let (mut tx_a, mut rx_a) = split(a).unwrap();
            let (mut tx_b, _rx_b) = split(b).unwrap();

            // Nothing sent: park at once, the policy untouched.
            assert!(poll_once(&mut rx_a).is_pending());
            assert_eq!(rx_a.waiting, Waiting::Untimed);
            assert_eq!(rx_a.spin.misses(), 0);

            // A request goes out, but the wait in progress already chose to park.
            send_frame(&mut tx_a, b"request");
            assert!(poll_once(&mut rx_a).is_pending());
            assert_eq!(rx_a.spin.misses(), 0);

            // The answer ends that wait; a wait after the answer does not spin either.
            send_frame(&mut tx_b, b"answer");
            assert_eq!(recv_frame(&mut rx_a).await, b"answer");
            assert!(poll_once(&mut rx_a).is_pending());
            assert_eq!(rx_a.spin.misses(), 0);

            // A new request, then a wait: it spins, and nothing comes. (Unless other processes
            // keep this CPU busy: then a step is slow, or spinning is off for a while.)
            send_frame(&mut tx_b, b"notice");
            assert_eq!(recv_frame(&mut rx_a).await, b"notice");
            send_frame(&mut tx_a, b"request");
            let cooling = CpuContention::global().cooling(Instant::now());
            assert!(poll_once(&mut rx_a).is_pending());
            match rx_a.spin.last() {
                Some(SpinOutcome::Missed) => {
                    assert_eq!(rx_a.waiting, Waiting::Untimed);
                    assert_eq!(rx_a.spin.misses(), 1);
                    assert!(!rx_a.spin.spins_next(), "a missed spin backs off");
                }
                Some(SpinOutcome::Contended) => assert_eq!(rx_a.waiting, Waiting::Untimed),
                None => assert!(cooling, "the wait neither spun nor found the CPU busy"),
                Some(SpinOutcome::Caught(_)) => panic!("caught data nobody sent"),
            }
            let misses = rx_a.spin.misses();
            // Being polled again in the same wait does not spin again.
            assert!(poll_once(&mut rx_a).is_pending());
            assert_eq!(rx_a.spin.misses(), misses);

            // The data that arrives while parked is delivered as usual.
            send_frame(&mut tx_b, b"late");
            assert_eq!(recv_frame(&mut rx_a).await, b"late");
        });
    }

    /// A blocking receive never spins past its deadline: with the deadline already gone it
    /// returns at once, without counting a failed spin.
    #[test]
    fn blocking_spins_stop_at_the_deadline() {
        let (a, _b) = socket_pair().unwrap();
        let (mut tx, mut rx) = split(a).unwrap();
        send_frame(&mut tx, b"request");
        let got = rx
            .blocking_recv_with(Some(Instant::now()), |bytes, _| bytes.to_vec())
            .unwrap();
        assert!(matches!(got, TryRecv::Empty), "{got:?}");
        assert_eq!(rx.spin.misses(), 0);
    }

    /// Answers and end-of-stream reach a receiver that spins for them, blocking or async.
    #[test]
    fn spinning_receivers_get_answers_and_end_of_stream() {
        let (a, b) = socket_pair().unwrap();
        let (mut tx_a, mut rx_a) = split(a).unwrap();
        let (mut tx_b, mut rx_b) = split(b).unwrap();
        let echo = std::thread::spawn(move || {
            let deadline = Some(Instant::now() + Duration::from_secs(10));
            for i in 0..=200 {
                match rx_b.blocking_recv_with(deadline, |bytes, _| bytes.to_vec()) {
                    Ok(TryRecv::Frame(bytes)) if i < 200 => send_frame(&mut tx_b, &bytes),
                    // The last request is not answered: closing both directions is.
                    Ok(TryRecv::Frame(_)) => {}
                    other => panic!("echo: {other:?}"),
                }
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..200u32 {
                send_frame(&mut tx_a, &i.to_le_bytes());
                let got = if i % 2 == 0 {
                    let deadline = Some(Instant::now() + Duration::from_secs(10));
                    match rx_a.blocking_recv_with(deadline, |bytes, _| bytes.to_vec()) {
                        Ok(TryRecv::Frame(bytes)) => bytes,
                        other => panic!("answer {i}: {other:?}"),
                    }
                } else {
                    recv_frame(&mut rx_a).await
                };
                assert_eq!(got, i.to_le_bytes());
            }
            // A last request that is never answered: the peer closes instead.
            send_frame(&mut tx_a, b"unanswered");
            let receiving =
                std::future::poll_fn(|cx| rx_a.poll_recv_with(cx, |bytes, _| bytes.to_vec()));
            let end = tokio::time::timeout(Duration::from_secs(10), receiving)
                .await
                .expect("end-of-stream never came");
            assert!(matches!(end, Ok(None)), "{end:?}");
        });
        echo.join().unwrap();
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
