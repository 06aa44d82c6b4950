//! [`Map`]: a served map (Python's `manager.dict()`), and its [`MapOps`] view.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, OpEncodeError, OpWire};
use crate::decode;
use crate::error::OpError;
use crate::op::{self, Batch, Op, Pipeline};
use crate::target::{Target, proxy_traits};
use crate::update::update_or_default_fn;
use crate::watch::{self, MapEvent, Watch};
use crate::wire::{Blob, MapOp, Op as WireOp, encode_key};

/// A proxy for a map served by a manager: Python's `manager.dict()`, typed.
///
/// Keys and values are serde types; values may hold handles (a `multiproc::Queue`, a `Lock`,
/// even another proxy), keys may not. Reads return copies (`get`, `items`...): changing a copy
/// changes nothing in the manager, which the types make plain (there is no `&mut` into the
/// map). To change a value in place, [`update`](Self::update) runs a function *inside* the
/// manager, atomically, so Python's lost nested mutation (`d[k].append(x)`) cannot happen.
/// Entries keep their insertion order, as in a Python dict.
///
/// A proxy is a handle: clone it, pass it to `spawn` or a pool task, or send it inside a
/// message; it carries no secret and each process opens its own connection on first use.
///
/// # Keys
/// The manager never decodes a key: it finds one by its encoded bytes (postcard, which
/// encodes a given value of a given type always the same way). So two keys are the same key
/// exactly when they encode the same, which is what `==` means for the usual key types
/// (integers, `bool`, `char`, strings, byte strings, and tuples, structs, enums, `Vec`s and
/// `BTreeMap`s of those), and a key may be looked up by any type that encodes the same (a
/// `Map<String, _>` by a `&str`). Where `==` and the encoding disagree, the encoding decides:
/// floats are compared by their bits (`0.0` and `-0.0` are two keys; a NaN key is found again
/// by the same NaN), and a key whose `Serialize` output depends on more than its value (a
/// `HashMap` or `HashSet` inside, whose order varies) may not be found again: use `BTreeMap`
/// / `BTreeSet` in keys. Python compares keys with `==` and `hash`, so `0.0` and `-0.0` are one
/// key there.
///
/// # Errors
/// Every operation returns an [`OpError`]: [`OpError::is_manager_gone`] once the manager is
/// gone (promptly, never a hang), [`OpError::is_encode`] for a key or value that cannot be
/// encoded (nothing is sent), [`OpError::is_wrong_type`] when the manager's value does not
/// decode as this proxy's types.
///
/// # Cancel safety
/// Every async method may be dropped at any point; an operation dropped after it was sent may
/// still be applied, and its answer is discarded.
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = multiproc::manager::Manager::start().await?;
/// let d = manager.map::<String, Vec<u32>>("d").await?;
/// d.insert("k".into(), vec![1]).await?;
/// // Python's `d['k'].append(2)` is lost; this is not:
/// d.update("k", |v: &mut Vec<u32>, x: u32| v.push(x), 2).await?;
/// assert_eq!(d.get("k").await?, Some(vec![1, 2]));
/// # Ok(())
/// # }
/// ```
pub struct Map<K, V> {
    pub(crate) target: Target,
    _marker: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Map<K, V> {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            _marker: PhantomData,
        }
    }

    /// The operations of this map as values, to put in a [`Batch`] or a [`Pipeline`].
    pub fn ops(&self) -> MapOps<'_, K, V> {
        MapOps { map: self }
    }

    /// A batch for operations on this manager's values (one round trip, applied atomically).
    pub fn batch(&self) -> Batch {
        self.target.batch()
    }

    /// A pipeline to this manager: operations sent without waiting for each answer.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn pipeline(&self) -> Result<Pipeline, OpError> {
        self.target.pipeline().await
    }
}

impl<K, V> Map<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// Inserts `value` under `key`; the value it replaced, if any.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>, OpError> {
        self.target.run(self.ops().insert(&key, &value)?).await
    }

    /// A copy of the value under `key`.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn get<Q>(&self, key: &Q) -> Result<Option<V>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.target.run(self.ops().get(key)?).await
    }

    /// Copies of the values under `keys`, in order, in one round trip.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn get_many<'q, Q>(
        &self,
        keys: impl IntoIterator<Item = &'q Q>,
    ) -> Result<Vec<Option<V>>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized + 'q,
    {
        self.target.run(self.ops().get_many(keys)?).await
    }

    /// Removes `key`; the value it had, if any.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn remove<Q>(&self, key: &Q) -> Result<Option<V>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.target.run(self.ops().remove(key)?).await
    }

    /// True when `key` is in the map.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn contains_key<Q>(&self, key: &Q) -> Result<bool, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.target.run(self.ops().contains_key(key)?).await
    }

    /// The number of entries.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn len(&self) -> Result<usize, OpError> {
        self.target.run(self.ops().len()).await
    }

    /// True when the map has no entry.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn is_empty(&self) -> Result<bool, OpError> {
        Ok(self.len().await? == 0)
    }

    /// The keys, in insertion order.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn keys(&self) -> Result<Vec<K>, OpError> {
        self.target.run(self.ops().keys()).await
    }

    /// Copies of the values, in insertion order.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn values(&self) -> Result<Vec<V>, OpError> {
        self.target.run(self.ops().values()).await
    }

    /// A snapshot of every entry, in insertion order (Python's `d.items()` / `d.copy()`).
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn items(&self) -> Result<Vec<(K, V)>, OpError> {
        self.target.run(self.ops().items()).await
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn clear(&self) -> Result<(), OpError> {
        self.target.run(self.ops().clear()).await
    }

    /// Inserts every pair, in one round trip and atomically (Python's `d.update(other)`).
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn extend(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<(), OpError> {
        self.target.run(self.ops().extend(items)?).await
    }

    /// Runs `f(&mut value, arg)` inside the manager on the value under `key` (starting from
    /// `V::default()` when the key is absent), stores the changed value and returns what `f`
    /// returned. Atomic: no other operation on the manager comes in between, and the change is
    /// stored whole or not at all.
    ///
    /// `f` is a `fn` item or a closure that captures nothing, found in the manager the way
    /// `spawn` finds a child's function; its inputs come through `arg`.
    ///
    /// # Errors
    /// See the type's docs; [`OpError::is_panic`] when `f` panicked in the manager (the value
    /// is left as it was).
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn update<Q, A, R, F>(&self, key: &Q, f: F, arg: A) -> Result<R, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Default + 'static,
        F: Fn(&mut V, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.target.run(self.ops().update(key, f, &arg)?).await
    }

    /// A stream of this map's changes from now on.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe (a dropped watch is unregistered by the manager).
    pub async fn watch(&self) -> Result<Watch<MapEvent<K, V>>, OpError> {
        Watch::open(
            &self.target.link.endpoint,
            self.target.id,
            watch::map_event::<K, V>,
        )
        .await
    }
}

/// The operations of a [`Map`] as [`Op`] values (see [`Batch`] and [`Pipeline`]); each
/// method is the [`Map`] method of the same name, not sent yet.
pub struct MapOps<'a, K, V> {
    map: &'a Map<K, V>,
}

