//! The message payload every implementation sends: a byte string.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

/// A byte-string message. On the wire it is exactly a `serde_bytes` byte string (postcard:
/// varint length, then the bytes), so both ends agree whichever variant they hold.
///
/// The sender keeps one `Shared` buffer and sends clones of it (a reference-count increment),
/// as Python sends the same `bytes` object and the raw floor writes the same buffer: encoding
/// copies the bytes once into the channel's buffer, and the receiver gets a fresh `ByteBuf`,
/// like Python's unpickled `bytes`.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// A buffer shared by every message the sender sends.
    Shared(Arc<[u8]>),
    /// A buffer that arrived from the other process.
    Received(ByteBuf),
}

impl Payload {
    /// `len` zero bytes, ready to be sent many times.
    pub(crate) fn zeros(len: usize) -> Self {
        Payload::Shared(vec![0u8; len].into())
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Shared(b) => b,
            Payload::Received(b) => b,
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ByteBuf::deserialize(deserializer).map(Payload::Received)
    }
}
