//! The compact codec of a request's operations and of their results: what [`Request::ops`]
//! and the results of a [`Response::Done`] hold.
//!
//! The common operations of a served map, `insert` and `get` of values without handles, are
//! written as a one-byte tag, the map's id as a varint and the key's (and value's) encoded
//! bytes with their lengths, and their answers as a tag and the value's bytes. The manager
//! applies them straight from the request's bytes: it hashes and compares the key's bytes
//! (keys are stored as their bytes anyway), stores a copy of the value's bytes, and writes a
//! read's answer by copying the stored bytes into the answer. No typed decode, no operation
//! value, no result value per operation. Everything else (opening a value, lists, updates,
//! values holding handles, failures) is written as the postcard bytes of the operation or
//! result, prefixed with its length and with how many of the message's descriptors it claims.
//!
//! A request is parsed in full before any of it is applied ([`Ops::parse`]), so a malformed
//! one is refused whole (a batch stays atomic); a result list that does not parse is a
//! protocol error for the client. Lengths are checked against what is left, so no input
//! makes either side read out of bounds, allocate more than the message's own size, or panic.
//!
//! [`Request::ops`]: crate::wire::Request::ops
//! [`Response::Done`]: crate::wire::Response::Done

use std::ops::Range;
use std::os::fd::OwnedFd;

use multiproc_core::{EncodeError, SharedFd, message};

use crate::bytes::Bytes;
use crate::wire::{Blob, Failure, MapOp, Op, Reply};

/// Operation tags.
const OP_OTHER: u8 = 0;
const OP_MAP_INSERT: u8 = 1;
const OP_MAP_GET: u8 = 2;
const OP_WATCH: u8 = 3;

/// Result tags.
const RE_OTHER: u8 = 0;
const RE_DONE: u8 = 1;
const RE_NONE: u8 = 2;
const RE_SOME: u8 = 3;

/// Why bytes did not parse as operations or results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Malformed(&'static str);

#[inline]
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    if bytes.len() <= 16 {
        // A short key or value (the common case): a few stores, not a `memcpy` call.
        buf.extend(bytes.iter().copied());
    } else {
        buf.extend_from_slice(bytes);
    }
}

/// Writes one encoded message (postcard bytes and its descriptors), as an `OTHER` entry.
fn put_other(
    buf: &mut Vec<u8>,
    fds: &mut Vec<SharedFd>,
    tag: u8,
    (bytes, owned): (Vec<u8>, Vec<OwnedFd>),
) {
    buf.push(tag);
    put_varint(buf, owned.len() as u64);
    put_bytes(buf, &bytes);
    fds.extend(owned.into_iter().map(SharedFd::new));
}

/// Reads the pieces of an encoded list, never past its end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn u8(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self
            .bytes
            .split_first()
            .ok_or(Malformed("truncated operation or result"))?;
        self.bytes = rest;
        Ok(b)
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Malformed("a varint overflows 64 bits"))
    }

    #[inline]
    fn id(&mut self) -> Result<u32, Malformed> {
        u32::try_from(self.varint()?).map_err(|_| Malformed("a value id overflows 32 bits"))
    }

    #[inline]
    fn slice(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.varint()?;
        if len > self.bytes.len() as u64 {
            return Err(Malformed("a length runs past the end of the message"));
        }
        let (s, rest) = self.bytes.split_at(len as usize);
        self.bytes = rest;
        Ok(s)
    }

    /// An `OTHER` entry's descriptor range (checked against `total`) and bytes.
    fn other(
        &mut self,
        used: &mut usize,
        total: usize,
    ) -> Result<(&'a [u8], Range<usize>), Malformed> {
        let n = self.varint()?;
        let end = (*used as u64)
            .checked_add(n)
            .filter(|&end| end <= total as u64)
            .ok_or(Malformed(
                "an entry claims descriptors the message does not carry",
            ))?;
        let range = *used..end as usize;
        *used = end as usize;
        Ok((self.slice()?, range))
    }
}

