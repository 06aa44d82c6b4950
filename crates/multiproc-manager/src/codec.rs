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
//! The client does the same on its side: a map's `insert` and `get` are encoded when the
//! operation is made, the key and the value straight into the operation's bytes
//! ([`map_insert`], [`map_get`]; a batch or a request copies them as they are), and the
//! results of an answer are found where they lie ([`index_results`]) and decoded from there
//! when taken ([`Answer`]; a pipeline keeps a copy of a result's bytes, [`Kept`]), without a
//! [`Reply`] or a [`Blob`] per result.
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
use serde::Serialize;

use crate::bytes::{Bytes, with_scratch};
use crate::wire::{Blob, Failure, KeyError, MapOp, Op, Reply};

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

/// Appends `bytes` as they are.
#[inline]
fn put_raw(buf: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() <= 16 {
        // A short key or value (the common case): a few stores, not a `memcpy` call.
        buf.extend(bytes.iter().copied());
    } else {
        buf.extend_from_slice(bytes);
    }
}

#[inline]
fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    put_raw(buf, bytes);
}

/// Appends `value`'s postcard bytes after their length, as [`put_bytes`] would write them,
/// encoding it in place (no copy); the range of its bytes in `buf` and the descriptors of the
/// handles inside. On error nothing was appended.
fn put_encoded<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(Range<usize>, Vec<OwnedFd>), EncodeError> {
    let at = buf.len();
    // The length, one byte when short (the common case): written once the value is.
    buf.push(0);
    let fds = message::encode_into(value, buf).inspect_err(|_| buf.truncate(at))?;
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
        return Ok((at + 1..buf.len(), fds));
    }
    let mut prefix = Vec::with_capacity(10);
    put_varint(&mut prefix, len as u64);
    buf.splice(at..at + 1, prefix.iter().copied());
    Ok((at + prefix.len()..buf.len(), fds))
}

/// Bytes of one operation an [`Op`](crate::Op) keeps inline: a map's `insert` of a key and a
/// value of a few dozen bytes together.
const OP_INLINE: usize = 62;

/// One operation as an [`Op`](crate::Op) carries it: a map's `insert` or `get` of a value
/// without handles in this codec's form, encoded once when the operation was made (a batch or
/// a request copies the bytes as they are); any other operation as a value, encoded when it is
/// sent.
#[derive(Debug)]
pub(crate) enum OpWire {
    Encoded(Bytes<OP_INLINE>),
    General(Op),
}

/// Why a map operation could not be encoded.
#[derive(Debug)]
pub(crate) enum OpEncodeError {
    Key(KeyError),
    Value(EncodeError),
}

/// Appends a map key (which may hold no handle) after its length.
fn put_key<K: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    key: &K,
) -> Result<Range<usize>, OpEncodeError> {
    let (range, fds) =
        put_encoded(buf, key).map_err(|e| OpEncodeError::Key(KeyError::Encode(e)))?;
    if fds.is_empty() {
        Ok(range)
    } else {
        Err(OpEncodeError::Key(KeyError::Handles))
    }
}

/// A map's `insert` of `key` and `value` into map `id`, encoded straight into its
/// operation's bytes. A value holding handles makes the general operation (its descriptors
/// travel beside).
///
/// # Errors
/// When the key or the value cannot be encoded, or the key holds a handle.
pub(crate) fn map_insert<K: Serialize + ?Sized, V: Serialize + ?Sized>(
    id: u32,
    key: &K,
    value: &V,
) -> Result<OpWire, OpEncodeError> {
    with_scratch(|buf| {
        buf.push(OP_MAP_INSERT);
        put_varint(buf, u64::from(id));
        let key = put_key(buf, key)?;
        let (value, fds) = put_encoded(buf, value).map_err(OpEncodeError::Value)?;
        if fds.is_empty() {
            return Ok(OpWire::Encoded(Bytes::copy_from(buf)));
        }
        let value = Blob {
            bytes: Bytes::copy_from(&buf[value]),
            fds: fds.into_iter().map(SharedFd::new).collect(),
        };
        let key = Bytes::copy_from(&buf[key]);
        Ok(OpWire::General(Op::Map(id, MapOp::Insert(key, value))))
    })
}

