//! `watch()`: a [`Stream`] of a served value's changes, pushed by the manager (no polling).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{SinkExt, Stream};
use serde::de::DeserializeOwned;

use crate::decode;
use crate::error::OpError;
use crate::link::{Endpoint, Requests, Responses, read_answer};
use crate::wire::{self, Event, Request, Response};

/// A change of a served [`Map`](crate::Map), as [`Map::watch`](crate::Map::watch) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapEvent<K, V> {
    /// `key` now maps to `value` (an insert, or an update's new value).
    Inserted {
        /// The key.
        key: K,
        /// Its new value.
        value: V,
    },
    /// `key` was removed.
    Removed {
        /// The key.
        key: K,
    },
    /// The map was cleared.
    Cleared,
}

/// The changes of one served value, in the order the manager applied them, from the moment
/// `watch()` returned.
///
/// Each item is the change (for a map, a [`MapEvent`]) or the value as it is after the change
/// (lists, values, counters). Changes are queued in the manager for a watcher that reads slowly,
/// none is skipped. When the manager is gone the stream yields one error
/// ([`OpError::is_manager_gone`]) and ends. Dropping the stream ends the watch.
pub struct Watch<E> {
    /// Kept so the connection stays open; nothing is sent on it after the watch request.
    _requests: Requests,
    end: Option<Responses>,
    decode: fn(Event) -> Result<E, OpError>,
}

impl<E> fmt::Debug for Watch<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("open", &self.end.is_some())
            .finish()
    }
}

impl<E> Watch<E> {
    /// Opens a connection that watches value `id`; returns once the manager registered it.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        id: u32,
        decode: fn(Event) -> Result<E, OpError>,
    ) -> Result<Self, OpError> {
        let (mut requests, mut end) = endpoint.open().await?;
        let request = Request::new(0, &[wire::Op::Watch(id)], 0).map_err(OpError::encode)?;
        requests.send(request).await?;
        let mut results = read_answer(&mut end, 0).await?;
        match results.pop() {
            Some(Ok(_)) => Ok(Self {
                _requests: requests,
                end: Some(end),
                decode,
            }),
            Some(Err(failure)) => Err(OpError::failed(failure)),
            None => Err(OpError::protocol("empty answer")),
        }
    }
}

impl<E> Stream for Watch<E> {
    type Item = Result<E, OpError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(end) = this.end.as_mut() else {
                return Poll::Ready(None);
            };
            match futures::ready!(end.as_mut().poll_next(cx)) {
                Some(Ok(Response::Event(event))) => return Poll::Ready(Some((this.decode)(event))),
                Some(Ok(Response::Done { .. })) => continue,
                Some(Err(e)) => {
                    if e.is_manager_gone() {
                        this.end = None;
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.end = None;
                    return Poll::Ready(Some(Err(OpError::gone())));
                }
            }
        }
    }
}

pub(crate) fn map_event<K: DeserializeOwned, V: DeserializeOwned>(
    event: Event,
) -> Result<MapEvent<K, V>, OpError> {
    match event {
        Event::MapInserted(k, v) => Ok(MapEvent::Inserted {
            key: decode::key(&k)?,
            value: decode::blob(&v)?,
        }),
        Event::MapRemoved(k) => Ok(MapEvent::Removed {
            key: decode::key(&k)?,
        }),
        Event::MapCleared => Ok(MapEvent::Cleared),
        _ => Err(OpError::protocol("a change of another kind of value")),
    }
}

pub(crate) fn list_event<T: DeserializeOwned>(event: Event) -> Result<Vec<T>, OpError> {
    match event {
        Event::List(items) => items.iter().map(decode::blob).collect(),
        _ => Err(OpError::protocol("a change of another kind of value")),
    }
}

pub(crate) fn value_event<T: DeserializeOwned>(event: Event) -> Result<T, OpError> {
    match event {
        Event::Value(v) => decode::blob(&v),
        _ => Err(OpError::protocol("a change of another kind of value")),
    }
}

pub(crate) fn counter_event(event: Event) -> Result<i64, OpError> {
    match event {
        Event::Counter(n) => Ok(n),
        _ => Err(OpError::protocol("a change of another kind of value")),
    }
}
