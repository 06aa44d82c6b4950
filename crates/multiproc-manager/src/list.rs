//! [`List`]: a served list (Python's `manager.list()`), and its [`ListOps`] view.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::decode;
use crate::error::OpError;
use crate::op::{self, Op};
use crate::target::{Target, proxy_traits};
use crate::update::update_fn;
use crate::watch::{self, Watch};
use crate::wire::{Blob, ListOp, Op as WireOp};

/// A proxy for a list served by a manager: Python's `manager.list()`, typed.
///
/// Items are serde types and may hold handles. Reads return copies; change an item in place
/// with [`update`](Self::update), which runs inside the manager. An index past the end is an
/// error ([`OpError::is_out_of_range`]), as Python's `IndexError`.
///
/// A proxy is a handle: clone it, pass it to `spawn`, a pool task or a message.
///
/// # Errors
/// As [`Map`](crate::Map): every operation returns an [`OpError`].
///
/// # Cancel safety
/// As [`Map`](crate::Map).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = multiproc::manager::Manager::start().await?;
/// let l = manager.list::<u32>("l").await?;
/// l.extend(11..16).await?;
/// l.push(16).await?;
/// assert_eq!(l.items().await?, [11, 12, 13, 14, 15, 16]);
/// assert!(l.get(6).await?.is_none());
/// # Ok(())
/// # }
/// ```
pub struct List<T> {
    pub(crate) target: Target,
    _marker: PhantomData<fn() -> T>,
}

impl<T> List<T> {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            _marker: PhantomData,
        }
    }

    /// The operations of this list as values, to put in a [`Batch`](crate::Batch) or a
    /// [`Pipeline`](crate::Pipeline).
    pub fn ops(&self) -> ListOps<'_, T> {
        ListOps { list: self }
    }
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `item`; the new length.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn push(&self, item: T) -> Result<usize, OpError> {
        self.target.run(self.ops().push(&item)?).await
    }

    /// Appends every item, atomically; the new length.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<usize, OpError> {
        self.target.run(self.ops().extend(items)?).await
    }

    /// A copy of the item at `index`, `None` past the end.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn get(&self, index: usize) -> Result<Option<T>, OpError> {
        self.target.run(self.ops().get(index)).await
    }

    /// Replaces the item at `index`; the old item.
    ///
    /// # Errors
    /// [`OpError::is_out_of_range`] past the end; see the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn set(&self, index: usize, item: T) -> Result<T, OpError> {
        self.target.run(self.ops().set(index, &item)?).await
    }

    /// Inserts `item` at `index` (at most the length).
    ///
    /// # Errors
    /// [`OpError::is_out_of_range`] past the end; see the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn insert(&self, index: usize, item: T) -> Result<(), OpError> {
        self.target.run(self.ops().insert(index, &item)?).await
    }

    /// Removes and returns the item at `index`.
    ///
    /// # Errors
    /// [`OpError::is_out_of_range`] past the end; see the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn remove(&self, index: usize) -> Result<T, OpError> {
        self.target.run(self.ops().remove(index)).await
    }

    /// Removes and returns the last item.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn pop(&self) -> Result<Option<T>, OpError> {
        self.target.run(self.ops().pop()).await
    }

    /// The number of items.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn len(&self) -> Result<usize, OpError> {
        self.target.run(self.ops().len()).await
    }

    /// True when the list has no item.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn is_empty(&self) -> Result<bool, OpError> {
        Ok(self.len().await? == 0)
    }

    /// A snapshot of every item (Python's `l[:]`).
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn items(&self) -> Result<Vec<T>, OpError> {
        self.target.run(self.ops().items()).await
    }

    /// Removes every item.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn clear(&self) -> Result<(), OpError> {
        self.target.run(self.ops().clear()).await
    }

    /// Runs `f(&mut item, arg)` inside the manager on the item at `index`, atomically; what
    /// `f` returned. See [`Map::update`](crate::Map::update).
    ///
    /// # Errors
    /// [`OpError::is_out_of_range`] past the end, [`OpError::is_panic`] when `f` panicked
    /// (the item is unchanged); see the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn update<A, R, F>(&self, index: usize, f: F, arg: A) -> Result<R, OpError>
    where
        T: 'static,
        F: Fn(&mut T, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.target.run(self.ops().update(index, f, &arg)?).await
    }

    /// A stream of the list as it is after each change, from now on.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn watch(&self) -> Result<Watch<Vec<T>>, OpError> {
        Watch::open(
            &self.target.link.endpoint,
            self.target.id,
            watch::list_event::<T>,
        )
        .await
    }
}

