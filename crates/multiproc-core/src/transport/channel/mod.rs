//! The untyped channel: frames of bytes plus descriptors over a Unix stream socket.
//!
//! [`RawSender`] batches frames in a buffer and writes them with as few `sendmsg` calls as the
//! descriptors allow; [`RawReceiver`] reads large chunks and hands out whole frames. Both have an
//! async face (tokio readiness) and a blocking face (`poll(2)`), over the same state, so an end
//! can be used from either kind of code. For bulk bytes, [`RawSender::send_bytes`] writes a frame
//! from the caller's slice and [`RawReceiver::poll_recv_bytes`] reads a large frame into a `Vec`
//! of its own, so neither copies the payload in user space.
//!
//! One job per file: [`RawSender`] (`sender/`: the outbox of batched frames, the zero-copy
//! [`SendBytes`] future, the thread that finishes what a dropped sender still owes) and
//! [`RawReceiver`] (`receiver/`: frame assembly in the receive buffer, the spin before a park).

use std::io;
use std::sync::Arc;

use crate::SharedFd;
use crate::sys;
use crate::transport::socket::Socket;

mod receiver;
mod sender;
#[cfg(test)]
mod tests;

pub use crate::message::Payload;
pub use receiver::{RawReceiver, TryRecv};
pub use sender::{RawSender, SendBytes};

/// Buffers above this size are released once empty, so one huge message does not pin memory.
const KEEP_CAPACITY: usize = 4 << 20;

/// Creates a connected pair of Unix stream sockets for a channel.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # References
/// - [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html)
pub fn socket_pair() -> io::Result<(SharedFd, SharedFd)> {
    let (a, b) = sys::stream_socketpair()?;
    Ok((SharedFd::new(a), SharedFd::new(b)))
}

/// Splits one socket into its sending and receiving halves, which share a single tokio
/// registration.
///
/// # Errors
/// When `fd` is not a socket.
pub fn split(fd: SharedFd) -> io::Result<(RawSender, RawReceiver)> {
    if !sys::is_socket(&fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "channel descriptor {} is not a socket",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ),
        ));
    }
    let socket = Arc::new(Socket::new(fd));
    Ok((
        RawSender::with_socket(socket.clone()),
        RawReceiver::with_socket(socket),
    ))
}
