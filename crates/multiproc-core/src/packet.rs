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
//! Packets are never empty, so a zero-length read always means end-of-stream (the sending side
//! was shut down and every packet was read).

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, Shutdown, SocketFlags, SocketType};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DecodeError, EncodeError};
use crate::socket::Socket;
use crate::sys::{self, Direction, MAX_FDS_PER_SENDMSG};
use crate::{SharedFd, message};

/// Largest encoded message sent inside the packet itself; larger ones are spilled to a memfd.
pub const INLINE_LIMIT: usize = 64 << 10;

/// Default largest encoded message a packet socket sends or accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

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

/// Shared storage for plain messages outside any socket: a sparse memfd written at offsets the
/// users reserve (each message on pages of its own), read back, and freed page by page.
///
/// A queue keeps here the messages its socket cannot take (too large to travel inline, or the
/// socket buffer is full), so how much it holds is bounded by memory, not by a socket buffer,
/// and a producer may exit right after writing. The memfd takes memory only for the pages
/// written and not yet [released](Self::release); offsets grow forever (a 64-bit file offset
/// does not run out), so a page is never written twice.
pub struct PacketLog {
    fd: SharedFd,
}

impl PacketLog {
    /// Messages start on page boundaries so that releasing one frees its pages.
    pub const PAGE: u64 = 4096;

    /// Creates an empty log.
    ///
    /// # Errors
    /// When `memfd_create` fails (out of descriptors).
    ///
    /// # References
    /// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    pub fn new() -> io::Result<Self> {
        let fd = rustix::fs::memfd_create("multiproc-queue-log", rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(Self {
            fd: SharedFd::new(fd),
        })
    }

    /// The log behind `fd` (received from another process), which must be a memfd.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidData`] when `fd` is not a memfd.
    pub fn from_shared(fd: SharedFd) -> io::Result<Self> {
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
        Ok(Self { fd })
    }

    /// The memfd.
    pub fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Bytes a message of `len` bytes occupies: whole pages, at least one.
    pub fn span(len: usize) -> u64 {
        (len as u64).max(1).div_ceil(Self::PAGE) * Self::PAGE
    }

    /// Writes `bytes` at `offset` (`pwrite(2)`); the log grows as needed.
    ///
    /// # Errors
    /// When the system is out of memory, or the offset is beyond the largest file size.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match rustix::io::pwrite(&self.fd, &bytes[done..], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads the `len` bytes at `offset` (`pread(2)`).
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] when the log ends before; other errors of `pread`.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
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

    /// Frees the pages of a message of `len` bytes written at `offset` (a page boundary).
    ///
    /// # Errors
    /// When `fallocate` fails.
    pub fn release(&self, offset: u64, len: usize) -> io::Result<()> {
        crate::shm::punch_hole(&self.fd, offset, Self::span(len))
    }
}

impl fmt::Debug for PacketLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PacketLog").field(&self.fd).finish()
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
        Self(crate::remote_fn::random_key())
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
            return Ok(RawPacket::Closed);
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
