//! POSIX shared memory objects (`shm_open`), named exactly as Python's
//! `multiprocessing.shared_memory.SharedMemory(name=...)` names them, so programs in either
//! language attach to the other's segments.
//!
//! Python opens `name` as `"/" + name`, which glibc maps to the file `/dev/shm/<name>`, created
//! with mode `0600`, sized with `ftruncate`, and removed only by `unlink()` (`shm_unlink`). The
//! same here. Such an object outlives every process until it is unlinked, and it is not sealed:
//! a process that truncates it makes the others' accesses past the new end fault (`SIGBUS`), as
//! in Python. multiproc's own named memory (served over an abstract socket, sealed, gone with
//! its owner) avoids both; this module is for interoperability.

use std::io;

use rustix::fs::Mode;
use rustix::shm::OFlags;

use super::SharedRegion;
use crate::SharedFd;

/// The `shm_open` path of a Python-style name, or why the name is invalid: not empty, no NUL,
/// no `/` after an optional leading one, at most 255 bytes (`NAME_MAX`).
fn object_name(name: &str) -> io::Result<String> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let why = if bare.is_empty() {
        Some("a shared memory name cannot be empty")
    } else if bare.contains('\0') {
        Some("a shared memory name cannot hold a NUL byte")
    } else if bare.contains('/') {
        Some("a shared memory name cannot hold a `/`")
    } else if bare.len() > 255 {
        Some("a shared memory name is at most 255 bytes")
    } else {
        None
    };
    match why {
        Some(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why)),
        None => Ok(format!("/{bare}")),
    }
}

/// Creates the POSIX shared memory object `name` (Python's
/// `SharedMemory(name, create=True, size=len)`) and maps it.
///
/// # Errors
/// [`io::ErrorKind::AlreadyExists`] when the name exists (Python's `FileExistsError`);
/// [`io::ErrorKind::InvalidInput`] when `len` is zero or the name is invalid; others as
/// `shm_open(3)`, `ftruncate(2)`, `mmap(2)`.
///
/// # Crash behavior
/// As for [`open_posix`]: the object is not sealed, so another process shrinking it makes
/// accesses past the new end fault with `SIGBUS`.
///
/// # References
/// - [`shm_open(3)`](https://man7.org/linux/man-pages/man3/shm_open.3.html)
pub fn create_posix(name: &str, len: usize) -> io::Result<SharedRegion> {
    let path = object_name(name)?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shared memory needs at least one byte",
        ));
    }
    let fd = rustix::shm::open(
        path.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
        Mode::from_raw_mode(0o600),
    )?;
    let sized = rustix::fs::ftruncate(&fd, len as u64)
        .map_err(io::Error::from)
        .and_then(|()| SharedRegion::from_unsealed_file(SharedFd::new(fd), len));
    if sized.is_err() {
        let _ = rustix::shm::unlink(path.as_str());
    }
    sized
}

/// Opens and maps the existing POSIX shared memory object `name`, all of it (Python's
/// `SharedMemory(name)`, whose size is the object's).
///
/// The object is opened as `/dev/shm/<name>` with `O_NOFOLLOW`, as glibc's `shm_open` (and so
/// Python) does: `/dev/shm` is writable by every user, and a symbolic link planted there under
/// an expected name must not make us map (and write) the file it points to. Anything but a
/// regular file is refused too.
///
/// # Errors
/// [`io::ErrorKind::NotFound`] when there is no such object (Python's `FileNotFoundError`);
/// [`io::ErrorKind::InvalidInput`] for an invalid name, or when `/dev/shm/<name>` is a symbolic
/// link or not a regular file; [`io::ErrorKind::InvalidData`] when the object is empty or
/// shrank while it was being mapped.
///
/// # Crash behavior
/// The object is not sealed: a process that shrinks it (`ftruncate`) afterwards makes this
/// process's accesses past the new end fault with `SIGBUS`, which terminates it, exactly as
/// for every other program (Python included) mapping the object.
///
/// # References
/// - [`shm_open(3)`](https://man7.org/linux/man-pages/man3/shm_open.3.html),
///   [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) (`O_NOFOLLOW`)
pub fn open_posix(name: &str) -> io::Result<SharedRegion> {
    use rustix::fs::{FileType, OFlags as FsFlags};
    let path = format!("/dev/shm{}", object_name(name)?);
    let fd = match rustix::fs::open(
        path.as_str(),
        FsFlags::RDWR | FsFlags::NOFOLLOW | FsFlags::CLOEXEC | FsFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // O_NOFOLLOW on a symbolic link.
        Err(rustix::io::Errno::LOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the shared memory object is a symbolic link",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the shared memory object is not a regular file",
        ));
    }
    let len = usize::try_from(st.st_size).map_err(|_| io::ErrorKind::InvalidData)?;
    SharedRegion::from_unsealed_file(SharedFd::new(fd), len)
}

/// Removes the POSIX shared memory object `name` (Python's `SharedMemory.unlink()`). Mappings
/// stay valid; later opens fail.
///
/// # Errors
/// [`io::ErrorKind::NotFound`] when there is no such object (also on a second unlink, as in
/// Python).
///
/// # References
/// - [`shm_unlink(3)`](https://man7.org/linux/man-pages/man3/shm_unlink.3.html)
pub fn unlink_posix(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(object_name(name)?.as_str())?)
}
