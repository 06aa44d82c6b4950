//! [`Semaphore`]: `n` lease slots under one name, with its [`SemaphorePermit`].

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{self, Held, Slots};
use super::lock::LeaseLost;
use crate::connect::Nats;
use crate::error::{AcquireError, AcquireTimeoutError, OpenError, ReleaseError};

/// A counting semaphore shared across hosts: `permits` lease slots, each held like a
/// [`Lock`](crate::Lock) (renewed in the background, with a fencing token).
///
/// # Crash behavior
/// A permit whose holder stops renewing is taken over by a waiter one lease later, and
/// [`SemaphorePermit::owner_died`] says so: permits are never leaked by a dead process.
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
            Ok(held) => Ok(SemaphorePermit { held: Some(held) }),
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
        Ok(SemaphorePermit { held: Some(held) })
    }
}

/// One permit of a [`Semaphore`]; given back when dropped (in the background) or by
/// [`release`](Self::release).
pub struct SemaphorePermit {
    held: Option<Held>,
}

impl fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("fencing_token", &self.fencing_token())
            .finish()
    }
}

impl SemaphorePermit {
    fn held(&self) -> &Held {
        self.held
            .as_ref()
            .expect("a permit holds its lease until released")
    }

    /// The fencing token of this permit's slot.
    pub fn fencing_token(&self) -> u64 {
        self.held().token()
    }

    /// True when this permit was taken over from a holder that stopped renewing.
    pub fn owner_died(&self) -> bool {
        self.held().owner_died()
    }

    /// A future that resolves when the lease is lost (or the permit released).
    pub fn lease_lost(&self) -> LeaseLost {
        LeaseLost(Box::pin(lease::wait_lost(self.held().lost())))
    }

    /// Gives the permit back now.
    ///
    /// # Errors
    /// As [`LockGuard::unlock`](crate::LockGuard::unlock).
    ///
    /// # Cancel safety
    /// Cancel safe: if dropped, the lease is no longer renewed and expires.
    pub async fn release(mut self) -> Result<(), ReleaseError> {
        let held = self
            .held
            .take()
            .expect("a permit holds its lease until released");
        held.release().await
    }
}

impl Drop for SemaphorePermit {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.release_in_background();
        }
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
