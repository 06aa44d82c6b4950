//! A non-blocking Unix stream socket shared by the sending and receiving half of a channel end,
//! registered with tokio on first async use.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Mutex, OnceLock};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::SharedFd;

/// One socket, registered with the tokio reactor lazily so that a handle can be decoded, moved
/// and used from blocking code without a runtime.
pub(crate) struct Socket {
    // Field order matters: the registration is dropped (and deregistered) before the descriptor.
    registered: OnceLock<AsyncFd<SharedFd>>,
    register_lock: Mutex<()>,
    fd: SharedFd,
}

impl Socket {
    pub(crate) fn new(fd: SharedFd) -> Self {
        Self {
            registered: OnceLock::new(),
            register_lock: Mutex::new(()),
            fd,
        }
    }

    pub(crate) fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// The tokio registration, created in the current runtime on first use.
    ///
    /// # Panics
    /// Outside a tokio runtime, like every tokio I/O type.
    pub(crate) fn registered(&self) -> io::Result<&AsyncFd<SharedFd>> {
        if let Some(r) = self.registered.get() {
            return Ok(r);
        }
        let _guard = self.register_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.registered.get() {
            return Ok(r);
        }
        // SAFETY: the `SharedFd` clone keeps the descriptor open, referring to the same file
        // description, for as long as the `AsyncFd` owns it, and `as_raw_fd` never changes.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                self.fd.clone(),
                Interest::READABLE | Interest::WRITABLE,
            )
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(self.registered.get_or_init(|| fd))
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
