//! Atomic packets of bytes plus descriptors over a Unix packet socket that any number of
//! senders and receivers, in any number of processes, share: a `SOCK_SEQPACKET` pair
//! ([`packet_pair`]: one end sends, the other receives) or one `SOCK_DGRAM` socket connected to
//! itself ([`packet_loopback`]: one descriptor both sends and receives).
//!
//! This is the transport under the cross-process `Queue`, which owns everything a packet
//! *means* (its encoding, its tickets, its errors); this module only moves bytes and
//! descriptors. Every packet is one `sendmsg(2)`: the kernel delivers it whole to exactly one
//! receiver (it arbitrates between readers), and a sender or receiver killed in the middle of a
//! call leaves nothing half-written behind. Descriptors ride on the packet as `SCM_RIGHTS`.
//!
//! A payload larger than [`INLINE_LIMIT`] is *spilled*: its bytes go into a fresh memfd, and
//! the packet carries only the length and the memfd. This keeps the socket buffer for many
//! small packets, lets one payload be far larger than the socket buffer, and lets the sender
//! exit right after a send (the data lives in the memfd, owned by the packet in flight).
//!
//! # Packet format
//! `header` (the caller's, at most [`MAX_HEADER_LEN`] bytes, opaque here) then
//! - inline: `[TAG_INLINE] payload`, descriptors = the payload's;
//! - spilled: `[TAG_SPILL] len: u64 LE`, descriptors = `[memfd, the payload's...]`.
//!
//! Plain payloads too large to travel inline can also be kept out of the socket altogether,
//! in a [`PacketLog`]: a sparse memfd used as shared storage that no socket buffer limits.
//!
//! A zero-length read is end-of-stream (the sending side was shut down and every packet was
//! read) or an empty packet written by something else; they are told apart by whether the
//! socket is shut down, and, where it matters, by what the send end still has queued
//! ([`PacketSocket::unread_sent`]). (A shut-down loopback socket has no end-of-stream read: once
//! drained it reads as empty; its users learn of the end from their own shared state.)
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};
use serde::Serialize;

use crate::SharedFd;
use crate::shm::SharedRegion;
use crate::sys::{self, Direction, MAX_FDS_PER_SENDMSG};
use crate::transport::socket::Socket;

/// Largest payload sent inside the packet itself; larger ones are spilled to a memfd.
pub const INLINE_LIMIT: usize = 64 << 10;

/// Longest header a caller may put in front of a packet (the receive buffer has room for it
/// and no more, so an oversized packet shows up as truncated).
pub const MAX_HEADER_LEN: usize = 17;

const TAG_INLINE: u8 = 0xA1;
const TAG_SPILL: u8 = 0xA2;
const SPILL_HEADER_LEN: usize = 1 + 8;
/// Receive buffer: one byte more than the largest valid packet, so an oversized packet shows up
/// as truncated instead of fitting by accident.
const RECV_BUF_LEN: usize = MAX_HEADER_LEN + 1 + INLINE_LIMIT + 1;
/// Send buffer we ask for (the kernel doubles it; without privileges it is clamped to
/// `net.core.wmem_max`).
const WANTED_SNDBUF: usize = 4 << 20;

/// Creates a connected `SOCK_SEQPACKET` pair `(send_end, recv_end)` for a packet queue: packets
/// written to `send_end` are read from `recv_end`.
///
/// The send end's buffer is raised as far as the system allows (`SO_SNDBUF`), since it is the
/// capacity shared by every sender.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # References
/// - [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html),
///   [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html)
pub fn packet_pair() -> io::Result<(SharedFd, SharedFd)> {
    let (send, recv) = crate::sys::nofile::creating(|| {
        Ok(rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?)
    })?;
    raise_send_buffer(&send);
    Ok((SharedFd::new(send), SharedFd::new(recv)))
}

/// Creates one packet socket that both sends and receives, shared by every sender and receiver
/// in every process that holds it: a `SOCK_DGRAM` socket bound to a random abstract name
/// (`multiproc/<euid>/packet/<128 random bits>`) and connected to itself. Half the
/// descriptors of a [`packet_pair`]; the kernel refuses packets from every other socket once
/// it is connected, and packets that reached the name before are dropped. Its send buffer,
/// raised as for a pair, is the capacity shared by every sender.
///
/// # Errors
/// When the process is out of descriptors, or the socket cannot be bound or connected.
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (abstract names, connected
///   datagram sockets)
pub fn packet_loopback() -> io::Result<SharedFd> {
    let euid = rustix::process::geteuid().as_raw();
    let fd = crate::sys::nofile::creating(|| {
        loop {
            let [a, b] = crate::sys::random_key();
            let name = format!("multiproc/{euid}/packet/{a:016x}{b:016x}");
            match crate::sys::abstract_socket::loopback_datagram(name.as_bytes()) {
                // 128 random bits taken already: draw again.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
                other => return other,
            }
        }
    })?;
    raise_send_buffer(&fd);
    Ok(SharedFd::new(fd))
}

/// Raises a packet socket's send buffer as far as the system allows: privileged processes may
/// exceed `wmem_max`, others get at most `wmem_max`. Best effort.
fn raise_send_buffer(fd: &OwnedFd) {
    if rustix::net::sockopt::set_socket_send_buffer_size_force(fd, WANTED_SNDBUF).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, WANTED_SNDBUF);
    }
}

