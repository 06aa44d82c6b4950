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

/// Bytes this long or shorter are kept inline (a key, a value: 32 bytes in all).
const INLINE: usize = 30;

/// Encoded bytes: inline up to `N` bytes ([`INLINE`] unless said otherwise), on the heap
/// beyond. `N` is below 256.
#[derive(Clone)]
pub(crate) enum Bytes<const N: usize = INLINE> {
    Inline(u8, [u8; N]),
    Heap(Vec<u8>),
}

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Bytes::Inline(0, [0; N])
    }
}

impl<const N: usize> Bytes<N> {
    const FITS: () = assert!(N < 256);

    /// A copy of `bytes`.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        let () = Self::FITS;
        if bytes.len() <= N {
            let mut inline = [0; N];
            inline[..bytes.len()].copy_from_slice(bytes);
            Bytes::Inline(bytes.len() as u8, inline)
        } else {
            Bytes::Heap(bytes.to_vec())
        }
    }

    /// `bytes`, moved to the heap variant when long (no copy) and copied inline when short.
    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        if bytes.len() <= N {
            Self::copy_from(&bytes)
        } else {
            Bytes::Heap(bytes)
        }
    }
}

impl Bytes {
    /// Runs `encode` on this thread's scratch buffer (emptied first) and keeps what it wrote:
    /// a short encoding costs no allocation.
    pub(crate) fn encode_with<E>(
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Self, E> {
        with_scratch(|buf| {
            encode(buf)?;
            Ok(Self::copy_from(buf))
        })
    }
}

/// Runs `f` on this thread's scratch buffer, emptied first (a buffer of its own when the
/// scratch is in use already: a value's `Serialize` that encodes a proxy op).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = f(&mut buf);
            if buf.capacity() > 64 << 10 {
                // One huge value does not pin its buffer for the thread's life.
                *buf = Vec::new();
            }
            out
        }
        Err(_) => f(&mut Vec::new()),
    })
}

impl<const N: usize> Deref for Bytes<N> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(len, bytes) => &bytes[..*len as usize],
            Bytes::Heap(bytes) => bytes,
        }
    }
}

// Hashes and compares as the slice (below): a map keyed by `Bytes` is searched with a `&[u8]`.
impl<const N: usize> std::borrow::Borrow<[u8]> for Bytes<N> {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl<const N: usize> PartialEq for Bytes<N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<const N: usize> Eq for Bytes<N> {}

impl<const N: usize> Hash for Bytes<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", self.len())
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

struct BytesVisitor<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for BytesVisitor<N> {
    type Value = Bytes<N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes<N>, E> {
        Ok(Bytes::copy_from(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes<N>, E> {
        Ok(Bytes::from_vec(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes<N>, A::Error> {
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
