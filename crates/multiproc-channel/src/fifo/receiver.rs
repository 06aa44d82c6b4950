//! [`FifoReceiver`]: the reading end of a named FIFO.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use multiproc_core::fs::{claim_fifo_reader, open_fifo_read, reopen_fifo_read};
use multiproc_core::message;
use serde::de::DeserializeOwned;
use tokio::net::unix::pipe;

use super::error::{FifoOpenError, FifoRecvError};
use super::{DEFAULT_MAX_MESSAGE, HEADER};

/// The reading end of a FIFO, receiving `T`s; see the [module docs](super).
///
/// # Examples
/// See [`create`](super::create).
pub struct FifoReceiver<T> {
    pipe: pipe::Receiver,
    /// Bytes read and not yet returned as messages.
    buf: Vec<u8>,
    max_message: usize,
    /// Set once a frame announced more than `max_message`: the stream cannot be resynchronized.
    corrupt: Option<usize>,
    /// The claim that makes this the FIFO's only multiproc receiver, held while it lives.
    _claim: OwnedFd,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> FifoReceiver<T> {
    /// Opens the FIFO at `path` for reading. Never waits for a writer.
    ///
    /// A FIFO has **one reader**: its byte stream has no message boundaries, so two readers
    /// would each read parts of the other's frames. While this receiver lives, another
    /// `FifoReceiver` on the same FIFO, in any process of this user, fails to open with
    /// [`FifoOpenError::ReaderConflict`] (programs reading the FIFO without multiproc are not
    /// covered).
    ///
    /// # Errors
    /// [`FifoOpenError::ReaderConflict`] when another receiver has the FIFO open;
    /// [`FifoOpenError::Io`] when the path does not exist or is not a FIFO, or outside a tokio
    /// runtime.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FifoOpenError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(FifoOpenError::Io(io::Error::other(
                "a FIFO receiver needs a tokio runtime",
            )));
        }
        let fd = open_fifo_read(path.as_ref()).map_err(FifoOpenError::Io)?;
        let claim = claim_fifo_reader(fd.as_fd())
            .map_err(FifoOpenError::Io)?
            .ok_or(FifoOpenError::ReaderConflict)?;
        let pipe = pipe::Receiver::from_owned_fd(fd).map_err(FifoOpenError::Io)?;
        Ok(Self {
            pipe,
            buf: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            corrupt: None,
            _claim: claim,
            _t: PhantomData,
        })
    }

    /// Sets the largest message this receiver accepts (default
    /// [`DEFAULT_MAX_MESSAGE`](super::DEFAULT_MAX_MESSAGE)); a frame announcing more is
    /// [`FifoRecvError::Corrupt`].
    pub fn with_max_message_size(mut self, max: usize) -> Self {
        self.max_message = max;
        self
    }

    /// Receives the next message; `Ok(None)` when every writer has closed the FIFO (after at
    /// least one had opened it). The receiver stays usable: a later call waits (without
    /// spinning) for a writer to open the FIFO and returns its messages, so a server may loop
    /// `loop { while let Some(m) = rx.recv().await? { .. } }` over successive clients.
    ///
    /// # Errors
    /// [`FifoRecvError::Decode`] for a message of another type (skipped; the FIFO stays
    /// usable); [`FifoRecvError::Corrupt`] for bytes that are not frames (every later call
    /// fails the same way); [`FifoRecvError::Truncated`] when the writers closed mid-frame;
    /// [`FifoRecvError::Io`] when the FIFO cannot be reopened after the end of the stream.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in the receiver, so a dropped future loses no message.
    pub async fn recv(&mut self) -> Result<Option<T>, FifoRecvError> {
        loop {
            if let Some(limit) = self.corrupt {
                return Err(FifoRecvError::Corrupt {
                    len: limit,
                    limit: self.max_message,
                });
            }
            if self.buf.len() >= HEADER {
                let mut header = [0u8; HEADER];
                header.copy_from_slice(&self.buf[..HEADER]);
                let len = u32::from_le_bytes(header) as usize;
                if len > self.max_message {
                    self.corrupt = Some(len);
                    continue;
                }
                if self.buf.len() >= HEADER + len {
                    let result = message::decode::<T>(&self.buf[HEADER..HEADER + len], Vec::new());
                    self.buf.drain(..HEADER + len);
                    return result.map(Some).map_err(FifoRecvError::Decode);
                }
            }
            self.pipe.readable().await.map_err(FifoRecvError::Io)?;
            let start = self.buf.len();
            self.buf.resize(start + 64 * 1024, 0);
            let read = self.pipe.try_read(&mut self.buf[start..]);
            self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) if self.buf.is_empty() => {
                    self.reopen()?;
                    return Ok(None);
                }
                Ok(0) => {
                    self.reopen()?;
                    let dropped = self.buf.len();
                    self.buf.clear();
                    return Err(FifoRecvError::Truncated(dropped));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FifoRecvError::Io(e)),
            }
        }
    }
}

impl<T> FifoReceiver<T> {
    /// After the end of the stream: swaps to a fresh open file description of the same FIFO
    /// (opened before the old one closes, so buffered bytes survive). The old description keeps
    /// reporting hang-up, which would make every later [`recv`](Self::recv) return `Ok(None)` at
    /// once (a busy loop); the new one reports nothing until a writer comes.
    fn reopen(&mut self) -> Result<(), FifoRecvError> {
        let fd = reopen_fifo_read(self.pipe.as_fd()).map_err(FifoRecvError::Io)?;
        self.pipe = pipe::Receiver::from_owned_fd(fd).map_err(FifoRecvError::Io)?;
        Ok(())
    }
}

impl<T> fmt::Debug for FifoReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FifoReceiver")
            .field("buffered", &self.buf.len())
            .field("max_message", &self.max_message)
            .finish()
    }
}