/// A map's `get` of `key` from map `id`, encoded straight into its operation's bytes.
///
/// # Errors
/// When the key cannot be encoded or holds a handle.
pub(crate) fn map_get<K: Serialize + ?Sized>(id: u32, key: &K) -> Result<OpWire, OpEncodeError> {
    with_scratch(|buf| {
        buf.push(OP_MAP_GET);
        put_varint(buf, u64::from(id));
        put_key(buf, key)?;
        Ok(OpWire::Encoded(Bytes::copy_from(buf)))
    })
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
    /// Appends `op` (encoding it if it is not yet); on error nothing was appended.
    ///
    /// # Errors
    /// When an operation carrying handles cannot be encoded (a descriptor not duplicated).
    pub(crate) fn push(&mut self, op: &OpWire) -> Result<(), EncodeError> {
        if self.bytes.capacity() == 0 {
            // Room for a few dozen short operations before the first growth.
            self.bytes.reserve(512);
        }
        match op {
            OpWire::Encoded(bytes) => put_raw(&mut self.bytes, bytes),
            OpWire::General(op) => encode_op(op, &mut self.bytes, &mut self.fds)?,
        }
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

/// One result as the client reads it, borrowing the answer's bytes: a typed result is
/// decoded straight from them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer<'a> {
    /// A success without a value.
    Done,
    /// An optional value's bytes (a value without handles).
    Maybe(Option<&'a [u8]>),
    /// Any other result: the postcard bytes of a `Result<Reply, Failure>` and the
    /// descriptors it claims.
    Other(&'a [u8], &'a [SharedFd]),
}

impl Answer<'_> {
    /// The result as a value (the general way).
    ///
    /// # Errors
    /// [`Malformed`] when an `OTHER` result does not decode.
    pub(crate) fn reply(self) -> Result<Result<Reply, Failure>, Malformed> {
        match self {
            Answer::Done => Ok(Ok(Reply::Done)),
            Answer::Maybe(bytes) => Ok(Ok(Reply::MaybeBlob(bytes.map(|bytes| Blob {
                bytes: Bytes::copy_from(bytes),
                fds: Vec::new(),
            })))),
            Answer::Other(bytes, fds) => decode_other(bytes, fds)
                .map_err(|_| Malformed("a result from the manager does not decode")),
        }
    }

    /// The failure this result is, if it is one.
    ///
    /// # Errors
    /// As [`reply`](Self::reply).
    pub(crate) fn failure(self) -> Result<Option<Failure>, Malformed> {
        match self {
            Answer::Other(..) => Ok(self.reply()?.err()),
            _ => Ok(None),
        }
    }
}

/// Where one result lies in an answer's bytes and descriptors (see [`index_results`]).
#[derive(Clone, Debug)]
pub(crate) enum At {
    Done,
    None,
    Some(Range<usize>),
    Other(Range<usize>, Range<usize>),
}

impl At {
    /// The result, read from the answer's `bytes` and `fds` it was indexed in.
    pub(crate) fn answer<'a>(&self, bytes: &'a [u8], fds: &'a [SharedFd]) -> Answer<'a> {
        match self {
            At::Done => Answer::Done,
            At::None => Answer::Maybe(None),
            At::Some(r) => Answer::Maybe(Some(&bytes[r.clone()])),
            At::Other(r, f) => Answer::Other(&bytes[r.clone()], &fds[f.clone()]),
        }
    }
}

/// Finds every result of an answer (in the client), appending where each lies to `out`:
/// framing only, checked whole (tags, lengths, descriptor ranges), nothing decoded.
///
/// # Errors
/// [`Malformed`] when the bytes do not frame whole results; `out` may then hold some.
pub(crate) fn index_results(bytes: &[u8], fds: usize, out: &mut Vec<At>) -> Result<(), Malformed> {
    let mut r = Reader { bytes };
    let mut used = 0;
    // Where the slice just read starts.
    let start = |r: &Reader<'_>, s: &[u8]| bytes.len() - r.bytes.len() - s.len();
    while !r.bytes.is_empty() {
        out.push(match r.u8()? {
            RE_DONE => At::Done,
            RE_NONE => At::None,
            RE_SOME => {
                let s = r.slice()?;
                let at = start(&r, s);
                At::Some(at..at + s.len())
            }
            RE_OTHER => {
                let (s, range) = r.other(&mut used, fds)?;
                let at = start(&r, s);
                At::Other(at..at + s.len(), range)
            }
            _ => return Err(Malformed("unknown result tag")),
        });
    }
    Ok(())
}

/// A result kept for later (a pipeline's answers, read before anyone waits for them): a
/// value's bytes are copied (inline when short), nothing is decoded.
#[derive(Debug)]
pub(crate) enum Kept {
    Done,
    Maybe(Option<Bytes>),
    Other(Vec<u8>, Vec<SharedFd>),
}

impl Kept {
    pub(crate) fn new(answer: Answer<'_>) -> Self {
        match answer {
            Answer::Done => Kept::Done,
            Answer::Maybe(bytes) => Kept::Maybe(bytes.map(Bytes::copy_from)),
            Answer::Other(bytes, fds) => Kept::Other(bytes.to_vec(), fds.to_vec()),
        }
    }

    pub(crate) fn answer(&self) -> Answer<'_> {
        match self {
            Kept::Done => Answer::Done,
            Kept::Maybe(bytes) => Answer::Maybe(bytes.as_deref()),
            Kept::Other(bytes, fds) => Answer::Other(bytes, fds),
        }
    }
}

