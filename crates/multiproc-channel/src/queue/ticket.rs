//! Tickets: how a message sent through the queue's socket keeps its place in the ring's order.
//!
//! A packet on the socket starts with a ticket, `[TAG_TICKET] position: u64 LE, seal: u64 LE`:
//! the ring position whose token stands for it, and a keyed hash of that position under the
//! queue's [`TicketKey`]. A getter holding the token at position `p` peeks at the front ticket
//! before taking the packet (see the engine's `take_token`), so a packet that did not come from
//! a holder of the key (garbage, or anything else written to the socket) is told apart from the
//! queue's own before anything else in it is looked at.

use std::fmt;
use std::io;

use multiproc_core::transport::packet::{
    Incoming, MAX_HEADER_LEN, Packet, PacketPeek, PacketRecv, PacketRecvError, PacketSocket,
};

use super::error::GetError;
use super::lane::Message;

/// A ticket's first byte.
const TAG_TICKET: u8 = 0xA3;
const TICKET_LEN: usize = 1 + 8 + 8;
const _: () = assert!(TICKET_LEN <= MAX_HEADER_LEN);

/// The secret that seals a queue's tickets: 128 random bits shared by every handle of the queue
/// (it lives in the queue's shared memory).
///
/// A seal is SipHash-2-4 of the position under the key, so a packet written to the socket by
/// anything that does not hold the key matches a position only with probability 2^-64. It is
/// not a defence against a process that holds a handle (it could read the key, or the socket);
/// it makes stray, corrupt or forged packets cost only themselves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct TicketKey([u64; 2]);

impl TicketKey {
    /// A fresh key from the operating system's random source.
    pub(crate) fn random() -> Self {
        Self(multiproc_core::random_key())
    }

    /// The key made of `words` (as read back from shared memory).
    pub(crate) fn from_words(words: [u64; 2]) -> Self {
        Self(words)
    }

    /// The key as two words, to store in shared memory.
    pub(crate) fn words(&self) -> [u64; 2] {
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

    /// The ticket for `position`.
    fn ticket(&self, position: u64) -> [u8; TICKET_LEN] {
        let mut t = [0; TICKET_LEN];
        t[0] = TAG_TICKET;
        t[1..9].copy_from_slice(&position.to_le_bytes());
        t[9..].copy_from_slice(&self.seal(position).to_le_bytes());
        t
    }

    /// The position of an authentic ticket at the start of `bytes`.
    fn position(&self, bytes: &[u8]) -> Result<u64, String> {
        if bytes.len() < TICKET_LEN || bytes[0] != TAG_TICKET {
            return Err("packet without a ticket".into());
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let position = word(1);
        if word(9) != self.seal(position) {
            return Err(format!(
                "packet with a forged ticket for position {position}"
            ));
        }
        Ok(position)
    }

    /// Sends `packet` with the ticket for `position`, if the socket has room, without waiting.
    ///
    /// # Errors
    /// As [`PacketSocket::try_send`].
    pub(crate) fn send(&self, tx: &PacketSocket, packet: &Packet, position: u64) -> io::Result<()> {
        tx.try_send(&self.ticket(position), packet)
    }

    /// Looks at the ticket of the packet at the front of the socket without taking it: what
    /// [`recv`](Self::recv) would find, so that a reader can leave a packet that is not for it
    /// where it is.
    ///
    /// # Errors
    /// Only when the socket fails.
    pub(crate) fn peek(&self, rx: &PacketSocket) -> io::Result<Peeked> {
        let mut header = [0u8; TICKET_LEN];
        Ok(match rx.peek(&mut header)? {
            PacketPeek::Empty => Peeked::Empty,
            PacketPeek::Closed => Peeked::Closed,
            PacketPeek::Bytes(n) => match self.position(&header[..n]) {
                Ok(position) => Peeked::Ticket(position),
                Err(_) => Peeked::Foreign,
            },
        })
    }

    /// Takes one packet off the socket if one is waiting, without waiting, and checks its
    /// ticket. Only the ticket is looked at: the message stays unparsed until
    /// [`TicketedPacket::open`].
    ///
    /// # Errors
    /// Only when the socket fails; a packet that is not a ticketed packet sealed with this key
    /// (whatever its content) is [`TicketedRecv::Foreign`].
    pub(crate) fn recv(&self, rx: &PacketSocket) -> io::Result<TicketedRecv> {
        let incoming = match rx.try_recv() {
            Ok(PacketRecv::Packet(p)) => p,
            Ok(PacketRecv::Empty) => return Ok(TicketedRecv::Empty),
            Ok(PacketRecv::Closed) => return Ok(TicketedRecv::Closed),
            Err(PacketRecvError::Io(e)) => return Err(e),
            Err(e) => return Ok(TicketedRecv::Foreign(GetError::from_recv(e))),
        };
        Ok(match self.position(incoming.bytes()) {
            Ok(position) => TicketedRecv::Ticketed(TicketedPacket { position, incoming }),
            Err(reason) => TicketedRecv::Foreign(GetError::Corrupt { reason }),
        })
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// The outcome of a [`TicketKey::recv`].
#[derive(Debug)]
pub(crate) enum TicketedRecv {
    /// A packet sent by [`TicketKey::send`] with the same key.
    Ticketed(TicketedPacket),
    /// A packet that is not one of the queue's: no ticket, a ticket whose seal does not match
    /// the key, or a packet that could not be read at all. It was taken off the socket and
    /// discarded, descriptors included.
    Foreign(GetError),
    /// Nothing is waiting right now.
    Empty,
    /// The sending side was shut down and every packet has been read.
    Closed,
}

/// What [`TicketKey::peek`] saw at the front of the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peeked {
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
#[derive(Debug)]
pub(crate) struct TicketedPacket {
    position: u64,
    incoming: Incoming,
}

impl TicketedPacket {
    /// The queue position it was sent with.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// The message: parsed, and read from its memfd if it was spilled.
    ///
    /// # Errors
    /// [`GetError`] when the message is larger than `max_size`, damaged, or its descriptors
    /// were lost on the way.
    pub(crate) fn open(self, max_size: usize) -> Result<Message, GetError> {
        let (bytes, fds) = self
            .incoming
            .open(TICKET_LEN, max_size)
            .map_err(GetError::from_recv)?;
        Ok(Message::new(bytes, fds))
    }
}
