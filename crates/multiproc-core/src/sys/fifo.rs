//! Named pipes (FIFOs): `mkfifo` and non-blocking opens.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
/// ([`io::ErrorKind::InvalidInput`]) without opening it for reading: the path is first opened
/// with `O_PATH` (which has no side effect on a device node, a terminal or a watchdog), checked,
/// and only then reopened through `/proc/self/fd`.
///
/// # References
/// - [`fifo(7)`](https://man7.org/linux/man-pages/man7/fifo.7.html),
///   [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) (`O_PATH`)
pub fn open_fifo_read(path: &Path) -> io::Result<OwnedFd> {
    let fifo = fifo_path(path)?;
    reopen(fifo.as_fd(), OFlags::RDONLY)
}

/// Opens the FIFO that `fifo` (any descriptor of it) refers to for reading again: a new open
/// file description of the same FIFO, close-on-exec and non-blocking. A reader that saw the
/// end of the stream (every writer closed) swaps to a fresh description so that the next wait
/// really waits for a new writer: the kernel keeps reporting `POLLHUP` on a description that saw
/// its writers go, until a writer opens again. Opening the new one before closing the old keeps
/// the FIFO's buffered bytes.
///
/// # References
/// - [`fifo(7)`](https://man7.org/linux/man-pages/man7/fifo.7.html),
///   [`proc_pid_fd(5)`](https://man7.org/linux/man-pages/man5/proc_pid_fd.5.html)
pub fn reopen_fifo_read(fifo: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    reopen(fifo, OFlags::RDONLY)
}

/// Claims the reading side of the FIFO `fifo` (any descriptor of it) for this caller: `Ok(None)`
/// when another reader of this user, in any process, holds the claim. A FIFO's byte stream
/// has no message boundaries, so two readers would each take parts of the others' frames.
///
/// The claim is an abstract Unix socket bound to a name made of the user and the FIFO's
/// device and inode (`multiproc/<uid>/fifo-reader/<dev>:<ino>`): no file is created, and the
/// kernel drops the claim when the returned descriptor closes, including when its process
/// dies. Readers that do not use multiproc are not covered.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), "Abstract sockets"
pub fn claim_fifo_reader(fifo: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let st = rustix::fs::fstat(fifo)?;
    let name = format!(
        "multiproc/{}/fifo-reader/{}:{}",
        rustix::process::geteuid().as_raw(),
        st.st_dev,
        st.st_ino
    );
    match super::abstract_socket::bind_abstract(name.as_bytes()) {
        Ok(claim) => Ok(Some(claim)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the FIFO at `path` for writing, close-on-exec and non-blocking. `Ok(None)` when no
/// process has it open for reading (`ENXIO`: a non-blocking open for writing never waits for a
/// reader). Refuses a path that is not a FIFO ([`io::ErrorKind::InvalidInput`]) without
/// opening it for writing (see [`open_fifo_read`]).
///
/// # References
/// - [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) (`ENXIO`),
///   [`fifo(7)`](https://man7.org/linux/man-pages/man7/fifo.7.html)
pub fn open_fifo_write(path: &Path) -> io::Result<Option<OwnedFd>> {
    let fifo = fifo_path(path)?;
    match reopen(fifo.as_fd(), OFlags::WRONLY) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An `O_PATH` descriptor of the FIFO at `path` (symbolic links followed), or
/// [`io::ErrorKind::InvalidInput`] when it is something else.
fn fifo_path(path: &Path) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is not a FIFO",
        ));
    }
    Ok(fd)
}

/// A new open file description, `access` plus non-blocking, close-on-exec and no controlling
/// terminal, of the file `fd` refers to, through `/proc/self/fd/N`.
fn reopen(fd: BorrowedFd<'_>, access: OFlags) -> io::Result<OwnedFd> {
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        proc_path.as_str(),
        access | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?)
}
