//! A non-blocking socket shared by the sending and receiving half of a channel end, registered
//! with tokio on first async use.
//!
//! Reads and writes have separate registrations: reading waits on the socket itself with read
//! interest only, and writing (which rarely has to wait) registers a duplicate descriptor with
//! write interest the first time a write would block. One registration with both interests
//! would wake a waiting reader for nothing every time the peer drains the socket ("writable"),
//! doubling the wake-ups of a ping-pong.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::SharedFd;

/// One socket, registered with the tokio reactor lazily so that a handle can be decoded, moved
/// and used from blocking code without a runtime.
pub(crate) struct Socket {
    // Field order matters: registrations are dropped (and deregistered) before the descriptor.
    read: OnceLock<AsyncFd<SharedFd>>,
    write: OnceLock<AsyncFd<SharedFd>>,
    register_lock: Mutex<()>,
    /// Bytes were written since the receiving half last read something or began a wait: an
    /// answer may be on its way (see `RawReceiver`'s spinning).
    sent: AtomicBool,
    fd: SharedFd,
}

impl Socket {
    pub(crate) fn new(fd: SharedFd) -> Self {
        Self {
            read: OnceLock::new(),
            write: OnceLock::new(),
            register_lock: Mutex::new(()),
            sent: AtomicBool::new(false),
            fd,
        }
    }

    pub(crate) fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Records that bytes were written to the socket.
    pub(crate) fn note_sent(&self) {
        // Only a hint for the receiving half: no ordering with anything else is needed.
        self.sent.store(true, Ordering::Relaxed);
    }

    /// Whether bytes were written since the last call or [`clear_sent`](Self::clear_sent);
    /// clears the record.
    pub(crate) fn take_sent(&self) -> bool {
        self.sent.swap(false, Ordering::Relaxed)
    }

    /// Forgets that bytes were written.
    pub(crate) fn clear_sent(&self) {
        if self.sent.load(Ordering::Relaxed) {
            self.sent.store(false, Ordering::Relaxed);
        }
    }

    /// The read-readiness registration, created in the current runtime on first use.
    ///
    /// # Panics
    /// Outside a tokio runtime, like every tokio I/O type.
    pub(crate) fn readable(&self) -> io::Result<&AsyncFd<SharedFd>> {
        self.register(&self.read, Interest::READABLE, || Ok(self.fd.clone()))
    }

    /// The write-readiness registration (on a duplicate descriptor), created on first use.
    ///
    /// # Panics
    /// Outside a tokio runtime, like every tokio I/O type.
    pub(crate) fn writable(&self) -> io::Result<&AsyncFd<SharedFd>> {
        self.register(&self.write, Interest::WRITABLE, || {
            Ok(SharedFd::new(self.fd.try_clone_owned()?))
        })
    }

    fn register<'a>(
        &self,
        slot: &'a OnceLock<AsyncFd<SharedFd>>,
        interest: Interest,
        fd: impl FnOnce() -> io::Result<SharedFd>,
    ) -> io::Result<&'a AsyncFd<SharedFd>> {
        if let Some(r) = slot.get() {
            return Ok(r);
        }
        let _guard = self.register_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.get() {
            return Ok(r);
        }
        // SAFETY: the `SharedFd` keeps its descriptor open, referring to the same file
        // description, for as long as the `AsyncFd` owns it, and `as_raw_fd` never changes.
        let registered = unsafe { AsyncFd::register_with_interest(fd()?, interest) }
            .map_err(|e| e.into_parts().1)?;
        Ok(slot.get_or_init(|| registered))
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
