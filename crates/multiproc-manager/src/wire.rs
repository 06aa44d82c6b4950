//! The manager's protocol: what a client sends ([`Request`]) and what the manager answers
//! ([`Response`]) on one connection, and the encoded values ([`Blob`]) both sides keep.
//!
//! The manager never knows the Rust types of what it serves: a value is kept as its postcard
//! bytes plus the descriptors of the handles inside it ([`Blob`]), and a map key as its bytes.
//! Clients encode and decode; only an `update` runs typed code in the manager, through a
//! [`RemoteFn`] (the one way a process names a function for another, as `spawn` and the pool
//! do), whose shim decodes the current value, calls the user's `fn` and encodes the result.
//!
//! A request carries an id and a list of operations (encoded by [`codec`](crate::codec):
//! the common map operations as raw bytes the manager applies without decoding); the manager applies all of them under one
//! lock (a batch is atomic) and answers with one [`Response::Done`] carrying the same id and one
//! result per operation. Answers come in request order on each connection, so a client may send
//! several requests before reading (pipelining). A connection whose first operation is
//! [`Op::Watch`] becomes a watch: after the answer it carries only [`Response::Event`]s.

use multiproc_core::proc::remote_fn::RemoteFn;
use multiproc_core::{DecodeError, EncodeError, SharedFd, message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bytes::Bytes;

/// An encoded value: postcard bytes and the descriptors of the handles inside.
///
/// Cloning shares the descriptors (within this process); sending a blob duplicates them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Blob {
    pub(crate) bytes: Bytes,
    pub(crate) fds: Vec<SharedFd>,
}

impl Blob {
    /// Encodes `value` (in the caller: a value that cannot be encoded never leaves it).
    pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self, EncodeError> {
        let mut fds = Vec::new();
        let bytes = Bytes::encode_with(|buf| {
            fds = message::encode_into(value, buf)?;
            Ok::<_, EncodeError>(())
        })?;
        Ok(Self {
            bytes,
            fds: fds.into_iter().map(SharedFd::new).collect(),
        })
    }

    /// Decodes a `T`, handing it duplicates of the descriptors (the blob stays intact).
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, BlobError> {
        if self.fds.is_empty() {
            return message::decode(&self.bytes, Vec::new()).map_err(BlobError::Decode);
        }
        let fds = self
            .fds
            .iter()
            .map(SharedFd::try_clone_owned)
            .collect::<Result<Vec<_>, _>>()
            .map_err(BlobError::Descriptors)?;
        message::decode(&self.bytes, fds).map_err(BlobError::Decode)
    }
}

/// Why a [`Blob`] did not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlobError {
    #[error(transparent)]
    Decode(DecodeError),
    #[error("could not duplicate the value's descriptors")]
    Descriptors(#[source] std::io::Error),
}

/// Encodes a map key: its bytes are its identity in the manager, so it may hold no handle.
pub(crate) fn encode_key<K: Serialize + ?Sized>(key: &K) -> Result<Bytes, KeyError> {
    Bytes::encode_with(|buf| {
        let fds = message::encode_into(key, buf).map_err(KeyError::Encode)?;
        if fds.is_empty() {
            Ok(())
        } else {
            Err(KeyError::Handles)
        }
    })
}

/// Why a key could not be encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(transparent)]
    Encode(EncodeError),
    #[error("a map key cannot hold handles (descriptors)")]
    Handles,
}

/// The kind of a served value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Map,
    List,
    Value,
    Counter,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Map => "map",
            Kind::List => "list",
            Kind::Value => "value",
            Kind::Counter => "counter",
        }
    }
}

/// What an `update` shim gets and gives back in the manager.
#[derive(Debug)]
pub(crate) struct UpdateCall {
    /// The current value, if there is one.
    pub(crate) current: Option<Blob>,
    /// The caller's argument.
    pub(crate) arg: Blob,
    /// The new value and the function's result, or why there are none.
    pub(crate) outcome: Option<Result<(Blob, Blob), Failure>>,
}

