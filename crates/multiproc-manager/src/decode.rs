//! Turning the manager's untyped answers into typed results, one function per answer shape.
//! Each is a plain `fn` so an [`Op`](crate::Op) can carry it as a pointer. Each reads one
//! result where it lies in the answer's bytes ([`Answer`]): an optional value (a map's `get`
//! or `insert`) is decoded straight from them, anything else through its [`Reply`].

use serde::de::DeserializeOwned;

use crate::codec::{Answer, Malformed};
use crate::error::OpError;
use crate::wire::{Blob, Reply};

fn unexpected(_: &Reply) -> OpError {
    OpError::protocol("the manager answered with an unexpected shape")
}

/// The result as a value: its reply, or the operation's failure.
///
/// # Errors
/// The operation's failure; a protocol error when the result does not decode.
pub(crate) fn reply(a: Answer<'_>) -> Result<Reply, OpError> {
    a.reply().map_err(malformed)?.map_err(OpError::failed)
}

/// The protocol error of an answer that does not decode.
pub(crate) fn malformed(e: Malformed) -> OpError {
    OpError::protocol(&format!(
        "an answer from the manager could not be decoded: {e}"
    ))
}

pub(crate) fn blob<T: DeserializeOwned>(b: &Blob) -> Result<T, OpError> {
    b.decode().map_err(OpError::decode)
}

/// A value's bytes (a value without handles), decoded.
fn bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OpError> {
    multiproc_core::message::decode(bytes, Vec::new())
        .map_err(|e| OpError::decode(crate::wire::BlobError::Decode(e)))
}

pub(crate) fn key<K: DeserializeOwned>(key: &[u8]) -> Result<K, OpError> {
    bytes(key)
}

pub(crate) fn unit(a: Answer<'_>) -> Result<(), OpError> {
    match reply(a)? {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn id(a: Answer<'_>) -> Result<u32, OpError> {
    match reply(a)? {
        Reply::Id(id) => Ok(id),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn value<T: DeserializeOwned>(a: Answer<'_>) -> Result<T, OpError> {
    match reply(a)? {
        Reply::Blob(b) => blob(&b),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn maybe<T: DeserializeOwned>(a: Answer<'_>) -> Result<Option<T>, OpError> {
    if let Answer::Maybe(value) = a {
        // No `Reply`, no `Blob`: the value's bytes as they came.
        return value.map(bytes::<T>).transpose();
    }
    match reply(a)? {
        Reply::MaybeBlob(b) => b.as_ref().map(blob).transpose(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn maybes<T: DeserializeOwned>(a: Answer<'_>) -> Result<Vec<Option<T>>, OpError> {
    match reply(a)? {
        Reply::MaybeBlobs(bs) => bs
            .iter()
            .map(|b| b.as_ref().map(blob).transpose())
            .collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn values<T: DeserializeOwned>(a: Answer<'_>) -> Result<Vec<T>, OpError> {
    match reply(a)? {
        Reply::Blobs(bs) => bs.iter().map(blob).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn keys<K: DeserializeOwned>(a: Answer<'_>) -> Result<Vec<K>, OpError> {
    match reply(a)? {
        Reply::Keys(ks) => ks.iter().map(|k| key(k)).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn items<K: DeserializeOwned, V: DeserializeOwned>(
    a: Answer<'_>,
) -> Result<Vec<(K, V)>, OpError> {
    match reply(a)? {
        Reply::Items(items) => items.iter().map(|(k, v)| Ok((key(k)?, blob(v)?))).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn len(a: Answer<'_>) -> Result<usize, OpError> {
    match reply(a)? {
        Reply::Len(n) => Ok(n as usize),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn boolean(a: Answer<'_>) -> Result<bool, OpError> {
    match reply(a)? {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn int(a: Answer<'_>) -> Result<i64, OpError> {
    match reply(a)? {
        Reply::Int(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}
