//! Messages on a byte stream (TCP, TLS, or a Unix socket speaking Python's protocol): Python's
//! framing ([`crate::wire`]) with a receive buffer and a send buffer, poll-based so that every
//! operation is cancel safe (all progress lives here, not in a future).
//!
//! The grading of errors follows the Unix channel's: a frame over the size limit is skipped
//! (the stream stays usable), a negative length means the bytes are not frames (fatal), a
//! peer gone mid-frame is a truncated frame (fatal). A TLS peer that ends the stream without
//! its close alert is treated as one that closed: only a cut inside a frame is an error.
//!
//! The receive buffer grows with the bytes that arrive, not with what a header announces: a
//! peer that announces a 64 MiB frame and sends nothing more costs one read chunk.
//!
//! Bytes a cancelled send left buffered are written by the next receive as well (and by the
//! next send or flush): a request cancelled by a timeout in `select!` followed by a wait for the
//! answer does not hang. Closing (or dropping) shuts the stream down, which over TLS sends the
//! close alert the peer needs to see a clean end; a dropped end first finishes writing what a
//! cancelled send accepted, on a task of its own (see `Drop`), so no accepted message is lost.
//!
//! **Spinning before parking**, as the Unix pipe's receiver does (core `wait::spin`, the one
//! policy): a receive that finds nothing on a plain socket (TCP, or a Unix socket speaking
//! Python's protocol), when this end has sent something since data last arrived (a request
//! whose answer may be on its way), keeps trying a non-blocking `recv` for up to the policy's
//! budget, yielding the CPU between tries, before it parks in tokio's reactor. An answer that
//! comes within microseconds is then read without a sleep and a wake-up (the cost of a parked
//! round trip over TCP); the policy makes a receiver whose spins miss park at once for its next
//! waits, and stops spinning in the whole process while the CPU is contended, so an idle or
//! slow peer costs no core. Reading past tokio is safe: its readiness is left as it was, so a
//! later read at worst finds nothing once and parks. TLS streams park at once (their bytes
//! must go through rustls).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use multiproc_core::error::{RecvError, SendErrorKind};
use multiproc_core::message::DEFAULT_MAX_MESSAGE_SIZE;
use multiproc_core::transport::endpoint::recv_now;
use multiproc_core::wait::spin::{self, SpinPolicy, Spun};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::wire::{self, Prefix};

/// A byte stream a connection can run on.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> ByteStream for T {}

/// A boxed byte stream: TCP, TLS over TCP, or a Unix stream.
pub(crate) type BoxStream = Box<dyn ByteStream>;

/// What a [`FramedIo`] runs on: a plain socket (which a receive may read directly while it
/// spins) or any other byte stream.
pub(crate) enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
    Other(BoxStream),
}

impl Io {
    fn stream(&mut self) -> Pin<&mut dyn ByteStream> {
        match self {
            Io::Tcp(s) => Pin::new(s),
            Io::Unix(s) => Pin::new(s),
            Io::Other(s) => Pin::new(&mut **s),
        }
    }

    /// The socket to read directly while spinning, for a plain socket.
    fn socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match self {
            Io::Tcp(s) => Some(s.as_fd()),
            Io::Unix(s) => Some(s.as_fd()),
            Io::Other(_) => None,
        }
    }
}

const READ_CHUNK: usize = 64 << 10;
/// Buffers above this size are released once empty.
const KEEP_CAPACITY: usize = 4 << 20;
/// How long a dropped end may go on writing what it had accepted (see `Drop`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Framed messages over a [`BoxStream`].
pub(crate) struct FramedIo {
    io: Io,
    /// `rbuf[start..end]` holds unread bytes (the rest is initialised spare room).
    rbuf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of an oversized frame still to be skipped.
    skip: u64,
    eof: bool,
    dead: bool,
    /// The stream was shut down (close alert sent over TLS).
    shut: bool,
    limit: usize,
    /// `wbuf[wpos..]` is still to be written.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Bytes were written since data last arrived: an answer may be on its way (a receive
    /// that finds nothing spins first).
    answer_due: bool,
    spin: SpinPolicy,
    /// When the policy chose to park at once: reported to it when data comes.
    parked_since: Option<Instant>,
    /// The remains of a dropped end, finishing its writes: dropped in turn, it gives up.
    lingering: bool,
}

