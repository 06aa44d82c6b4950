//! Atomic packets of bytes plus descriptors over a Unix `SOCK_SEQPACKET` socket pair that any
//! number of senders and receivers, in any number of processes, share.
//!
//! This is the transport under the cross-process `Queue`. Every message is one packet: the kernel
//! delivers it whole to exactly one receiver (it arbitrates between readers), and a sender or
//! receiver killed in the middle of a call leaves nothing half-written behind. Descriptors ride on
//! the packet as `SCM_RIGHTS`.
//!
//! A message whose encoding exceeds [`INLINE_LIMIT`] is *spilled*: its bytes go into a fresh
//! memfd, and the packet carries only the length and the memfd. This keeps the socket buffer for
//! many small messages, lets one message be far larger than the socket buffer, and lets the
//! producer exit right after a `send` (the data lives in the memfd, owned by the packet in
//! flight, not in the producer).
//!
//! # Packet format
//! - inline: `[TAG_INLINE] payload`, descriptors = the message's;
//! - spilled: `[TAG_SPILL] len: u64 LE`, descriptors = `[memfd, the message's...]`;
//! - ticketed (a queue's, see [`PacketSocket::try_send_ticketed`]):
//!   `[TAG_TICKET] position: u64 LE, seal: u64 LE` then an inline or spilled packet. The seal
//!   is a keyed hash of the position under the queue's [`TicketKey`], so a packet that did not
//!   come from a holder of the key (garbage, or anything else written to the socket) is told
//!   apart from the queue's own before anything else in it is looked at.
//!
//! Plain messages too large to travel inline can also be kept out of the socket altogether:
//! [`Packet::encode_unspilled`] leaves them in memory for a [`PacketLog`], a sparse memfd that
//! a queue uses as shared storage which no socket buffer limits.
//!
//! Our packets are never empty. A zero-length read is end-of-stream (the sending side was shut
//! down and every packet was read) or an empty packet written by something else; they are told
//! apart by whether the socket is shut down, and, where it matters, by what the send end still
//! has queued ([`PacketSocket::unread_sent`]).
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
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, EncodeError};
use crate::shm::SharedRegion;
use crate::sys::{self, Direction, MAX_FDS_PER_SENDMSG};
use crate::transport::socket::Socket;
use crate::{SharedFd, message};

/// Largest encoded message sent inside the packet itself; larger ones are spilled to a memfd.
pub const INLINE_LIMIT: usize = 64 << 10;

/// Most descriptors one message may carry (one `sendmsg` slot is kept for a spill memfd).
pub const MAX_MESSAGE_FDS: usize = MAX_FDS_PER_SENDMSG - 1;

const TAG_INLINE: u8 = 0xA1;
const TAG_SPILL: u8 = 0xA2;
/// A ticketed packet: `[TAG_TICKET] position: u64 LE, seal: u64 LE` then an inline or spilled
/// packet.
const TAG_TICKET: u8 = 0xA3;
const TICKET_HEADER_LEN: usize = 1 + 8 + 8;
const SPILL_HEADER_LEN: usize = 1 + 8;
/// Receive buffer: one byte more than the largest valid (ticketed) packet, so an oversized packet shows up
/// as truncated instead of fitting by accident.
const RECV_BUF_LEN: usize = TICKET_HEADER_LEN + 1 + INLINE_LIMIT + 1;
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
    let (send, recv) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // Best effort: privileged processes may exceed `wmem_max`, others get at most `wmem_max`.
    if rustix::net::sockopt::set_socket_send_buffer_size_force(&send, WANTED_SNDBUF).is_err() {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&send, WANTED_SNDBUF);
    }
    Ok((SharedFd::new(send), SharedFd::new(recv)))
}

