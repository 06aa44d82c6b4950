//! Large messages that are one byte string, decoded without copying the bytes.
//!
//! In postcard a byte string (`serde_bytes::ByteBuf`, `Vec<u8>` with `serde_bytes`, a `String`,
//! and a `Vec<u8>` as a sequence of bytes) is a varint length followed by the bytes. A receiver
//! that sees a frame made of exactly that ([`prefix_len`]) can read the bytes after the prefix
//! straight into a `Vec` of their own, and [`decode`] then hands that `Vec` to the type's
//! `Deserialize` (`visit_byte_buf`, `visit_string`): the bytes are copied once, by the kernel,
//! instead of into a receive buffer and again into the value. A type that turns out not to be
//! a byte string gets the usual postcard decode of the whole frame.

use std::os::fd::OwnedFd;

use serde::Serialize;
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{self, Impossible};

use crate::error::DecodeError;

/// The most bytes a postcard varint of a `u64` takes.
const MAX_VARINT: usize = 10;

/// The length of the varint at the front of a frame's payload of `len` bytes if the payload
/// is exactly one byte string (the varint says `len - prefix` and is written the way postcard
/// writes it, in as few bytes as possible); `None` otherwise, or when `front` (the payload's
/// first bytes that have arrived) is too short to tell.
pub(crate) fn prefix_len(front: &[u8], len: usize) -> Option<usize> {
    let mut value: u64 = 0;
    for (i, &byte) in front.iter().take(MAX_VARINT).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let k = i + 1;
            // A longer encoding than needed (a zero last byte) is not postcard's own.
            let minimal = k == 1 || byte != 0;
            let body = usize::try_from(value).ok()?;
            return (minimal && k.checked_add(body) == Some(len)).then_some(k);
        }
    }
    None
}

/// Decodes a `T` from a frame that was one byte string, given the bytes after its length
/// prefix. The bytes become the value when `T` is a byte string; otherwise the frame is put
/// back together and decoded as usual.
///
/// # Errors
/// As [`decode`](super::decode).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    let mut slot = Some(bytes);
    let mut refused = false;
    if fds.is_empty() {
        let de = OwnedBytes {
            bytes: &mut slot,
            refused: &mut refused,
        };
        match T::deserialize(de) {
            Ok(value) => return Ok(value),
            // The value took the bytes and rejected them: what postcard would report too.
            Err(e) if !refused || slot.is_none() => {
                return Err(DecodeError::serde(e, std::any::type_name::<T>()));
            }
            Err(_) => {}
        }
    }
    let whole = with_prefix(&slot.unwrap_or_default());
    super::decode(&whole, fds)
}

/// The byte string's whole postcard encoding: the varint of its length, then the bytes.
pub(crate) fn with_prefix(bytes: &[u8]) -> Vec<u8> {
    let (head, k) = prefix(bytes.len());
    let mut whole = Vec::with_capacity(k + bytes.len());
    whole.extend_from_slice(&head[..k]);
    whole.extend_from_slice(bytes);
    whole
}

/// A deserializer holding one owned byte string. It answers the requests a byte string answers
/// in postcard (bytes, a string, a sequence of `u8`, through newtypes) and refuses every other
/// one, leaving the bytes in place so the caller can decode the usual way.
struct OwnedBytes<'a> {
    bytes: &'a mut Option<Vec<u8>>,
    refused: &'a mut bool,
}

impl OwnedBytes<'_> {
    fn refuse<V>(self) -> Result<V, postcard::Error> {
        *self.refused = true;
        Err(postcard::Error::WontImplement)
    }

    fn take(&mut self) -> Result<Vec<u8>, postcard::Error> {
        match self.bytes.take() {
            Some(bytes) => Ok(bytes),
            // Only one request reaches the bytes: a second one is not a byte string.
            None => {
                *self.refused = true;
                Err(postcard::Error::WontImplement)
            }
        }
    }
}

impl<'de> Deserializer<'de> for OwnedBytes<'_> {
    type Error = postcard::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        self.refuse()
    }

    fn deserialize_bytes<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let bytes = self.take()?;
        visitor.visit_byte_buf(bytes)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        let bytes = self.take()?;
        match String::from_utf8(bytes) {
            Ok(s) => visitor.visit_string(s),
            Err(e) => {
                // Not UTF-8: the usual decode says so in postcard's words.
                *self.bytes = Some(e.into_bytes());
                self.refuse()
            }
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let Some(bytes) = self.bytes.as_deref() else {
            return self.refuse();
        };
        let mut seq = ByteSeq {
            bytes: bytes.iter(),
            refused: false,
        };
        let out = visitor.visit_seq(&mut seq);
        // An element that is not a `u8`, or elements left over (postcard would call them
        // trailing bytes): the usual decode decides.
        if seq.refused || seq.bytes.len() != 0 {
            return self.refuse();
        }
        *self.bytes = None;
        out
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char option unit unit_struct
        tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The bytes of a byte string as a sequence whose elements may only be `u8`s (a `Vec<u8>`
/// without `serde_bytes`); any other element type is refused.
struct ByteSeq<'b> {
    bytes: std::slice::Iter<'b, u8>,
    refused: bool,
}

impl<'de> SeqAccess<'de> for ByteSeq<'_> {
    type Error = postcard::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let Some(&byte) = self.bytes.next() else {
            return Ok(None);
        };
        seed.deserialize(OneU8 {
            byte,
            refused: &mut self.refused,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len())
    }
}