/// A payload and its descriptors, ready to send; a large payload already lives in a memfd.
///
/// Sending borrows the packet, so a send that could not complete leaves it with the caller.
pub struct Packet {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Packet {
    /// Most descriptors a packet with a payload of `len` bytes can carry: one `sendmsg`'s worth,
    /// less the slot of the memfd when it is spilled.
    pub fn max_fds(len: usize) -> usize {
        if len <= INLINE_LIMIT {
            MAX_FDS_PER_SENDMSG
        } else {
            MAX_FDS_PER_SENDMSG - 1
        }
    }

    /// `payload` with `fds`, spilled to a memfd above [`INLINE_LIMIT`].
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for more than [`max_fds`](Self::max_fds) descriptors;
    /// otherwise when the memfd cannot be made or filled.
    pub fn new(payload: &[u8], mut fds: Vec<OwnedFd>) -> io::Result<Self> {
        if fds.len() > Self::max_fds(payload.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} descriptors in one packet; at most {} fit",
                    fds.len(),
                    Self::max_fds(payload.len())
                ),
            ));
        }
        if payload.len() <= INLINE_LIMIT {
            let mut bytes = Vec::with_capacity(1 + payload.len());
            bytes.push(TAG_INLINE);
            bytes.extend_from_slice(payload);
            return Ok(Self { bytes, fds });
        }
        fds.insert(0, spill(payload)?);
        let mut bytes = Vec::with_capacity(SPILL_HEADER_LEN);
        bytes.push(TAG_SPILL);
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        Ok(Self { bytes, fds })
    }

    /// The payload when it is plain bytes (not spilled, no descriptors): what a transport other
    /// than the socket, such as a [`PacketLog`], can carry by copying.
    pub fn plain_bytes(&self) -> Option<&[u8]> {
        (self.bytes[0] == TAG_INLINE && self.fds.is_empty()).then(|| &self.bytes[1..])
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("spilled", &(self.bytes[0] == TAG_SPILL))
            .field("fds", &self.fds.len())
            .finish()
    }
}