/// Why a value could not become a [`Packet`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacketEncodeError {
    /// The value could not be serialized (or a descriptor in it duplicated).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The encoded value exceeds the size limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The value carries more descriptors than one packet can.
    #[error("message carries {count} descriptors; at most {limit} fit in one message")]
    TooManyDescriptors {
        /// Descriptors in the value.
        count: usize,
        /// The most a message may carry.
        limit: usize,
    },
    /// Creating or filling the memfd for a large message failed.
    #[error("cannot store a large message in a memfd: {0}")]
    Spill(#[source] io::Error),
}

/// An encoded message, ready to send; large payloads already live in a memfd.
///
/// Sending borrows the packet, so a send that could not complete leaves it with the caller.
pub struct Packet {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    encoded_len: usize,
}

impl Packet {
    /// Encodes `value` (postcard plus descriptors), spilling it to a memfd above
    /// [`INLINE_LIMIT`].
    ///
    /// # Errors
    /// [`PacketEncodeError`]: the value cannot be encoded, is larger than `max_size`, carries
    /// more than [`MAX_MESSAGE_FDS`] descriptors, or the memfd cannot be made.
    pub fn encode<T: Serialize + ?Sized>(
        value: &T,
        max_size: usize,
    ) -> Result<Self, PacketEncodeError> {
        Self::encode_with(value, max_size, true)
    }

    /// Encodes `value` like [`encode`](Self::encode), but leaves a large message that carries
    /// no descriptor in memory ([`plain_bytes`](Self::plain_bytes)) instead of spilling it, for
    /// a transport that stores plain bytes itself (a [`PacketLog`]). Such a packet is too large
    /// for the socket: [`PacketSocket::try_send`] refuses it.
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    pub fn encode_unspilled<T: Serialize + ?Sized>(
        value: &T,
        max_size: usize,
    ) -> Result<Self, PacketEncodeError> {
        Self::encode_with(value, max_size, false)
    }

