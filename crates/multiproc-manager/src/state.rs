//! What the manager serves, and how each operation changes it: pure bookkeeping, no I/O.
//!
//! Values are kept encoded ([`Blob`]s, map keys as bytes); the manager never needs their
//! types. Watchers of a value get an [`Event`] after each change through an unbounded channel
//! (the server forwards it to the watch connection; a watcher that went away is dropped at the
//! next change).

use std::collections::HashMap;

use indexmap::IndexMap;
use rustc_hash::FxSeededState;
use tokio::sync::mpsc::UnboundedSender;

use crate::bytes::Bytes;
use crate::update;
use crate::wire::{
    CounterOp, Data, Event, Failure, Kind, ListOp, MapOp, Op, Reply, Stored, StoredValue, ValueOp,
};

/// A served value.
struct Served {
    name: String,
    type_name: String,
    data: Contents,
    watchers: Vec<UnboundedSender<Event>>,
}

/// A served map: keys in insertion order, hashed with Fx (a few instructions for a short key,
/// where SipHash was a fifth of the manager's time on a map workload), seeded per map from
/// the standard library's random keys. Keys come only from clients that hold the manager's
/// connector or passed its authentication.
type ServedMap = IndexMap<Bytes, crate::wire::Blob, FxSeededState>;

/// An empty [`ServedMap`] with a seed of its own.
fn served_map() -> ServedMap {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new().hash_one(0u8) as usize;
    IndexMap::with_hasher(FxSeededState::with_seed(seed))
}

/// A served value's contents, in the form operations use.
enum Contents {
    Map(ServedMap),
    List(Vec<crate::wire::Blob>),
    Value(crate::wire::Blob),
    Counter(i64),
}

impl Contents {
    fn from_data(data: Data) -> Self {
        match data {
            Data::Map(items) => {
                let mut map = served_map();
                map.extend(items);
                Contents::Map(map)
            }
            Data::List(items) => Contents::List(items),
            Data::Value(v) => Contents::Value(v),
            Data::Counter(n) => Contents::Counter(n),
        }
    }

    fn to_data(&self) -> Data {
        match self {
            Contents::Map(m) => Data::Map(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Contents::List(l) => Data::List(l.clone()),
            Contents::Value(v) => Data::Value(v.clone()),
            Contents::Counter(n) => Data::Counter(*n),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Contents::Map(_) => Kind::Map,
            Contents::List(_) => Kind::List,
            Contents::Value(_) => Kind::Value,
            Contents::Counter(_) => Kind::Counter,
        }
    }
}

/// Everything one manager serves.
#[derive(Default)]
pub(crate) struct State {
    by_name: HashMap<String, u32>,
    values: Vec<Served>,
}

type OpResult = Result<Reply, Failure>;

impl State {
    /// A state holding what a snapshot stored.
    pub(crate) fn restore(stored: Stored) -> Self {
        let mut state = State::default();
        for v in stored.values {
            let id = state.values.len() as u32;
            state.by_name.insert(v.name.clone(), id);
            state.values.push(Served {
                name: v.name,
                type_name: v.type_name,
                data: Contents::from_data(v.data),
                watchers: Vec::new(),
            });
        }
        state
    }

    /// A copy of everything served.
    pub(crate) fn snapshot(&self) -> Stored {
        Stored {
            values: self
                .values
                .iter()
                .map(|v| StoredValue {
                    name: v.name.clone(),
                    type_name: v.type_name.clone(),
                    data: v.data.to_data(),
                })
                .collect(),
        }
    }

    /// Registers a watcher of value `id`.
    pub(crate) fn watch(&mut self, id: u32, tx: UnboundedSender<Event>) -> Result<(), Failure> {
        let served = self
            .values
            .get_mut(id as usize)
            .ok_or(Failure::NoSuchValue)?;
        served.watchers.push(tx);
        Ok(())
    }

