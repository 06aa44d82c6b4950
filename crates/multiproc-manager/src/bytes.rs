//! [`Bytes`]: the encoded bytes of a key or a value, kept inline when short.
//!
//! Most keys and many values of a served map are a few bytes once encoded (a short string, an
//! integer). Keeping those inline spares an allocation wherever one is made: when a client
//! encodes an operation, when the manager decodes a request (the bytes are copied straight out
//! of the receive buffer), when it answers a read with a copy of a stored value, and when the
//! client decodes the answer. Longer ones live on the heap. On the wire they are plain bytes
//! (postcard's length and bytes, as `serde_bytes` writes them).

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes this long or shorter are kept inline.
const INLINE: usize = 30;

/// Encoded bytes: inline up to [`INLINE`] bytes, on the heap beyond.
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline(u8, [u8; INLINE]),
    Heap(Vec<u8>),
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Inline(0, [0; INLINE])
    }
}

impl Bytes {
    /// A copy of `bytes`.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Bytes::Inline(bytes.len() as u8, inline)
        } else {
            Bytes::Heap(bytes.to_vec())
        }
    }

    /// `bytes`, moved to the heap variant when long (no copy) and copied inline when short.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.len() <= INLINE {
            Self::copy_from(&bytes)
        } else {
            Bytes::Heap(bytes)
        }
    }

    /// Runs `encode` on this thread's scratch buffer (emptied first) and keeps what it wrote:
    /// a short encoding costs no allocation.
    pub(crate) fn encode_with<E>(
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Self, E> {
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                encode(&mut buf)?;
                let bytes = Self::copy_from(&buf);
                if buf.capacity() > 64 << 10 {
                    // One huge value does not pin its buffer for the thread's life.
                    *buf = Vec::new();
                }
                Ok(bytes)
            }
            // Encoding inside an encoding (a value's `Serialize` that encodes a proxy op):
            // a buffer of its own.
            Err(_) => {
                let mut buf = Vec::new();
                encode(&mut buf)?;
                Ok(Self::from_vec(buf))
            }
        })
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(len, bytes) => &bytes[..*len as usize],
            Bytes::Heap(bytes) => bytes,
        }
    }
}

// Hashes and compares as the slice (below): a map keyed by `Bytes` is searched with a `&[u8]`.
impl std::borrow::Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", self.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from_vec(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            bytes.push(b);
        }
        Ok(Bytes::from_vec(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_bytes_round_trip_as_plain_bytes() {
        for len in [0, 1, INLINE, INLINE + 1, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = Bytes::copy_from(&data);
            assert_eq!(matches!(bytes, Bytes::Inline(..)), len <= INLINE);
            assert_eq!(&*bytes, &data[..]);
            // The same wire form as `serde_bytes`.
            let (ours, _) = multiproc_core::message::encode(&bytes).unwrap();
            let (theirs, _) =
                multiproc_core::message::encode(&serde_bytes::ByteBuf::from(data.clone())).unwrap();
            assert_eq!(ours, theirs);
            let back: Bytes = multiproc_core::message::decode(&ours, Vec::new()).unwrap();
            assert_eq!(back, bytes);
            assert_eq!(Bytes::from_vec(data.clone()), bytes);
        }
    }

    #[test]
    fn encoding_inside_an_encoding_gets_a_buffer_of_its_own() {
        let outer = Bytes::encode_with(|buf| {
            buf.extend_from_slice(b"outer");
            let inner = Bytes::encode_with(|inner| {
                inner.extend_from_slice(&[9; 100]);
                Ok::<_, ()>(())
            })?;
            assert_eq!(&*inner, &[9; 100][..]);
            buf.extend_from_slice(b"!");
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(&*outer, b"outer!");
    }
}
