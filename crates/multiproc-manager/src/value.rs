//! [`Value`]: one served value (Python's `Namespace`, `manager.Value`, and objects registered
//! with `BaseManager.register`), and its [`ValueOps`] view.

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
use crate::wire::{Blob, Op as WireOp, ValueOp};

/// A proxy for one value served by a manager.
///
/// This is Python's `Namespace` (serve a struct: `get` gives a copy, `update` changes fields
/// inside the manager) and its served custom objects (`BaseManager.register`): serve your own
/// type and call its methods, `fn(&mut self, A) -> R` items, with [`update`](Self::update),
/// each call atomic. A typed proxy is then a thin wrapper of your own:
///
/// ```no_run
/// use multiproc::manager::{OpError, Value};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Account {
///     balance: u64,
/// }
///
/// impl Account {
///     fn deposit(&mut self, amount: u64) -> u64 {
///         self.balance += amount;
///         self.balance
///     }
/// }
///
/// /// The typed proxy: each method runs the same-named method inside the manager.
/// #[derive(Clone, Serialize, Deserialize)]
/// struct AccountProxy(Value<Account>);
///
/// impl AccountProxy {
///     async fn deposit(&self, amount: u64) -> Result<u64, OpError> {
///         self.0.update(Account::deposit, amount).await
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = multiproc::manager::Manager::start().await?;
/// let account = AccountProxy(manager.value("account", Account { balance: 0 }).await?);
/// assert_eq!(account.deposit(10).await?, 10);
/// # Ok(())
/// # }
/// ```
///
/// The manager keeps the value encoded: each `update` decodes it, runs the method and encodes
/// it back, so keep served objects small (use a [`Map`](crate::Map) for many entries).
///
/// # Errors
/// As [`Map`](crate::Map): every operation returns an [`OpError`].
///
/// # Cancel safety
/// As [`Map`](crate::Map).
pub struct Value<T> {
    pub(crate) target: Target,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Value<T> {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            _marker: PhantomData,
        }
    }

    /// The operations of this value as values, to put in a [`Batch`](crate::Batch) or a
    /// [`Pipeline`](crate::Pipeline).
    pub fn ops(&self) -> ValueOps<'_, T> {
        ValueOps { value: self }
    }
}

impl<T: Serialize + DeserializeOwned> Value<T> {
    /// A copy of the value.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn get(&self) -> Result<T, OpError> {
        self.target.run(self.ops().get()).await
    }

    /// Replaces the value; the old one.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn set(&self, value: T) -> Result<T, OpError> {
        self.target.run(self.ops().set(&value)?).await
    }

    /// Runs `f(&mut value, arg)` inside the manager, atomically; what `f` returned. See
    /// [`Map::update`](crate::Map::update).
    ///
    /// # Errors
    /// [`OpError::is_panic`] when `f` panicked (the value is unchanged); see the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn update<A, R, F>(&self, f: F, arg: A) -> Result<R, OpError>
    where
        T: 'static,
        F: Fn(&mut T, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.target.run(self.ops().update(f, &arg)?).await
    }

    /// A stream of the value after each change, from now on.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn watch(&self) -> Result<Watch<T>, OpError> {
        Watch::open(
            &self.target.link.endpoint,
            self.target.id,
            watch::value_event::<T>,
        )
        .await
    }
}

/// The operations of a [`Value`] as [`Op`] values; each is the [`Value`] method of the same
/// name, not sent yet.
pub struct ValueOps<'a, T> {
    value: &'a Value<T>,
}

impl<T> fmt::Debug for ValueOps<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueOps")
            .field("value", self.value)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> ValueOps<'_, T> {
    fn op<R>(&self, op: ValueOp, decode: op::Decode<R>) -> Op<R> {
        Op::general(
            self.value.target.manager(),
            WireOp::Value(self.value.target.id, op),
            decode,
        )
    }

    /// [`Value::get`].
    pub fn get(&self) -> Op<T> {
        self.op(ValueOp::Get, decode::value::<T>)
    }

    /// [`Value::set`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the value cannot be encoded.
    pub fn set(&self, value: &T) -> Result<Op<T>, OpError> {
        let value = Blob::encode(value).map_err(OpError::encode)?;
        Ok(self.op(ValueOp::Set(value), decode::value::<T>))
    }

    /// [`Value::update`].
    ///
    /// # Errors
    /// [`OpError::is_encode`] when the argument cannot be encoded.
    pub fn update<A, R, F>(&self, f: F, arg: &A) -> Result<Op<R>, OpError>
    where
        T: 'static,
        F: Fn(&mut T, A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let arg = Blob::encode(arg).map_err(OpError::encode)?;
        let f = update_fn::<T, A, R, F>(f);
        Ok(self.op(ValueOp::Update(f, arg), decode::value::<R>))
    }
}

proxy_traits!(Value<T>);