/// What the receive buffer holds at its front.
enum Front {
    /// A whole frame's payload.
    Frame(usize, usize),
    /// Need this many buffered bytes.
    Need(usize),
}

impl FramedIo {
    pub(crate) fn new(io: BoxStream) -> FramedIo {
        FramedIo::from_io(Io::Other(io))
    }

    pub(crate) fn from_io(io: Io) -> FramedIo {
        FramedIo {
            io,
            rbuf: Vec::new(),
            start: 0,
            end: 0,
            skip: 0,
            eof: false,
            dead: false,
            shut: false,
            limit: DEFAULT_MAX_MESSAGE_SIZE,
            wbuf: Vec::new(),
            wpos: 0,
            answer_due: false,
            spin: SpinPolicy::new(),
            parked_since: None,
            lingering: false,
        }
    }

    pub(crate) fn max_message_size(&self) -> usize {
        self.limit
    }

    pub(crate) fn set_max_message_size(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn fatal(&mut self, e: RecvError) -> RecvError {
        self.dead = true;
        self.rbuf = Vec::new();
        self.start = 0;
        self.end = 0;
        e
    }

    fn front(&mut self) -> Result<Front, RecvError> {
        loop {
            let avail = self.end - self.start;
            if self.skip > 0 {
                let n = self.skip.min(avail as u64) as usize;
                self.start += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    return Ok(Front::Need(1));
                }
                continue;
            }
            if avail < 4 {
                return Ok(Front::Need(4));
            }
            let first: [u8; 4] = self.rbuf[self.start..self.start + 4]
                .try_into()
                .expect("four bytes");
            let (head, len) = match wire::prefix(first) {
                Ok(Prefix::Len(n)) => (4, n),
                Ok(Prefix::Extended) if avail < 12 => return Ok(Front::Need(12)),
                Ok(Prefix::Extended) => {
                    let long: [u8; 8] = self.rbuf[self.start + 4..self.start + 12]
                        .try_into()
                        .expect("eight bytes");
                    (12, u64::from_be_bytes(long))
                }
                Err(reason) => return Err(self.fatal(RecvError::Corrupt { reason })),
            };
            if len > self.limit as u64 {
                self.start += head;
                self.skip = len;
                return Err(RecvError::TooLarge {
                    len: usize::try_from(len).unwrap_or(usize::MAX),
                    limit: self.limit,
                });
            }
            let len = len as usize;
            if avail < head + len {
                return Ok(Front::Need(head + len));
            }
            let start = self.start + head;
            return Ok(Front::Frame(start, start + len));
        }
    }

    /// Makes room for a useful read towards `need` buffered bytes. The buffer grows with what
    /// has arrived (at most doubling the buffered bytes per step), never straight to a size
    /// announced by a header: memory is committed only for bytes the peer really sent.
    fn reserve(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let buffered = self.end - self.start;
        let want = need
            .min(buffered.saturating_mul(2).max(READ_CHUNK))
            .max(READ_CHUNK);
        if self.rbuf.len() - self.start < want || self.rbuf.len() - self.end < READ_CHUNK / 4 {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let target = want.max(self.end + READ_CHUNK);
            if self.rbuf.len() < target {
                self.rbuf.resize(target, 0);
            }
        }
    }

    /// Reads once; `Ready(Ok(()))` after progress (or end-of-file). When nothing is there and
    /// an answer is due, spins first (see the module docs).
    fn poll_fill(&mut self, cx: &mut Context<'_>, need: usize) -> Poll<Result<(), RecvError>> {
        self.reserve(need);
        let mut buf = ReadBuf::new(&mut self.rbuf[self.end..]);
        let read = match self.io.stream().poll_read(cx, &mut buf) {
            Poll::Ready(r) => r.map(|()| buf.filled().len()),
            Poll::Pending => ready!(self.poll_spin(cx)),
        };
        match read {
            Ok(n) => {
                if n == 0 {
                    self.eof = true;
                } else {
                    self.answer_due = false;
                    if let Some(since) = self.parked_since.take() {
                        self.spin.parked(since.elapsed());
                    }
                }
                self.end += n;
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Poll::Ready(Ok(())),
            // `UnexpectedEof`: a TLS peer gone without its close alert. At a frame boundary
            // that is an end like any other; inside a frame `at_eof` reports the truncation.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                self.eof = true;
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(self.fatal(RecvError::Io(e)))),
        }
    }

