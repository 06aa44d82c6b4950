//! Files other processes meet by path: open-file-description and `flock` locks
//! ([`ofd_lock`], [`flock`]) and FIFOs ([`mkfifo`], [`open_fifo_read`], [`reopen_fifo_read`], [`claim_fifo_reader`],
//! [`open_fifo_write`],
//! [`PIPE_BUF`]). Safe wrappers; the typed handles are `multiproc-sync`'s `FileLock` and
//! `multiproc-channel`'s FIFO ends.
//!
//! May import: `sys`. Nothing else.

pub use crate::sys::fifo::{
    PIPE_BUF, claim_fifo_reader, mkfifo, open_fifo_read, open_fifo_write, reopen_fifo_read,
};
pub use crate::sys::file_lock::{LockKind, flock, ofd_lock};
