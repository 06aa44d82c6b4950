//! Typed messages as postcard bytes plus the descriptors they carry.

use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError};
use crate::fd;

mod byte_string;
mod fixed;
pub(crate) use byte_string::{
    prefix as byte_string_prefix, prefix_len as byte_string_prefix_len, with_byte_string,
};
pub(crate) use fixed::Error as FixedError;

/// Default largest message, in encoded bytes, that a pipe end or a queue sends or accepts:
/// 64 MiB. Each end can set its own limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The bytes of one received message, borrowed from a transport's receive buffer or in a
/// buffer of their own. The transports hand it out; [`decode_bytes`] takes it.
pub enum Payload<'a> {
    /// In the receive buffer.
    Borrowed(&'a [u8]),
    /// Read into its own buffer (large frames received with `*_recv_bytes`).
    Owned(Vec<u8>),
    /// A large frame that is exactly one postcard byte string (a varint length, then the
    /// bytes), read into a buffer of its own without its length prefix, so that a typed
    /// receive can make the bytes its value without copying them ([`decode_payload`]).
    ByteString(Vec<u8>),
}

impl<'a> Payload<'a> {
    /// The payload as one contiguous run of bytes: a [`ByteString`](Payload::ByteString) gets
    /// its length prefix back (a copy; only a receive of another kind finishing a frame a
    /// cancelled typed receive began sees one).
    pub(crate) fn contiguous(self) -> Payload<'a> {
        match self {
            Payload::ByteString(bytes) => Payload::Owned(byte_string::with_prefix(&bytes)),
            other => other,
        }
    }

    /// The bytes of a contiguous payload (see [`contiguous`](Self::contiguous)); empty for a
    /// [`ByteString`](Payload::ByteString).
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
            Payload::ByteString(_) => &[],
        }
    }

    /// The bytes in a `Vec` of their own (copied only when borrowed).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Payload::Borrowed(b) => b.to_vec(),
            Payload::Owned(v) => v,
            Payload::ByteString(bytes) => byte_string::with_prefix(&bytes),
        }
    }
}

/// Serializes `value` with postcard, appending the bytes to `buf`.
///
/// Every [`SharedFd`](crate::SharedFd) inside `value` is duplicated into the returned list, in
/// the order the payload refers to them. On error `buf` is restored to its former length, so a
/// failed encode never leaves half a message behind.
///
/// # Errors
/// [`EncodeError`] when the value's `Serialize` implementation fails (for example a sequence of
/// unknown length) or a descriptor cannot be duplicated.
#[inline]
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>, EncodeError> {
    let start = buf.len();
    let (result, fds) =
        fd::collect_outgoing(|| postcard::serialize_with_flavor(value, AppendTo(&mut *buf)));
    let error = match (result, fds) {
        (Ok(()), Ok(fds)) => return Ok(fds),
        (_, Err(io)) => EncodeError::descriptor(io),
        (Err(e), Ok(_)) => EncodeError::serde(e),
    };
    buf.truncate(start);
    Err(error)
}

/// A postcard output that appends to a borrowed buffer, so a failed encode can be rolled back.
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // postcard writes every integer as a varint of 1 to 10 bytes through here, from a
        // buffer it has just written byte by byte. A `memcpy` call per integer was a fifth of a
        // pool map of integers (both sides); pushing byte by byte reloads the capacity after
        // every store; gathering the bytes with wider loads stalls on store forwarding (twice
        // as slow as pushing). `extend` from the bytes reserves once and then stores them one
        // by one without a check: the fastest of the three (a micro-benchmark of postcard's
        // varints: about 0.7x the pushing loop's time).
        if data.len() <= 16 {
            self.0.extend(data.iter().copied());
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Serializes `value` into a fresh buffer; see [`encode_into`].
///
/// # Errors
/// As [`encode_into`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>), EncodeError> {
    let mut buf = Vec::new();
    let fds = encode_into(value, &mut buf)?;
    Ok((buf, fds))
}