    /// Applies one operation (never a watch: the server handles those).
    pub(crate) fn apply(&mut self, op: Op) -> OpResult {
        match op {
            Op::Open {
                name,
                kind,
                type_name,
                init,
            } => self.open(name, kind, type_name, init),
            Op::Map(id, op) => {
                let served = self.get(id)?;
                let Contents::Map(map) = &mut served.data else {
                    return Err(wrong_kind(served, Kind::Map));
                };
                let (reply, events) = map_op(map, op, !served.watchers.is_empty())?;
                notify(&mut served.watchers, events);
                Ok(reply)
            }
            Op::List(id, op) => {
                let served = self.get(id)?;
                let Contents::List(list) = &mut served.data else {
                    return Err(wrong_kind(served, Kind::List));
                };
                let (reply, changed) = list_op(list, op)?;
                if changed && !served.watchers.is_empty() {
                    notify(&mut served.watchers, [Event::List(list.clone())]);
                }
                Ok(reply)
            }
            Op::Value(id, op) => {
                let served = self.get(id)?;
                let Contents::Value(value) = &mut served.data else {
                    return Err(wrong_kind(served, Kind::Value));
                };
                let (reply, changed) = value_op(value, op)?;
                if changed && !served.watchers.is_empty() {
                    notify(&mut served.watchers, [Event::Value(value.clone())]);
                }
                Ok(reply)
            }
            Op::Counter(id, op) => {
                let served = self.get(id)?;
                let Contents::Counter(n) = &mut served.data else {
                    return Err(wrong_kind(served, Kind::Counter));
                };
                let (reply, changed) = match op {
                    CounterOp::Get => (Reply::Int(*n), false),
                    CounterOp::Add(by) => {
                        *n = n.wrapping_add(by);
                        (Reply::Int(*n), true)
                    }
                    CounterOp::Set(to) => (Reply::Int(std::mem::replace(n, to)), true),
                };
                if changed {
                    let n = *n;
                    notify(&mut served.watchers, [Event::Counter(n)]);
                }
                Ok(reply)
            }
            Op::Snapshot => Ok(Reply::Snapshot(self.snapshot())),
            Op::Watch(_) => Err(Failure::BadWatch),
        }
    }

    /// Map `id` for the operations applied straight from a request's bytes
    /// ([`FastMap`]), and whether anyone watches it (then a change must go the general way,
    /// [`apply`](Self::apply), which tells the watchers).
    ///
    /// # Errors
    /// As [`apply`](Self::apply) for a map operation: no such value, or not a map.
    pub(crate) fn fast_map(&mut self, id: u32) -> Result<(FastMap<'_>, bool), Failure> {
        let served = self.get(id)?;
        if !matches!(served.data, Contents::Map(_)) {
            return Err(wrong_kind(served, Kind::Map));
        }
        let watched = !served.watchers.is_empty();
        match &mut served.data {
            Contents::Map(map) => Ok((FastMap(map), watched)),
            _ => Err(Failure::NoSuchValue),
        }
    }

    fn get(&mut self, id: u32) -> Result<&mut Served, Failure> {
        self.values.get_mut(id as usize).ok_or(Failure::NoSuchValue)
    }

    fn open(
        &mut self,
        name: String,
        kind: Kind,
        type_name: String,
        init: crate::wire::Blob,
    ) -> OpResult {
        if let Some(&id) = self.by_name.get(&name) {
            let served = &self.values[id as usize];
            if served.data.kind() != kind {
                return Err(wrong_kind(served, kind));
            }
            if served.type_name != type_name {
                return Err(Failure::WrongType {
                    name,
                    expected: type_name,
                    found: served.type_name.clone(),
                });
            }
            return Ok(Reply::Id(id));
        }
        let data = match kind {
            Kind::Map => Contents::Map(served_map()),
            Kind::List => Contents::List(Vec::new()),
            Kind::Value => Contents::Value(init),
            Kind::Counter => Contents::Counter(
                init.decode::<i64>()
                    .map_err(|e| Failure::Undecodable(e.to_string()))?,
            ),
        };
        let id = self.values.len() as u32;
        self.by_name.insert(name.clone(), id);
        self.values.push(Served {
            name,
            type_name,
            data,
            watchers: Vec::new(),
        });
        Ok(Reply::Id(id))
    }
}

/// A served map, for `insert` and `get` applied straight from a request's bytes: the key is
/// searched by its bytes, a value stored as a copy of its bytes (a value without handles).
pub(crate) struct FastMap<'a>(&'a mut ServedMap);

impl FastMap<'_> {
    /// Stores `value` under `key`; the value it replaces.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<crate::wire::Blob> {
        let value = crate::wire::Blob {
            bytes: Bytes::copy_from(value),
            fds: Vec::new(),
        };
        match self.0.get_mut(key) {
            Some(old) => Some(std::mem::replace(old, value)),
            None => {
                self.0.insert(Bytes::copy_from(key), value);
                None
            }
        }
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&crate::wire::Blob> {
        self.0.get(key)
    }
}