/// Writes `bytes` into a new memfd (`memfd_create(2)`, close-on-exec).
///
/// # References
/// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
fn spill(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("multiproc-message", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    Ok(file.into())
}

/// Shared storage for plain messages outside any socket: the bytes of a sparse memfd past its
/// mapped part, that messages are appended to, read back from, and freed from page by page
/// once every byte of a page was read.
///
/// A queue keeps here the messages its socket cannot take (too large to travel inline, or the
/// socket buffer is full), so how much it holds is bounded by memory, not by a socket buffer,
/// and a producer may exit right after appending. Every handle (in every process) shares the
/// memfd and a small table of counters in its mapped part:
///
/// - **Appending** reserves the message's bytes at the end with one `fetch_add` on a shared
///   offset, then `pwrite`s them. Messages are packed (a 200-byte message takes 200 bytes), and
///   offsets only grow (a 64-bit file offset does not run out), so no byte is written twice.
/// - **Releasing** a message that was read counts its bytes as consumed: the pages wholly
///   inside it are punched at once (`fallocate(PUNCH_HOLE)`); for the first and last page,
///   which it may share with its neighbours, it adds its share to that page's count, and the
///   release that brings a page to 4096 punches it. So the log holds about the bytes not yet
///   read, whatever order readers release in.
/// - Counts live in a table of [`COUNTERS`](Self::COUNTERS) words, page `p` in word
///   `p % COUNTERS`, tagged with `p / COUNTERS`. A count found with an older tag belongs to a
///   page that was never finished (a process died between appending and publishing, or between
///   reading and releasing): it is taken over, and that old page stays allocated until the log
///   is dropped. A release for a page whose word has a newer tag counts nowhere: that page
///   leaks the same way. Neither can ever free a page holding unread bytes: a page is punched
///   only when its own bytes, each appended once and released at most once, add up to a page.
///
/// The log lives in a region made with [`SharedRegion::new_growable`]: the counters take
/// [`TABLE_BYTES`](Self::TABLE_BYTES) of the mapped part ([`in_file`](Self::in_file) says
/// where), and the messages' bytes go to the file past the mapping, from the first page
/// boundary at or after the region's end. So a queue's state, ring and log are one memfd, one
/// descriptor.
#[derive(Clone)]
pub struct PacketLog {
    /// The region's memfd, where the messages' bytes go.
    fd: SharedFd,
    counts: SharedRegion,
    /// Where the counters start in `counts`.
    base: usize,
    /// The file offset of the log's byte 0: past the mapping, page-aligned.
    data_at: u64,
}

impl PacketLog {
    /// The unit of memory the log frees.
    pub const PAGE: u64 = 4096;
    /// Pages whose counts the table holds at once (the log's backlog can be any size; see the
    /// type docs).
    pub const COUNTERS: u64 = 1 << 16;
    const OFF_END: usize = 0;
    const OFF_COUNTS: usize = 64;
    const TAG_SHIFT: u32 = 16;
    /// Bytes of shared memory the counters take.
    pub const TABLE_BYTES: usize = Self::OFF_COUNTS + 8 * Self::COUNTERS as usize;

    /// Creates an empty log in a region of its own (the counters, then the data).
    ///
    /// # Errors
    /// When the region cannot be made (out of descriptors or memory).
    ///
    /// # References
    /// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    pub fn new() -> io::Result<Self> {
        Self::in_file(SharedRegion::new_growable(Self::TABLE_BYTES)?, 0)
    }

    /// The log whose counters live at byte `at` of `region` ([`TABLE_BYTES`](Self::TABLE_BYTES)
    /// of it, zeroed when the log is new) and whose data follows the mapping in the same memfd,
    /// which must be able to grow ([`SharedRegion::new_growable`]; a region sealed against
    /// growing takes no message). The process that makes the region starts the log with this,
    /// and every process it is sent to rebuilds the same log with it from the same region.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidData`] when the table does not fit the region at `at`
    /// (8-aligned).
    pub fn in_file(region: SharedRegion, at: usize) -> io::Result<Self> {
        if !at.is_multiple_of(8) || region.len() < at.saturating_add(Self::TABLE_BYTES) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "queue log counters at {at} do not fit a region of {} bytes: they need {}",
                    region.len(),
                    Self::TABLE_BYTES
                ),
            ));
        }
        Ok(Self {
            fd: region.shared_fd().clone(),
            data_at: (region.len() as u64).next_multiple_of(Self::PAGE),
            counts: region,
            base: at,
        })
    }

    /// The memfd (the region's).
    pub fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Bytes of memory the log's data holds now: the allocated parts of the file past the
    /// mapping (`lseek(2)` with `SEEK_DATA`/`SEEK_HOLE`). For statistics and tests.
    ///
    /// # Errors
    /// When `lseek` fails other than by finding no more data.
    ///
    /// # References
    /// - [`lseek(2)`](https://man7.org/linux/man-pages/man2/lseek.2.html)
    pub fn resident(&self) -> io::Result<u64> {
        use rustix::fs::SeekFrom;
        let mut at = self.data_at;
        let mut held = 0;
        loop {
            let data = match rustix::fs::seek(&self.fd, SeekFrom::Data(at)) {
                Ok(data) => data,
                Err(rustix::io::Errno::NXIO) => return Ok(held),
                Err(e) => return Err(e.into()),
            };
            let hole = rustix::fs::seek(&self.fd, SeekFrom::Hole(data))?;
            // Whole pages: the file's end, an implicit hole, need not be on a page boundary.
            held += hole.next_multiple_of(Self::PAGE) - data / Self::PAGE * Self::PAGE;
            at = hole;
        }
    }

    /// The file offset of the log's byte `offset`.
    fn at(&self, offset: u64) -> io::Result<u64> {
        self.data_at
            .checked_add(offset)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "log offset overflows"))
    }

    /// Appends `bytes` (`pwrite(2)`) and returns the offset to read them back from.
    ///
    /// # Errors
    /// When the system is out of memory, or the file would exceed the largest file size;
    /// nothing is kept then.
    pub fn append(&self, bytes: &[u8]) -> io::Result<u64> {
        let len = bytes.len() as u64;
        let offset = self
            .counts
            .atomic_u64(self.base + Self::OFF_END)
            .fetch_add(len, Ordering::SeqCst);
        let Some(at) = self.data_at.checked_add(offset) else {
            self.release(offset, bytes.len());
            return Err(io::Error::other("the queue log's offsets are used up"));
        };
        let mut done = 0;
        while done < bytes.len() {
            match rustix::io::pwrite(&self.fd, &bytes[done..], at.saturating_add(done as u64)) {
                Ok(0) => {
                    self.release(offset, bytes.len());
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // The reserved bytes count as read, so their pages can go.
                    self.release(offset, bytes.len());
                    return Err(e.into());
                }
            }
        }
        Ok(offset)
    }

    /// Reads the `len` bytes appended at `offset` (`pread(2)`).
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] when the log ends before; other errors of `pread`.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let at = self.at(offset)?;
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match rustix::io::pread(&self.fd, &mut buf[done..], at.saturating_add(done as u64)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(buf)
    }

    /// Marks the `len` bytes appended at `offset` as read, freeing every page all of whose bytes
    /// now are. Best effort: a failure to free costs memory, never data.
    pub fn release(&self, offset: u64, len: usize) {
        let Some(end) = offset.checked_add(len as u64).filter(|_| len > 0) else {
            return;
        };
        let (first, last) = (offset / Self::PAGE, (end - 1) / Self::PAGE);
        if first == last {
            self.consumed(first, len as u64);
            return;
        }
        self.consumed(first, (first + 1) * Self::PAGE - offset);
        if last > first + 1 {
            // Pages wholly inside this message: nobody else has bytes there.
            if let Ok(at) = self.at((first + 1) * Self::PAGE) {
                let _ = crate::shm::punch_hole(&self.fd, at, (last - first - 1) * Self::PAGE);
            }
        }
        self.consumed(last, end - last * Self::PAGE);
    }

    /// Adds `bytes` read to the count of page `page`; punches the page once all of it was read.
    fn consumed(&self, page: u64, bytes: u64) {
        let word = self
            .counts
            .atomic_u64(self.base + Self::OFF_COUNTS + 8 * (page % Self::COUNTERS) as usize);
        let tag = page / Self::COUNTERS;
        let mut current = word.load(Ordering::SeqCst);
        loop {
            let (seen_tag, count) = (current >> Self::TAG_SHIFT, current & 0xffff);
            let count = match seen_tag.cmp(&tag) {
                std::cmp::Ordering::Equal => count + bytes,
                std::cmp::Ordering::Less => bytes,
                // The word already counts a later page: this one stays allocated.
                std::cmp::Ordering::Greater => return,
            };
            let next = (tag << Self::TAG_SHIFT) | count.min(Self::PAGE);
            match word.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    if count >= Self::PAGE
                        && let Ok(at) = self.at(page * Self::PAGE)
                    {
                        let _ = crate::shm::punch_hole(&self.fd, at, Self::PAGE);
                    }
                    return;
                }
                Err(now) => current = now,
            }
        }
    }
}