    /// Nothing to read (tokio has registered the waker): on a plain socket with an answer
    /// due, tries `recv` directly as the spin policy says; `Pending` to park.
    fn poll_spin(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if !self.answer_due {
            return Poll::Pending;
        }
        let Some(socket) = self.io.socket() else {
            return Poll::Pending;
        };
        let spare = &mut self.rbuf[self.end..];
        let spun = ready!(spin::poll_spin(cx, &mut self.spin, None, None, || {
            recv_now(socket, spare).transpose()
        }));
        match spun {
            Spun::Caught(read) => Poll::Ready(read),
            Spun::Park(since) => {
                // One spin per wait: until data comes, further polls park at once.
                self.answer_due = false;
                self.parked_since = since;
                Poll::Pending
            }
        }
    }
    /// End of file reached with `need` bytes wanted: end-of-stream or a truncated frame.
    fn at_eof(&mut self, need: usize) -> Result<(), RecvError> {
        let received = self.end - self.start;
        if received == 0 && self.skip == 0 {
            self.dead = true;
            return Ok(());
        }
        let expected = if self.skip > 0 {
            usize::try_from(self.skip).unwrap_or(usize::MAX)
        } else {
            need
        };
        Err(self.fatal(RecvError::Truncated { received, expected }))
    }

    /// Waits for a whole frame and hands its payload to `f`; `Ok(None)` at end-of-stream.
    pub(crate) fn poll_frame<T>(
        &mut self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Poll<Result<Option<T>, RecvError>> {
        self.advance_flush(cx);
        loop {
            if self.dead {
                return Poll::Ready(Ok(None));
            }
            match self.front()? {
                Front::Frame(start, end) => {
                    let out = f(&self.rbuf[start..end]);
                    self.start = end;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                        if self.rbuf.len() > KEEP_CAPACITY {
                            self.rbuf = Vec::new();
                        }
                    }
                    return Poll::Ready(Ok(Some(out)));
                }
                Front::Need(need) => {
                    if self.eof {
                        return Poll::Ready(self.at_eof(need).map(|()| None));
                    }
                    ready!(self.poll_fill(cx, need))?;
                }
            }
        }
    }

    /// Ready once a receive would not wait (a whole frame, end-of-stream or an error), taking
    /// nothing.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        self.advance_flush(cx);
        loop {
            if self.dead {
                return Poll::Ready(Ok(()));
            }
            match self.front()? {
                Front::Frame(..) => return Poll::Ready(Ok(())),
                Front::Need(need) => {
                    if self.eof {
                        return Poll::Ready(self.at_eof(need));
                    }
                    ready!(self.poll_fill(cx, need))?;
                }
            }
        }
    }

    /// Appends one frame whose payload `fill` writes; nothing is appended if `fill` fails or
    /// the payload exceeds the size limit.
    pub(crate) fn push(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), SendErrorKind>,
    ) -> Result<(), SendErrorKind> {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let mark = self.wbuf.len();
        self.wbuf.extend_from_slice(&[0; 4]);
        if let Err(e) = fill(&mut self.wbuf) {
            self.wbuf.truncate(mark);
            return Err(e);
        }
        let len = self.wbuf.len() - mark - 4;
        if len > self.limit {
            self.wbuf.truncate(mark);
            return Err(SendErrorKind::TooLarge {
                len,
                limit: self.limit,
            });
        }
        let (head, n) = wire::header(len);
        if n > 4 {
            // Above 2 GiB: the header grows to 12 bytes.
            self.wbuf
                .splice(mark + 4..mark + 4, head[4..n].iter().copied());
        }
        self.wbuf[mark..mark + 4].copy_from_slice(&head[..4]);
        Ok(())
    }

    /// Writes what a cancelled send left buffered, as far as the stream takes it now, before a
    /// receive waits (the peer may be waiting for those bytes before it answers). A write error
    /// is left for the next send or flush to report; the receive goes on.
    fn advance_flush(&mut self, cx: &mut Context<'_>) {
        if self.buffered() > 0 && !self.shut {
            let _ = self.poll_flush(cx);
        }
    }

    /// Writes everything buffered, then shuts the stream down: over TLS this sends the close
    /// alert, so the peer sees a clean end of stream.
    pub(crate) fn poll_shutdown(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendErrorKind>> {
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_flush(cx))?;
        ready!(self.io.stream().poll_shutdown(cx)).map_err(SendErrorKind::from_io)?;
        self.shut = true;
        Poll::Ready(Ok(()))
    }

    /// Bytes accepted but not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes everything buffered.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendErrorKind>> {
        while self.wpos < self.wbuf.len() {
            match ready!(self.io.stream().poll_write(cx, &self.wbuf[self.wpos..])) {
                Ok(0) => return Poll::Ready(Err(SendErrorKind::Closed)),
                Ok(n) => {
                    self.wpos += n;
                    self.answer_due = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(SendErrorKind::from_io(e))),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > KEEP_CAPACITY {
            self.wbuf = Vec::new();
        }
        self.io
            .stream()
            .poll_flush(cx)
            .map_err(SendErrorKind::from_io)
    }
}

