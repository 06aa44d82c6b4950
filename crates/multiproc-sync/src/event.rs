//! [`Event`]: a cross-process flag that tasks can wait for.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use multiproc_core::wait::WaitQueue;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CreateError, EventWaitError};
use crate::fast_then_slow::fast_then_slow;

/// Byte offset of the state word: bit 0 is the flag, the rest counts how often it was set.
const WORD: usize = 8;
const LEN: usize = 64;

/// A flag shared by any number of processes: Python's `multiprocessing.Event`, with `.await`.
///
/// [`set`](Self::set) wakes every waiter in every process. A waiter that was waiting when the
/// event was set returns `true` even if the event is cleared again before it runs (each `set`
/// bumps a generation count in the shared word), so a quick set-then-clear is never lost.
/// `set` on a set event and `is_set` make no system call; `set` writes the eventfd only when
/// someone waits.
///
/// # Crash behavior
/// An event has no owner: a process dying never affects it. A waiter that dies simply stops
/// waiting.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::Event;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let event = Event::new()?;
/// let remote = event.clone(); // or: pass `event` to a child process
/// let waiter = tokio::spawn(async move { remote.wait().await });
/// event.set();
/// waiter.await??;
/// assert!(event.is_set());
/// event.clear();
/// assert!(!event.wait_timeout(Duration::from_millis(10)).await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Event {
    core: WaitQueue,
}

impl Event {
    /// Creates a cleared event.
    ///
    /// # Errors
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
    pub fn new() -> Result<Self, CreateError> {
        Ok(Self {
            core: WaitQueue::in_arena()?,
        })
    }

    #[inline]
    fn word(&self) -> &AtomicU64 {
        self.core.atomic_u64(WORD)
    }

    /// Sets the flag and wakes every waiter in every process.
    pub fn set(&self) {
        let r = self
            .word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w & 1 == 0).then(|| (((w >> 1).wrapping_add(1)) << 1) | 1)
            });
        if r.is_ok() {
            self.core.wake();
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.word().fetch_and(!1, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::SeqCst) & 1 == 1
    }

    fn done(&self, start: u64) -> Option<()> {
        let w = self.word().load(Ordering::SeqCst);
        (w & 1 == 1 || w >> 1 != start >> 1).then_some(())
    }

    /// Waits until the event is set (returns at once if it is).
    ///
    /// Like an `async fn`, the future does nothing until first polled; that first poll returns
    /// at once, without allocating or a system call, if the event is set.
    ///
    /// # Errors
    /// [`EventWaitError`] when the process cannot wait: outside a tokio runtime with I/O and
    /// time enabled, or out of descriptors.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future takes nothing from other waiters.
    #[inline]
    pub fn wait(&self) -> impl Future<Output = Result<(), EventWaitError>> + '_ {
        fast_then_slow(
            self,
            |event: &Event| {
                let start = event.word().load(Ordering::SeqCst);
                if start & 1 == 1 {
                    Ok(Ok(()))
                } else {
                    Err(start)
                }
            },
            |event: &Event, start| event.wait_slow(start),
        )
    }

    /// The part of [`Event::wait`] that parks, from the state word `start` seen cleared.
    async fn wait_slow(&self, start: u64) -> Result<(), EventWaitError> {
        self.core
            .spin_then_wait_until(None, None, |_| self.done(start))
            .await?;
        Ok(())
    }

    /// Waits until the event is set or `timeout` elapses; returns whether it was set
    /// (Python's `wait(timeout)`). A zero timeout only looks; `false` comes only after the full
    /// `timeout`.
    ///
    /// # Errors
    /// As [`Event::wait`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Event::wait`].
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool, EventWaitError> {
        let start = self.word().load(Ordering::SeqCst);
        if start & 1 == 1 {
            return Ok(true);
        }
        Ok(self
            .core
            .wait_timeout(timeout, None, |_| self.done(start))
            .await?
            .is_some())
    }

    /// The blocking twin of [`Event::wait`], for synchronous code.
    ///
    /// # Errors
    /// When out of descriptors.
    pub fn blocking_wait(&self) -> Result<(), EventWaitError> {
        let start = self.word().load(Ordering::SeqCst);
        if start & 1 == 1 {
            return Ok(());
        }
        self.core
            .blocking_spin_then_wait_until(None, None, |_| self.done(start))?;
        Ok(())
    }

    /// The blocking twin of [`Event::wait_timeout`].
    ///
    /// # Errors
    /// When out of descriptors.
    pub fn blocking_wait_timeout(&self, timeout: Duration) -> Result<bool, EventWaitError> {
        let start = self.word().load(Ordering::SeqCst);
        if start & 1 == 1 {
            return Ok(true);
        }
        Ok(self
            .core
            .blocking_wait_timeout(timeout, None, |_| self.done(start))?
            .is_some())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.is_set())
            .finish()
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let core = WaitQueue::deserialize(deserializer)?;
        core.check_len(LEN).map_err(D::Error::custom)?;
        Ok(Self { core })
    }
}
