//! Named pipes (FIFOs): `mkfifo` and non-blocking opens.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{CWD, Mode, OFlags};

/// The most bytes one `write(2)` to a pipe or FIFO is guaranteed to put in at once, never
/// interleaved with other writers' bytes (`PIPE_BUF`, 4096 on Linux). Larger writes may be
/// split and interleaved.
///
/// # References
/// - [`pipe(7)`](https://man7.org/linux/man-pages/man7/pipe.7.html), "PIPE_BUF"
pub const PIPE_BUF: usize = 4096;

/// `mkfifoat(AT_FDCWD, path, mode)`: creates a FIFO at `path` (with `mode` filtered by the
/// umask).
///
/// # Errors
/// [`io::ErrorKind::AlreadyExists`] when `path` exists; others as `mkfifo(3)`.
///
/// # References
/// - [`mkfifo(3)`](https://man7.org/linux/man-pages/man3/mkfifo.3.html)
pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkfifoat(CWD, path, Mode::from_raw_mode(mode))?)
}

/// Opens the FIFO at `path` for reading, close-on-exec and non-blocking. Succeeds at once
/// whether or not a writer has it open. Refuses a path that is not a FIFO
/// ([`io::ErrorKind::InvalidInput`]).
///
/// # References
/// - [`fifo(7)`](https://man7.org/linux/man-pages/man7/fifo.7.html)
pub fn open_fifo_read(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    check_fifo(fd)
}

/// Opens the FIFO at `path` for writing, close-on-exec and non-blocking. `Ok(None)` when no
/// process has it open for reading (`ENXIO`: a non-blocking open for writing never waits for a
/// reader). Refuses a path that is not a FIFO ([`io::ErrorKind::InvalidInput`]).
///
/// # References
/// - [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) (`ENXIO`),
///   [`fifo(7)`](https://man7.org/linux/man-pages/man7/fifo.7.html)
pub fn open_fifo_write(path: &Path) -> io::Result<Option<OwnedFd>> {
    match rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => check_fifo(fd).map(Some),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn check_fifo(fd: OwnedFd) -> io::Result<OwnedFd> {
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a FIFO",
        ));
    }
    Ok(fd)
}
