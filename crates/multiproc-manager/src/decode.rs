//! Turning the manager's untyped answers into typed results, one function per answer shape.
//! Each is a plain `fn` so an [`Op`](crate::Op) can carry it as a pointer.

use serde::de::DeserializeOwned;

use crate::error::OpError;
use crate::wire::{Blob, Failure, Reply};

type Answer = Result<Reply, Failure>;

fn unexpected(_: &Reply) -> OpError {
    OpError::protocol("the manager answered with an unexpected shape")
}

pub(crate) fn blob<T: DeserializeOwned>(b: &Blob) -> Result<T, OpError> {
    b.decode().map_err(OpError::decode)
}

pub(crate) fn key<K: DeserializeOwned>(bytes: &[u8]) -> Result<K, OpError> {
    multiproc_core::message::decode(bytes, Vec::new())
        .map_err(|e| OpError::decode(crate::wire::BlobError::Decode(e)))
}

pub(crate) fn unit(a: Answer) -> Result<(), OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn id(a: Answer) -> Result<u32, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Id(id) => Ok(id),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn value<T: DeserializeOwned>(a: Answer) -> Result<T, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Blob(b) => blob(&b),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn maybe<T: DeserializeOwned>(a: Answer) -> Result<Option<T>, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::MaybeBlob(b) => b.as_ref().map(blob).transpose(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn maybes<T: DeserializeOwned>(a: Answer) -> Result<Vec<Option<T>>, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::MaybeBlobs(bs) => bs
            .iter()
            .map(|b| b.as_ref().map(blob).transpose())
            .collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn values<T: DeserializeOwned>(a: Answer) -> Result<Vec<T>, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Blobs(bs) => bs.iter().map(blob).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn keys<K: DeserializeOwned>(a: Answer) -> Result<Vec<K>, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Keys(ks) => ks.iter().map(|k| key(k)).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn items<K: DeserializeOwned, V: DeserializeOwned>(
    a: Answer,
) -> Result<Vec<(K, V)>, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Items(items) => items.iter().map(|(k, v)| Ok((key(k)?, blob(v)?))).collect(),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn len(a: Answer) -> Result<usize, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Len(n) => Ok(n as usize),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn boolean(a: Answer) -> Result<bool, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

pub(crate) fn int(a: Answer) -> Result<i64, OpError> {
    match a.map_err(OpError::failed)? {
        Reply::Int(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}