/// A function run inside the manager by `update`.
pub(crate) type UpdateFn = RemoteFn<UpdateCall, UpdateCall>;

/// An [`UpdateFn`] as it travels: its encoded token, checked only when the manager applies the
/// operation, so a token this program did not make (another program's client) fails that one
/// operation ([`Failure::UnknownFunction`]) instead of the whole request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FnToken(#[serde(with = "serde_bytes")] Vec<u8>);

impl FnToken {
    pub(crate) fn new(f: UpdateFn) -> Self {
        // A token is three integers: encoding cannot fail.
        Self(
            message::encode(&f)
                .map(|(bytes, _)| bytes)
                .unwrap_or_default(),
        )
    }

    pub(crate) fn resolve(&self) -> Result<UpdateFn, Failure> {
        message::decode(&self.0, Vec::new()).map_err(|_| Failure::UnknownFunction)
    }
}

/// One request: operations applied together, answered together.
///
/// The operations travel in the compact form of [`codec`](crate::codec) (the common map
/// operations as tags and raw bytes, the rest as postcard bytes), with the descriptors of the
/// handles inside them beside.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) id: u64,
    /// Operations whose results the client drops (bit `i` for operation `i`, the first 64): a
    /// success is answered [`Reply::Done`], without the value it would carry (a pipeline's
    /// `push_forget`). Failures are answered in full.
    pub(crate) quiet: u64,
    /// The operations, encoded ([`codec::encode_ops`](crate::codec::encode_ops)).
    pub(crate) ops: Bytes,
    /// The descriptors the operations carry, in order.
    pub(crate) fds: Vec<SharedFd>,
}

impl Request {
    /// A request for `ops`.
    ///
    /// # Errors
    /// When an operation carrying handles cannot be encoded.
    pub(crate) fn new<'a>(
        id: u64,
        ops: impl IntoIterator<Item = &'a Op>,
        quiet: u64,
    ) -> Result<Self, EncodeError> {
        let (ops, fds) = crate::codec::encode_ops(ops)?;
        Ok(Self {
            id,
            quiet,
            ops,
            fds,
        })
    }

    /// A request for one operation.
    ///
    /// # Errors
    /// When an operation carrying handles cannot be encoded.
    pub(crate) fn one(id: u64, op: &crate::codec::OpWire) -> Result<Self, EncodeError> {
        match op {
            crate::codec::OpWire::Encoded(bytes) => Ok(Self {
                id,
                quiet: 0,
                ops: Bytes::copy_from(bytes),
                fds: Vec::new(),
            }),
            crate::codec::OpWire::General(op) => Self::new(id, [op], 0),
        }
    }

    /// A request for the operations `ops` holds (left empty); and how many there are.
    pub(crate) fn take(id: u64, ops: &mut crate::codec::OpsBuf, quiet: u64) -> (Self, usize) {
        let (ops, fds, n) = ops.take();
        (
            Self {
                id,
                quiet,
                ops,
                fds,
            },
            n,
        )
    }
}

/// The results of one request, one per operation in request order, encoded
/// ([`codec::ResultsWriter`](crate::codec::ResultsWriter)), and the descriptors of the handles
/// inside them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) bytes: Bytes,
    pub(crate) fds: Vec<SharedFd>,
}

impl Results {
    /// The results, decoded.
    ///
    /// # Errors
    /// When they do not decode (a manager of another build, or a corrupt answer).
    pub(crate) fn decode(&self) -> Result<Vec<Result<Reply, Failure>>, crate::codec::Malformed> {
        crate::codec::decode_results(&self.bytes, &self.fds)
    }

