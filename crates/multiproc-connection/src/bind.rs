//! Binding a Unix socket path safely: one owner at a time, stale files reclaimed, the file
//! removed by its owner only.
//!
//! 1. Take the exclusive lock on `<path>.lock` (core's [`PathLock`]); if another listener
//!    holds it, the address is in use. The kernel releases the lock of a listener that died,
//!    so this never waits for a dead one.
//! 2. Holding the lock, bind. If the file exists, it is either a live socket of a program that
//!    does not take our lock (Python's listener, say: `connect` succeeds, the address is in
//!    use) or stale (`connect` is refused: nobody listens). Only a stale *socket* is removed,
//!    then bound again; any other file is left alone and reported.
//! 3. The listener keeps the lock and the file's identity; when dropped it removes the file
//!    only if the path still names that same socket, then the lock file.
//!
//! Two listeners racing for one path serialize on the lock: exactly one binds, the other gets
//! "address in use". A stale file is never removed by two multiproc listeners, nor a live one
//! by another multiproc listener. A program that does not take the lock is not serialized with
//! us: if it binds the path in the moment between our refused `connect` and our removal of the
//! stale file, its fresh socket is the one removed.
//!
//! The lock file is opened without following symlinks and must be a regular file owned by us:
//! a lock file another user planted in a shared directory is reported, naming its owner,
//! instead of being waited on forever.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use multiproc_core::transport::endpoint::PathLock;
use tokio::net::UnixListener;

use crate::error::BindError;

/// Keeps a socket path owned: removes the socket file (if still ours) and the lock on drop.
#[derive(Debug)]
pub(crate) struct PathGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
    // Dropped after the socket file is removed (field order).
    _lock: PathLock,
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        if let Ok(now) = std::fs::symlink_metadata(&self.path)
            && now.dev() == self.dev
            && now.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Binds a listener on the socket file `path`, reclaiming a stale file.
pub(crate) async fn bind_path(path: &Path) -> Result<(UnixListener, PathGuard), BindError> {
    let shown = path.display();
    let lock = PathLock::try_acquire(&lock_path(path))
        .map_err(|e| BindError::io(&shown, e))?
        .ok_or_else(|| BindError::in_use(&shown, None))?;
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            reclaim_stale(path).await.map_err(|e| match e {
                Some(e) => BindError::io(&shown, e),
                None => BindError::in_use(&shown, None),
            })?;
            UnixListener::bind(path).map_err(|e| BindError::io(&shown, e))?
        }
        Err(e) => return Err(BindError::io(&shown, e)),
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| BindError::io(&shown, e))?;
    Ok((
        listener,
        PathGuard {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            _lock: lock,
        },
    ))
}

/// Removes `path` if it is a socket nobody listens on. `Err(None)`: it is live (in use).
async fn reclaim_stale(path: &Path) -> Result<(), Option<io::Error>> {
    let meta = std::fs::symlink_metadata(path).map_err(Some)?;
    if !meta.file_type().is_socket() {
        return Err(Some(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )));
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(None),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(Some)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Some(e)),
    }
}