fn wrong_kind(served: &Served, expected: Kind) -> Failure {
    Failure::WrongKind {
        name: served.name.clone(),
        expected: expected.name().into(),
        found: served.data.kind().name().into(),
    }
}

/// Sends `event` to every watcher still there.
fn notify(watchers: &mut Vec<UnboundedSender<Event>>, events: impl IntoIterator<Item = Event>) {
    for event in events {
        watchers.retain(|w| w.send(event.clone()).is_ok());
    }
}

fn map_op(map: &mut ServedMap, op: MapOp, watched: bool) -> Result<(Reply, Vec<Event>), Failure> {
    let event = |make: &dyn Fn() -> Event| if watched { vec![make()] } else { Vec::new() };
    Ok(match op {
        MapOp::Insert(k, v) => {
            let events = event(&|| Event::MapInserted(k.clone(), v.clone()));
            (Reply::MaybeBlob(map.insert(k, v)), events)
        }
        MapOp::Get(k) => (Reply::MaybeBlob(map.get(&k).cloned()), Vec::new()),
        MapOp::GetMany(keys) => (
            Reply::MaybeBlobs(keys.iter().map(|k| map.get(k).cloned()).collect()),
            Vec::new(),
        ),
        MapOp::Remove(k) => match map.shift_remove(&k) {
            Some(v) => (Reply::MaybeBlob(Some(v)), vec![Event::MapRemoved(k)]),
            None => (Reply::MaybeBlob(None), Vec::new()),
        },
        MapOp::Contains(k) => (Reply::Bool(map.contains_key(&k)), Vec::new()),
        MapOp::Len => (Reply::Len(map.len() as u64), Vec::new()),
        MapOp::Keys => (Reply::Keys(map.keys().cloned().collect()), Vec::new()),
        MapOp::Values => (Reply::Blobs(map.values().cloned().collect()), Vec::new()),
        MapOp::Items => (
            Reply::Items(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Vec::new(),
        ),
        MapOp::Clear => {
            map.clear();
            (Reply::Done, vec![Event::MapCleared])
        }
        MapOp::Extend(items) => {
            let mut events = Vec::new();
            for (k, v) in items {
                if watched {
                    events.push(Event::MapInserted(k.clone(), v.clone()));
                }
                map.insert(k, v);
            }
            (Reply::Done, events)
        }
        MapOp::Update(k, f, arg) => {
            let (new, ret) = update::call(&f, map.get(&k).cloned(), arg)?;
            let events = event(&|| Event::MapInserted(k.clone(), new.clone()));
            map.insert(k, new);
            (Reply::Blob(ret), events)
        }
    })
}

fn list_op(list: &mut Vec<crate::wire::Blob>, op: ListOp) -> Result<(Reply, bool), Failure> {
    let len = list.len() as u64;
    let index = |i: u64, len: u64| {
        if i < len {
            Ok(i as usize)
        } else {
            Err(Failure::OutOfRange { index: i, len })
        }
    };
    Ok(match op {
        ListOp::Push(v) => {
            list.push(v);
            (Reply::Len(list.len() as u64), true)
        }
        ListOp::Extend(items) => {
            let changed = !items.is_empty();
            list.extend(items);
            (Reply::Len(list.len() as u64), changed)
        }
        ListOp::Get(i) => (Reply::MaybeBlob(list.get(i as usize).cloned()), false),
        ListOp::Set(i, v) => {
            let i = index(i, len)?;
            (Reply::Blob(std::mem::replace(&mut list[i], v)), true)
        }
        ListOp::Insert(i, v) => {
            if i > len {
                return Err(Failure::OutOfRange { index: i, len });
            }
            list.insert(i as usize, v);
            (Reply::Done, true)
        }
        ListOp::Remove(i) => {
            let i = index(i, len)?;
            (Reply::Blob(list.remove(i)), true)
        }
        ListOp::Pop => match list.pop() {
            Some(v) => (Reply::MaybeBlob(Some(v)), true),
            None => (Reply::MaybeBlob(None), false),
        },
        ListOp::Len => (Reply::Len(len), false),
        ListOp::Items => (Reply::Blobs(list.clone()), false),
        ListOp::Clear => {
            let changed = !list.is_empty();
            list.clear();
            (Reply::Done, changed)
        }
        ListOp::Update(i, f, arg) => {
            let i = index(i, len)?;
            let (new, ret) = update::call(&f, Some(list[i].clone()), arg)?;
            list[i] = new;
            (Reply::Blob(ret), true)
        }
    })
}

fn value_op(value: &mut crate::wire::Blob, op: ValueOp) -> Result<(Reply, bool), Failure> {
    Ok(match op {
        ValueOp::Get => (Reply::Blob(value.clone()), false),
        ValueOp::Set(v) => (Reply::Blob(std::mem::replace(value, v)), true),
        ValueOp::Update(f, arg) => {
            let (new, ret) = update::call(&f, Some(value.clone()), arg)?;
            *value = new;
            (Reply::Blob(ret), true)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Blob;

    fn open(state: &mut State, name: &str, kind: Kind, ty: &str) -> Result<u32, Failure> {
        let init = Blob::encode(&0i64).unwrap();
        match state.apply(Op::Open {
            name: name.into(),
            kind,
            type_name: ty.into(),
            init,
        })? {
            Reply::Id(id) => Ok(id),
            other => panic!("{other:?}"),
        }
    }

    fn key(k: &str) -> Bytes {
        crate::wire::encode_key(k).unwrap()
    }

    #[test]
    fn a_name_is_opened_once_and_checked_on_every_open() {
        let mut s = State::default();
        let a = open(&mut s, "a", Kind::Map, "t").unwrap();
        assert_eq!(open(&mut s, "a", Kind::Map, "t").unwrap(), a);
        assert!(matches!(
            open(&mut s, "a", Kind::List, "t"),
            Err(Failure::WrongKind { .. })
        ));
        assert!(matches!(
            open(&mut s, "a", Kind::Map, "u"),
            Err(Failure::WrongType { .. })
        ));
        assert_ne!(open(&mut s, "b", Kind::Map, "t").unwrap(), a);
    }

    #[test]
    fn an_unknown_id_or_a_wrong_kind_changes_nothing() {
        let mut s = State::default();
        let l = open(&mut s, "l", Kind::List, "t").unwrap();
        assert!(matches!(
            s.apply(Op::Map(99, MapOp::Len)),
            Err(Failure::NoSuchValue)
        ));
        assert!(matches!(
            s.apply(Op::Map(l, MapOp::Clear)),
            Err(Failure::WrongKind { .. })
        ));
        assert!(matches!(
            s.apply(Op::List(l, ListOp::Remove(0))),
            Err(Failure::OutOfRange { index: 0, len: 0 })
        ));
        assert!(matches!(
            s.apply(Op::List(l, ListOp::Len)),
            Ok(Reply::Len(0))
        ));
    }

    #[test]
    fn a_snapshot_restores_names_kinds_types_and_contents() {
        let mut s = State::default();
        let m = open(&mut s, "m", Kind::Map, "t").unwrap();
        let c = open(&mut s, "c", Kind::Counter, "i64").unwrap();
        let v = Blob::encode(&7u8).unwrap();
        s.apply(Op::Map(m, MapOp::Insert(key("x"), v))).unwrap();
        s.apply(Op::Counter(c, CounterOp::Add(5))).unwrap();
        let mut r = State::restore(s.snapshot());
        assert_eq!(open(&mut r, "m", Kind::Map, "t").unwrap(), m);
        assert!(open(&mut r, "m", Kind::Map, "other").is_err());
        match r.apply(Op::Map(m, MapOp::Get(key("x")))).unwrap() {
            Reply::MaybeBlob(Some(b)) => assert_eq!(b.decode::<u8>().unwrap(), 7),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.apply(Op::Counter(c, CounterOp::Get)),
            Ok(Reply::Int(5))
        ));
    }

    #[test]
    fn watchers_get_changes_and_leave_when_gone() {
        let mut s = State::default();
        let m = open(&mut s, "m", Kind::Map, "t").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        s.watch(m, tx).unwrap();
        let v = Blob::encode(&1u8).unwrap();
        s.apply(Op::Map(m, MapOp::Insert(key("a"), v))).unwrap();
        s.apply(Op::Map(m, MapOp::Get(key("a")))).unwrap();
        s.apply(Op::Map(m, MapOp::Remove(key("a")))).unwrap();
        s.apply(Op::Map(m, MapOp::Remove(key("a")))).unwrap(); // nothing removed: no event
        assert!(matches!(rx.try_recv(), Ok(Event::MapInserted(..))));
        assert!(matches!(rx.try_recv(), Ok(Event::MapRemoved(_))));
        assert!(rx.try_recv().is_err());
        drop(rx);
        s.apply(Op::Map(m, MapOp::Clear)).unwrap();
        assert!(s.values[m as usize].watchers.is_empty());
    }
}