/// Decodes an `OTHER` entry's postcard bytes, with duplicates of its descriptors.
fn decode_other<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    fds: &[SharedFd],
) -> Result<T, String> {
    let owned = fds
        .iter()
        .map(SharedFd::try_clone_owned)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("could not duplicate descriptors: {e}"))?;
    message::decode(bytes, owned).map_err(|e| e.to_string())
}

/// Appends one encoded operation to `buf` (its descriptors to `fds`); on error nothing was
/// appended.
fn encode_op(op: &Op, buf: &mut Vec<u8>, fds: &mut Vec<SharedFd>) -> Result<(), EncodeError> {
    match op {
        Op::Map(id, MapOp::Insert(key, value)) if value.fds.is_empty() => {
            buf.push(OP_MAP_INSERT);
            put_varint(buf, u64::from(*id));
            put_bytes(buf, key);
            put_bytes(buf, &value.bytes);
        }
        Op::Map(id, MapOp::Get(key)) => {
            buf.push(OP_MAP_GET);
            put_varint(buf, u64::from(*id));
            put_bytes(buf, key);
        }
        Op::Watch(id) => {
            buf.push(OP_WATCH);
            put_varint(buf, u64::from(*id));
        }
        other => put_other(buf, fds, OP_OTHER, message::encode(other)?),
    }
    Ok(())
}

/// Encodes `ops` (in the client): their bytes and the descriptors they carry. A short list
/// (a single operation) is encoded without an allocation.
///
/// # Errors
/// When an operation carrying handles cannot be encoded (a descriptor not duplicated).
pub(crate) fn encode_ops<'a>(
    ops: impl IntoIterator<Item = &'a Op>,
) -> Result<(Bytes, Vec<SharedFd>), EncodeError> {
    let mut fds = Vec::new();
    let bytes = Bytes::encode_with(|buf| {
        for op in ops {
            encode_op(op, buf, &mut fds)?;
        }
        Ok::<_, EncodeError>(())
    })?;
    Ok((bytes, fds))
}

/// Operations encoded as they are added (a batch's, a pipeline's queue), to be sent as one
/// request.
#[derive(Debug, Default)]
pub(crate) struct OpsBuf {
    bytes: Vec<u8>,
    fds: Vec<SharedFd>,
    len: usize,
}

impl OpsBuf {
    /// Encodes and appends `op`; on error nothing was appended.
    ///
    /// # Errors
    /// When an operation carrying handles cannot be encoded (a descriptor not duplicated).
    pub(crate) fn push(&mut self, op: &Op) -> Result<(), EncodeError> {
        if self.bytes.capacity() == 0 {
            // Room for a few dozen short operations before the first growth.
            self.bytes.reserve(512);
        }
        encode_op(op, &mut self.bytes, &mut self.fds)?;
        self.len += 1;
        Ok(())
    }

    /// How many operations it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The operations' bytes, their descriptors and their count, leaving it empty.
    pub(crate) fn take(&mut self) -> (Bytes, Vec<SharedFd>, usize) {
        let bytes = Bytes::from_vec(std::mem::take(&mut self.bytes));
        let fds = std::mem::take(&mut self.fds);
        (bytes, fds, std::mem::take(&mut self.len))
    }
}

/// One operation as the manager reads it, borrowing the request's bytes.
#[derive(Debug, PartialEq)]
pub(crate) enum OpRef<'a> {
    MapInsert {
        id: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
    MapGet {
        id: u32,
        key: &'a [u8],
    },
    Watch(u32),
    /// Any other operation: postcard bytes of an [`Op`] and its descriptors' range.
    Other(&'a [u8], Range<usize>),
}

impl OpRef<'_> {
    /// The operation as a value, for the general path (`fds`: the request's descriptors).
    pub(crate) fn to_op(&self, fds: &[SharedFd]) -> Result<Op, Failure> {
        Ok(match *self {
            OpRef::MapInsert { id, key, value } => Op::Map(
                id,
                MapOp::Insert(
                    Bytes::copy_from(key),
                    Blob {
                        bytes: Bytes::copy_from(value),
                        fds: Vec::new(),
                    },
                ),
            ),
            OpRef::MapGet { id, key } => Op::Map(id, MapOp::Get(Bytes::copy_from(key))),
            OpRef::Watch(id) => Op::Watch(id),
            OpRef::Other(bytes, ref range) => {
                decode_other(bytes, &fds[range.clone()]).map_err(Failure::Undecodable)?
            }
        })
    }
}