/// The operations of a [`List`] as [`Op`] values; each is the [`List`] method of the same
/// name, not sent yet.
pub struct ListOps<'a, T> {
    list: &'a List<T>,
}

impl<T> fmt::Debug for ListOps<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListOps").field("list", self.list).finish()
    }
}

impl<T: Serialize + DeserializeOwned> ListOps<'_, T> {
    fn op<R>(&self, op: ListOp, decode: op::Decode<R>) -> Op<R> {
        Op::general(
            self.list.target.manager(),
            WireOp::List(self.list.target.id, op),
            decode,
        )
    }

    /// [`List::push`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the item cannot be encoded.
    pub fn push(&self, item: &T) -> Result<Op<usize>, OpError> {
        let item = Blob::encode(item).map_err(OpError::encode)?;
        Ok(self.op(ListOp::Push(item), decode::len))
    }

    /// [`List::extend`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when an item cannot be encoded.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<Op<usize>, OpError> {
        let items = items
            .into_iter()
            .map(|i| Blob::encode(&i).map_err(OpError::encode))
            .collect::<Result<_, _>>()?;
        Ok(self.op(ListOp::Extend(items), decode::len))
    }

    /// [`List::get`].
    pub fn get(&self, index: usize) -> Op<Option<T>> {
        self.op(ListOp::Get(index as u64), decode::maybe::<T>)
    }

    /// [`List::set`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the item cannot be encoded.
    pub fn set(&self, index: usize, item: &T) -> Result<Op<T>, OpError> {
        let item = Blob::encode(item).map_err(OpError::encode)?;
        Ok(self.op(ListOp::Set(index as u64, item), decode::value::<T>))
    }

    /// [`List::insert`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the item cannot be encoded.
    pub fn insert(&self, index: usize, item: &T) -> Result<Op<()>, OpError> {
        let item = Blob::encode(item).map_err(OpError::encode)?;
        Ok(self.op(ListOp::Insert(index as u64, item), decode::unit))
    }

    /// [`List::remove`].
    pub fn remove(&self, index: usize) -> Op<T> {
        self.op(ListOp::Remove(index as u64), decode::value::<T>)
    }

    /// [`List::pop`].
    pub fn pop(&self) -> Op<Option<T>> {
        self.op(ListOp::Pop, decode::maybe::<T>)
    }

    /// [`List::len`].
    pub fn len(&self) -> Op<usize> {
        self.op(ListOp::Len, decode::len)
    }

    /// [`List::items`].
    pub fn items(&self) -> Op<Vec<T>> {
        self.op(ListOp::Items, decode::values::<T>)
    }

    /// [`List::clear`].
    pub fn clear(&self) -> Op<()> {
        self.op(ListOp::Clear, decode::unit)
    }

    /// [`List::update`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the argument cannot be encoded.
    pub fn update<A, R, F>(&self, index: usize, f: F, arg: &A) -> Result<Op<R>, OpError>
    where
        T: 'static,
        F: Fn(&mut T, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let arg = Blob::encode(arg).map_err(OpError::encode)?;
        let f = update_fn::<T, A, R, F>(f);
        Ok(self.op(ListOp::Update(index as u64, f, arg), decode::value::<R>))
    }
}

proxy_traits!(List<T>);
