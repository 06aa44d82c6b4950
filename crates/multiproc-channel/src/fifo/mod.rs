//! Typed named pipes (FIFOs): [`create`] one at a path, open a [`FifoSender`] or a
//! [`FifoReceiver`] on it from unrelated programs, [`remove`] it. Python's `os.mkfifo` plus
//! `open`, with typed messages.
//!
//! **Framing and the atomic-write rule.** Each message is a frame: a 4-byte little-endian
//! length, then the postcard encoding of the value. A FIFO is a byte stream that several
//! writers may share, and the kernel keeps one `write(2)` of at most [`PIPE_BUF`] (4096) bytes
//! in one piece; a larger write may be split and interleaved with other writers' bytes, which
//! would garble the stream for the reader. So:
//! - a sender opened with [`FifoSender::open`] (several writers allowed) writes each frame with
//!   one `write` and refuses a frame over [`PIPE_BUF`] bytes (a message over
//!   [`MAX_SHARED_MESSAGE`] bytes) with [`FifoSendError::TooLarge`], before writing anything;
//! - a sender opened with [`FifoSender::open_single_writer`] may send frames of any size (up
//!   to the receiver's limit), and is guaranteed to be the only writer: the senders take an
//!   `flock` on the FIFO, shared for the first kind, exclusive for this one, so a single writer
//!   cannot open while other senders have the FIFO open, nor they while it does.
//!   (Programs writing the FIFO without multiproc are not covered by the `flock`.)
//!
//! **One reader.** The rule has a read side: a reader takes whatever bytes are there, several
//! frames and part of the next, so two readers of one FIFO (the shell "work queue" pattern)
//! would each start mid-frame and decode garbage, or a wrong value (postcard is not
//! self-describing). A [`FifoReceiver`] therefore claims the FIFO's reading side while it
//! lives, and a second one, in any process of the user, fails to open with
//! [`FifoOpenError::ReaderConflict`]. For a work queue shared by several consumers use a
//! `Queue`.
//!
//! **Descriptors** cannot travel through a FIFO (it is not a socket): a message holding a
//! handle fails to send with [`FifoSendError::Descriptors`]. Use `multiproc::named` to hand
//! handles to unrelated programs.
//!
//! **Opening.** Opening for reading never waits. Opening for writing waits (polling, without
//! blocking a thread) until a reader has the FIFO open, since writing to a FIFO without a
//! reader fails; [`FifoSender::try_open`] fails at once with [`FifoOpenError::NoReader`]
//! instead. A receiver sees the end of the stream (`Ok(None)`) when every writer has closed the
//! FIFO after at least one opened it; it keeps the FIFO open, and a later receive gets messages
//! from writers that open it afterwards.

mod error;
mod receiver;
mod sender;

use std::io;
use std::path::Path;

pub use error::{FifoOpenError, FifoRecvError, FifoSendError};
pub use multiproc_core::fs::PIPE_BUF;
pub use receiver::FifoReceiver;
pub use sender::FifoSender;

/// Largest message (its postcard bytes) a sender that shares the FIFO may send: [`PIPE_BUF`]
/// minus the 4-byte length.
pub const MAX_SHARED_MESSAGE: usize = PIPE_BUF - HEADER;

/// Largest message a receiver accepts by default (a single writer's frames may be larger than
/// [`PIPE_BUF`]); see [`FifoReceiver::with_max_message_size`].
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

const HEADER: usize = 4;

/// Creates a FIFO at `path` with mode `0600` (Python's `os.mkfifo(path, 0o600)`).
///
/// # Errors
/// [`io::ErrorKind::AlreadyExists`] when something exists at `path`; others as `mkfifo(3)`.
///
/// # Examples
/// ```
/// use multiproc_channel::fifo::{self, FifoReceiver, FifoSender};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("doc-fifo-{}", std::process::id()));
/// # let _ = fifo::remove(&path); // a leftover of a crashed run with the same pid
/// fifo::create(&path)?;
/// let mut rx = FifoReceiver::<(u32, String)>::open(&path)?; // e.g. in a server program
/// let mut tx = FifoSender::<(u32, String)>::open(&path).await?; // e.g. in a client program
/// tx.send(&(1, "job".to_string())).await?;
/// assert_eq!(rx.recv().await?, Some((1, "job".to_string())));
/// drop(tx);
/// assert_eq!(rx.recv().await?, None); // every writer closed
/// fifo::remove(&path)?;
/// # Ok(()) }
/// ```
pub fn create(path: impl AsRef<Path>) -> io::Result<()> {
    multiproc_core::fs::mkfifo(path.as_ref(), 0o600)
}

/// Removes the FIFO at `path`. Open ends keep working; later opens fail.
///
/// The type check and the removal are two steps: a process that can write the directory and
/// replaces the FIFO with another file between them gets that file removed (Python's
/// `os.unlink` checks nothing at all). Use a directory only you can write for FIFOs.
///
/// # Errors
/// [`io::ErrorKind::NotFound`] when nothing is at `path`; [`io::ErrorKind::InvalidInput`]
/// when `path` is not a FIFO (nothing is removed).
pub fn remove(path: impl AsRef<Path>) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let path = path.as_ref();
    if !std::fs::symlink_metadata(path)?.file_type().is_fifo() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a FIFO",
        ));
    }
    std::fs::remove_file(path)
}