/// Decodes results (in the client), each as a value: for the few callers that want them so
/// (opening a watch, tests).
///
/// # Errors
/// [`Malformed`] when the bytes do not frame whole results, or one does not decode.
pub(crate) fn decode_results(
    bytes: &[u8],
    fds: &[SharedFd],
) -> Result<Vec<Result<Reply, Failure>>, Malformed> {
    let mut at = Vec::new();
    index_results(bytes, fds.len(), &mut at)?;
    at.iter().map(|a| a.answer(bytes, fds).reply()).collect()
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

    /// Results of every kind: done, none, some, a value holding a handle, another reply, a
    /// failure.
    fn every_kind_of_result() -> Vec<Result<Reply, Failure>> {
        vec![
            Ok(Reply::Done),
            Ok(Reply::MaybeBlob(None)),
            Ok(Reply::MaybeBlob(Some(blob(&"hello".to_string())))),
            Ok(Reply::MaybeBlob(Some(Blob {
                bytes: Bytes::copy_from(&[1; 100]),
                fds: vec![fd()],
            }))),
            Ok(Reply::Len(4)),
            Err(Failure::OutOfRange { index: 9, len: 2 }),
        ]
    }

    /// `results` as the manager writes them.
    fn written(results: &[Result<Reply, Failure>]) -> (Bytes, Vec<SharedFd>) {
        let mut w = ResultsWriter::default();
        for r in results {
            w.result(r);
        }
        w.finish()
    }

    #[test]
    fn every_kind_of_result_round_trips() {
        let results = every_kind_of_result();
        let (bytes, fds) = written(&results);
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

    /// Refuses to be encoded.
    struct Refuses;

    impl serde::Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    /// A map's `insert` and `get` encoded in place are byte for byte what the general
    /// encoder writes for the same operations (short, empty and long keys and values: a
    /// length over 127 takes two bytes, moved in front of the bytes once they are written).
    #[test]
    fn map_operations_encoded_in_place_equal_the_general_encoding() {
        for (key, value) in [
            ("k".to_string(), vec![7u8]),
            (String::new(), Vec::new()),
            ("k".repeat(200), vec![1; 300]),
            ("x".repeat(126), vec![2; 125]),
            ("x".repeat(127), vec![2; 126]),
        ] {
            let general = [
                Op::Map(9, MapOp::Insert(encode_key(&key).unwrap(), blob(&value))),
                Op::Map(300, MapOp::Get(encode_key(&key).unwrap())),
            ];
            let (want, _) = encode_ops(&general).unwrap();
            let mut ops = OpsBuf::default();
            ops.push(&map_insert(9, &key, &value).unwrap()).unwrap();
            ops.push(&map_get(300, key.as_str()).unwrap()).unwrap();
            let (got, fds, n) = ops.take();
            assert_eq!(&*got, &*want, "key of {} bytes", key.len());
            assert!(fds.is_empty());
            assert_eq!(n, 2);
            let parsed = Ops::parse(&got, 0).unwrap();
            let mut parsed = parsed.iter();
            assert_eq!(
                parsed.next(),
                Some(&OpRef::MapInsert {
                    id: 9,
                    key: &encode_key(&key).unwrap()[..],
                    value: &blob(&value).bytes[..],
                })
            );
            assert_eq!(
                parsed.next(),
                Some(&OpRef::MapGet {
                    id: 300,
                    key: &encode_key(&key).unwrap()[..],
                })
            );
        }
    }

    /// A value holding handles makes the general operation, its descriptors beside; a key
    /// holding one, or a key or value that does not encode, is refused when the operation is
    /// made.
    #[test]
    fn handles_take_the_general_way_and_bad_keys_are_refused() {
        let wire = map_insert(4, "q", &(fd(), 5u8)).unwrap();
        let OpWire::General(Op::Map(4, MapOp::Insert(key, value))) = &wire else {
            panic!("{wire:?}");
        };
        assert_eq!(&**key, &*encode_key("q").unwrap());
        assert_eq!(value.fds.len(), 1);
        let mut ops = OpsBuf::default();
        ops.push(&map_get(4, "a").unwrap()).unwrap();
        ops.push(&wire).unwrap();
        let (bytes, fds, n) = ops.take();
        assert_eq!((fds.len(), n), (1, 2));
        let parsed = Ops::parse(&bytes, fds.len()).unwrap();
        let back: Vec<Op> = parsed.iter().map(|op| op.to_op(&fds).unwrap()).collect();
        let Op::Map(4, MapOp::Insert(_, value)) = &back[1] else {
            panic!("{back:?}");
        };
        assert_eq!(value.decode::<(SharedFd, u8)>().unwrap().1, 5);

        assert!(matches!(
            map_insert(4, &fd(), &1u8),
            Err(OpEncodeError::Key(KeyError::Handles))
        ));
        assert!(matches!(
            map_get(4, &fd()),
            Err(OpEncodeError::Key(KeyError::Handles))
        ));
        assert!(matches!(
            map_get(4, &Refuses),
            Err(OpEncodeError::Key(KeyError::Encode(_)))
        ));
        assert!(matches!(
            map_insert(4, "k", &Refuses),
            Err(OpEncodeError::Value(_))
        ));
        // A refusal leaves nothing behind: the next operation encodes as it should.
        let OpWire::Encoded(after) = map_get(4, "a").unwrap() else {
            panic!("not in place");
        };
        let (want, _) = encode_ops(&[Op::Map(4, MapOp::Get(encode_key("a").unwrap()))]).unwrap();
        assert_eq!(&*after, &*want);
    }

    /// Every kind of result read where it lies (as an `Answer`, and kept for later) is the
    /// result written; an optional value is its bytes as they are.
    #[test]
    fn results_read_in_place_are_the_results_written() {
        let mut results = every_kind_of_result();
        results.push(Ok(Reply::MaybeBlob(Some(blob(&vec![3u8; 500])))));
        let (bytes, fds) = written(&results);
        let mut at = Vec::new();
        index_results(&bytes, fds.len(), &mut at).unwrap();
        assert_eq!(at.len(), results.len());
        for (r, a) in results.iter().zip(&at) {
            let answer = a.answer(&bytes, &fds);
            let kept = Kept::new(answer);
            for back in [answer.reply().unwrap(), kept.answer().reply().unwrap()] {
                let (x, _) = message::encode(r).unwrap();
                let (y, _) = message::encode(&back).unwrap();
                assert_eq!(x, y);
            }
            assert_eq!(answer.failure().unwrap().is_some(), r.is_err());
            assert_eq!(kept.answer().failure().unwrap().is_some(), r.is_err());
        }
        assert!(matches!(at[0].answer(&bytes, &fds), Answer::Done));
        assert!(matches!(at[1].answer(&bytes, &fds), Answer::Maybe(None)));
        let hello = blob(&"hello".to_string());
        assert!(matches!(at[2].answer(&bytes, &fds), Answer::Maybe(Some(b)) if b == &*hello.bytes));
        assert!(matches!(at[3].answer(&bytes, &fds), Answer::Other(_, f) if f.len() == 1));
        assert_eq!(decode_results(&bytes, &fds).unwrap().len(), results.len());
    }

    /// Indexing any truncation or single-byte corruption of valid results (descriptors
    /// included) either fails or gives places inside the answer: reading each never panics.
    #[test]
    fn indexing_corrupt_results_never_panics() {
        let mut w = ResultsWriter::default();
        w.maybe_bytes(Some(b"value"));
        w.done();
        w.maybe_bytes(None);
        w.result(&Ok(Reply::MaybeBlob(Some(Blob {
            bytes: Bytes::copy_from(b"x"),
            fds: vec![fd(), fd()],
        }))));
        w.result(&Err(Failure::Empty));
        let (bytes, fds) = w.finish();
        let read_all = |bytes: &[u8], fds: &[SharedFd]| {
            let mut at = Vec::new();
            if index_results(bytes, fds.len(), &mut at).is_ok() {
                for a in &at {
                    let answer = a.answer(bytes, fds);
                    let _ = answer.reply();
                    let _ = Kept::new(answer).answer().failure();
                }
            }
        };
        for end in 0..bytes.len() {
            read_all(&bytes[..end], &fds);
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.to_vec();
                bad[at] ^= flip;
                read_all(&bad, &fds);
            }
        }
        // Fewer descriptors than the results claim.
        assert!(index_results(&bytes, 1, &mut Vec::new()).is_err());
        assert!(index_results(&[RE_SOME, 5, 1], 0, &mut Vec::new()).is_err());
        assert!(index_results(&[7], 0, &mut Vec::new()).is_err());
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
