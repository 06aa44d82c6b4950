//! [`Counter`]: a served integer, and its [`CounterOps`] view.

use crate::decode;
use crate::error::OpError;
use crate::op::Op;
use crate::target::{Target, proxy_traits};
use crate::watch::{self, Watch};
use crate::wire::{CounterOp, Op as WireOp};

/// A proxy for a counter (an `i64`) served by a manager: Python's `manager.Value('i', 0)`
/// with an atomic `add` (where Python's `v.value += 1` is a lost-update race).
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
/// let hits = manager.counter("hits").await?;
/// assert_eq!(hits.add(5).await?, 5);
/// assert_eq!(hits.add(-2).await?, 3);
/// # Ok(())
/// # }
/// ```
pub struct Counter {
    pub(crate) target: Target,
}

impl Counter {
    pub(crate) fn new(target: Target) -> Self {
        Self { target }
    }

    /// The operations of this counter as values, to put in a [`Batch`](crate::Batch) or a
    /// [`Pipeline`](crate::Pipeline).
    pub fn ops(&self) -> CounterOps<'_> {
        CounterOps { counter: self }
    }

    /// The current value.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn get(&self) -> Result<i64, OpError> {
        self.target.run(self.ops().get()).await
    }

    /// Adds `by` (wrapping on overflow); the new value.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn add(&self, by: i64) -> Result<i64, OpError> {
        self.target.run(self.ops().add(by)).await
    }

    /// Sets the value; the old one.
    ///
    /// # Errors
    /// See the type's docs.
    ///
    /// # Cancel safety
    /// See the type's docs.
    pub async fn set(&self, to: i64) -> Result<i64, OpError> {
        self.target.run(self.ops().set(to)).await
    }

    /// A stream of the value after each change, from now on.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn watch(&self) -> Result<Watch<i64>, OpError> {
        Watch::open(
            &self.target.link.endpoint,
            self.target.id,
            watch::counter_event,
        )
        .await
    }
}

/// The operations of a [`Counter`] as [`Op`] values; each is the [`Counter`] method of the same
/// name, not sent yet.
#[derive(Debug)]
pub struct CounterOps<'a> {
    counter: &'a Counter,
}

impl CounterOps<'_> {
    fn op(&self, op: CounterOp) -> Op<i64> {
        Op::general(
            self.counter.target.manager(),
            WireOp::Counter(self.counter.target.id, op),
            decode::int,
        )
    }

    /// [`Counter::get`].
    pub fn get(&self) -> Op<i64> {
        self.op(CounterOp::Get)
    }

    /// [`Counter::add`].
    pub fn add(&self, by: i64) -> Op<i64> {
        self.op(CounterOp::Add(by))
    }

    /// [`Counter::set`].
    pub fn set(&self, to: i64) -> Op<i64> {
        self.op(CounterOp::Set(to))
    }
}

proxy_traits!(Counter);