    fn encode_with<T: Serialize + ?Sized>(
        value: &T,
        max_size: usize,
        spill_plain: bool,
    ) -> Result<Self, PacketEncodeError> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(TAG_INLINE);
        let mut fds = message::encode_into(value, &mut bytes)?;
        let len = bytes.len() - 1;
        if len > max_size {
            return Err(PacketEncodeError::TooLarge {
                len,
                limit: max_size,
            });
        }
        if len <= INLINE_LIMIT || (fds.is_empty() && !spill_plain) {
            if fds.len() > MAX_FDS_PER_SENDMSG {
                return Err(PacketEncodeError::TooManyDescriptors {
                    count: fds.len(),
                    limit: MAX_FDS_PER_SENDMSG,
                });
            }
            return Ok(Self {
                bytes,
                fds,
                encoded_len: len,
            });
        }
        if fds.len() > MAX_MESSAGE_FDS {
            return Err(PacketEncodeError::TooManyDescriptors {
                count: fds.len(),
                limit: MAX_MESSAGE_FDS,
            });
        }
        let memfd = spill(&bytes[1..]).map_err(PacketEncodeError::Spill)?;
        let mut header = Vec::with_capacity(SPILL_HEADER_LEN);
        header.push(TAG_SPILL);
        header.extend_from_slice(&(len as u64).to_le_bytes());
        fds.insert(0, memfd);
        Ok(Self {
            bytes: header,
            fds,
            encoded_len: len,
        })
    }

    /// True when the packet fits the socket: inline packets up to [`INLINE_LIMIT`] and spilled
    /// ones (not a large packet made by [`encode_unspilled`](Self::encode_unspilled)).
    pub fn fits_socket(&self) -> bool {
        self.bytes.len() <= 1 + INLINE_LIMIT
    }

    /// Size of the encoded message in bytes (not counting the packet header).
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// True when the payload was spilled into a memfd.
    pub fn is_spilled(&self) -> bool {
        self.bytes[0] == TAG_SPILL
    }

    /// The encoded message when it is plain bytes (not spilled, no descriptors): what a
    /// transport other than the socket, such as a shared-memory ring, can carry by copying.
    pub fn plain_bytes(&self) -> Option<&[u8]> {
        (self.bytes[0] == TAG_INLINE && self.fds.is_empty()).then(|| &self.bytes[1..])
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("encoded_len", &self.encoded_len)
            .field("spilled", &self.is_spilled())
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

/// Shared storage for plain messages outside any socket: a sparse memfd that messages are
/// appended to, read back from, and freed from page by page once every byte of a page was
/// read.
///
/// A queue keeps here the messages its socket cannot take (too large to travel inline, or the
/// socket buffer is full), so how much it holds is bounded by memory, not by a socket buffer,
/// and a producer may exit right after appending. Every handle (in every process) shares the
/// memfd and a small region of counters:
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
#[derive(Clone)]
pub struct PacketLog {
    fd: SharedFd,
    counts: SharedRegion,
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

    /// Creates an empty log.
    ///
    /// # Errors
    /// When `memfd_create` or the counter region fail (out of descriptors or memory).
    ///
    /// # References
    /// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    pub fn new() -> io::Result<Self> {
        let fd = rustix::fs::memfd_create("multiproc-queue-log", rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(Self {
            fd: SharedFd::new(fd),
            counts: SharedRegion::new(Self::OFF_COUNTS + 8 * Self::COUNTERS as usize)?,
        })
    }

    fn from_wire(fd: SharedFd, counts: SharedRegion) -> io::Result<Self> {
        let is_file = rustix::fs::fstat(&fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        });
        // Only memfds have seals (one made without `ALLOW_SEALING` reports `F_SEAL_SEAL`).
        if !is_file || rustix::fs::fcntl_get_seals(&fd).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue log descriptor is not a memfd",
            ));
        }
        if counts.len() < Self::OFF_COUNTS + 8 * Self::COUNTERS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "queue log counter region is too small",
            ));
        }
        Ok(Self { fd, counts })
    }

    /// The memfd.
    pub fn shared_fd(&self) -> &SharedFd {
        &self.fd
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
            .atomic_u64(Self::OFF_END)
            .fetch_add(len, Ordering::SeqCst);
        let mut done = 0;
        while done < bytes.len() {
            match rustix::io::pwrite(&self.fd, &bytes[done..], offset + done as u64) {
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
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match rustix::io::pread(&self.fd, &mut buf[done..], offset + done as u64) {
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
            let _ = crate::shm::punch_hole(
                &self.fd,
                (first + 1) * Self::PAGE,
                (last - first - 1) * Self::PAGE,
            );
        }
        self.consumed(last, end - last * Self::PAGE);
    }

    /// Adds `bytes` read to the count of page `page`; punches the page once all of it was read.
    fn consumed(&self, page: u64, bytes: u64) {
        let word = self
            .counts
            .atomic_u64(Self::OFF_COUNTS + 8 * (page % Self::COUNTERS) as usize);
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
                    if count >= Self::PAGE {
                        let _ = crate::shm::punch_hole(&self.fd, page * Self::PAGE, Self::PAGE);
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

/// What travels when a [`PacketLog`] is sent to another process.
#[derive(serde::Serialize, serde::Deserialize)]
struct LogWire {
    fd: SharedFd,
    counts: SharedRegion,
}

impl Serialize for PacketLog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        LogWire {
            fd: self.fd.clone(),
            counts: self.counts.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PacketLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = <LogWire as serde::Deserialize>::deserialize(deserializer)?;
        Self::from_wire(wire.fd, wire.counts).map_err(serde::de::Error::custom)
    }
}

/// A message taken off the socket: its bytes and the descriptors that came with it.
pub struct Received {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Received {
    /// A message that arrived by another way than the socket (see [`Packet::plain_bytes`]),
    /// without descriptors.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            fds: Vec::new(),
        }
    }

    /// The encoded message.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes the message as a `T`, handing it the descriptors (see [`message::decode`]).
    ///
    /// # Errors
    /// As [`message::decode`].
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, DecodeError> {
        message::decode(&self.bytes, self.fds)
    }
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("len", &self.bytes.len())
            .field("fds", &self.fds.len())
            .finish()
    }
}

/// Why a packet could not be received. After any of these the socket stays usable: the faulty
/// packet was taken off the socket and discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacketRecvError {
    /// The message is larger than this end accepts; it was discarded.
    #[error("incoming message of {len} bytes exceeds the limit of {limit} bytes; discarded")]
    TooLarge {
        /// Announced size in bytes.
        len: usize,
        /// This end's limit.
        limit: usize,
    },
    /// The packet is not a multiproc packet (or its memfd is damaged); it was discarded.
    #[error("corrupt packet: {reason}; discarded")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// Descriptors sent with the packet did not arrive (this process is out of descriptors?);
    /// the message was discarded.
    #[error("descriptors sent with a message were lost (out of descriptors?); message discarded")]
    LostDescriptors,
    /// The socket failed.
    #[error("socket error while receiving: {0}")]
    Io(#[source] io::Error),
}

/// The outcome of a [`PacketSocket::try_recv`].
#[derive(Debug)]
pub enum TryRecv {
    /// A message.
    Message(Received),
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// The outcome of a [`PacketSocket::try_recv_ticketed`].
#[derive(Debug)]
pub enum TicketedRecv {
    /// A packet sent by [`PacketSocket::try_send_ticketed`] with the same key.
    Ticketed(TicketedPacket),
    /// A packet that is not one of the queue's: no ticket, a ticket whose seal does not match
    /// the key, or a packet that could not be read at all. It was taken off the socket and
    /// discarded, descriptors included.
    Foreign(PacketRecvError),
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// What [`PacketSocket::peek_ticket`] saw at the front of the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A packet with an authentic ticket for this position.
    Ticket(u64),
    /// A packet that is not one of the queue's.
    Foreign,
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// An authentic ticketed packet taken off the socket, its message not parsed yet.
pub struct TicketedPacket {
    position: u64,
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
    fds_lost: bool,
}

impl TicketedPacket {
    /// The queue position it was sent with.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The message: parsed, and read from its memfd if it was spilled.
    ///
    /// # Errors
    /// [`PacketRecvError`] when the message is larger than `max_size`, damaged, or its
    /// descriptors were lost on the way.
    pub fn open(self, max_size: usize) -> Result<Received, PacketRecvError> {
        if self.fds_lost {
            return Err(PacketRecvError::LostDescriptors);
        }
        parse(self.bytes, self.fds, max_size)
    }
}

impl fmt::Debug for TicketedPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketedPacket")
            .field("position", &self.position)
            .field("len", &self.bytes.len())
            .field("fds", &self.fds.len())
            .finish()
    }
}

/// The secret that seals a queue's tickets: 128 random bits shared by every handle of the queue
/// (it lives in the queue's shared memory).
///
/// A seal is SipHash-2-4 of the position under the key, so a packet written to the socket by
/// anything that does not hold the key matches a position only with probability 2^-64. It is
/// not a defence against a process that holds a handle (it could read the key, or the socket);
/// it makes stray, corrupt or forged packets cost only themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TicketKey([u64; 2]);

impl TicketKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Self {
        Self(crate::sys::random_key())
    }

    /// The key made of `words` (as read back from shared memory).
    pub fn from_words(words: [u64; 2]) -> Self {
        Self(words)
    }

    /// The key as two words, to store in shared memory.
    pub fn words(&self) -> [u64; 2] {
        self.0
    }

    fn seal(&self, position: u64) -> u64 {
        use std::hash::Hasher as _;
        // SipHash-2-4 with a secret key is a PRF; std's is deprecated only as a general-purpose
        // hasher, its output is stable.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.0[0], self.0[1]);
        h.write_u64(position);
        h.finish()
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(..)")
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
                "queue descriptor is not a socket",
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

    /// Sends `packet` if the socket has room, without waiting. The packet is sent whole or not
    /// at all.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] when the socket buffer is full;
    /// [`io::ErrorKind::BrokenPipe`] once the send end was [shut down](Self::shutdown);
    /// [`io::ErrorKind::InvalidInput`] for a packet that does not
    /// [fit the socket](Packet::fits_socket).
    pub fn try_send(&self, packet: &Packet) -> io::Result<()> {
        self.send_parts(&packet.bytes, packet)
    }

    /// One `sendmsg(2)` of `bytes` with `packet`'s descriptors.
    fn send_parts(&self, bytes: &[u8], packet: &Packet) -> io::Result<()> {
        if !packet.fits_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unspilled packet is too large for the socket",
            ));
        }
        let fds: Vec<BorrowedFd<'_>> = packet.fds.iter().map(|f| f.as_fd()).collect();
        loop {
            match sys::send_with_fds(self.socket.as_fd(), bytes, &fds) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `packet`, waiting (asynchronously) while the socket buffer is full.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send), except that it waits instead of `WouldBlock`.
    ///
    /// # Cancel safety
    /// Cancel safe: the packet is sent by one system call, so a dropped future sent it whole or
    /// not at all, and the caller still owns it.
    pub async fn send(&self, packet: &Packet) -> io::Result<()> {
        match self.try_send(packet) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        let registered = self.socket.writable()?;
        loop {
            let mut guard = registered.writable().await?;
            match self.try_send(packet) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                other => return other,
            }
        }
    }

    /// Sends `packet`, blocking the thread while the socket is full; gives up at `deadline`
    /// (returns `Ok(false)`).
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn blocking_send(&self, packet: &Packet, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            match self.try_send(packet) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline)? {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes one message off the socket if one is waiting, without waiting.
    ///
    /// `max_size` bounds the size of a spilled message this end accepts.
    ///
    /// # Errors
    /// [`PacketRecvError`]; the socket stays usable.
    pub fn try_recv(&self, max_size: usize) -> Result<TryRecv, PacketRecvError> {
        match self.recv_raw()? {
            RawPacket::Empty => Ok(TryRecv::Empty),
            RawPacket::Closed => Ok(TryRecv::Closed),
            RawPacket::Packet { fds_lost: true, .. } => Err(PacketRecvError::LostDescriptors),
            RawPacket::Packet { bytes, fds, .. } => {
                parse(bytes, fds, max_size).map(TryRecv::Message)
            }
        }
    }

    /// Sends `packet` marked with the queue position `position`, sealed with `key`, if the
    /// socket has room, without waiting; the receiver gets the position back from
    /// [`try_recv_ticketed`](Self::try_recv_ticketed). A queue whose order is kept elsewhere
    /// uses tickets to match packets to their places.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn try_send_ticketed(
        &self,
        packet: &Packet,
        position: u64,
        key: &TicketKey,
    ) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(TICKET_HEADER_LEN + packet.bytes.len());
        bytes.push(TAG_TICKET);
        bytes.extend_from_slice(&position.to_le_bytes());
        bytes.extend_from_slice(&key.seal(position).to_le_bytes());
        bytes.extend_from_slice(&packet.bytes);
        self.send_parts(&bytes, packet)
    }

    /// Looks at the ticket of the packet at the front of the socket without taking it
    /// (`MSG_PEEK`): what [`try_recv_ticketed`](Self::try_recv_ticketed) would find, so that a
    /// reader can leave a packet that is not for it where it is.
    ///
    /// # Errors
    /// Only when the socket fails.
    ///
    /// # References
    /// - [`recv(2)`](https://man7.org/linux/man-pages/man2/recv.2.html) (`MSG_PEEK`)
    pub fn peek_ticket(&self, key: &TicketKey) -> io::Result<Peeked> {
        let mut header = [0u8; TICKET_HEADER_LEN];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let n = loop {
            match rustix::net::recv(self.socket.as_fd(), &mut header[..], flags) {
                Ok((n, _)) => break n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Peeked::Empty),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 && self.is_shutdown() {
            return Ok(Peeked::Closed);
        }
        if n < TICKET_HEADER_LEN || header[0] != TAG_TICKET {
            return Ok(Peeked::Foreign);
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let position = word(1);
        if word(9) != key.seal(position) {
            return Ok(Peeked::Foreign);
        }
        Ok(Peeked::Ticket(position))
    }

    /// Takes one packet off the socket if one is waiting, without waiting, and checks its ticket
    /// against `key` (see [`try_send_ticketed`](Self::try_send_ticketed)). Only the ticket is
    /// looked at: the message stays unparsed until [`TicketedPacket::open`].
    ///
    /// # Errors
    /// Only when the socket fails; a packet that is not a ticketed packet sealed with `key`
    /// (whatever its content) is [`TicketedRecv::Foreign`].
    pub fn try_recv_ticketed(&self, key: &TicketKey) -> io::Result<TicketedRecv> {
        let (mut bytes, fds, fds_lost) = match self.recv_raw() {
            Ok(RawPacket::Packet {
                bytes,
                fds,
                fds_lost,
            }) => (bytes, fds, fds_lost),
            Ok(RawPacket::Empty) => return Ok(TicketedRecv::Empty),
            Ok(RawPacket::Closed) => return Ok(TicketedRecv::Closed),
            Err(PacketRecvError::Io(e)) => return Err(e),
            Err(e) => return Ok(TicketedRecv::Foreign(e)),
        };
        if bytes.len() < TICKET_HEADER_LEN || bytes[0] != TAG_TICKET {
            return Ok(TicketedRecv::Foreign(corrupt("packet without a ticket")));
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let (position, seal) = (word(1), word(9));
        if seal != key.seal(position) {
            return Ok(TicketedRecv::Foreign(corrupt(format!(
                "packet with a forged ticket for position {position}"
            ))));
        }
        bytes.drain(..TICKET_HEADER_LEN);
        Ok(TicketedRecv::Ticketed(TicketedPacket {
            position,
            bytes,
            fds,
            fds_lost,
        }))
    }

    /// The socket's registration with the current tokio runtime, to wait for room to send.
    ///
    /// # Errors
    /// Outside a tokio runtime.
    pub fn writable_registration(&self) -> io::Result<&tokio::io::unix::AsyncFd<SharedFd>> {
        self.socket.writable()
    }

    /// Blocks the thread until the socket has room to send or `deadline` passes (`Ok(false)`).
    ///
    /// # Errors
    /// When `poll(2)` fails.
    pub fn blocking_wait_writable(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::wait_ready(self.socket.as_fd(), Direction::Write, deadline)
    }

    /// One `recvmsg(2)`: the packet's bytes and descriptors, not yet parsed.
    fn recv_raw(&self) -> Result<RawPacket, PacketRecvError> {
        let mut fds = Vec::new();
        let raw = RECV_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < RECV_BUF_LEN {
                buf.resize(RECV_BUF_LEN, 0);
            }
            let raw = loop {
                match recv_packet(self.socket.as_fd(), &mut buf, &mut fds) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            raw.map(|r| (r, buf[..r.len.min(buf.len())].to_vec()))
        });
        let (raw, bytes) = match raw {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(RawPacket::Empty),
            Err(e) => return Err(PacketRecvError::Io(e)),
        };
        if raw.len == 0 {
            // End of stream, or an empty packet (which a multiproc sender never sends).
            if self.is_shutdown() {
                return Ok(RawPacket::Closed);
            }
            return Err(corrupt("empty packet"));
        }
        if raw.truncated {
            return Err(corrupt(format!(
                "packet larger than {} bytes",
                RECV_BUF_LEN - 1
            )));
        }
        Ok(RawPacket::Packet {
            bytes,
            fds,
            fds_lost: raw.fds_truncated,
        })
    }

    /// Takes one message off the socket, waiting (asynchronously) until one arrives. `Ok(None)`
    /// means the sending side was shut down and every message was read.
    ///
    /// # Errors
    /// [`PacketRecvError`]; the socket stays usable.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is taken off the socket and returned within one poll, so a dropped
    /// future never took one.
    pub async fn recv(&self, max_size: usize) -> Result<Option<Received>, PacketRecvError> {
        match self.try_recv(max_size)? {
            TryRecv::Message(m) => return Ok(Some(m)),
            TryRecv::Closed => return Ok(None),
            TryRecv::Empty => {}
        }
        let registered = self.socket.readable().map_err(PacketRecvError::Io)?;
        loop {
            let mut guard = registered.readable().await.map_err(PacketRecvError::Io)?;
            match self.try_recv(max_size)? {
                TryRecv::Message(m) => return Ok(Some(m)),
                TryRecv::Closed => return Ok(None),
                TryRecv::Empty => guard.clear_ready(),
            }
        }
    }

    /// Takes one message off the socket, blocking the thread until one arrives or `deadline`
    /// passes (`TryRecv::Empty`).
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn blocking_recv(
        &self,
        max_size: usize,
        deadline: Option<Instant>,
    ) -> Result<TryRecv, PacketRecvError> {
        loop {
            match self.try_recv(max_size)? {
                TryRecv::Empty => {}
                other => return Ok(other),
            }
            if !sys::wait_ready(self.socket.as_fd(), Direction::Read, deadline)
                .map_err(PacketRecvError::Io)?
            {
                return Ok(TryRecv::Empty);
            }
        }
    }

    /// True when a packet is waiting to be read on this (receiving) end right now (`FIONREAD`).
    ///
    /// # Errors
    /// When the ioctl fails.
    ///
    /// # References
    /// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SIOCINQ`)
    pub fn has_pending(&self) -> io::Result<bool> {
        Ok(rustix::io::ioctl_fionread(self.socket.as_fd())? > 0)
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
    pub fn is_shutdown(&self) -> bool {
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

/// What one `recvmsg(2)` gave, before parsing.
enum RawPacket {
    /// A packet, and whether the kernel dropped some of its descriptors.
    Packet {
        bytes: Vec<u8>,
        fds: Vec<OwnedFd>,
        fds_lost: bool,
    },
    Empty,
    Closed,
}

#[derive(Clone, Copy)]
struct RawRecv {
    len: usize,
    truncated: bool,
    fds_truncated: bool,
}

/// `recvmsg(2)` of one packet into `buf`, pushing its descriptors (close-on-exec) onto `fds`.
fn recv_packet(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<RawRecv> {
    let got = crate::sys::recv_with_fds(socket, buf, fds)?;
    Ok(RawRecv {
        len: got.bytes,
        truncated: got.truncated,
        fds_truncated: got.fds_truncated,
    })
}

fn corrupt(reason: impl Into<String>) -> PacketRecvError {
    PacketRecvError::Corrupt {
        reason: reason.into(),
    }
}

/// Turns one packet into a message, reading a spilled payload from its memfd.
fn parse(
    mut bytes: Vec<u8>,
    mut fds: Vec<OwnedFd>,
    max_size: usize,
) -> Result<Received, PacketRecvError> {
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
            Ok(Received { bytes, fds })
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
            Ok(Received {
                bytes: payload,
                fds,
            })
        }
        Some(tag) => Err(corrupt(format!("unknown packet tag {tag:#x}"))),
        None => Err(corrupt("empty packet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::DEFAULT_MAX_MESSAGE_SIZE;

    fn pair() -> (PacketSocket, PacketSocket) {
        let (a, b) = packet_pair().unwrap();
        (PacketSocket::new(a).unwrap(), PacketSocket::new(b).unwrap())
    }

    #[test]
    fn inline_and_spilled_round_trip() {
        let (tx, rx) = pair();
        let small = Packet::encode(&(1u32, "hi".to_string()), DEFAULT_MAX_MESSAGE_SIZE).unwrap();
        assert!(!small.is_spilled());
        let big_value = vec![7u8; INLINE_LIMIT * 3];
        let big = Packet::encode(&big_value, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
        assert!(big.is_spilled());
        tx.try_send(&small).unwrap();
        tx.try_send(&big).unwrap();
        drop(big);
        let TryRecv::Message(m) = rx.try_recv(DEFAULT_MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        assert_eq!(m.decode::<(u32, String)>().unwrap(), (1, "hi".to_string()));
        let TryRecv::Message(m) = rx.try_recv(DEFAULT_MAX_MESSAGE_SIZE).unwrap() else {
            panic!()
        };
        assert_eq!(m.decode::<Vec<u8>>().unwrap(), big_value);
        assert!(matches!(
            rx.try_recv(DEFAULT_MAX_MESSAGE_SIZE).unwrap(),
            TryRecv::Empty
        ));
    }

    #[test]
    fn limits_are_enforced_on_both_sides() {
        let (tx, rx) = pair();
        let value = vec![1u8; 1000];
        assert!(matches!(
            Packet::encode(&value, 100),
            Err(PacketEncodeError::TooLarge { limit: 100, .. })
        ));
        tx.try_send(&Packet::encode(&value, DEFAULT_MAX_MESSAGE_SIZE).unwrap())
            .unwrap();
        tx.try_send(&Packet::encode(&5u8, DEFAULT_MAX_MESSAGE_SIZE).unwrap())
            .unwrap();
        assert!(matches!(
            rx.try_recv(100),
            Err(PacketRecvError::TooLarge { .. })
        ));
        let TryRecv::Message(m) = rx.try_recv(100).unwrap() else {
            panic!()
        };
        assert_eq!(m.decode::<u8>().unwrap(), 5);
    }

    #[test]
    fn shutdown_drains_then_ends() {
        let (tx, rx) = pair();
        tx.try_send(&Packet::encode(&1u8, 10).unwrap()).unwrap();
        assert!(!tx.is_shutdown());
        assert!(rx.has_pending().unwrap());
        tx.shutdown().unwrap();
        assert!(tx.is_shutdown());
        let e = tx.try_send(&Packet::encode(&2u8, 10).unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(matches!(rx.try_recv(10).unwrap(), TryRecv::Message(_)));
        assert!(matches!(rx.try_recv(10).unwrap(), TryRecv::Closed));
        assert!(matches!(rx.try_recv(10).unwrap(), TryRecv::Closed));
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
                rx.try_recv(100),
                Err(PacketRecvError::Corrupt { .. })
            ));
        }
        assert!(matches!(rx.try_recv(100).unwrap(), TryRecv::Empty));
    }

    #[test]
    fn full_socket_would_block_and_capacity_is_large() {
        let (tx, rx) = pair();
        let p = Packet::encode(&[0u8; 64][..], DEFAULT_MAX_MESSAGE_SIZE).unwrap();
        let mut n = 0usize;
        loop {
            match tx.try_send(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(n >= 100, "only {n} small packets fit");
        assert!(!tx.blocking_send(&p, Some(Instant::now())).unwrap());
        assert!(matches!(rx.try_recv(100).unwrap(), TryRecv::Message(_)));
        eprintln!("{n} packets of 64 bytes fit in the socket buffer");
    }

    fn log_resident(log: &PacketLog) -> u64 {
        rustix::fs::fstat(log.shared_fd()).unwrap().st_blocks as u64 * 512
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
            match rx.try_recv(1 << 20) {
                Ok(TryRecv::Message(m)) => {
                    let _ = m.decode::<(u32, String, Vec<u8>)>();
                }
                Ok(other) => panic!("round {round}: {other:?}"),
                Err(PacketRecvError::Io(e)) => panic!("round {round}: {e}"),
                Err(_) => {}
            }
        }
    }
}
