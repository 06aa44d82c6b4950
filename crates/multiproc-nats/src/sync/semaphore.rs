//! [`Semaphore`]: `n` lease slots under one name, with its [`SemaphorePermit`].

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{self, Slots};
use super::lock::LockGuard;
use crate::connect::Nats;
use crate::error::{AcquireError, AcquireTimeoutError, OpenError, ReleaseError};

/// A counting semaphore shared across hosts: `permits` lease slots, each held like a
/// [`Lock`](crate::Lock) (renewed in the background, with a fencing token).
///
/// # Crash behavior
/// A permit whose holder stops renewing is taken over by a waiter one lease later, and
/// the new permit's [`owner_died`](crate::LockGuard::owner_died) says so: permits are never
/// leaked by a dead process.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let gpus = nats.semaphore("gpus", 2).await?;
/// let permit = gpus.acquire().await?;
/// # drop(permit);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    name: String,
    permits: usize,
    slots: Slots,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .finish()
    }
}

impl Semaphore {
    pub(crate) async fn open(
        nats: &Nats,
        name: &str,
        permits: usize,
        lease: Duration,
    ) -> Result<Self, OpenError> {
        crate::name::check(name)?;
        let kv = lease::bucket(nats).await?;
        let keys = (0..permits.max(1))
            .map(|i| format!("sem.{name}.{i}"))
            .collect();
        Ok(Self {
            name: name.to_string(),
            permits,
            slots: Slots::new(kv, keys, format!("sem.{name}.*"), lease),
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The number of permits.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Waits for a permit.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// As [`Lock::lock`](crate::Lock::lock).
    pub async fn acquire(&self) -> Result<SemaphorePermit, AcquireError> {
        match self.slots.acquire(None).await {
            Ok(held) => Ok(SemaphorePermit(LockGuard::new(held))),
            Err(AcquireTimeoutError::Failed(e)) => Err(e),
            Err(AcquireTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// Waits at most `timeout` for a permit.
    ///
    /// # Errors
    /// [`AcquireTimeoutError::Timeout`], or the server failed.
    ///
    /// # Cancel safety
    /// As [`Lock::lock`](crate::Lock::lock).
    pub async fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphorePermit, AcquireTimeoutError> {
        let held = self.slots.acquire(Some(Instant::now() + timeout)).await?;
        Ok(SemaphorePermit(LockGuard::new(held)))
    }
}

/// One permit of a [`Semaphore`]; given back when dropped (in the background) or by
/// [`release`](Self::release). A permit is a lease like a lock's: it derefs to a [`LockGuard`]
/// for its fencing token, `owner_died` and `lease_lost`.
#[derive(Debug)]
pub struct SemaphorePermit(LockGuard);

impl Deref for SemaphorePermit {
    type Target = LockGuard;
    fn deref(&self) -> &LockGuard {
        &self.0
    }
}

impl SemaphorePermit {
    /// Gives the permit back now.
    ///
    /// # Errors
    /// As [`LockGuard::unlock`].
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the lease is no longer renewed and expires.
    pub async fn release(self) -> Result<(), ReleaseError> {
        self.0.unlock().await
    }
}

impl Nats {
    /// Opens the semaphore `name` with `permits` permits and a 10 s lease. Every process
    /// should open a name with the same number of permits.
    ///
    /// # Errors
    /// An invalid name, or the server refused to create the namespace's key-value bucket.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn semaphore(&self, name: &str, permits: usize) -> Result<Semaphore, OpenError> {
        Semaphore::open(self, name, permits, super::DEFAULT_LEASE).await
    }

    /// As [`semaphore`](Self::semaphore), with this lease.
    ///
    /// # Errors
    /// As [`semaphore`](Self::semaphore).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn semaphore_with_lease(
        &self,
        name: &str,
        permits: usize,
        lease: Duration,
    ) -> Result<Semaphore, OpenError> {
        Semaphore::open(self, name, permits, lease).await
    }
}
