//! An eventfd used as a cross-process wait queue (the futex pattern with an eventfd).
//!
//! The protocol, used by every primitive in `multiproc-sync`:
//!
//! * the truth lives in shared memory (a [`SharedRegion`](crate::shm::SharedRegion) word);
//! * a waiter announces itself in shared memory (a waiter count), **then** creates a
//!   `Waiter` (or `BlockingWaiter`), **then** re-checks the word, and only then waits;
//! * a notifier changes the word, then calls `EventFd::notify` if the waiter count is
//!   non-zero.
//!
//! Each `Waiter` is its own edge-triggered epoll registration of a duplicate of the eventfd, so
//! every write after its creation wakes it, no matter how many waiters in how many processes
//! watch the same eventfd. The counter is never read: epoll re-checks readiness when it
//! reports an event, so a reader draining the counter could hide a pending edge from another
//! process's epoll. Nothing is consumed by a wake-up, so a waiter that is dropped (cancelled)
//! can never steal a wake-up from another: notifications are broadcasts and waiters re-check
//! the shared word. (A fresh waiter sees one spurious wake-up once the counter is non-zero.)
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, Timespec, epoll};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::SharedFd;

/// A non-blocking eventfd shared between processes; see the [module docs](self) for the
/// protocol.
///
/// Cloning shares the descriptor; serializing it (inside [`crate::message::encode`]) sends it.
#[derive(Clone)]
pub struct EventFd {
    fd: SharedFd,
}

impl EventFd {
    /// Creates an eventfd with a zero counter (`EFD_NONBLOCK | EFD_CLOEXEC`).
    ///
    /// # Errors
    /// When the process is out of descriptors.
    ///
    /// # References
    /// - [`eventfd(2)`](https://man7.org/linux/man-pages/man2/eventfd.2.html)
    pub fn new() -> io::Result<Self> {
        let fd = crate::sys::nofile::creating(|| {
            Ok(rustix::event::eventfd(
                0,
                EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
            )?)
        })?;
        Ok(Self {
            fd: SharedFd::new(fd),
        })
    }

    /// The descriptor.
    pub(crate) fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Wakes every current `Waiter` and `BlockingWaiter` of this eventfd, in every process
    /// (`write(2)` of 1).
    ///
    /// # Errors
    /// Only on an unexpected `write` failure.
    pub(crate) fn notify(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                // The counter is saturated after 2^64 - 2 notifications: reset it and retry. A
                // waiter whose epoll has not yet harvested the edge may miss this one wake-up.
                Err(rustix::io::Errno::AGAIN) => {
                    drain(self.fd.as_fd())?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads and resets the counter: how many notifications since the last read. For tests
    /// only (waiters never read it, see the module docs).
    #[cfg(test)]
    pub(crate) fn take_count(&self) -> io::Result<u64> {
        drain(self.fd.as_fd())
    }

    /// Creates an async waiter registered with the current tokio runtime. Create it **before**
    /// the last check of the shared state; it then sees every later [`notify`](Self::notify).
    ///
    /// # Errors
    /// Outside a tokio runtime, or when out of descriptors.
    pub(crate) fn waiter(&self) -> io::Result<Waiter> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("async wait outside of a tokio runtime"));
        }
        let dup = self.fd.try_clone_owned()?;
        // SAFETY: `dup` is an open descriptor owned by the `AsyncFd` for its whole lifetime, so
        // it stays open and refers to the same file description; `OwnedFd::as_raw_fd` is
        // constant.
        let afd = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Waiter { afd })
    }

    /// Creates a blocking waiter (a private edge-triggered epoll instance). Create it **before**
    /// the last check of the shared state.
    ///
    /// # Errors
    /// When out of descriptors.
    ///
    /// # References
    /// - [`epoll(7)`](https://man7.org/linux/man-pages/man7/epoll.7.html)
    pub(crate) fn blocking_waiter(&self) -> io::Result<BlockingWaiter> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            &self.fd,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(BlockingWaiter {
            epoll,
            _fd: self.fd.clone(),
        })
    }
}