/// A request's operations, parsed (framing only: the bytes of `OTHER` operations are decoded
/// when applied).
pub(crate) struct Ops<'a> {
    ops: Vec<OpRef<'a>>,
}

impl<'a> Ops<'a> {
    /// Parses every operation of `bytes`, which may claim up to `fds` descriptors.
    ///
    /// # Errors
    /// [`Malformed`] when the bytes do not frame whole operations.
    pub(crate) fn parse(bytes: &'a [u8], fds: usize) -> Result<Self, Malformed> {
        let mut r = Reader { bytes };
        let mut used = 0;
        // Every operation takes at least two bytes: room for all of them, within reason.
        let mut ops = Vec::with_capacity((bytes.len() / 2).min(1024));
        while !r.bytes.is_empty() {
            ops.push(match r.u8()? {
                OP_MAP_INSERT => OpRef::MapInsert {
                    id: r.id()?,
                    key: r.slice()?,
                    value: r.slice()?,
                },
                OP_MAP_GET => OpRef::MapGet {
                    id: r.id()?,
                    key: r.slice()?,
                },
                OP_WATCH => OpRef::Watch(r.id()?),
                OP_OTHER => {
                    let (bytes, range) = r.other(&mut used, fds)?;
                    OpRef::Other(bytes, range)
                }
                _ => return Err(Malformed("unknown operation tag")),
            });
        }
        Ok(Self { ops })
    }

    /// The operations, in order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, OpRef<'a>> {
        self.ops.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }
}

/// The value id of the first operation of encoded `ops`, when it is a watch (the rest is not
/// looked at).
pub(crate) fn first_watch(ops: &[u8]) -> Option<u32> {
    let mut r = Reader { bytes: ops };
    match r.u8() {
        Ok(OP_WATCH) => r.id().ok(),
        _ => None,
    }
}

/// Writes results (in the manager).
#[derive(Default)]
pub(crate) struct ResultsWriter {
    buf: Vec<u8>,
    fds: Vec<SharedFd>,
}

impl ResultsWriter {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            fds: Vec::new(),
        }
    }

    /// A success without a value.
    pub(crate) fn done(&mut self) {
        self.buf.push(RE_DONE);
    }

    /// An optional value given as its bytes (a value without handles).
    pub(crate) fn maybe_bytes(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.buf.push(RE_NONE),
            Some(bytes) => {
                self.buf.push(RE_SOME);
                put_bytes(&mut self.buf, bytes);
            }
        }
    }

    /// An optional stored value: its bytes when it holds no handle.
    pub(crate) fn maybe_blob(&mut self, blob: Option<&Blob>) {
        match blob {
            Some(blob) if !blob.fds.is_empty() => {
                self.result(&Ok(Reply::MaybeBlob(Some(blob.clone()))));
            }
            blob => self.maybe_bytes(blob.map(|b| &*b.bytes)),
        }
    }

    /// Any result.
    pub(crate) fn result(&mut self, result: &Result<Reply, Failure>) {
        match result {
            Ok(Reply::Done) => self.done(),
            Ok(Reply::MaybeBlob(None)) => self.maybe_bytes(None),
            Ok(Reply::MaybeBlob(Some(blob))) if blob.fds.is_empty() => {
                self.maybe_bytes(Some(&blob.bytes));
            }
            other => match message::encode(other) {
                Ok(encoded) => put_other(&mut self.buf, &mut self.fds, RE_OTHER, encoded),
                Err(e) => {
                    let failed: Result<Reply, Failure> = Err(Failure::Unencodable(e.to_string()));
                    // A failure holds no handle: its encoding cannot fail.
                    let encoded = message::encode(&failed).unwrap_or_default();
                    put_other(&mut self.buf, &mut self.fds, RE_OTHER, encoded);
                }
            },
        }
    }

    /// The results' bytes and descriptors.
    pub(crate) fn finish(self) -> (Bytes, Vec<SharedFd>) {
        (Bytes::from_vec(self.buf), self.fds)
    }
}

