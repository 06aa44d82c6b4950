//! The fixed-width layout: postcard's layout with every integer (and every length and variant
//! index) written as little-endian bytes of its full width instead of a varint.
//!
//! For bulk data that two copies of the same program exchange, where decoding speed matters
//! more than size: the pool's chunks of arguments and results. Reading or writing a varint
//! is a loop over its bytes with a branch per byte; here an integer is one load or store.
//! A chunk of 1,024 `u64`s took about half of a worker's time to decode and re-encode as
//! varints. Lengths and variant indices are `u64` and `u32`; floats are their bits; a
//! `char` is a `u32`; `Option` is a byte 0 or 1 before the value. The layout is not
//! self-describing (as postcard's is not): `deserialize_any` is an error.
//!
//! Every read is checked against what is left of the input: bytes that do not form the type
//! are an error, never a panic, and no length read from the input reserves memory beyond what
//! the input could hold.

#![allow(unsafe_code)]

use std::fmt;
use std::mem::MaybeUninit;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// Why a value could not be written or read in the fixed-width layout.
#[derive(Debug)]
pub(crate) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

fn error(what: &str) -> Error {
    Error(what.to_string())
}

/// Writes `value` after the bytes already in `out`.
///
/// `out` is moved into the serializer and back: owned by a local that no call outside the
/// encode gets a pointer to, its length can stay in a register while a sequence of numbers is
/// written, instead of being stored and loaded again for every number (a byte store may alias
/// a `Vec` reached through a reference). Should a `Serialize` impl panic, `out` is left empty.
pub(crate) fn serialize_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let mut serializer = Serializer {
        out: std::mem::take(out),
    };
    let result = value.serialize(&mut serializer);
    *out = serializer.out;
    result
}

/// Reads a `T` from the front of `bytes`; returns it with the bytes that follow.
pub(crate) fn take_from_bytes<'de, T: de::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, &'de [u8]), Error> {
    let mut de = Deserializer { input: bytes };
    let value = T::deserialize(&mut de)?;
    Ok((value, de.input))
}

struct Serializer {
    out: Vec<u8>,
}

impl Serializer {
    /// Stores the bytes in place after the length (`extend_from_slice` called `memcpy` for
    /// every integer). The buffer grows out of line, by value, so that no pointer to the
    /// serializer leaves the encode (see `serialize_into`).
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        if self.out.capacity() - self.out.len() < N {
            self.out = grown(std::mem::take(&mut self.out), N);
        }
        let len = self.out.len();
        let (spare, _) = self.out.spare_capacity_mut().as_chunks_mut::<N>();
        spare[0] = bytes.map(MaybeUninit::new);
        // SAFETY: the `N` bytes after the length were just written, inside the capacity (made
        // at least `N` bytes longer than the length above).
        unsafe { self.out.set_len(len + N) };
    }

    /// `put` for a slice of any length.
    fn put_slice(&mut self, bytes: &[u8]) {
        if self.out.capacity() - self.out.len() < bytes.len() {
            self.out = grown(std::mem::take(&mut self.out), bytes.len());
        }
        let len = self.out.len();
        let spare = &mut self.out.spare_capacity_mut()[..bytes.len()];
        // SAFETY: `spare` is `bytes.len()` bytes of this serializer's own buffer, which the
        // value being encoded (borrowed from elsewhere) cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), spare.as_mut_ptr().cast(), bytes.len());
        }
        // SAFETY: the bytes after the length were just written, inside the capacity.
        unsafe { self.out.set_len(len + bytes.len()) };
    }

    #[inline]
    fn len(&mut self, len: usize) {
        self.put((len as u64).to_le_bytes());
    }

    #[inline]
    fn variant(&mut self, index: u32) {
        self.put(index.to_le_bytes());
    }
}

/// Integers: their little-endian bytes.
macro_rules! write_number {
    ($($method:ident: $ty:ty),+ $(,)?) => {$(
        #[inline]
        fn $method(self, v: $ty) -> Result<(), Error> {
            self.put(v.to_le_bytes());
            Ok(())
        }
    )+};
}

