//! Reference implementations the benchmark binary measures multiproc against, where the peer
//! needs `unsafe` (which only this crate may hold). Not part of the API: no stability promise.
//!
//! [`RobustPthreadMutex`]: glibc's process-shared robust `pthread_mutex_t` placed in a
//! [`SharedRegion`], the peer of `multiproc::Lock` in the `lock_*` rows.
//!
//! May import: `shm`. Never `wait`, `transport` or `proc`.
#![allow(unsafe_code)]

use std::io;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::shm::SharedRegion;

/// Stored beside an initialized mutex, so [`RobustPthreadMutex::attach`] never uses one that
/// [`RobustPthreadMutex::init`] did not set up.
const READY: u32 = 0x5054_4d58; // "PTMX"

/// Where the mutex starts after the ready word (`pthread_mutex_t` is 8-aligned).
const MUTEX_AT: usize = 8;

/// A process-shared, robust `pthread_mutex_t` in a shared region: locking and unlocking it is
/// what C programs sharing a lock through shared memory do (a `FUTEX_LOCK_PI`-free futex word
/// plus glibc's robust list, so a holder that dies hands the next locker `EOWNERDEAD`).
///
/// Layout at `offset` (8-aligned): a ready word, then the mutex; [`Self::LEN`] bytes in all.
/// Attach it in every process that maps the region (the region travels like any other).
#[derive(Debug, Clone)]
pub struct RobustPthreadMutex {
    region: SharedRegion,
    offset: usize,
}

impl RobustPthreadMutex {
    /// Bytes the mutex takes in a region, ready word included.
    pub const LEN: usize = MUTEX_AT + size_of::<libc::pthread_mutex_t>();

    /// Initializes a robust, process-shared mutex at byte `offset` of `region`, unlocked.
    /// Call it once, before any process attaches, and never while the mutex is in use.
    ///
    /// # Errors
    /// When glibc refuses the attributes.
    ///
    /// # Panics
    /// When `offset..offset + LEN` is outside the region or `offset` is not 8-aligned.
    ///
    /// # References
    /// - [`pthread_mutexattr_setrobust(3)`](https://man7.org/linux/man-pages/man3/pthread_mutexattr_setrobust.3.html),
    ///   [`pthread_mutexattr_setpshared(3)`](https://man7.org/linux/man-pages/man3/pthread_mutexattr_setpshared.3.html)
    pub fn init(region: &SharedRegion, offset: usize) -> io::Result<Self> {
        let this = Self::at(region, offset);
        let mutex = this.mutex();
        // SAFETY: `attr` is a local the `pthread_mutexattr_*` calls initialize, use and destroy;
        // `mutex` points at `size_of::<pthread_mutex_t>()` bytes inside the mapping, aligned
        // (checked by `at`), which nobody uses yet (this function's contract: no process has
        // attached), so initializing it in place is sound.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let set = check(libc::pthread_mutexattr_setpshared(
                &mut attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|()| check(libc::pthread_mutex_init(mutex, &attr)));
            libc::pthread_mutexattr_destroy(&mut attr);
            set?;
        }
        this.ready().store(READY, Ordering::Release);
        Ok(this)
    }

    /// The mutex [`init`](Self::init) set up at `offset` of `region` (in this or another
    /// process).
    ///
    /// # Errors
    /// When no mutex was initialized there.
    ///
    /// # Panics
    /// As [`init`](Self::init).
    pub fn attach(region: &SharedRegion, offset: usize) -> io::Result<Self> {
        let this = Self::at(region, offset);
        if this.ready().load(Ordering::Acquire) != READY {
            return Err(io::Error::other("no robust pthread mutex initialized here"));
        }
        Ok(this)
    }

    fn at(region: &SharedRegion, offset: usize) -> Self {
        region.check(
            offset,
            Self::LEN,
            align_of::<libc::pthread_mutex_t>().max(8),
        );
        Self {
            region: region.clone(),
            offset,
        }
    }

    fn ready(&self) -> &AtomicU32 {
        self.region.atomic_u32(self.offset)
    }

    fn mutex(&self) -> *mut libc::pthread_mutex_t {
        self.region
            .check(
                self.offset + MUTEX_AT,
                size_of::<libc::pthread_mutex_t>(),
                align_of::<libc::pthread_mutex_t>(),
            )
            .cast()
    }

    /// Locks, blocking the thread; `Ok(true)` when the previous holder died holding it (the
    /// mutex is then marked consistent again).
    ///
    /// # Errors
    /// What `pthread_mutex_lock` reports besides `EOWNERDEAD` (`ENOTRECOVERABLE`, `EDEADLK`).
    #[inline]
    pub fn lock(&self) -> io::Result<bool> {
        // SAFETY: the mutex was initialized by `init` (checked by `attach`, or `init` made
        // `self`) and lives in the mapping `self.region` keeps alive.
        match unsafe { libc::pthread_mutex_lock(self.mutex()) } {
            0 => Ok(false),
            libc::EOWNERDEAD => {
                // SAFETY: as above; this thread holds the mutex in the owner-died state.
                check(unsafe { libc::pthread_mutex_consistent(self.mutex()) })?;
                Ok(true)
            }
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Unlocks a mutex this thread holds.
    ///
    /// # Errors
    /// `EPERM` when this thread does not hold it.
    #[inline]
    pub fn unlock(&self) -> io::Result<()> {
        // SAFETY: as in `lock`; glibc checks ownership of a robust mutex (`EPERM`).
        check(unsafe { libc::pthread_mutex_unlock(self.mutex()) })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_unlocks_and_refuses_an_uninitialized_mutex() {
        let region = SharedRegion::new(4096).unwrap();
        assert!(RobustPthreadMutex::attach(&region, 64).is_err());
        let m = RobustPthreadMutex::init(&region, 64).unwrap();
        let other = RobustPthreadMutex::attach(&region, 64).unwrap();
        assert!(!m.lock().unwrap());
        other.unlock().unwrap();
        assert!(!other.lock().unwrap());
        m.unlock().unwrap();
        // Not held any more: glibc says so for a robust mutex.
        assert!(m.unlock().is_err());
    }

    #[test]
    fn a_holder_thread_that_exits_hands_over_owner_died() {
        let region = SharedRegion::new(4096).unwrap();
        let m = RobustPthreadMutex::init(&region, 0).unwrap();
        let held = m.clone();
        std::thread::spawn(move || assert!(!held.lock().unwrap()))
            .join()
            .unwrap();
        assert!(m.lock().unwrap(), "the exited holder is reported");
        m.unlock().unwrap();
        assert!(!m.lock().unwrap());
        m.unlock().unwrap();
    }
}