impl Drop for FramedIo {
    /// Writes what is buffered and shuts down (the close alert over TLS), so that a dropped end
    /// still delivers what a cancelled send accepted, and looks closed rather than cut to a TLS
    /// peer. One non-blocking attempt first; what the stream does not take at once is finished
    /// by a task on the current tokio runtime, for at most [`LINGER`] (the Unix channel's
    /// dropped sender does the same on a thread). Outside a runtime, the rest is dropped, as
    /// closing the socket would.
    fn drop(&mut self) {
        if self.shut || self.dead {
            return;
        }
        let waker = std::task::Waker::noop();
        if self
            .poll_shutdown(&mut Context::from_waker(waker))
            .is_ready()
            || self.lingering
            || self.buffered() == 0
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let placeholder = Io::Other(Box::new(tokio::io::join(
            tokio::io::empty(),
            tokio::io::sink(),
        )));
        let mut rest = FramedIo::from_io(std::mem::replace(&mut self.io, placeholder));
        rest.wbuf = std::mem::take(&mut self.wbuf);
        rest.wpos = self.wpos;
        // Its own drop must not hand it on again (a runtime shutting down drops the task).
        rest.lingering = true;
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, std::future::poll_fn(|cx| rest.poll_shutdown(cx)))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn next(f: &mut FramedIo) -> Result<Option<Vec<u8>>, RecvError> {
        std::future::poll_fn(|cx| f.poll_frame(cx, <[u8]>::to_vec)).await
    }

    #[tokio::test]
    async fn frames_limits_and_corruption() {
        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let mut f = FramedIo::new(Box::new(a));
        f.set_max_message_size(8);
        raw.write_all(&[0, 0, 0, 2, b'h', b'i']).await.unwrap();
        raw.write_all(&[0, 0, 0, 20]).await.unwrap();
        raw.write_all(&[9; 20]).await.unwrap();
        raw.write_all(&[0, 0, 0, 1, b'!']).await.unwrap();
        assert_eq!(next(&mut f).await.unwrap().unwrap(), b"hi");
        assert!(matches!(
            next(&mut f).await,
            Err(RecvError::TooLarge { len: 20, .. })
        ));
        // Skipped, and the stream goes on.
        assert_eq!(next(&mut f).await.unwrap().unwrap(), b"!");
        raw.write_all(&[0xff, 0xff, 0xff, 0x80]).await.unwrap();
        assert!(matches!(next(&mut f).await, Err(RecvError::Corrupt { .. })));
        assert!(next(&mut f).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_frame_and_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut fa, mut fb) = (FramedIo::new(Box::new(a)), FramedIo::new(Box::new(b)));
        fa.push(|buf| {
            buf.extend_from_slice(b"payload");
            Ok(())
        })
        .unwrap();
        std::future::poll_fn(|cx| fa.poll_flush(cx)).await.unwrap();
        std::future::poll_fn(|cx| fb.poll_ready(cx)).await.unwrap();
        assert_eq!(next(&mut fb).await.unwrap().unwrap(), b"payload");
        drop(fa);
        assert!(next(&mut fb).await.unwrap().is_none());

        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let mut f = FramedIo::new(Box::new(a));
        raw.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        drop(raw);
        assert!(matches!(
            next(&mut f).await,
            Err(RecvError::Truncated {
                received: 6,
                expected: 14
            })
        ));
    }