/// One element of a [`ByteSeq`]: a `u8`, or refused.
struct OneU8<'r> {
    byte: u8,
    refused: &'r mut bool,
}

impl<'de> Deserializer<'de> for OneU8<'_> {
    type Error = postcard::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        *self.refused = true;
        Err(postcard::Error::WontImplement)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_u8(self.byte)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// Calls `f` with the bytes of `value` if `value` is exactly one byte string in postcard (a
/// `ByteBuf`, a `serde_bytes` `Vec<u8>`, a `str`, through newtypes): its encoding is then
/// [`prefix`] of their length followed by them. `None`, without calling `f`, for any other
/// value; the serializer gives up at the first request that is not a byte string, so that
/// costs one call.
pub(crate) fn with_byte_string<T: Serialize + ?Sized, R>(
    value: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    value.serialize(BytesOf(f)).ok()
}

/// Postcard's varint of a byte string's length: the first bytes of its encoding.
pub(crate) fn prefix(len: usize) -> ([u8; MAX_VARINT], usize) {
    let mut out = [0u8; MAX_VARINT];
    let mut value = len as u64;
    let mut k = 0;
    while value >= 0x80 {
        out[k] = (value as u8) | 0x80;
        value >>= 7;
        k += 1;
    }
    out[k] = value as u8;
    (out, k + 1)
}

/// The refusal of [`BytesOf`]: the value is not one byte string.
#[derive(Debug)]
struct NotBytes;

impl std::fmt::Display for NotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a byte string")
    }
}

impl std::error::Error for NotBytes {}

impl ser::Error for NotBytes {
    fn custom<M: std::fmt::Display>(_msg: M) -> Self {
        NotBytes
    }
}

/// A serializer that hands a byte string's bytes to its function and refuses everything else.
struct BytesOf<F>(F);

/// Refusals of every request [`BytesOf`] does not take.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<Self::Ok, NotBytes> {
            Err(NotBytes)
        })*
    };
}

impl<F: FnOnce(&[u8]) -> R, R> ser::Serializer for BytesOf<F> {
    type Ok = R;
    type Error = NotBytes;
    type SerializeSeq = Impossible<R, NotBytes>;
    type SerializeTuple = Impossible<R, NotBytes>;
    type SerializeTupleStruct = Impossible<R, NotBytes>;
    type SerializeTupleVariant = Impossible<R, NotBytes>;
    type SerializeMap = Impossible<R, NotBytes>;
    type SerializeStruct = Impossible<R, NotBytes>;
    type SerializeStructVariant = Impossible<R, NotBytes>;

    fn serialize_bytes(self, v: &[u8]) -> Result<R, NotBytes> {
        Ok((self.0)(v))
    }