// Every method is inlined: one left out of line is handed the serializer's address, and its
// buffer then lives in memory again (see `serialize_into`).
impl ser::Serializer for &mut Serializer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    #[inline]
    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.put([v as u8]);
        Ok(())
    }
    write_number! {
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128,
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.put(v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.put(v.to_bits().to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.put(u32::from(v).to_le_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.serialize_bytes(v.as_bytes())
    }
    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.len(v.len());
        self.put_slice(v);
        Ok(())
    }
    #[inline]
    fn serialize_none(self) -> Result<(), Error> {
        self.put([0]);
        Ok(())
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.put([1]);
        value.serialize(self)
    }
    #[inline]
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), Error> {
        self.variant(index);
        Ok(())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }
    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant(index);
        value.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Error> {
        let len = len.ok_or_else(|| error("a sequence of unknown length cannot be encoded"))?;
        self.len(len);
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(index);
        Ok(self)
    }
    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Error> {
        let len = len.ok_or_else(|| error("a map of unknown length cannot be encoded"))?;
        self.len(len);
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }
    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(index);
        Ok(self)
    }
}

/// Sequences, tuples, maps and structs: their elements one after another.
macro_rules! compound {
    ($($trait:ident: $method:ident $(, $key:ident)?;)+) => {$(
        impl ser::$trait for &mut Serializer {
            type Ok = ();
            type Error = Error;
            $(
                #[inline]
                fn $key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
                    key.serialize(&mut **self)
                }
            )?
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                value.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )+};
}

compound! {
    SerializeSeq: serialize_element;
    SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field;
    SerializeTupleVariant: serialize_field;
    SerializeMap: serialize_value, serialize_key;
}

/// Structs and struct variants: their fields one after another, without names.
macro_rules! named_fields {
    ($($trait:ident),+) => {$(
        impl ser::$trait for &mut Serializer {
            type Ok = ();
            type Error = Error;
            #[inline]
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                v: &T,
            ) -> Result<(), Error> {
                v.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )+};
}

named_fields!(SerializeStruct, SerializeStructVariant);

/// `out` with room for `more` bytes after its length.
#[cold]
#[inline(never)]
fn grown(mut out: Vec<u8>, more: usize) -> Vec<u8> {
    out.reserve(more);
    out
}

struct Deserializer<'de> {
    input: &'de [u8],
}

impl<'de> Deserializer<'de> {
    #[inline(always)]
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        match self.input.split_first_chunk::<N>() {
            Some((bytes, rest)) => {
                self.input = rest;
                Ok(*bytes)
            }
            None => Err(error("the input ends inside a value")),
        }
    }

    fn take_slice(&mut self, len: usize) -> Result<&'de [u8], Error> {
        if len > self.input.len() {
            return Err(error("the input ends inside a value"));
        }
        let (bytes, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(bytes)
    }

    /// A length. Zero-sized elements take no bytes, so it is not checked against the bytes
    /// left: the visitors reserve by `size_hint`, which is.
    fn len(&mut self) -> Result<usize, Error> {
        let len = u64::from_le_bytes(self.take()?);
        usize::try_from(len).map_err(|_| error("a length does not fit in memory"))
    }

    fn variant(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let len = self.len()?;
        self.take_slice(len)
    }

    fn str(&mut self) -> Result<&'de str, Error> {
        std::str::from_utf8(self.bytes()?).map_err(|_| error("a string is not UTF-8"))
    }
}