/// A received payload as plain bytes: what a pipe's `recv_bytes` returns, for messages sent
/// with `send_bytes` (or the postcard bytes of a typed message without handles).
///
/// # Errors
/// [`DecodeError`] when descriptors came with the payload: it was a typed message carrying
/// handles, which plain bytes cannot represent. The descriptors are closed.
pub fn decode_bytes(payload: Payload<'_>, fds: Vec<OwnedFd>) -> Result<Vec<u8>, DecodeError> {
    if !fds.is_empty() {
        return Err(DecodeError::unexpected_descriptors(fds.len()));
    }
    Ok(payload.into_vec())
}

/// Deserializes a `T` from postcard `bytes`, handing it the descriptors that came with them.
///
/// Descriptors the value does not claim are closed. Trailing bytes after the value are an
/// error: they mean the two sides disagree on the type.
///
/// # Errors
/// [`DecodeError`] naming what went wrong: the bytes do not form a `T` (usually a different
/// type on the other side), trailing bytes, or a descriptor index the message did not carry.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, DecodeError> {
    let decoded = fd::with_incoming(fds, || postcard::take_from_bytes::<T>(bytes));
    whole_value(bytes.len(), decoded, DecodeError::serde)
}

/// Deserializes a `T` from a received [`Payload`], as [`decode`] does from bytes; a
/// [`Payload::ByteString`] becomes the value without a copy when `T` is a byte string
/// (`serde_bytes::ByteBuf`, a `String`, a `Vec<u8>`, through newtypes).
///
/// # Errors
/// As [`decode`].
pub fn decode_payload<T: DeserializeOwned>(
    payload: Payload<'_>,
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    match payload {
        Payload::Borrowed(bytes) => decode(bytes, fds),
        Payload::Owned(bytes) => decode(&bytes, fds),
        Payload::ByteString(bytes) => byte_string::decode(bytes, fds),
    }
}

/// Deserializes a `T` that may borrow from `bytes` (`&[u8]` with `serde_bytes`, `&str`, a
/// struct of such fields), for receives that lend the payload where it arrived: nothing is
/// allocated or copied for the borrowed parts.
///
/// Such a value cannot hold handles: a message that came with descriptors is refused whole
/// (its descriptors are closed), and a handle in `T` met in a message without descriptors
/// fails as an out-of-range descriptor. Trailing bytes after the value are an error, as in
/// [`decode`].
///
/// # Errors
/// [`DecodeError`]: the message carries descriptors
/// ([`DecodeError::carries_descriptors`]), the bytes do not form a `T`, or trailing bytes.
pub fn decode_borrowed<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    if !fds.is_empty() {
        return Err(DecodeError::borrowed_descriptors(fds.len()));
    }
    let decoded = fd::with_incoming(fds, || postcard::take_from_bytes::<T>(bytes));
    whole_value(bytes.len(), decoded, DecodeError::serde)
}

/// What a decode inside the descriptor context gives: the value and the bytes after it, or
/// the format's error; and the handle problem met, if any.
type Decoded<'a, T, E> = (Result<(T, &'a [u8]), E>, Option<fd::HandleProblem>);

/// The value of a decode that must take all of its `total` bytes: the handle problem it met,
/// its trailing bytes, or its format's error (`serde`), as a [`DecodeError`].
#[inline]
fn whole_value<T, E>(
    total: usize,
    (result, problem): Decoded<'_, T, E>,
    serde: impl FnOnce(E, &'static str) -> DecodeError,
) -> Result<T, DecodeError> {
    if let Some(problem) = problem {
        return Err(DecodeError::from_handle_problem(problem));
    }
    match result {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(DecodeError::trailing(
            std::any::type_name::<T>(),
            rest.len(),
            total,
        )),
        Err(e) => Err(serde(e, std::any::type_name::<T>())),
    }
}

/// Deserializes a `T` from the front of `bytes` and returns it with the bytes that follow.
///
/// For frames made of a small header followed by a body whose type only the header reveals:
/// decode the header here, then the body with [`decode`]. The header may not claim
/// descriptors; the frame's descriptors all belong to the body.
///
/// # Errors
/// [`DecodeError`] when the front of `bytes` is not a `T`.
pub fn decode_head<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    let (result, problem) = fd::with_incoming(Vec::new(), || postcard::take_from_bytes::<T>(bytes));
    if let Some(problem) = problem {
        return Err(DecodeError::from_handle_problem(problem));
    }
    result.map_err(|e| DecodeError::serde(e, std::any::type_name::<T>()))
}