    #[tokio::test]
    async fn an_announced_frame_is_not_allocated_before_its_bytes_arrive() {
        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let mut f = FramedIo::new(Box::new(a));
        // 64 MiB announced (within the default limit), then silence.
        raw.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
        raw.write_all(&[7; 100]).await.unwrap();
        let waker = std::task::Waker::noop();
        for _ in 0..4 {
            assert!(
                f.poll_frame(&mut Context::from_waker(waker), <[u8]>::to_vec)
                    .is_pending()
            );
        }
        assert_eq!(f.end - f.start, 104, "the header and the bytes that came");
        assert!(
            f.rbuf.capacity() <= 2 * READ_CHUNK,
            "receive buffer of {} bytes for 104 received",
            f.rbuf.capacity()
        );
    }

    #[tokio::test]
    async fn a_large_frame_still_arrives_whole() {
        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let mut f = FramedIo::new(Box::new(a));
        let payload: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut wire = (payload.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&payload);
        let writer = tokio::spawn(async move { raw.write_all(&wire).await.unwrap() });
        assert_eq!(next(&mut f).await.unwrap().unwrap(), payload);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn an_eof_without_close_alert_at_a_boundary_is_an_end() {
        /// Reads end with `UnexpectedEof`, as rustls reports a TCP end without close_notify.
        struct CutAfter(Vec<u8>);
        impl AsyncRead for CutAfter {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if self.0.is_empty() {
                    return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
                }
                let n = self.0.len().min(buf.remaining());
                buf.put_slice(&self.0[..n]);
                self.0.drain(..n);
                Poll::Ready(Ok(()))
            }
        }
        impl AsyncWrite for CutAfter {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                b: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut f = FramedIo::new(Box::new(CutAfter(vec![0, 0, 0, 1, b'x'])));
        assert_eq!(next(&mut f).await.unwrap().unwrap(), b"x");
        assert!(next(&mut f).await.unwrap().is_none());
        // Inside a frame, the same end is a truncation.
        let mut f = FramedIo::new(Box::new(CutAfter(vec![0, 0, 0, 9, b'x'])));
        assert!(matches!(
            next(&mut f).await,
            Err(RecvError::Truncated { .. })
        ));
    }

    /// A small deterministic generator, so the property tests need no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[tokio::test]
    async fn frames_split_anywhere_reassemble_and_garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..200 {
            let (a, mut raw) = tokio::io::duplex(1 << 20);
            let mut f = FramedIo::new(Box::new(a));
            f.set_max_message_size(512);
            let garbage = round % 2 == 1;
            let mut wire = Vec::new();
            let mut sent = Vec::new();
            for _ in 0..(xorshift(&mut seed) % 8) {
                let len = (xorshift(&mut seed) % 600) as usize;
                let payload: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
                if garbage {
                    wire.extend_from_slice(&payload);
                } else {
                    wire.extend_from_slice(&(len as u32).to_be_bytes());
                    wire.extend_from_slice(&payload);
                    sent.push(payload);
                }
            }
            let writer = tokio::spawn(async move {
                let mut rest = &wire[..];
                let mut state = seed;
                while !rest.is_empty() {
                    let n = (xorshift(&mut state) as usize % 97 + 1).min(rest.len());
                    raw.write_all(&rest[..n]).await.unwrap();
                    rest = &rest[n..];
                    tokio::task::yield_now().await;
                }
            });
            let mut got = Vec::new();
            loop {
                match next(&mut f).await {
                    Ok(Some(frame)) => got.push(frame),
                    Ok(None) => break,
                    Err(e) if !e.is_fatal() => assert!(matches!(e, RecvError::TooLarge { .. })),
                    Err(_) => break,
                }
            }
            writer.await.unwrap();
            if !garbage {
                let expected: Vec<_> = sent.into_iter().filter(|p| p.len() <= 512).collect();
                assert_eq!(got, expected, "round {round}");
            }
        }
    }
}
