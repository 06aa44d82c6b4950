//! `Lock`, `Semaphore`, `Event` and `Barrier` on the JetStream key-value store. The lease engine shared
//! by the lock and the semaphore is in `lease`; one primitive per file beside it.

mod barrier;
mod event;
mod lease;
mod lock;
mod semaphore;

pub use barrier::Barrier;
pub use event::Event;
pub use lock::{LeaseLost, Lock, LockGuard};
pub use semaphore::{Semaphore, SemaphorePermit};

/// The lease of a lock or semaphore permit unless chosen otherwise.
pub(crate) const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);
