//! [`Lock`]: a mutual-exclusion lease on one key, with its [`LockGuard`] and the [`LeaseLost`]
//! future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::lease::{self, Held, Slots};
use crate::connect::Nats;
use crate::error::{AcquireError, AcquireTimeoutError, OpenError, ReleaseError};

/// A lock shared by every process on every host that opens the same name, held as a lease.
///
/// The holder's [`LockGuard`] renews the lease in the background and carries a **fencing
/// token**: a number that grows with every acquisition, to hand to the storage the lock
/// protects so that it can refuse a stale holder's writes.
///
/// # Crash behavior
/// A holder that dies, hangs or is cut off stops renewing; once its lease has gone a whole
/// lease duration without renewal, the next waiter takes the lock and
/// [`LockGuard::owner_died`] says so (as the local `multiproc::Lock` does), so that it can
/// repair what the dead holder left half done. A holder that was only paused finds out through
/// [`LockGuard::lease_lost`], and its token is older than the new holder's.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let lock = nats.lock("ledger").await?;
/// let guard = lock.lock().await?;
/// let token = guard.fencing_token(); // pass it along with every write
/// # let _ = token;
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lock {
    name: String,
    slots: Slots,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.name)
            .field("lease", &self.slots.lease())
            .finish()
    }
}

impl Lock {
    pub(crate) async fn open(nats: &Nats, name: &str, lease: Duration) -> Result<Self, OpenError> {
        crate::name::check(name)?;
        let kv = lease::bucket(nats).await?;
        let key = format!("lock.{name}");
        Ok(Self {
            name: name.to_string(),
            slots: Slots::new(kv, vec![key.clone()], key, lease),
        })
    }

    /// The lock's name: what another host passes to [`Nats::lock`] to open it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the lock.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped wait holds nothing. (If it is dropped in the instant its write
    /// reaches the server, that write is never renewed: the next waiter gets the lock one
    /// lease later, told the owner died.)
    pub async fn lock(&self) -> Result<LockGuard, AcquireError> {
        match self.slots.acquire(None).await {
            Ok(held) => Ok(LockGuard::new(held)),
            Err(AcquireTimeoutError::Failed(e)) => Err(e),
            Err(AcquireTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// [`AcquireTimeoutError::Timeout`], or the server failed.
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, AcquireTimeoutError> {
        self.slots
            .acquire(Some(Instant::now() + timeout))
            .await
            .map(LockGuard::new)
    }
}

/// Proof of holding a [`Lock`]; releases it when dropped (in the background) or by
/// [`unlock`](Self::unlock).
pub struct LockGuard {
    held: Option<Held>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("fencing_token", &self.fencing_token())
            .field("owner_died", &self.owner_died())
            .finish()
    }
}

impl LockGuard {
    pub(crate) fn new(held: Held) -> Self {
        Self { held: Some(held) }
    }

    fn held(&self) -> &Held {
        self.held
            .as_ref()
            .expect("a guard holds its lease until released")
    }

    /// The fencing token: larger for every later acquisition of this lock, on any host.
    pub fn fencing_token(&self) -> u64 {
        self.held().token()
    }

    /// True when the previous holder stopped renewing (died, hung or was cut off) and this
    /// guard took the lock over from its expired lease.
    pub fn owner_died(&self) -> bool {
        self.held().owner_died()
    }

    /// True once the lease is known lost (taken over, or not renewable for too long).
    pub fn is_lease_lost(&self) -> bool {
        self.held().is_lost()
    }

    /// A future that resolves when the lease is lost (or the guard released): race it against
    /// the protected work to stop when the lock is no longer held.
    pub fn lease_lost(&self) -> LeaseLost {
        LeaseLost(Box::pin(lease::wait_lost(self.held().lost())))
    }

    /// Releases the lock now and says whether it was still held.
    ///
    /// # Errors
    /// [`ReleaseError::LeaseLost`] when the lease had already been lost; the server failed
    /// (the lease then expires by itself).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the lease is no longer renewed and expires.
    pub async fn unlock(mut self) -> Result<(), ReleaseError> {
        let held = self
            .held
            .take()
            .expect("a guard holds its lease until released");
        held.release().await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.release_in_background();
        }
    }
}

/// Resolves when a lease is lost; made by [`LockGuard::lease_lost`] (also for a
/// [`SemaphorePermit`](crate::SemaphorePermit)).
pub struct LeaseLost(pub(crate) BoxFuture<'static, ()>);

impl fmt::Debug for LeaseLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseLost")
    }
}

impl Future for LeaseLost {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Nats {
    /// Opens the lock `name` in this namespace, with a 10 s lease.
    ///
    /// # Errors
    /// An invalid name, or the server refused to create the namespace's key-value bucket.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lock(&self, name: &str) -> Result<Lock, OpenError> {
        Lock::open(self, name, super::DEFAULT_LEASE).await
    }

    /// Opens the lock `name` with this lease: how long a holder that stopped renewing keeps
    /// the lock. Every process should use the same lease for a name.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lock_with_lease(&self, name: &str, lease: Duration) -> Result<Lock, OpenError> {
        Lock::open(self, name, lease).await
    }
}
