//! A queue message in both directions: encoded for a put ([`Encoded`]: which lane it takes) and
//! taken by a get ([`Message`], [`GetOutcome`]). The queue owns this format; core's packet
//! lane only moves its bytes and descriptors.

use std::fmt;
use std::os::fd::OwnedFd;

use multiproc_core::message;
use multiproc_core::transport::packet::{INLINE_LIMIT, Packet};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::PutErrorKind;
use super::ring::SLOT_PAYLOAD;

/// A message encoded for a put, sorted by the lane it can take.
#[derive(Debug)]
pub(crate) enum Encoded {
    /// Plain bytes (no descriptors) that fit a ring slot, or too large for the socket: copied
    /// into a slot, or appended to the log.
    Plain(Vec<u8>),
    /// Through the socket, with a ticket; plain bytes go to the log instead while it is full.
    Packet(Packet),
}

impl Encoded {
    /// Encodes `value` (postcard plus descriptors). A large plain message stays in memory for
    /// the log; a large one with descriptors is spilled to a memfd.
    ///
    /// # Errors
    /// [`PutErrorKind`]: the value cannot be encoded, is larger than `max_size`, carries more
    /// descriptors than one packet can, or the memfd cannot be made.
    pub(crate) fn new<T: Serialize + ?Sized>(
        value: &T,
        max_size: usize,
    ) -> Result<Self, PutErrorKind> {
        let mut bytes = Vec::with_capacity(64);
        let fds = message::encode_into(value, &mut bytes).map_err(PutErrorKind::Encode)?;
        let len = bytes.len();
        if len > max_size {
            return Err(PutErrorKind::TooLarge {
                len,
                limit: max_size,
            });
        }
        if fds.is_empty() && (len <= SLOT_PAYLOAD || len > INLINE_LIMIT) {
            return Ok(Self::Plain(bytes));
        }
        let limit = Packet::max_fds(len);
        if fds.len() > limit {
            return Err(PutErrorKind::TooManyDescriptors {
                count: fds.len(),
                limit,
            });
        }
        Packet::new(&bytes, fds)
            .map(Self::Packet)
            .map_err(PutErrorKind::Io)
    }
}

/// A message taken off the queue: its bytes and the descriptors that came with it.
pub(crate) struct Message {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    /// A message with descriptors (from the socket).
    pub(crate) fn new(bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Self {
        Self { bytes, fds }
    }

    /// A message without descriptors (from a ring slot or the log).
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        Self::new(bytes, Vec::new())
    }

    /// Decodes the message as a `T`, handing it the descriptors (see [`message::decode`]).
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<T, multiproc_core::DecodeError> {
        message::decode(&self.bytes, self.fds)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.bytes.len())
            .field("fds", &self.fds.len())
            .finish()
    }
}

/// What a get that does not wait found.
#[derive(Debug)]
pub(crate) enum GetOutcome {
    /// A message.
    Message(Message),
    /// Nothing is waiting right now.
    Empty,
    /// The queue was shut down and every message has been taken.
    Closed,
}