macro_rules! fixed_number {
    ($($method:ident: $ty:ty => $visit:ident;)+) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(<$ty>::from_le_bytes(self.take()?))
        }
    )+};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error("the fixed-width layout is not self-describing"))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error("the fixed-width layout is not self-describing"))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(error("the fixed-width layout has no identifiers"))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.take::<1>()? {
            [0] => visitor.visit_bool(false),
            [1] => visitor.visit_bool(true),
            _ => Err(error("a bool is neither 0 nor 1")),
        }
    }

    fixed_number! {
        deserialize_i8: i8 => visit_i8;
        deserialize_i16: i16 => visit_i16;
        deserialize_i32: i32 => visit_i32;
        deserialize_i64: i64 => visit_i64;
        deserialize_i128: i128 => visit_i128;
        deserialize_u8: u8 => visit_u8;
        deserialize_u16: u16 => visit_u16;
        deserialize_u32: u32 => visit_u32;
        deserialize_u64: u64 => visit_u64;
        deserialize_u128: u128 => visit_u128;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(f32::from_bits(u32::from_le_bytes(self.take()?)))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(f64::from_bits(u64::from_le_bytes(self.take()?)))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let c = char::from_u32(u32::from_le_bytes(self.take()?))
            .ok_or_else(|| error("a char is not a Unicode scalar value"))?;
        visitor.visit_char(c)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.str()?)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.take::<1>()? {
            [0] => visitor.visit_none(),
            [1] => visitor.visit_some(self),
            _ => Err(error("an option's tag is neither 0 nor 1")),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_seq(Elements {
            de: self,
            left: len,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: len,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: len,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        visitor.visit_map(Elements {
            de: self,
            left: len,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: fields.len(),
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_enum(self)
    }
}

/// The elements of a sequence, tuple, struct or map, `left` of them still to read.
struct Elements<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> Elements<'_, 'de> {
    /// The next element (or map key), if any are left.
    #[inline]
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    /// No more elements than bytes left (serde's own collections cap what they reserve
    /// besides, for zero-sized elements).
    fn hint(&self) -> usize {
        self.left.min(self.de.input.len())
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.next(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.hint())
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        self.next(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.hint())
    }
}

impl<'de> de::EnumAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = self.variant()?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: len,
        })
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: fields.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::fd::OwnedFd;

    use serde::{Deserialize, Serialize};

    use crate::SharedFd;
    use crate::message::{decode_fixed, encode_fixed_into};

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    enum Shape {
        Empty,
        Circle(f64),
        Pair(i8, u128),
        Named { label: String, sides: Option<u16> },
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Everything {
        flags: (bool, bool),
        small: (i8, u8, i16, u16, i32, u32),
        wide: (i64, u64, i128, u128),
        floats: (f32, f64),
        letters: Vec<char>,
        text: String,
        blob: Blob,
        shapes: Vec<Shape>,
        table: BTreeMap<String, Vec<u32>>,
        nothing: (),
        unit: Unit,
        newtype: Meters,
        maybe: Option<Option<i64>>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Unit;

    /// Bytes through `serialize_bytes` / `deserialize_byte_buf`.
    #[derive(PartialEq, Debug, Clone)]
    struct Blob(Vec<u8>);

    impl Serialize for Blob {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Blob {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Blob;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                    Ok(Blob(v.to_vec()))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    /// A type only a self-describing layout can read.
    #[derive(Debug)]
    struct Anything;

    impl<'de> Deserialize<'de> for Anything {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(serde::de::IgnoredAny).map(|_| Anything)
        }
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    struct Meters(u32);

    fn everything() -> Everything {
        Everything {
            flags: (true, false),
            small: (-3, 250, -30_000, 65_000, i32::MIN, u32::MAX),
            wide: (i64::MIN, u64::MAX, i128::MIN + 1, u128::MAX - 7),
            floats: (1.5, -0.1),
            letters: vec!['a', 'é', '😀'],
            text: "fixed width".into(),
            blob: Blob(vec![0, 1, 2, 255]),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(2.5),
                Shape::Pair(-1, 1 << 100),
                Shape::Named {
                    label: "tri".into(),
                    sides: Some(3),
                },
                Shape::Named {
                    label: String::new(),
                    sides: None,
                },
            ],
            table: BTreeMap::from([("a".into(), vec![1, 2]), ("b".into(), vec![])]),
            nothing: (),
            unit: Unit,
            newtype: Meters(7),
            maybe: Some(None),
        }
    }

    #[test]
    fn every_kind_of_value_comes_back() {
        let value = everything();
        let mut buf = vec![0xAA];
        let fds = encode_fixed_into(&value, &mut buf).unwrap();
        assert!(fds.is_empty());
        assert_eq!(buf[0], 0xAA, "the bytes already there stay");
        let back: Everything = decode_fixed(&buf[1..], Vec::new()).unwrap();
        assert_eq!(back, value);
    }

    /// The buffer grows as the encode goes, from a single byte, in steps of every size: numbers
    /// one at a time, strings and byte strings in one piece each.
    #[test]
    fn a_buffer_grown_while_encoding_holds_every_byte() {
        let numbers: Vec<u64> = (0..10_000).map(|i| i * 0x0101_0101).collect();
        let strings: Vec<String> = (0..300).map(|n| "é".repeat(n)).collect();
        let value = (numbers, strings, Blob(vec![9; 100_000]), everything());
        let mut buf = vec![0xAA];
        buf.shrink_to_fit();
        encode_fixed_into(&value, &mut buf).unwrap();
        assert_eq!(buf[0], 0xAA, "the bytes already there stay");
        let back: (Vec<u64>, Vec<String>, Blob, Everything) =
            decode_fixed(&buf[1..], Vec::new()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn integers_are_little_endian_at_full_width() {
        let mut buf = Vec::new();
        encode_fixed_into(&vec![1u64, 2], &mut buf).unwrap();
        let mut expected = 2u64.to_le_bytes().to_vec();
        expected.extend(1u64.to_le_bytes());
        expected.extend(2u64.to_le_bytes());
        assert_eq!(buf, expected);
    }

    #[test]
    fn every_truncation_and_every_trailing_byte_is_an_error() {
        let mut buf = Vec::new();
        encode_fixed_into(&everything(), &mut buf).unwrap();
        for len in 0..buf.len() {
            assert!(
                decode_fixed::<Everything>(&buf[..len], Vec::new()).is_err(),
                "{len} of {} bytes",
                buf.len()
            );
        }
        buf.push(0);
        assert!(decode_fixed::<Everything>(&buf, Vec::new()).is_err());
    }

    #[test]
    fn garbled_bytes_are_errors_not_panics_nor_huge_reservations() {
        let mut buf = Vec::new();
        encode_fixed_into(&everything(), &mut buf).unwrap();
        // Every byte replaced by each of a few values: decoding may succeed or fail, never
        // panic; lengths turned huge must fail without reserving their size.
        for at in 0..buf.len() {
            for byte in [0x00, 0x01, 0x7F, 0xFF] {
                let mut garbled = buf.clone();
                garbled[at] = byte;
                let _ = decode_fixed::<Everything>(&garbled, Vec::new());
            }
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend([1, 2, 3]);
        assert!(decode_fixed::<Vec<u64>>(&huge, Vec::new()).is_err());
        assert!(decode_fixed::<String>(&huge, Vec::new()).is_err());
        assert!(decode_fixed::<bool>(&[2], Vec::new()).is_err());
        assert!(decode_fixed::<Option<u8>>(&[2, 0], Vec::new()).is_err());
        assert!(decode_fixed::<char>(&0xD800u32.to_le_bytes(), Vec::new()).is_err());
        assert!(decode_fixed::<Shape>(&9u32.to_le_bytes(), Vec::new()).is_err());
    }

    #[test]
    fn unknown_lengths_and_self_describing_types_are_refused() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(std::iter::from_fn(|| Some(1u8)).take(3).filter(|_| true))
            }
        }
        let mut buf = vec![7];
        assert!(encode_fixed_into(&Unsized, &mut buf).is_err());
        assert_eq!(buf, [7], "a failed encode leaves the buffer as it was");
        let bytes = {
            let mut b = Vec::new();
            encode_fixed_into(&1u8, &mut b).unwrap();
            b
        };
        assert!(decode_fixed::<Anything>(&bytes, Vec::new()).is_err());
    }

    #[test]
    fn descriptors_travel_beside_the_bytes() {
        let fd: OwnedFd =
            rustix::fs::memfd_create("fixed-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let handle = SharedFd::new(fd);
        let ino = |fd: &SharedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        let mut buf = Vec::new();
        let fds = encode_fixed_into(&(5u32, &handle, "x"), &mut buf).unwrap();
        assert_eq!(fds.len(), 1);
        let (n, back, s): (u32, SharedFd, String) = decode_fixed(&buf, fds).unwrap();
        assert_eq!((n, s.as_str()), (5, "x"));
        assert_eq!(ino(&back), ino(&handle));
        // Without its descriptors the handle does not decode.
        assert!(decode_fixed::<(u32, SharedFd, String)>(&buf, Vec::new()).is_err());
    }
}