/// Serializes `value` in the fixed-width layout, appending the bytes to `buf`: postcard's
/// layout, but every integer, length and variant index at its full width, little-endian.
///
/// For bulk data between two copies of the same program where decoding speed matters more
/// than size (the pool's chunks of arguments and results): an integer is one store and one
/// load rather than a varint loop. Read it back with [`decode_fixed`]. Descriptors are
/// collected as by [`encode_into`], and a failed encode leaves `buf` as it was.
///
/// # Errors
/// As [`encode_into`].
pub fn encode_fixed_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>, EncodeError> {
    let start = buf.len();
    let (result, fds) = fd::collect_outgoing(|| fixed::serialize_into(value, buf));
    let error = match (result, fds) {
        (Ok(()), Ok(fds)) => return Ok(fds),
        (_, Err(io)) => EncodeError::descriptor(io),
        (Err(e), Ok(_)) => EncodeError::fixed(e),
    };
    buf.truncate(start);
    Err(error)
}

/// Deserializes a `T` written by [`encode_fixed_into`], as [`decode`] does for postcard.
///
/// # Errors
/// As [`decode`]: the bytes do not form a `T`, trailing bytes, or a bad descriptor.
pub fn decode_fixed<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, DecodeError> {
    let decoded = fd::with_incoming(fds, || fixed::take_from_bytes::<T>(bytes));
    whole_value(bytes.len(), decoded, DecodeError::fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_then_body() {
        let mut buf = Vec::new();
        assert!(encode_into(&(7u32, "head"), &mut buf).unwrap().is_empty());
        assert!(encode_into(&vec![1u64, 2, 3], &mut buf).unwrap().is_empty());
        let ((n, name), rest) = decode_head::<(u32, String)>(&buf).unwrap();
        assert_eq!((n, name.as_str()), (7, "head"));
        assert_eq!(decode::<Vec<u64>>(rest, Vec::new()).unwrap(), vec![1, 2, 3]);
        assert!(decode_head::<(u32, String)>(&buf[..2]).is_err());
    }

    /// Every length the short-slice path of `AppendTo::try_extend` gathers (integers of every
    /// varint length, byte strings of 0 to 20 bytes) comes out as postcard's own bytes.
    #[test]
    fn short_writes_are_postcard_bytes_of_every_length() {
        let mut ints: Vec<u64> = (0..64).map(|shift| (1u64 << shift) - 1).collect();
        ints.extend((0..64).map(|shift| 1u64 << shift));
        ints.push(u64::MAX);
        let strings: Vec<String> = (0..=20u8)
            .map(|n| (b'a'..b'a' + n).map(char::from).collect())
            .collect();
        for value in &ints {
            let mut buf = vec![0xAA];
            encode_into(value, &mut buf).unwrap();
            assert_eq!(
                buf[1..],
                postcard::to_allocvec(value).unwrap()[..],
                "{value}"
            );
            assert_eq!(decode::<u64>(&buf[1..], Vec::new()).unwrap(), *value);
        }
        let mut buf = Vec::new();
        encode_into(&(&ints, &strings), &mut buf).unwrap();
        assert_eq!(buf, postcard::to_allocvec(&(&ints, &strings)).unwrap());
        let back: (Vec<u64>, Vec<String>) = decode(&buf, Vec::new()).unwrap();
        assert_eq!((back.0, back.1), (ints, strings));
    }

    use crate::SharedFd;
    use crate::fd::DescriptorError;
    use std::os::fd::{AsRawFd, OwnedFd};

    fn memfd() -> SharedFd {
        let fd: OwnedFd =
            rustix::fs::memfd_create("message-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        SharedFd::new(fd)
    }

    #[test]
    fn a_message_without_descriptors_carries_none() {
        let (bytes, fds) = encode(&(1u8, "no handles", [7u64; 4])).unwrap();
        assert!(fds.is_empty());
        let back: (u8, String, [u64; 4]) = decode(&bytes, fds).unwrap();
        assert_eq!(back, (1, "no handles".to_string(), [7; 4]));
    }

    #[test]
    fn a_handle_decoded_without_descriptors_is_out_of_range() {
        let (bytes, fds) = encode(&memfd()).unwrap();
        assert_eq!(fds.len(), 1);
        let err = decode::<SharedFd>(&bytes, Vec::new()).unwrap_err();
        assert_eq!(
            err.descriptor_error(),
            Some(&DescriptorError::OutOfRange { index: 0, count: 0 })
        );
    }

    #[test]
    fn descriptors_are_indexed_per_message_and_clones_travel_once() {
        let (a, b) = (memfd(), memfd());
        let (bytes, fds) = encode(&(a.clone(), 5u8, b.clone())).unwrap();
        assert_eq!(fds.len(), 2);
        let (a2, n, b2): (SharedFd, u8, SharedFd) = decode(&bytes, fds).unwrap();
        assert_eq!(n, 5);
        let ino = |fd: &SharedFd| rustix::fs::fstat(fd).unwrap().st_ino;
        assert_eq!((ino(&a2), ino(&b2)), (ino(&a), ino(&b)));
        // Two clones of one descriptor travel once, and both decode to one shared descriptor.
        let (bytes, fds) = encode(&(a.clone(), 5u8, a.clone())).unwrap();
        assert_eq!(fds.len(), 1);
        assert_eq!((bytes[0], bytes[2]), (0, 0));
        let (x, _, y): (SharedFd, u8, SharedFd) = decode(&bytes, fds).unwrap();
        assert_eq!(x.as_raw_fd(), y.as_raw_fd());
        assert_eq!(ino(&x), ino(&a));
    }

    /// A value whose `Serialize` encodes a message of its own, as a handle holding an encoded
    /// setup might.
    struct Nested(SharedFd, SharedFd);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let (inner, inner_fds) = encode(&self.1).map_err(serde::ser::Error::custom)?;
            assert_eq!(inner_fds.len(), 1, "the inner encode has its own list");
            assert_eq!(inner, [0], "and its own indices");
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&self.0)?;
            t.serialize_element(&self.0)?;
            t.end()
        }
    }

    #[test]
    fn nested_encodes_keep_their_own_descriptors() {
        // `Nested` sends its first descriptor twice: it travels once, both times as index 1.
        let (bytes, fds) = encode(&(memfd(), Nested(memfd(), memfd()))).unwrap();
        assert_eq!(bytes, [0, 1, 1]);
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn handles_refuse_to_serialize_outside_an_encode_even_after_a_panic() {
        let fd = memfd();
        assert!(postcard::to_stdvec(&fd).is_err());
        struct Boom(SharedFd);
        impl Serialize for Boom {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)?;
                panic!("boom");
            }
        }
        // Descriptors of this process open on `fd`'s memfd (other tests' descriptors come and
        // go meanwhile, so count only ours).
        let ino = rustix::fs::fstat(&fd).unwrap().st_ino;
        let copies = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
                .filter(|m| std::os::unix::fs::MetadataExt::ino(m) == ino)
                .count()
        };
        let before = copies();
        let boom = Boom(fd.clone());
        assert!(std::panic::catch_unwind(|| encode(&boom)).is_err());
        assert!(
            postcard::to_stdvec(&fd).is_err(),
            "the context was restored"
        );
        assert_eq!(
            copies(),
            before,
            "the duplicate made before the panic was closed"
        );
        let (bytes, fds) = encode(&fd).unwrap();
        assert_eq!((bytes.as_slice(), fds.len()), (&[0u8][..], 1));
        assert!(fds[0].as_raw_fd() >= 0);
    }
}
