//! Listening and connecting on Linux abstract Unix socket names (no file: the name vanishes
//! when the last descriptor of the listening socket closes, including when its process dies).
//! The peer's credentials are `transport::endpoint`'s.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Longest abstract name: `sun_path` is 108 bytes, and the leading NUL takes one.
pub(crate) const MAX_ABSTRACT_NAME: usize = 107;

/// A `SOCK_SEQPACKET` socket listening on the abstract name `name`, close-on-exec and
/// non-blocking. [`io::ErrorKind::AddrInUse`] when the name is taken.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), "Abstract sockets"
pub(crate) fn listen_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = seqpacket()?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 128)?;
    Ok(fd)
}

/// A `SOCK_SEQPACKET` socket bound (not listening) to the abstract name `name`: a claim on the
/// name that lasts as long as the descriptor. [`io::ErrorKind::AddrInUse`] when it is taken.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), "Abstract sockets"
pub(crate) fn bind_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = seqpacket()?;
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// A non-blocking `SOCK_SEQPACKET` socket connected to the abstract name `name`.
/// [`io::ErrorKind::ConnectionRefused`] when nothing listens there;
/// [`io::ErrorKind::WouldBlock`] when the listener's backlog is full.
///
/// # References
/// - [`connect(2)`](https://man7.org/linux/man-pages/man2/connect.2.html)
pub(crate) fn connect_abstract(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = seqpacket()?;
    rustix::net::connect(&fd, &addr)?;
    Ok(fd)
}

/// A `SOCK_DGRAM` socket bound to the abstract name `name` and connected to itself,
/// close-on-exec and non-blocking: what is sent on it is received from it, by whichever
/// process holding the descriptor reads first. Once it is connected to itself, the kernel
/// refuses datagrams from any other socket (`EPERM`: a connected datagram socket takes only its
/// peer's), so only holders of the descriptor can write to it; whatever arrived between `bind`
/// and `connect` is read off and dropped before it is returned. Its send buffer is the
/// capacity: a socket connected to itself is not held to `net.unix.max_dgram_qlen`.
/// [`io::ErrorKind::AddrInUse`] when the name is taken.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html), "Abstract sockets",
///   [`connect(2)`](https://man7.org/linux/man-pages/man2/connect.2.html)
pub(crate) fn loopback_datagram(name: &[u8]) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new_abstract_name(name)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::connect(&fd, &addr)?;
    // Strays sent to the name before the connect: read off (descriptors they carried are
    // closed with them) until none is left.
    let mut byte = [0u8; 1];
    loop {
        match rustix::net::recv(&fd, &mut byte, rustix::net::RecvFlags::DONTWAIT) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(fd),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `accept4(listener, SOCK_CLOEXEC | SOCK_NONBLOCK)`; `Ok(None)` when nobody waits.
pub(crate) fn accept(listener: impl AsFd) -> io::Result<Option<OwnedFd>> {
    match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}