    /// Results written one by one.
    pub(crate) fn from_results<'a>(
        results: impl IntoIterator<Item = &'a Result<Reply, Failure>>,
    ) -> Self {
        let mut w = crate::codec::ResultsWriter::default();
        for r in results {
            w.result(r);
        }
        let (bytes, fds) = w.finish();
        Self { bytes, fds }
    }
}

/// One operation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    /// Finds the value called `name`, or creates it from `init`; answers [`Reply::Id`].
    Open {
        name: String,
        kind: Kind,
        type_name: String,
        init: Blob,
    },
    Map(u32, MapOp),
    List(u32, ListOp),
    Value(u32, ValueOp),
    Counter(u32, CounterOp),
    /// Turns this connection into a stream of the value's changes.
    Watch(u32),
    /// A copy of everything served; answers [`Reply::Snapshot`].
    Snapshot,
}

/// An operation on a map.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MapOp {
    Insert(Bytes, Blob),
    Get(Bytes),
    GetMany(Vec<Bytes>),
    Remove(Bytes),
    Contains(Bytes),
    Len,
    Keys,
    Values,
    Items,
    Clear,
    Extend(Vec<(Bytes, Blob)>),
    Update(Bytes, FnToken, Blob),
}

/// An operation on a list.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ListOp {
    Push(Blob),
    Extend(Vec<Blob>),
    Get(u64),
    Set(u64, Blob),
    Insert(u64, Blob),
    Remove(u64),
    Pop,
    Len,
    Items,
    Clear,
    Update(u64, FnToken, Blob),
}

/// An operation on a single value.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ValueOp {
    Get,
    Set(Blob),
    Update(FnToken, Blob),
}

/// An operation on a counter.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CounterOp {
    Get,
    Add(i64),
    Set(i64),
}

/// The answer to one operation.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Done,
    Id(u32),
    Blob(Blob),
    MaybeBlob(Option<Blob>),
    MaybeBlobs(Vec<Option<Blob>>),
    Blobs(Vec<Blob>),
    Keys(Vec<Bytes>),
    Items(Vec<(Bytes, Blob)>),
    Len(u64),
    Int(i64),
    Bool(bool),
    Snapshot(Stored),
}

/// Why the manager refused or failed one operation. Nothing was changed.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum Failure {
    #[error("no served value has this id")]
    NoSuchValue,
    #[error("`{name}` is served as a {found}, not as a {expected}")]
    WrongKind {
        name: String,
        expected: String,
        found: String,
    },
    #[error("`{name}` is served with type `{found}`, not `{expected}`")]
    WrongType {
        name: String,
        expected: String,
        found: String,
    },
    #[error("index {index} is out of range for a list of length {len}")]
    OutOfRange { index: u64, len: u64 },
    #[error("the list is empty")]
    Empty,
    #[error("the update function panicked in the manager: {0}")]
    Panicked(String),
    #[error("the manager could not decode the stored value or the argument: {0}")]
    Undecodable(String),
    #[error("the manager could not encode the result: {0}")]
    Unencodable(String),
    #[error("a watch must be the only operation of its request")]
    BadWatch,
    #[error("the update function was not made by this program")]
    UnknownFunction,
    #[error("the manager could not read the request: {0}")]
    Malformed(String),
}

/// What the manager sends.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The results of request `id`, one per operation, in order.
    Done { id: u64, results: Results },
    /// A change of the watched value.
    Event(Event),
}

/// A change, as watchers see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    MapInserted(Bytes, Blob),
    MapRemoved(Bytes),
    MapCleared,
    List(Vec<Blob>),
    Value(Blob),
    Counter(i64),
}

/// Everything a manager serves, as stored: what a snapshot holds and a restart restores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) values: Vec<StoredValue>,
}

/// One served value, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredValue {
    pub(crate) name: String,
    pub(crate) type_name: String,
    pub(crate) data: Data,
}

/// A served value's contents.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Data {
    Map(Vec<(Bytes, Blob)>),
    List(Vec<Blob>),
    Value(Blob),
    Counter(i64),
}