/// Decodes results (in the client).
///
/// # Errors
/// [`Malformed`] when the bytes do not frame whole results, or one does not decode.
pub(crate) fn decode_results(
    bytes: &[u8],
    fds: &[SharedFd],
) -> Result<Vec<Result<Reply, Failure>>, Malformed> {
    let mut r = Reader { bytes };
    let mut used = 0;
    // Every result takes at least a byte: room for all of them, within reason.
    let mut results = Vec::with_capacity(bytes.len().min(1024));
    while !r.bytes.is_empty() {
        results.push(match r.u8()? {
            RE_DONE => Ok(Reply::Done),
            RE_NONE => Ok(Reply::MaybeBlob(None)),
            RE_SOME => Ok(Reply::MaybeBlob(Some(Blob {
                bytes: Bytes::copy_from(r.slice()?),
                fds: Vec::new(),
            }))),
            RE_OTHER => {
                let (bytes, range) = r.other(&mut used, fds.len())?;
                decode_other(bytes, &fds[range])
                    .map_err(|_| Malformed("a result from the manager does not decode"))?
            }
            _ => return Err(Malformed("unknown result tag")),
        });
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Kind, ListOp, encode_key};

    fn blob<T: serde::Serialize>(v: &T) -> Blob {
        Blob::encode(v).unwrap()
    }

    fn fd() -> SharedFd {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        SharedFd::new(a.into())
    }

    #[test]
    fn every_kind_of_operation_round_trips() {
        let long_key = "k".repeat(1000);
        let ops = vec![
            Op::Map(3, MapOp::Insert(encode_key("a").unwrap(), blob(&7u64))),
            Op::Map(u32::MAX, MapOp::Get(encode_key(&long_key).unwrap())),
            Op::Watch(5),
            Op::List(
                1,
                ListOp::Push(Blob {
                    bytes: Bytes::copy_from(b"x"),
                    fds: vec![fd(), fd()],
                }),
            ),
            Op::Map(
                3,
                MapOp::Insert(
                    encode_key("b").unwrap(),
                    Blob {
                        bytes: Bytes::copy_from(b"y"),
                        fds: vec![fd()],
                    },
                ),
            ),
            Op::Open {
                name: "n".into(),
                kind: Kind::Map,
                type_name: "t".into(),
                init: Blob::default(),
            },
        ];
        let (bytes, fds) = encode_ops(&ops).unwrap();
        assert_eq!(fds.len(), 3);
        let parsed = Ops::parse(&bytes, fds.len()).unwrap();
        assert_eq!(parsed.len(), ops.len());
        let back: Vec<Op> = parsed.iter().map(|op| op.to_op(&fds).unwrap()).collect();
        // Compare as postcard bytes (operations have no `PartialEq`), descriptors by count.
        for (a, b) in ops.iter().zip(&back) {
            let (x, xf) = message::encode(a).unwrap();
            let (y, yf) = message::encode(b).unwrap();
            assert_eq!(x, y);
            assert_eq!(xf.len(), yf.len());
        }
        assert!(matches!(
            parsed.iter().next(),
            Some(OpRef::MapInsert { id: 3, .. })
        ));
        assert_eq!(first_watch(&bytes), None);
        let (watch, _) = encode_ops(&[Op::Watch(9)]).unwrap();
        assert_eq!(first_watch(&watch), Some(9));
    }

    #[test]
    fn every_kind_of_result_round_trips() {
        let results: Vec<Result<Reply, Failure>> = vec![
            Ok(Reply::Done),
            Ok(Reply::MaybeBlob(None)),
            Ok(Reply::MaybeBlob(Some(blob(&"hello".to_string())))),
            Ok(Reply::MaybeBlob(Some(Blob {
                bytes: Bytes::copy_from(&[1; 100]),
                fds: vec![fd()],
            }))),
            Ok(Reply::Len(4)),
            Err(Failure::OutOfRange { index: 9, len: 2 }),
        ];
        let mut w = ResultsWriter::default();
        for r in &results {
            w.result(r);
        }
        let (bytes, fds) = w.finish();
        assert_eq!(fds.len(), 1);
        let back = decode_results(&bytes, &fds).unwrap();
        assert_eq!(back.len(), results.len());
        for (a, b) in results.iter().zip(&back) {
            let (x, _) = message::encode(a).unwrap();
            let (y, _) = message::encode(b).unwrap();
            assert_eq!(x, y);
        }
    }

    /// Every truncation and every single-byte corruption of a valid list of operations or
    /// results either parses (the corrupt bytes happen to frame) or is refused: never a panic,
    /// never a read past the end.
    #[test]
    fn truncated_and_corrupt_bytes_are_refused_without_panicking() {
        let ops = vec![
            Op::Map(3, MapOp::Insert(encode_key("key").unwrap(), blob(&7u64))),
            Op::Map(3, MapOp::Get(encode_key("key").unwrap())),
            Op::List(
                1,
                ListOp::Push(Blob {
                    bytes: Bytes::copy_from(b"x"),
                    fds: vec![fd()],
                }),
            ),
        ];
        let (bytes, fds) = encode_ops(&ops).unwrap();
        for end in 0..bytes.len() {
            // A cut inside an operation never parses as whole operations (a cut between two
            // may: fewer operations).
            if let Ok(parsed) = Ops::parse(&bytes[..end], fds.len()) {
                assert!(parsed.len() < ops.len());
            }
        }
        // Descriptors the message does not carry.
        assert!(Ops::parse(&bytes, 0).is_err());
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.to_vec();
                bad[at] ^= flip;
                if let Ok(parsed) = Ops::parse(&bad, fds.len()) {
                    for op in parsed.iter() {
                        let _ = op.to_op(&fds);
                    }
                }
            }
        }
        let mut w = ResultsWriter::default();
        w.maybe_bytes(Some(b"value"));
        w.result(&Err(Failure::Empty));
        let (bytes, _) = w.finish();
        for end in 1..bytes.len() {
            assert!(decode_results(&bytes[..end], &[]).is_err_or_shorter(2));
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0xff;
            let _ = decode_results(&bad, &[]);
        }
        // An unknown tag, an overflowing varint, an oversized length.
        assert!(Ops::parse(&[9], 0).is_err());
        assert!(
            Ops::parse(
                &[
                    OP_MAP_GET, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
                ],
                0
            )
            .is_err()
        );
        assert!(Ops::parse(&[OP_MAP_GET, 0xff, 0xff, 0xff, 0xff, 0x7f, 0], 0).is_err());
        assert!(Ops::parse(&[OP_MAP_GET, 1, 0xff, 0xff, 0xff, 0xff, 0x0f], 0).is_err());
        assert!(decode_results(&[RE_SOME, 0xff, 0xff, 0xff, 0xff, 0x0f, 1], &[]).is_err());
        assert!(decode_results(&[RE_OTHER, 1, 0], &[]).is_err());
    }

    trait ErrOrShorter {
        fn is_err_or_shorter(&self, n: usize) -> bool;
    }

    impl<T> ErrOrShorter for Result<Vec<T>, Malformed> {
        fn is_err_or_shorter(&self, n: usize) -> bool {
            self.as_ref().map_or(true, |v| v.len() < n)
        }
    }
}