impl fmt::Debug for PacketLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PacketLog").field(&self.fd).finish()
    }
}

/// What travels when a [`PacketLog`] is sent to another process: its region (whose memfd
/// holds the data too) and where the counters are.
#[derive(serde::Serialize, serde::Deserialize)]
struct LogWire {
    counts: SharedRegion,
    base: u64,
}

impl Serialize for PacketLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LogWire {
            counts: self.counts.clone(),
            base: self.base as u64,
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PacketLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = <LogWire as serde::Deserialize>::deserialize(deserializer)?;
        let base = usize::try_from(wire.base).unwrap_or(usize::MAX);
        Self::in_file(wire.counts, base).map_err(serde::de::Error::custom)
    }
}

/// Why a packet could not be received. After any of these the socket stays usable: the faulty
/// packet was taken off the socket and discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacketRecvError {
    /// The payload is larger than this end accepts; it was discarded.
    #[error("incoming message of {len} bytes exceeds the limit of {limit} bytes; discarded")]
    TooLarge {
        /// Announced size in bytes.
        len: usize,
        /// This end's limit.
        limit: usize,
    },
    /// The packet is not one of ours (or its memfd is damaged); it was discarded.
    #[error("corrupt packet: {reason}; discarded")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// Descriptors sent with the packet did not arrive (this process is out of descriptors?);
    /// the packet was discarded.
    #[error("descriptors sent with a message were lost (out of descriptors?); message discarded")]
    LostDescriptors,
    /// The socket failed.
    #[error("socket error while receiving")]
    Io(#[source] io::Error),
}

/// What one [`PacketSocket::try_recv`] took off the socket.
#[derive(Debug)]
pub enum PacketRecv {
    /// A packet, its payload not opened yet.
    Packet(Incoming),
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// What [`PacketSocket::peek`] saw at the front of the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketPeek {
    /// A packet, whose first this many bytes were copied out.
    Bytes(usize),
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// A packet taken off the socket: the caller's header and the payload, not parsed yet.
pub struct Incoming {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    fds_lost: bool,
}

impl Incoming {
    /// The packet's bytes as received: the caller's header, then the payload's format.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload after a header of `header_len` bytes and its descriptors: read from its
    /// memfd if it was spilled.
    ///
    /// # Errors
    /// [`PacketRecvError`] when the payload is larger than `max_size`, damaged, or its
    /// descriptors were lost on the way.
    pub fn open(
        mut self,
        header_len: usize,
        max_size: usize,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), PacketRecvError> {
        if self.fds_lost {
            return Err(PacketRecvError::LostDescriptors);
        }
        self.bytes.drain(..header_len.min(self.bytes.len()));
        parse(self.bytes, self.fds, max_size)
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("len", &self.bytes.len())
            .field("fds", &self.fds.len())
            .finish()
    }
}

/// One end of a packet socket pair, registered with tokio on first async use.
///
/// `&self` methods may be called from many tasks at once: every send and receive is a single
/// atomic system call.
pub struct PacketSocket {
    socket: Socket,
}

impl fmt::Debug for PacketSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PacketSocket")
            .field(self.socket.shared_fd())
            .finish()
    }
}

