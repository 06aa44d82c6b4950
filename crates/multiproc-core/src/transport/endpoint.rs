//! OS pieces of named endpoints (multiproc-connection): who is on the other end of a Unix
//! socket, the lock file that decides which listener owns a socket path, random bytes for
//! challenges, and the non-blocking read a byte stream's spin makes ([`recv_now`]).
//!
//! Safe Rust over rustix and the private `sys`; no unsafe here.
//!
//! # The path lock
//! A Unix socket file outlives a listener that was SIGKILLed, so a new listener must be able to
//! tell a stale file from a live one and replace only the stale one. `connect` answering
//! `ECONNREFUSED` says "nobody listens", but two listeners that both see that and both replace
//! the file race (the second removes the first's live socket: `unlink` cannot be made
//! conditional on an inode). So every multiproc listener of `path` first takes an exclusive
//! `flock` on `path.lock` and holds it for its lifetime: whoever holds the lock is the only one
//! allowed to look at, remove or create the socket file. The kernel drops the lock when the
//! holder dies, however it dies, so a SIGKILLed listener's lock is free at once.
//!
//! The lock file itself is removed by its holder on drop, while still locked. A waiter that had
//! opened the old file could then lock an unlinked inode; [`PathLock::try_acquire`] checks after
//! locking that the path still names the inode it locked, and starts again if not (the usual
//! lock-file protocol).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Credentials of the process on the other end of a connected Unix socket, as the kernel
/// recorded them when the connection was made (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id; `None` when the peer's process is not visible from our PID namespace (the
    /// kernel then reports 0, e.g. for a peer in a container sharing the socket path).
    pub pid: Option<u32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// The peer's credentials on a connected Unix socket: for an accepted socket, the process that
/// called `connect`; for a connected one, the process that called `listen`.
///
/// # Errors
/// When `socket` is not a connected Unix socket.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SO_PEERCRED`)
pub fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    crate::sys::peer_ucred(socket).map(credentials_of)
}

/// The kernel's record as we expose it: pid 0 (not visible in our PID namespace) is `None`.
fn credentials_of(cred: libc::ucred) -> PeerCredentials {
    PeerCredentials {
        pid: u32::try_from(cred.pid).ok().filter(|&pid| pid != 0),
        uid: cred.uid,
        gid: cred.gid,
    }
}

/// This process's effective user id.
///
/// # References
/// - [`geteuid(2)`](https://man7.org/linux/man-pages/man2/geteuid.2.html)
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Fills `buf` with bytes from the kernel's random source (for authentication challenges).
///
/// # Errors
/// Only if the kernel refuses (it blocks rather than fail once seeded at boot).
///
/// # References
/// - [`getrandom(2)`](https://man7.org/linux/man-pages/man2/getrandom.2.html)
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads what a connected stream socket holds right now into `buf`, without waiting and
/// without asking tokio: `Ok(None)` when nothing is there, `Ok(Some(0))` at end of stream.
///
/// For a receiver's spin before it parks (the connection's byte streams): tokio reports a
/// socket's data only after its reactor has run, which on a spinning thread is never, so the
/// spin asks the kernel itself. Reading past tokio leaves its readiness as it was: at worst one
/// later read finds nothing and parks as usual, and no arrival is missed (the reactor still
/// sees every edge).
///
/// # Errors
/// What `recv` reports (a reset connection, ...), except `EAGAIN` and `EINTR`.
///
/// # References
/// - [`recv(2)`](https://man7.org/linux/man-pages/man2/recv.2.html) with `MSG_DONTWAIT`
pub fn recv_now(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match rustix::net::recv(socket, buf, rustix::net::RecvFlags::DONTWAIT) {
        Ok((n, _)) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An exclusive `flock` on a lock file beside a socket path, held while the listener lives.
/// Dropping it removes the lock file (while still holding the lock) and releases it.
#[derive(Debug)]
pub struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    /// Takes the lock on `path` (created if missing, mode 0600) without waiting; `Ok(None)`
    /// when another process holds it.
    ///
    /// The file is opened without following symlinks and must be a regular file owned by our
    /// effective user: in a shared directory such as `/tmp`, a file another user created could
    /// be held locked by them forever.
    ///
    /// # Errors
    /// When the file cannot be created or opened, is a symlink (`ELOOP`), is not a regular
    /// file, or belongs to another user (the error names the owner).
    ///
    /// # References
    /// - [`flock(2)`](https://man7.org/linux/man-pages/man2/flock.2.html)
    pub fn try_acquire(path: &Path) -> io::Result<Option<PathLock>> {
        use std::os::unix::fs::OpenOptionsExt;
        loop {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                // Never follow a symlink someone else planted at the lock path.
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(path)?;
            check_lock_file(&file, path)?;
            match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            // The previous holder may have removed the file between our open and our lock:
            // then we hold a lock nobody else can see. Start again on the file the path names.
            let locked = file.metadata()?;
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                    return Ok(Some(PathLock {
                        file,
                        path: path.to_path_buf(),
                    }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Refuses a lock file that is not a regular file of ours.
fn check_lock_file(file: &File, path: &Path) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("lock file {} is not a regular file", path.display()),
        ));
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "lock file {} belongs to uid {}, not to us (uid {me})",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Remove the file only if it is still ours (it is, unless someone removed it by hand).
        if let (Ok(mine), Ok(now)) = (self.file.metadata(), std::fs::symlink_metadata(&self.path))
            && mine.dev() == now.dev()
            && mine.ino() == now.ino()
        {
            let _ = std::fs::remove_file(&self.path);
        }
        // Closing `file` releases the lock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_file_goes_with_it() {
        let path = std::env::temp_dir().join(format!("mp-pathlock-{}.lock", std::process::id()));
        let first = PathLock::try_acquire(&path).unwrap().expect("free lock");
        // flock conflicts between open file descriptions, even in one process.
        assert!(PathLock::try_acquire(&path).unwrap().is_none());
        drop(first);
        assert!(!path.exists());
        let again = PathLock::try_acquire(&path).unwrap().expect("free again");
        assert!(path.exists());
        drop(again);
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused() {
        let dir = std::env::temp_dir();
        let target = dir.join(format!("mp-pathlock-target-{}", std::process::id()));
        let link = dir.join(format!("mp-pathlock-link-{}.lock", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = PathLock::try_acquire(&link).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(!target.exists(), "nothing created through the symlink");
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn a_lock_path_that_is_not_a_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("mp-pathlock-dir-{}.lock", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        // Opening a directory for writing fails with EISDIR before our check; either way, no.
        assert!(PathLock::try_acquire(&dir).is_err());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn credentials_of_a_socket_pair_are_ours() {
        let (a, _b) = crate::sys::stream_socketpair().unwrap();
        let cred = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(cred.pid, Some(std::process::id()));
        assert_eq!(cred.uid, effective_uid());
    }

    #[test]
    fn a_peer_outside_our_pid_namespace_has_no_pid() {
        // The kernel reports pid 0 for a peer whose pid is not visible from our namespace.
        let hidden = credentials_of(libc::ucred {
            pid: 0,
            uid: 1000,
            gid: 1000,
        });
        assert_eq!(hidden.pid, None);
        assert_eq!((hidden.uid, hidden.gid), (1000, 1000));
        let seen = credentials_of(libc::ucred {
            pid: 42,
            uid: 0,
            gid: 0,
        });
        assert_eq!(seen.pid, Some(42));
    }
}
