//! [`FifoSender`]: the writing end of a named FIFO.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use multiproc_core::fs::{LockKind, flock, open_fifo_write};
use multiproc_core::message;
use serde::Serialize;
use tokio::net::unix::pipe;

use super::error::{FifoOpenError, FifoSendError};
use super::{HEADER, MAX_SHARED_MESSAGE};

/// The writing end of a FIFO, sending `T`s; see the [module docs](super) for framing and the
/// atomic-write rule.
///
/// # Examples
/// See [`create`](super::create).
pub struct FifoSender<T> {
    pipe: pipe::Sender,
    single_writer: bool,
    /// A single writer's frame that a cancelled send left part-written: the next send or
    /// flush writes it first.
    pending: Vec<u8>,
    /// The open descriptor kept for the `flock` (a duplicate of `pipe`'s).
    _lock: OwnedFd,
    _t: PhantomData<fn(&T)>,
}

impl<T: Serialize> FifoSender<T> {
    /// Opens the FIFO at `path` for writing, as one of possibly several writers, waiting until
    /// a process has it open for reading (polled every few milliseconds; no thread blocks).
    ///
    /// # Errors
    /// [`FifoOpenError::WriterConflict`] when a single writer holds the FIFO;
    /// [`FifoOpenError::Io`] when the path does not exist or is not a FIFO, or outside a tokio
    /// runtime.
    ///
    /// # Panics
    /// On a tokio runtime built without timers (`enable_time`) when it has to wait for a
    /// reader, as `tokio::time::sleep` does.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is open until the future returns.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, FifoOpenError> {
        Self::open_waiting(path.as_ref(), false).await
    }

    /// Opens the FIFO at `path` as its only writer, which may send messages larger than
    /// [`PIPE_BUF`](super::PIPE_BUF); waits for a reader as [`open`](Self::open) does.
    ///
    /// # Errors
    /// [`FifoOpenError::WriterConflict`] when other senders have the FIFO open; otherwise as
    /// [`open`](Self::open).
    ///
    /// # Panics
    /// As [`open`](Self::open).
    ///
    /// # Cancel safety
    /// As [`open`](Self::open).
    pub async fn open_single_writer(path: impl AsRef<Path>) -> Result<Self, FifoOpenError> {
        Self::open_waiting(path.as_ref(), true).await
    }

    /// [`open`](Self::open) without waiting: [`FifoOpenError::NoReader`] when no process has the
    /// FIFO open for reading.
    ///
    /// # Errors
    /// As [`open`](Self::open), plus [`FifoOpenError::NoReader`].
    pub fn try_open(path: impl AsRef<Path>) -> Result<Self, FifoOpenError> {
        Self::try_open_with(path.as_ref(), false)
    }

    async fn open_waiting(path: &Path, single_writer: bool) -> Result<Self, FifoOpenError> {
        let mut pause = Duration::from_millis(1);
        loop {
            match Self::try_open_with(path, single_writer) {
                Err(FifoOpenError::NoReader) => {}
                other => return other,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(16));
        }
    }

    fn try_open_with(path: &Path, single_writer: bool) -> Result<Self, FifoOpenError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FifoOpenError::Io(io::Error::other(
                "a FIFO sender needs a tokio runtime",
            )));
        }
        let fd = open_fifo_write(path)
            .map_err(FifoOpenError::Io)?
            .ok_or(FifoOpenError::NoReader)?;
        let kind = if single_writer {
            LockKind::Exclusive
        } else {
            LockKind::Shared
        };
        if !flock(fd.as_fd(), Some(kind), false).map_err(FifoOpenError::Io)? {
            return Err(FifoOpenError::WriterConflict);
        }
        let lock = fd.try_clone().map_err(FifoOpenError::Io)?;
        let pipe = pipe::Sender::from_owned_fd(fd).map_err(FifoOpenError::Io)?;
        Ok(Self {
            pipe,
            single_writer,
            pending: Vec::new(),
            _lock: lock,
            _t: PhantomData,
        })
    }

    /// Whether this sender was opened as the FIFO's only writer.
    pub fn is_single_writer(&self) -> bool {
        self.single_writer
    }

    /// Sends `value` as one frame, waiting while the FIFO is full.
    ///
    /// # Errors
    /// [`FifoSendError::TooLarge`] (shared FIFO, message over
    /// [`MAX_SHARED_MESSAGE`](super::MAX_SHARED_MESSAGE)) and
    /// [`FifoSendError::Descriptors`] (the message holds handles) before anything is written;
    /// [`FifoSendError::Closed`] when no reader is left.
    ///
    /// # Cancel safety
    /// Cancel safe. A shared sender writes each frame with one atomic `write` inside one poll,
    /// so a dropped future sent the whole message or nothing. A single writer's future dropped
    /// before any byte of its frame was written sent nothing, and a retry does not duplicate
    /// the message. **But a single writer's large frame may be part-written when the future is
    /// dropped: that message counts as sent**, the rest is kept and written first by the next
    /// [`send`](Self::send) or [`flush`](Self::flush), so the stream is never torn while the
    /// sender lives (dropping the sender then leaves the reader a truncated frame, which it
    /// reports as [`FifoRecvError::Truncated`](super::FifoRecvError::Truncated)).
    pub async fn send(&mut self, value: &T) -> Result<(), FifoSendError> {
        self.flush().await?;
        let mut frame = vec![0u8; HEADER];
        let fds = message::encode_into(value, &mut frame).map_err(FifoSendError::Encode)?;
        if !fds.is_empty() {
            return Err(FifoSendError::Descriptors(fds.len()));
        }
        let len = frame.len() - HEADER;
        if !self.single_writer && len > MAX_SHARED_MESSAGE {
            return Err(FifoSendError::TooLarge {
                len,
                limit: MAX_SHARED_MESSAGE,
            });
        }
        let header = u32::try_from(len).map_err(|_| FifoSendError::TooLarge {
            len,
            limit: u32::MAX as usize,
        })?;
        frame[..HEADER].copy_from_slice(&header.to_le_bytes());
        if self.single_writer {
            // The frame stays local to this future until a first byte is written: a send
            // dropped before that sends nothing. Only a part-written frame moves to `pending`,
            // to be completed by the next send or flush.
            loop {
                self.pipe.writable().await.map_err(FifoSendError::Io)?;
                match self.pipe.try_write(&frame) {
                    Ok(n) if n == frame.len() => return Ok(()),
                    Ok(n) => {
                        frame.drain(..n);
                        self.pending = frame;
                        return self.flush().await;
                    }
                    Err(e) => classify(e)?,
                }
            }
        }
        loop {
            self.pipe.writable().await.map_err(FifoSendError::Io)?;
            // At most PIPE_BUF bytes to a non-blocking FIFO: written whole, or not at all.
            match self.pipe.try_write(&frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(FifoSendError::Io(io::Error::other(format!(
                        "the kernel wrote {n} of an atomic {} bytes",
                        frame.len()
                    ))));
                }
                Err(e) => classify(e)?,
            }
        }
    }

    /// Writes what a cancelled [`send`](Self::send) of a single writer left unwritten.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    ///
    /// # Cancel safety
    /// Cancel safe: what is written leaves the buffer as it goes.
    pub async fn flush(&mut self) -> Result<(), FifoSendError> {
        while !self.pending.is_empty() {
            self.pipe.writable().await.map_err(FifoSendError::Io)?;
            match self.pipe.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) => classify(e)?,
            }
        }
        Ok(())
    }
}

/// `Ok(())` to retry (the FIFO filled again), or the error to return.
fn classify(e: io::Error) -> Result<(), FifoSendError> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        io::ErrorKind::BrokenPipe => Err(FifoSendError::Closed),
        _ => Err(FifoSendError::Io(e)),
    }
}

impl<T> fmt::Debug for FifoSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FifoSender")
            .field("single_writer", &self.single_writer)
            .field("pending", &self.pending.len())
            .finish()
    }
}