thread_local! {
    static RECV_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl PacketSocket {
    /// Wraps one end made by [`packet_pair`] (or received from another process).
    ///
    /// # Errors
    /// When `fd` is not a socket.
    pub fn new(fd: SharedFd) -> io::Result<Self> {
        if !sys::is_socket(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "queue descriptor {} is not a socket",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                ),
            ));
        }
        Ok(Self {
            socket: Socket::new(fd),
        })
    }

    /// The underlying descriptor.
    pub fn shared_fd(&self) -> &SharedFd {
        self.socket.shared_fd()
    }

    /// Sends `header` followed by `packet` as one packet, if the socket has room, without
    /// waiting: sent whole or not at all.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when the socket buffer is full;
    /// [`io::ErrorKind::BrokenPipe`] once the send end was [shut down](Self::shutdown);
    /// [`io::ErrorKind::InvalidInput`] for a header longer than [`MAX_HEADER_LEN`].
    pub fn try_send(&self, header: &[u8], packet: &Packet) -> io::Result<()> {
        if header.len() > MAX_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "packet header too long",
            ));
        }
        let mut bytes = Vec::with_capacity(header.len() + packet.bytes.len());
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&packet.bytes);
        let fds: Vec<BorrowedFd<'_>> = packet.fds.iter().map(|f| f.as_fd()).collect();
        loop {
            match sys::send_with_fds(self.socket.as_fd(), &bytes, &fds) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies the first bytes of the packet at the front of the socket into `buf` without
    /// taking it (`MSG_PEEK`), so that a reader can leave a packet that is not for it where
    /// it is.
    ///
    /// # Errors
    /// Only when the socket fails.
    ///
    /// # References
    /// - [`recv(2)`](https://man7.org/linux/man-pages/man2/recv.2.html) (`MSG_PEEK`)
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<PacketPeek> {
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let n = loop {
            match rustix::net::recv(self.socket.as_fd(), &mut *buf, flags) {
                Ok((n, _)) => break n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(PacketPeek::Empty),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 && self.is_shutdown() {
            return Ok(PacketPeek::Closed);
        }
        Ok(PacketPeek::Bytes(n.min(buf.len())))
    }

    /// Takes one packet off the socket if one is waiting, without waiting (one `recvmsg(2)`).
    /// The payload stays unparsed until [`Incoming::open`].
    ///
    /// # Errors
    /// [`PacketRecvError::Io`] when the socket fails; [`PacketRecvError::Corrupt`] for an
    /// empty packet on a socket not shut down, or one too large to be ours (it was discarded).
    pub fn try_recv(&self) -> Result<PacketRecv, PacketRecvError> {
        let mut fds = Vec::new();
        let raw = RECV_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < RECV_BUF_LEN {
                buf.resize(RECV_BUF_LEN, 0);
            }
            let raw = loop {
                match sys::recv_with_fds(self.socket.as_fd(), &mut buf, &mut fds) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            raw.map(|r| {
                let bytes = buf[..r.bytes.min(buf.len())].to_vec();
                (r, bytes)
            })
        });
        let (raw, bytes) = match raw {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(PacketRecv::Empty),
            Err(e) => return Err(PacketRecvError::Io(e)),
        };
        if raw.bytes == 0 {
            // End of stream, or an empty packet (which a multiproc sender never sends).
            if self.is_shutdown() {
                return Ok(PacketRecv::Closed);
            }
            return Err(corrupt("empty packet"));
        }
        if raw.truncated {
            return Err(corrupt(format!(
                "packet larger than {} bytes",
                RECV_BUF_LEN - 1
            )));
        }
        Ok(PacketRecv::Packet(Incoming {
            bytes,
            fds,
            fds_lost: raw.fds_truncated,
        }))
    }

    /// Waits until the socket has room to send (or was shut down), on a registration with the
    /// current tokio runtime made for this wait alone (a duplicate descriptor, closed when the
    /// wait ends): a socket that filled up once keeps no descriptor more than it had. For a
    /// socket whose senders seldom wait, such as a queue's.
    ///
    /// # Errors
    /// Outside a tokio runtime, or when out of descriptors.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only drops its registration.
    pub async fn writable_once(&self) -> io::Result<()> {
        let dup = self.socket.shared_fd().try_clone_owned()?;
        // A fresh edge-triggered registration reports the readiness the socket has now, so
        // room made before it was registered is not missed.
        // SAFETY: the `AsyncFd` owns `dup` for its whole life, so the descriptor stays open and
        // refers to the same file description while it is registered; `as_raw_fd` is constant.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let _ready = afd.writable().await?;
        Ok(())
    }

    /// The socket's registration with the current tokio runtime, to wait for room to send.
    ///
    /// # Errors
    /// Outside a tokio runtime.
    pub fn writable_registration(&self) -> io::Result<&tokio::io::unix::AsyncFd<SharedFd>> {
        self.socket.writable()
    }

    /// The socket's registration with the current tokio runtime, to wait for packets to
    /// arrive (then [`try_recv`](Self::try_recv); clear the readiness when it finds nothing).
    ///
    /// # Errors
    /// Outside a tokio runtime.
    pub fn readable_registration(&self) -> io::Result<&tokio::io::unix::AsyncFd<SharedFd>> {
        self.socket.readable()
    }

    /// Blocks the thread until the socket has room to send or `deadline` passes (`Ok(false)`).
    ///
    /// # Errors
    /// When `poll(2)` fails.
    pub fn blocking_wait_writable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline)
    }

    /// Bytes of the packets sent on this (sending) end that no receiver has taken yet
    /// (`SIOCOUTQ`: the memory they hold, so an empty packet counts too). Zero means the
    /// receiving end's queue is empty.
    ///
    /// # Errors
    /// When the ioctl fails.
    ///
    /// # References
    /// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SIOCOUTQ`)
    pub fn unread_sent(&self) -> io::Result<usize> {
        use std::os::fd::AsRawFd as _;
        let mut queued: libc::c_int = 0;
        // SAFETY: `SIOCOUTQ` (`TIOCOUTQ`) writes one `c_int` through its argument, which points
        // to `queued`, alive and writable for the call; the descriptor is open (borrowed).
        let r = unsafe {
            libc::ioctl(
                self.socket.as_fd().as_raw_fd(),
                libc::TIOCOUTQ,
                &raw mut queued,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(queued).unwrap_or(0))
    }

    /// Shuts the socket down for both directions (`shutdown(2)`, `SHUT_RDWR`). Called on the send
    /// end, this closes the pair for every process at once: sends fail with `BrokenPipe`, blocked
    /// senders and receivers wake, and receivers read what is left, then end-of-stream.
    ///
    /// # Errors
    /// When the call fails.
    ///
    /// # References
    /// - [`shutdown(2)`](https://man7.org/linux/man-pages/man2/shutdown.2.html)
    pub fn shutdown(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(self.socket.as_fd(), Shutdown::Both)?)
    }

    /// True once this end was [shut down](Self::shutdown) (by any process): `poll(2)` reports
    /// `POLLHUP`.
    fn is_shutdown(&self) -> bool {
        let mut pfd = [PollFd::new(&self.socket, PollFlags::OUT)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(n) if n > 0 && pfd[0].revents().contains(PollFlags::HUP))
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

fn corrupt(reason: impl Into<String>) -> PacketRecvError {
    PacketRecvError::Corrupt {
        reason: reason.into(),
    }
}

/// Turns a payload's format into its bytes and descriptors, reading a spilled one from its
/// memfd.
fn parse(
    mut bytes: Vec<u8>,
    mut fds: Vec<OwnedFd>,
    max_size: usize,
) -> Result<(Vec<u8>, Vec<OwnedFd>), PacketRecvError> {
    match bytes.first().copied() {
        Some(TAG_INLINE) => {
            let len = bytes.len() - 1;
            if len > max_size {
                return Err(PacketRecvError::TooLarge {
                    len,
                    limit: max_size,
                });
            }
            bytes.remove(0);
            Ok((bytes, fds))
        }
        Some(TAG_SPILL) => {
            if bytes.len() != SPILL_HEADER_LEN {
                return Err(corrupt(format!("spill header of {} bytes", bytes.len())));
            }
            let len = u64::from_le_bytes(bytes[1..].try_into().expect("8 bytes"));
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > max_size {
                return Err(PacketRecvError::TooLarge {
                    len,
                    limit: max_size,
                });
            }
            if fds.is_empty() {
                return Err(corrupt("spilled message without its memfd"));
            }
            let file = File::from(fds.remove(0));
            let stat =
                rustix::fs::fstat(&file).map_err(|e| corrupt(format!("cannot stat memfd: {e}")))?;
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                != rustix::fs::FileType::RegularFile
            {
                return Err(corrupt("spilled message is not in a regular file"));
            }
            if (stat.st_size as u64) < len as u64 {
                return Err(corrupt(format!(
                    "memfd holds {} bytes, header says {len}",
                    stat.st_size
                )));
            }
            let mut payload = vec![0; len];
            file.read_exact_at(&mut payload, 0)
                .map_err(|e| corrupt(format!("cannot read memfd: {e}")))?;
            Ok((payload, fds))
        }
        Some(tag) => Err(corrupt(format!("unknown packet tag {tag:#x}"))),
        None => Err(corrupt("empty packet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (PacketSocket, PacketSocket) {
        let (a, b) = packet_pair().unwrap();
        (PacketSocket::new(a).unwrap(), PacketSocket::new(b).unwrap())
    }

    /// A packet of the message `value` (postcard plus descriptors), as a queue would make it.
    fn packet<T: Serialize + ?Sized>(value: &T) -> Packet {
        let mut bytes = Vec::new();
        let fds = crate::message::encode_into(value, &mut bytes).unwrap();
        Packet::new(&bytes, fds).unwrap()
    }

    /// One receive, opened as a header-less packet of at most `max_size` bytes: `Ok(None)` for
    /// nothing waiting, `Ok(Some(Err(())))` at the end.
    #[allow(clippy::type_complexity)]
    fn recv(
        rx: &PacketSocket,
        max_size: usize,
    ) -> Result<Option<Result<(Vec<u8>, Vec<OwnedFd>), ()>>, PacketRecvError> {
        Ok(match rx.try_recv()? {
            PacketRecv::Packet(p) => Some(Ok(p.open(0, max_size)?)),
            PacketRecv::Empty => None,
            PacketRecv::Closed => Some(Err(())),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(got: (Vec<u8>, Vec<OwnedFd>)) -> T {
        crate::message::decode(&got.0, got.1).unwrap()
    }

    const LIMIT: usize = 64 << 20;

    #[test]
    fn inline_and_spilled_round_trip() {
        let (tx, rx) = pair();
        let small = packet(&(1u32, "hi".to_string()));
        assert!(small.plain_bytes().is_some(), "inline");
        let big_value = vec![7u8; INLINE_LIMIT * 3];
        let big = packet(&big_value);
        assert!(big.plain_bytes().is_none(), "spilled");
        tx.try_send(&[], &small).unwrap();
        tx.try_send(b"hd", &big).unwrap();
        drop(big);
        let m = recv(&rx, LIMIT).unwrap().unwrap().unwrap();
        assert_eq!(decode::<(u32, String)>(m), (1, "hi".to_string()));
        let PacketRecv::Packet(p) = rx.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(&p.bytes()[..2], b"hd");
        assert_eq!(decode::<Vec<u8>>(p.open(2, LIMIT).unwrap()), big_value);
        assert!(recv(&rx, LIMIT).unwrap().is_none());
    }

    #[test]
    fn limits_are_enforced_on_both_sides() {
        let (tx, rx) = pair();
        let fds: Vec<OwnedFd> = (0..=MAX_FDS_PER_SENDMSG)
            .map(|_| rustix::io::dup(rx.shared_fd()).unwrap())
            .collect();
        let e = Packet::new(b"x", fds).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(Packet::max_fds(INLINE_LIMIT + 1), MAX_FDS_PER_SENDMSG - 1);
        assert!(
            tx.try_send(&[0; MAX_HEADER_LEN + 1], &packet(&5u8))
                .is_err()
        );
        tx.try_send(&[], &packet(&vec![1u8; 1000])).unwrap();
        tx.try_send(&[], &packet(&5u8)).unwrap();
        assert!(matches!(
            recv(&rx, 100),
            Err(PacketRecvError::TooLarge { .. })
        ));
        let m = recv(&rx, 100).unwrap().unwrap().unwrap();
        assert_eq!(decode::<u8>(m), 5);
    }

    #[test]
    fn shutdown_drains_then_ends() {
        let (tx, rx) = pair();
        tx.try_send(&[], &packet(&1u8)).unwrap();
        assert!(!tx.is_shutdown());
        assert!(matches!(
            rx.peek(&mut [0; 4]).unwrap(),
            PacketPeek::Bytes(2)
        ));
        tx.shutdown().unwrap();
        assert!(tx.is_shutdown());
        let e = tx.try_send(&[], &packet(&2u8)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(matches!(recv(&rx, 10).unwrap(), Some(Ok(_))));
        assert_eq!(rx.peek(&mut [0; 4]).unwrap(), PacketPeek::Closed);
        assert!(matches!(recv(&rx, 10).unwrap(), Some(Err(()))));
        assert!(matches!(recv(&rx, 10).unwrap(), Some(Err(()))));
    }

    #[test]
    fn foreign_packets_are_rejected_and_the_socket_stays_usable() {
        let (a, b) = packet_pair().unwrap();
        let rx = PacketSocket::new(b).unwrap();
        sys::send_with_fds(a.as_fd(), b"zzz", &[]).unwrap();
        sys::send_with_fds(a.as_fd(), &[TAG_SPILL, 1, 0, 0, 0, 0, 0, 0, 0], &[]).unwrap();
        sys::send_with_fds(a.as_fd(), &vec![TAG_INLINE; RECV_BUF_LEN + 10], &[]).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                recv(&rx, 100),
                Err(PacketRecvError::Corrupt { .. })
            ));
        }
        assert!(recv(&rx, 100).unwrap().is_none());
    }

    /// Sends packets of 64 bytes until the socket is full; how many it took.
    fn fill(tx: &PacketSocket) -> usize {
        let p = packet(&[0u8; 64][..]);
        let mut n = 0usize;
        loop {
            match tx.try_send(&[], &p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn full_socket_would_block_and_capacity_is_large() {
        let (tx, rx) = pair();
        let n = fill(&tx);
        assert!(n >= 100, "only {n} small packets fit");
        assert!(!tx.blocking_wait_writable(Some(Instant::now())).unwrap());
        assert!(matches!(recv(&rx, 100).unwrap(), Some(Ok(_))));
        eprintln!("{n} packets of 64 bytes fit in the socket buffer");
    }

    #[test]
    fn a_loopback_socket_sends_to_itself_and_refuses_every_other_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        use std::os::unix::net::UnixDatagram;
        let fd = packet_loopback().unwrap();
        let local = UnixDatagram::from(fd.try_clone_owned().unwrap())
            .local_addr()
            .unwrap();
        let name = local.as_abstract_name().expect("an abstract name").to_vec();
        assert!(name.starts_with(b"multiproc/"), "{name:?}");
        // A stranger that knows the name cannot write to it.
        let stranger = UnixDatagram::unbound().unwrap();
        let e = stranger.send_to_addr(b"zzz", &local).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        // Its holders can, descriptors included, from any clone of the descriptor.
        let a = PacketSocket::new(fd.clone()).unwrap();
        let b = PacketSocket::new(SharedFd::new(fd.try_clone_owned().unwrap())).unwrap();
        let (bytes, fds) = crate::message::encode(&(7u32, fd.clone())).unwrap();
        a.try_send(b"h", &Packet::new(&bytes, fds).unwrap())
            .unwrap();
        assert!(a.unread_sent().unwrap() > 0);
        let PacketRecv::Packet(p) = b.try_recv().unwrap() else {
            panic!("nothing received")
        };
        let (n, sent): (u32, SharedFd) = decode(p.open(1, LIMIT).unwrap());
        assert_eq!(n, 7);
        let ino = |f: &SharedFd| rustix::fs::fstat(f).unwrap().st_ino;
        assert_eq!(ino(&sent), ino(&fd), "the socket itself travelled");
        assert_eq!(a.unread_sent().unwrap(), 0);
        assert!(recv(&b, LIMIT).unwrap().is_none());
    }

    #[test]
    fn a_full_loopback_would_block_and_a_shut_down_one_drains_then_reads_empty() {
        let tx = PacketSocket::new(packet_loopback().unwrap()).unwrap();
        let p = packet(&[0u8; 64][..]);
        let n = fill(&tx);
        // Not held to `max_dgram_qlen` (512 by default): the send buffer is the limit.
        assert!(n >= 100, "only {n} small packets fit");
        assert!(!tx.blocking_wait_writable(Some(Instant::now())).unwrap());
        assert!(matches!(recv(&tx, 100).unwrap(), Some(Ok(_))));
        tx.shutdown().unwrap();
        assert!(tx.is_shutdown());
        let e = tx.try_send(&[], &p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // A writer waiting for room wakes.
        assert!(tx.blocking_wait_writable(Some(Instant::now())).unwrap());
        for _ in 1..n {
            assert!(matches!(recv(&tx, 100).unwrap(), Some(Ok(_))));
        }
        assert!(recv(&tx, 100).unwrap().is_none(), "drained: empty");
        assert_eq!(tx.unread_sent().unwrap(), 0);
    }

    fn log_resident(log: &PacketLog) -> u64 {
        log.resident().unwrap()
    }

    #[test]
    fn a_log_packs_messages_and_frees_a_page_once_all_of_it_was_read() {
        let log = PacketLog::new().unwrap();
        // 3000 messages of 200 bytes: about 147 pages, packed.
        let messages: Vec<(u64, Vec<u8>)> = (0..3000u32)
            .map(|i| {
                let bytes = vec![i as u8; 200];
                (log.append(&bytes).unwrap(), bytes)
            })
            .collect();
        let held = log_resident(&log);
        assert!((600_000..=700_000).contains(&held), "{held}");
        // Release all but every 100th, in a scrambled order.
        let mut order: Vec<usize> = (0..messages.len()).filter(|i| i % 100 != 0).collect();
        order.sort_by_key(|&i| (i * 7919) % messages.len());
        for &i in &order {
            let (offset, bytes) = &messages[i];
            assert_eq!(&log.read(*offset, bytes.len()).unwrap(), bytes);
            log.release(*offset, bytes.len());
        }
        // The pages of the 30 unread messages stay, with their bytes intact.
        assert!(
            log_resident(&log) <= 60 * PacketLog::PAGE,
            "{}",
            log_resident(&log)
        );
        for (offset, bytes) in messages.iter().step_by(100) {
            assert_eq!(&log.read(*offset, bytes.len()).unwrap(), bytes);
            log.release(*offset, bytes.len());
        }
        // All read: only the page the log ends in (not full yet) is left.
        assert!(
            log_resident(&log) <= PacketLog::PAGE,
            "{}",
            log_resident(&log)
        );
        // A large message frees its inner pages at once.
        let big = vec![5u8; 1 << 20];
        let at = log.append(&big).unwrap();
        assert_eq!(log.read(at, big.len()).unwrap(), big);
        log.release(at, big.len());
        assert!(
            log_resident(&log) <= PacketLog::PAGE,
            "{}",
            log_resident(&log)
        );
    }

    #[test]
    fn a_log_count_left_by_a_dead_process_is_taken_over_without_freeing_unread_bytes() {
        let log = PacketLog::new().unwrap();
        let page = PacketLog::PAGE as usize;
        // Page 0: half appended by a process that died before publishing (never released).
        let lost = log.append(&vec![1; page / 2]).unwrap();
        let kept = log.append(&vec![2; page / 2]).unwrap();
        log.release(kept, page / 2);
        assert_eq!(
            log_resident(&log),
            PacketLog::PAGE,
            "page 0 is half read: kept"
        );
        assert_eq!(log.read(lost, page / 2).unwrap(), vec![1; page / 2]);
        // Far later, a page sharing page 0's counter is read in full: it is freed, and page 0's
        // stale count does not make it look read earlier.
        let far = PacketLog::COUNTERS * PacketLog::PAGE;
        log.counts
            .atomic_u64(PacketLog::OFF_END)
            .store(far, Ordering::SeqCst);
        let a = log.append(&vec![3; page - 10]).unwrap();
        log.release(a, page - 10);
        assert!(log_resident(&log) >= 2 * PacketLog::PAGE);
        let b = log.append(&[4; 10]).unwrap();
        log.release(b, 10);
        assert_eq!(
            log_resident(&log),
            PacketLog::PAGE,
            "page 0 leaks, the later one is freed"
        );
    }

    #[test]
    fn random_packets_never_panic_the_receiver() {
        let (a, b) = packet_pair().unwrap();
        let rx = PacketSocket::new(b).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let len = 1 + (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match round % 3 {
                0 => bytes[0] = TAG_INLINE,
                1 => bytes[0] = TAG_SPILL,
                _ => {}
            }
            // Sometimes attach a descriptor that is not a memfd.
            let extra = (round % 5 == 0).then(|| rustix::io::dup(&a).unwrap());
            let fds: Vec<BorrowedFd<'_>> = extra.iter().map(|f| f.as_fd()).collect();
            sys::send_with_fds(a.as_fd(), &bytes, &fds).unwrap();
            match recv(&rx, 1 << 20) {
                Ok(Some(Ok((bytes, fds)))) => {
                    let _ = crate::message::decode::<(u32, String, Vec<u8>)>(&bytes, fds);
                }
                Ok(other) => panic!("round {round}: {other:?}"),
                Err(PacketRecvError::Io(e)) => panic!("round {round}: {e}"),
                Err(_) => {}
            }
        }
    }
}