impl<K, V> fmt::Debug for MapOps<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOps").field("map", self.map).finish()
    }
}

impl<K, V> MapOps<'_, K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// A map's `insert` or `get`, encoded already: its answer is an optional value.
    fn encoded(&self, wire: OpWire) -> Op<Option<V>> {
        Op {
            manager: self.map.target.manager(),
            wire,
            decode: decode::maybe::<V>,
        }
    }

    fn op<R>(&self, op: MapOp, decode: op::Decode<R>) -> Op<R> {
        Op::general(
            self.map.target.manager(),
            WireOp::Map(self.map.target.id, op),
            decode,
        )
    }

    /// [`Map::insert`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the key or value cannot be encoded.
    pub fn insert(&self, key: &K, value: &V) -> Result<Op<Option<V>>, OpError> {
        let wire = codec::map_insert(self.map.target.id, key, value).map_err(encode_error)?;
        Ok(self.encoded(wire))
    }

    /// [`Map::get`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the key cannot be encoded.
    pub fn get<Q>(&self, key: &Q) -> Result<Op<Option<V>>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let wire = codec::map_get(self.map.target.id, key).map_err(encode_error)?;
        Ok(self.encoded(wire))
    }

    /// [`Map::get_many`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when a key cannot be encoded.
    pub fn get_many<'q, Q>(
        &self,
        keys: impl IntoIterator<Item = &'q Q>,
    ) -> Result<Op<Vec<Option<V>>>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized + 'q,
    {
        let keys = keys
            .into_iter()
            .map(|k| encode_key(k).map_err(OpError::key))
            .collect::<Result<_, _>>()?;
        Ok(self.op(MapOp::GetMany(keys), decode::maybes::<V>))
    }

    /// [`Map::remove`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the key cannot be encoded.
    pub fn remove<Q>(&self, key: &Q) -> Result<Op<Option<V>>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let key = encode_key(key).map_err(OpError::key)?;
        Ok(self.op(MapOp::Remove(key), decode::maybe::<V>))
    }

    /// [`Map::contains_key`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the key cannot be encoded.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<Op<bool>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let key = encode_key(key).map_err(OpError::key)?;
        Ok(self.op(MapOp::Contains(key), decode::boolean))
    }

    /// [`Map::len`].
    pub fn len(&self) -> Op<usize> {
        self.op(MapOp::Len, decode::len)
    }

    /// [`Map::keys`].
    pub fn keys(&self) -> Op<Vec<K>> {
        self.op(MapOp::Keys, decode::keys::<K>)
    }

    /// [`Map::values`].
    pub fn values(&self) -> Op<Vec<V>> {
        self.op(MapOp::Values, decode::values::<V>)
    }

    /// [`Map::items`].
    pub fn items(&self) -> Op<Vec<(K, V)>> {
        self.op(MapOp::Items, decode::items::<K, V>)
    }

    /// [`Map::clear`].
    pub fn clear(&self) -> Op<()> {
        self.op(MapOp::Clear, decode::unit)
    }

    /// [`Map::extend`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when a key or value cannot be encoded.
    pub fn extend(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<Op<()>, OpError> {
        let items = items
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    encode_key(&k).map_err(OpError::key)?,
                    Blob::encode(&v).map_err(OpError::encode)?,
                ))
            })
            .collect::<Result<_, OpError>>()?;
        Ok(self.op(MapOp::Extend(items), decode::unit))
    }

    /// [`Map::update`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the key or argument cannot be encoded.
    pub fn update<Q, A, R, F>(&self, key: &Q, f: F, arg: &A) -> Result<Op<R>, OpError>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Default + 'static,
        F: Fn(&mut V, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let key = encode_key(key).map_err(OpError::key)?;
        let arg = Blob::encode(arg).map_err(OpError::encode)?;
        let f = update_or_default_fn::<V, A, R, F>(f);
        Ok(self.op(MapOp::Update(key, f, arg), decode::value::<R>))
    }
}

fn encode_error(e: OpEncodeError) -> OpError {
    match e {
        OpEncodeError::Key(e) => OpError::key(e),
        OpEncodeError::Value(e) => OpError::encode(e),
    }
}

proxy_traits!(Map<K, V>);
