//! Thin wrappers over the Linux calls the core needs. Everything here is safe Rust over rustix,
//! except `peercred` (a raw `SO_PEERCRED` read, where rustix's typed answer cannot hold pid 0);
//! the other unsafe spot in this crate that touches raw descriptor numbers is `bootstrap`.
//! Process identities ([`identity`]) live here too: reading `/proc` is an OS service that both
//! `wait` (the robust lock) and `proc` need.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

pub(crate) mod abstract_socket;
pub(crate) mod affinity;
pub(crate) mod fifo;
pub(crate) mod file_lock;
pub mod identity;
pub(crate) mod nofile;
mod peercred;
pub(crate) use peercred::peer_ucred;

/// Most descriptors Linux accepts in one `sendmsg` (`SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_SENDMSG: usize = 253;

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC)`.
///
/// # References
/// - [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html)
pub(crate) fn stream_socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = nofile::creating(|| {
        Ok(rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?)
    })?;
    // A larger send buffer lets a large message go out in fewer writes and wake-ups. The kernel
    // caps it at `net.core.wmem_max`; failing to raise it only costs speed.
    for end in [&a, &b] {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(end, STREAM_SEND_BUFFER);
    }
    Ok((a, b))
}

/// Send buffer requested for channel sockets.
const STREAM_SEND_BUFFER: usize = 1 << 20;

/// `sendmsg(2)` of `bytes` with `fds` attached as `SCM_RIGHTS`; never raises `SIGPIPE`.
/// Without descriptors it is a plain `send(2)`, which the kernel handles with less copying.
///
/// # References
/// - [`sendmsg(2)`](https://man7.org/linux/man-pages/man2/sendmsg.2.html),
///   [`send(2)`](https://man7.org/linux/man-pages/man2/send.2.html),
///   [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html)
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_SENDMSG);
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    if fds.is_empty() {
        return Ok(rustix::net::send(socket, bytes, flags)?);
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SENDMSG))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("descriptor control buffer too small"));
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        flags,
    )?)
}

/// `sendmsg(2)` of the slices in `bufs`, in order, without descriptors; never raises `SIGPIPE`.
///
/// # References
/// - [`sendmsg(2)`](https://man7.org/linux/man-pages/man2/sendmsg.2.html)
pub(crate) fn send_vectored(socket: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    Ok(rustix::net::sendmsg(
        socket,
        bufs,
        &mut SendAncillaryBuffer::default(),
        flags,
    )?)
}

/// Result of [`recv_with_fds`].
pub(crate) struct Received {
    /// Bytes read; zero means the peer closed.
    pub bytes: usize,
    /// The datagram was longer than `buf` (only for packet sockets; the rest is lost).
    pub truncated: bool,
    /// The kernel dropped descriptors because our control buffer or descriptor table was full.
    pub fds_truncated: bool,
}

/// `recvmsg(2)` into `buf`, pushing received descriptors (close-on-exec) onto `fds`.
///
/// # References
/// - [`recvmsg(2)`](https://man7.org/linux/man-pages/man2/recvmsg.2.html)
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut impl Extend<OwnedFd>,
) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_SENDMSG))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let msg = rustix::net::recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// `recv(2)` into the spare capacity of `buf` (no zero-filling), which grows by what was read.
/// For stream bytes that carry no descriptors: any that came along would be discarded.
///
/// # References
/// - [`recv(2)`](https://man7.org/linux/man-pages/man2/recv.2.html)
pub(crate) fn recv_into_spare(socket: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<Received> {
    let (bytes, _) = rustix::net::recv(
        socket,
        rustix::buffer::spare_capacity(buf),
        RecvFlags::DONTWAIT,
    )?;
    Ok(Received {
        bytes,
        truncated: false,
        fds_truncated: false,
    })
}

/// Which readiness [`wait_ready`] waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// Blocks in `poll(2)` until `fd` is ready in `direction` or `deadline` passes.
/// Returns `false` on timeout. Hang-up and errors count as ready: the next call reports them.
///
/// # References
/// - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)
pub(crate) fn wait_ready(
    fd: BorrowedFd<'_>,
    direction: Direction,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let events = match direction {
        Direction::Read => PollFlags::IN,
        Direction::Write => PollFlags::OUT,
    };
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                }))
            }
        };
        let mut pfd = [PollFd::new(&fd, events)];
        match rustix::event::poll(&mut pfd, timeout.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the peer of the connected socket `fd` has closed it (its every copy), without
/// waiting: `poll(2)` with a zero timeout reports `POLLHUP`. A peer that only shut down its
/// writing half does not count.
///
/// # References
/// - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::new(&fd, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(1))
        && pfd[0].revents().contains(PollFlags::HUP)
}

/// Identity of the running executable: `(st_dev, st_ino)` of `/proc/self/exe`. It cannot
/// change while the process runs, so it is read once.
pub(crate) fn exe_identity() -> io::Result<(u64, u64)> {
    static IDENTITY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return Ok(*id);
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/proc/self/exe")?;
    Ok(*IDENTITY.get_or_init(|| (meta.dev(), meta.ino())))
}

/// Whether `fd` is a socket (`fstat(2)`).
pub(crate) fn is_socket(fd: impl AsFd) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .unwrap_or(false)
}

/// 128 bits nobody outside this process can predict.
pub fn random_key() -> [u64; 2] {
    // std seeds every `RandomState` from the OS's random source (getrandom), so hashes under a
    // fresh one are values nobody outside this process can predict.
    use std::hash::BuildHasher;
    let secret = std::hash::RandomState::new();
    [secret.hash_one(0u8), secret.hash_one(1u8)]
}
