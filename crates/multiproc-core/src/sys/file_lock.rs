//! File locks: open-file-description record locks (`F_OFD_SETLK`, `F_OFD_SETLKW`) over byte
//! ranges, and whole-file `flock(2)` locks.
//!
//! Both kinds belong to the *open file description*, not to the process: they are released when
//! the last descriptor of that description is closed (including by the kernel when the holder
//! dies), and closing some other descriptor of the same file does not drop them (the trap of
//! classic POSIX `F_SETLK` locks). Two descriptions in one process conflict with each other as
//! two processes would.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::FlockOperation;

/// Shared (read) or exclusive (write) lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// Many holders at once, none exclusive.
    Shared,
    /// One holder, no shared ones.
    Exclusive,
}

/// `fcntl(fd, F_OFD_SETLK or F_OFD_SETLKW, &flock)` over `start..start + len` (`len == 0`:
/// to the end of the file, however far it grows). Returns `Ok(false)` when a non-waiting call
/// found a conflicting lock.
///
/// # References
/// - [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html), "Open file description
///   locks"
pub fn ofd_lock(
    fd: BorrowedFd<'_>,
    kind: Option<LockKind>,
    start: u64,
    len: u64,
    wait: bool,
) -> io::Result<bool> {
    let l_type = match kind {
        Some(LockKind::Shared) => libc::F_RDLCK,
        Some(LockKind::Exclusive) => libc::F_WRLCK,
        None => libc::F_UNLCK,
    };
    let start = i64::try_from(start).map_err(|_| io::ErrorKind::InvalidInput)?;
    let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `flock` is plain data; all-zeroes is a valid value (and `l_pid` must be 0 for
    // OFD locks).
    let mut arg: libc::flock = unsafe { std::mem::zeroed() };
    arg.l_type = l_type as _;
    arg.l_whence = libc::SEEK_SET as _;
    arg.l_start = start;
    arg.l_len = len;
    let cmd = if wait {
        libc::F_OFD_SETLKW
    } else {
        libc::F_OFD_SETLK
    };
    loop {
        // SAFETY: `fd` is a valid descriptor for the duration of the call (borrowed) and `arg`
        // is a properly initialised `struct flock` that outlives the call.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut arg as *mut libc::flock) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) if wait => continue,
            Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// `flock(fd, LOCK_SH / LOCK_EX / LOCK_UN [| LOCK_NB])`. Returns `Ok(false)` when a non-waiting
/// call found a conflicting lock.
///
/// # References
/// - [`flock(2)`](https://man7.org/linux/man-pages/man2/flock.2.html)
pub fn flock(fd: BorrowedFd<'_>, kind: Option<LockKind>, wait: bool) -> io::Result<bool> {
    let op = match (kind, wait) {
        (Some(LockKind::Shared), true) => FlockOperation::LockShared,
        (Some(LockKind::Shared), false) => FlockOperation::NonBlockingLockShared,
        (Some(LockKind::Exclusive), true) => FlockOperation::LockExclusive,
        (Some(LockKind::Exclusive), false) => FlockOperation::NonBlockingLockExclusive,
        (None, _) => FlockOperation::Unlock,
    };
    loop {
        match rustix::fs::flock(fd, op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) if wait => continue,
            Err(rustix::io::Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}
