//! `SO_PEERCRED` read into a plain `libc::ucred`.
//!
//! rustix's `socket_peercred` returns a `UCred` whose pid is a `NonZeroI32`, but the kernel
//! reports pid 0 when the peer's process is not visible in our PID namespace (a socket path
//! bind-mounted between a container and the host). Building that `NonZeroI32` from the kernel's
//! 0 is undefined behaviour another process controls, so we read the raw struct ourselves.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `getsockopt(SOL_SOCKET, SO_PEERCRED)`: the raw credentials, pid possibly 0.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SO_PEERCRED`)
/// - [`getsockopt(2)`](https://man7.org/linux/man-pages/man2/getsockopt.2.html)
pub(crate) fn peer_ucred(socket: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `socket` is a live descriptor for the call (borrowed); `cred` is a plain-integer
    // struct valid for any bit pattern, and `len` tells the kernel its exact size, so the kernel
    // writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short credentials record",
        ));
    }
    Ok(cred)
}