    fn serialize_str(self, v: &str) -> Result<R, NotBytes> {
        Ok((self.0)(v.as_bytes()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<R, NotBytes> {
        value.serialize(self)
    }

    refuse! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_i128(i128), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_u128(u128), serialize_f32(f32),
        serialize_f64(f64), serialize_char(char), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<R, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<R, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, NotBytes> {
        Err(NotBytes)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, NotBytes> {
        Err(NotBytes)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::message::{Payload, decode_payload, encode};

    /// The frame of `value` split as a receiver splits it: the prefix length, and the bytes.
    fn split<T: serde::Serialize>(value: &T) -> (usize, Vec<u8>) {
        let (bytes, fds) = encode(value).unwrap();
        assert!(fds.is_empty());
        let k = prefix_len(&bytes, bytes.len()).expect("one byte string");
        (k, bytes[k..].to_vec())
    }

    #[test]
    fn the_prefix_is_found_only_for_exactly_one_byte_string() {
        let (bytes, _) = encode(&ByteBuf::from(vec![7u8; 300])).unwrap();
        assert_eq!(bytes.len(), 302);
        assert_eq!(prefix_len(&bytes, 302), Some(2));
        assert_eq!(
            prefix_len(&bytes[..1], 302),
            None,
            "the prefix has not all arrived"
        );
        assert_eq!(
            prefix_len(&bytes, 303),
            None,
            "something follows the string"
        );
        assert_eq!(prefix_len(&bytes, 301), None, "shorter than announced");
        // Zero in two bytes is not how postcard writes it.
        assert_eq!(prefix_len(&[0x80, 0x00], 2), None);
        assert_eq!(prefix_len(&[0x00], 1), Some(1));
        // Ten bytes of continuation: no varint, no panic.
        assert_eq!(prefix_len(&[0xff; 12], 12), None);
        assert_eq!(prefix_len(&[], 5), None);
    }

    #[test]
    fn byte_strings_become_the_value_without_a_copy() {
        let (_, bytes) = split(&ByteBuf::from(vec![3u8; 100_000]));
        let at = bytes.as_ptr();
        let back: ByteBuf = decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!(back.as_ptr(), at, "the received buffer is the value's");
        assert_eq!(back.len(), 100_000);

        let text = "ü".repeat(40_000);
        let (_, bytes) = split(&text);
        let at = bytes.as_ptr();
        let back: String = decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!((back.as_ptr(), &back), (at, &text));

        #[derive(Deserialize, serde::Serialize, PartialEq, Debug)]
        struct Blob(#[serde(with = "serde_bytes")] Vec<u8>);
        let (_, bytes) = split(&Blob(vec![9; 70_000]));
        let at = bytes.as_ptr();
        let back: Blob = decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!((back.0.as_ptr(), back.0.len()), (at, 70_000));
    }

    #[test]
    fn other_types_of_the_same_shape_decode_as_usual() {
        // A plain `Vec<u8>` is a sequence of bytes: the same bytes on the wire.
        let plain: Vec<u8> = (0..=255).cycle().take(5000).collect();
        let (_, bytes) = split(&plain);
        let back: Vec<u8> = decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!(back, plain);
        // Small `u16`s are one byte each: the same shape, another type.
        let small: Vec<u16> = (0..127).cycle().take(5000).collect();
        let (_, bytes) = split(&small);
        let back: Vec<u16> = decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!(back, small);
        // A tuple of a length and that many bytes.
        let (_, bytes) = split(&ByteBuf::from(vec![1u8, 2, 3]));
        let back: (u8, u8, u8, u8) =
            decode_payload(Payload::ByteString(bytes), Vec::new()).unwrap();
        assert_eq!(back, (3, 1, 2, 3));
    }

    #[test]
    fn a_byte_string_the_type_rejects_is_the_usual_error() {
        let (_, bytes) = split(&ByteBuf::from(vec![0xff, 0xfe, 0x00]));
        let usual = crate::message::decode::<String>(&with_prefix(&bytes), Vec::new())
            .unwrap_err()
            .to_string();
        let err = decode_payload::<String>(Payload::ByteString(bytes), Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), usual, "not UTF-8, in postcard's words");
        // A type that takes the bytes and refuses them.
        #[derive(Debug)]
        struct Four;
        impl<'de> Deserialize<'de> for Four {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let bytes = ByteBuf::deserialize(d)?;
                match bytes.len() {
                    4 => Ok(Four),
                    n => Err(serde::de::Error::invalid_length(n, &"four bytes")),
                }
            }
        }
        let (_, bytes) = split(&ByteBuf::from(vec![0u8; 5]));
        let err = decode_payload::<Four>(Payload::ByteString(bytes), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("Four"), "{err}");
    }

    #[test]
    fn the_prefix_comes_back_for_every_length() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 21] {
            let value = ByteBuf::from(vec![5u8; len]);
            let (bytes, _) = encode(&value).unwrap();
            let k = prefix_len(&bytes, bytes.len()).unwrap();
            assert_eq!(with_prefix(&bytes[k..]), bytes, "length {len}");
        }
    }

    #[test]
    fn only_values_that_are_one_byte_string_hand_out_their_bytes() {
        #[derive(serde::Serialize)]
        struct Wrapped(ByteBuf);
        #[derive(serde::Serialize)]
        struct Pair(u8, ByteBuf);
        let buf = ByteBuf::from(vec![1u8, 2, 3]);
        let at = |value: &dyn erased::Probe| value.probe();
        assert_eq!(at(&buf), Some(vec![1, 2, 3]));
        assert_eq!(at(&Wrapped(buf.clone())), Some(vec![1, 2, 3]));
        assert_eq!(at(&"abc".to_string()), Some(b"abc".to_vec()));
        assert_eq!(at(&vec![1u8, 2, 3]), None, "a plain Vec<u8> is a sequence");
        assert_eq!(at(&Pair(1, buf)), None);
        assert_eq!(at(&7u32), None);
        assert_eq!(at(&Some(ByteBuf::new())), None);
        let fd = crate::SharedFd::new(std::fs::File::open("/dev/null").unwrap().into());
        assert_eq!(at(&fd), None, "outside an encode a handle refuses at once");
        // What it hands out is what postcard writes after the prefix.
        let value = ByteBuf::from(vec![9u8; 300]);
        let (bytes, _) = encode(&value).unwrap();
        let (head, k) = prefix(300);
        assert_eq!(&bytes[..k], &head[..k]);
        assert_eq!(
            with_byte_string(&value, <[u8]>::to_vec).unwrap(),
            bytes[k..]
        );
    }

    /// Object-safe access to [`with_byte_string`] for a table of values of different types.
    mod erased {
        pub(super) trait Probe {
            fn probe(&self) -> Option<Vec<u8>>;
        }

        impl<T: serde::Serialize> Probe for T {
            fn probe(&self) -> Option<Vec<u8>> {
                super::with_byte_string(self, <[u8]>::to_vec)
            }
        }
    }
}
