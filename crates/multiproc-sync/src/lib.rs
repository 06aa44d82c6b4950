//! Cross-process async synchronization primitives: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`], and shared memory
//! ([`SharedValue`], [`SharedArray`], [`SharedMemory`]).
//!
//! Every type here is a *handle*: a few descriptors (a memfd holding the shared state, an
//! eventfd used as the wait queue) that can be cloned within a process and sent to other
//! processes, as a `multiproc::spawn` argument or inside a pipe or queue message. All copies,
//! in all processes, are the same primitive.
//!
//! | Python `multiprocessing` | here |
//! |---|---|
//! | `Lock()` | [`Lock`] |
//! | `RLock()` | [`RLock`] |
//! | `Semaphore(n)` / `BoundedSemaphore(n)` | [`Semaphore`] / [`BoundedSemaphore`] |
//! | `Event()` | [`Event`] |
//! | `Condition(lock)` | [`Condition`] |
//! | `Barrier(n)` | [`Barrier`] |
//! | `fcntl.flock(f, LOCK_EX)` / `fcntl.lockf` | [`FileLock`] (by path, no handle to send) |
//! | `Value(t)` / `Array(t, n)` / `shared_memory.SharedMemory` | [`SharedValue`] / [`SharedArray`] / [`SharedMemory`] |
//!
//! The state lives in shared memory changed with atomics, so an uncontended operation makes no
//! system call; contended waiters park on an eventfd registered with their own tokio reactor.
//! [`Lock`], [`RLock`], [`Event`], [`Semaphore`], [`BoundedSemaphore`] and [`Barrier`] are each
//! a 64-byte slot of an arena that thousands of them share, with its eight wake-up eventfds
//! (core's `wait::arena`), so 100,000 of them fit under a 1,024-descriptor limit. Registrations
//! are kept once made and reused by later waits: one more descriptor per eventfd (per arena
//! lane, for those primitives) and process for async waits, one for blocking waits.
//! Unlike Python, a process that dies holding a lock or permit does not deadlock the others:
//! see each type's `# Crash behavior`.
//!
//! Async waits need a tokio runtime with I/O and time enabled (`#[tokio::main]` has both).
#![forbid(unsafe_code)]

mod barrier;
mod condition;
pub mod error;
mod event;
mod fast_then_slow;
mod file_lock;
mod lock;
mod named_memory;
mod owner;
mod rlock;
mod semaphore;
mod shared_memory;
mod table;

pub use barrier::{Barrier, BarrierWaitResult};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
#[doc(hidden)]
pub use file_lock::BLOCKING_LOCK_TEST_PAUSE_MS;
pub use file_lock::{FileLock, FileLockGuard};
pub use lock::{Lock, LockGuard, OwnedLockGuard};
pub use multiproc_core::shm::Pod;
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, OwnedSemaphorePermit, Semaphore, SemaphorePermit};
pub use shared_memory::{
    SharedArray, SharedArrayGuard, SharedMemory, SharedValue, SharedValueGuard,
};