fn drain(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => return Ok(u64::from_ne_bytes(buf)),
            Ok(_) => return Err(io::Error::other("short read from eventfd")),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// An async registration of an [`EventFd`]: [`wait`](Self::wait) completes after each
/// `EventFd::notify` that happened since the previous `wait` (or since creation), possibly
/// spuriously. Always re-check the shared state after it returns.
///
/// One `Waiter` may serve any number of successive waits (readiness left from earlier
/// notifications only makes the next `wait` return early, i.e. spuriously), but never two
/// waits at once: `wait` clears the readiness it saw, which the other wait may not have
/// acted on yet.
pub(crate) struct Waiter {
    afd: AsyncFd<OwnedFd>,
}

impl Waiter {
    /// Waits for a notification.
    ///
    /// # Errors
    /// Only when the reactor fails.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is consumed; a notification that arrives meanwhile stays pending
    /// for the next call.
    pub(crate) async fn wait(&self) -> io::Result<()> {
        let mut guard = self.afd.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter").finish_non_exhaustive()
    }
}

/// A blocking twin of `Waiter` for code outside a runtime.
pub(crate) struct BlockingWaiter {
    epoll: OwnedFd,
    // Keeps the eventfd open (and so registered) while the waiter exists.
    _fd: SharedFd,
}

impl BlockingWaiter {
    /// Blocks until a notification or `deadline`; returns `false` only once `deadline` has
    /// passed. May return `true` spuriously.
    ///
    /// # Errors
    /// Only on an unexpected `epoll_wait` failure.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let mut events = Vec::with_capacity(1);
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    // Round up to whole milliseconds' worth of precision loss: never early.
                    let left = left.min(Duration::from_secs(3600));
                    Some(Timespec::try_from(left).map_err(io::Error::other)?)
                }
            };
            events.clear();
            match epoll::wait(&self.epoll, spare(&mut events), timeout.as_ref()) {
                Ok(_) if !events.is_empty() => return Ok(true),
                Ok(_) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn spare(v: &mut Vec<epoll::Event>) -> rustix::buffer::SpareCapacity<'_, epoll::Event> {
    rustix::buffer::spare_capacity(v)
}

impl fmt::Debug for BlockingWaiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingWaiter").finish_non_exhaustive()
    }
}

impl fmt::Debug for EventFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventFd")
            .field(&self.fd.as_raw_fd())
            .finish()
    }
}

impl Serialize for EventFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.fd.serialize(serializer)
    }
}

impl EventFd {
    /// An eventfd received from another process, after checking (through `/proc`) that it is
    /// one.
    ///
    /// # Errors
    /// When it is not an eventfd, or cannot be inspected.
    pub(crate) fn from_received(fd: SharedFd) -> io::Result<Self> {
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot inspect received descriptor: {e}"))
            })?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "received descriptor is not an eventfd",
            ));
        }
        Ok(Self { fd })
    }
}

impl<'de> Deserialize<'de> for EventFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fd = SharedFd::deserialize(deserializer)?;
        Self::from_received(fd).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;

    #[tokio::test]
    async fn every_waiter_sees_every_notify() {
        let a = EventFd::new().unwrap();
        let (bytes, fds) = message::encode(&a).unwrap();
        let b: EventFd = message::decode(&bytes, fds).unwrap();
        let w1 = a.waiter().unwrap();
        let w2 = b.waiter().unwrap();
        let w3 = a.waiter().unwrap();
        let bw = b.blocking_waiter().unwrap();
        b.notify().unwrap();
        let t = Duration::from_secs(10);
        tokio::time::timeout(t, w1.wait()).await.unwrap().unwrap();
        // Each registration sees the same edge.
        tokio::time::timeout(t, w2.wait()).await.unwrap().unwrap();
        tokio::time::timeout(t, w3.wait()).await.unwrap().unwrap();
        assert!(bw.wait(Some(Instant::now() + t)).unwrap());
        // Nothing pending any more: a short wait times out, never early.
        let start = Instant::now();
        assert!(!bw.wait(Some(start + Duration::from_millis(20))).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn rejects_non_eventfd() {
        let region = crate::shm::SharedRegion::new(8).unwrap();
        let (bytes, fds) = message::encode(region.shared_fd()).unwrap();
        assert!(message::decode::<EventFd>(&bytes, fds).is_err());
    }

    #[test]
    fn waiter_outside_runtime_is_an_error() {
        assert!(EventFd::new().unwrap().waiter().is_err());
    }
}
