//! [`FileLock`]: a lock on a file (or a byte range of it) that unrelated programs meet by path.
//! The kernel locks, the waiting strategy and the process table are argued on [`FileLock`].

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use multiproc_core::fs::{LockKind, flock, ofd_lock};

use crate::error::{FileLockError, FileLockTimeoutError, OpenFileLockError, TryFileLockError};

/// Which kernel lock a [`FileLock`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Ofd,
    Flock,
}

/// Byte range `start..end`; `end == u64::MAX` means to the end of the file, however it grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
}

impl Span {
    const WHOLE: Span = Span {
        start: 0,
        end: u64::MAX,
    };

    fn overlaps(self, other: Span) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// `(start, len)` for `fcntl`, where `len == 0` means to the end of the file.
    fn start_len(self) -> (u64, u64) {
        if self.end == u64::MAX {
            (self.start, 0)
        } else {
            (self.start, self.end - self.start)
        }
    }
}

struct Inner {
    file: File,
    path: PathBuf,
    flavor: Flavor,
    /// `(st_dev, st_ino)`: what the process-wide table keys on.
    id: (u64, u64),
}

/// A lock on a file, or on a byte range of it, shared with every process that locks the same
/// file by path: Python's `fcntl.flock` / `fcntl.lockf`, async.
///
/// **Kernel locks.** By default an open-file-description lock (`F_OFD_SETLK`): it belongs to the
/// `FileLock`'s own open of the file, so closing another descriptor of the same file (a library
/// reading it, say) does not drop it, which is the trap of classic POSIX `fcntl` locks; it
/// covers byte ranges, shared or exclusive. [`FileLock::open_flock`] uses `flock(2)` instead,
/// whole-file, which is what `flock(1)` and Python's `fcntl.flock` take, so a multiproc program
/// and a shell script or Python script exclude each other. (The two kinds do not see each
/// other on Linux: every party must use the same kind.)
///
/// **Waiting.** There is no readiness to wait for on a file lock (no descriptor becomes
/// readable when a lock is released). An async wait first makes a few non-blocking attempts
/// with a growing pause ([`FileLock::FIRST_PAUSE`] doubling up to [`FileLock::MAX_PAUSE`]):
/// each is one system call inside `poll` that takes the lock and returns the guard in the same
/// poll, or takes nothing. Attempts alone would starve, though: the kernel hands a released
/// lock straight to a *blocked* waiter (another process's `blocking_lock`, `flock(1)`, Python's
/// `fcntl.flock`), so a poller may never find it free. So a wait that outlasts the attempts
/// moves to a helper thread blocked in the kernel (`F_OFD_SETLKW`, `flock` without `LOCK_NB`),
/// queued fairly with the other waiters, on a **private open file description** of the file
/// (a reopen through `/proc/self/fd`). The guard keeps that description and unlocks by closing
/// it. If the future is dropped meanwhile, the thread stays blocked until it gets the lock (or
/// the process ends) and then closes its description at once, which releases the lock: a dead
/// future never keeps a lock, and no signal handler is needed. The blocking twins
/// ([`FileLock::blocking_lock`]) wait in the kernel directly.
///
/// **One process, one lock per range.** The kernel lets two open descriptions in one process
/// conflict like two processes (an `F_OFD_SETLKW` on a range this process holds through
/// another `FileLock` would wait forever), while locks of one description (clones) merge
/// silently. Both hide bugs, so a process-wide table of the `(device, inode, range)`s this
/// process holds *or is waiting for* makes a second lock of an overlapping range an error
/// ([`FileLockError::HeldByThisProcess`]), whatever the kinds. A wait reserves its range in the
/// table before it blocks, so no other lock of this process can slip in meanwhile.
///
/// **Crash behavior.** The kernel releases a lock when the last descriptor of its open file
/// description closes, which includes the holder's death by any signal: the next waiter gets
/// the lock. What the holder was writing to the file is left as it was.
///
/// A `FileLock` is an open file plus a range (the whole file unless [`range`](Self::range) says
/// otherwise). Locking returns a [`FileLockGuard`] that unlocks when dropped. Clones share the
/// open file. Unlike the other primitives it is not a handle to send to other processes:
/// each process opens the path itself (that is the point of a file lock).
///
/// # Errors
/// Locking a range that this process already holds or is waiting for (through any `FileLock`
/// on the same file) is [`FileLockError::HeldByThisProcess`], never a silent success or a wait
/// for ourselves.
///
/// # Crash behavior
/// A holder that dies, even by `SIGKILL`, releases its locks (the kernel closes its files);
/// the next waiter gets the lock. The file's contents stay as the holder left them.
///
/// # Examples
/// ```
/// use multiproc_sync::FileLock;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("doc-file-lock-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let lock = FileLock::open(dir.join("app.lock"))?;
/// {
///     let _guard = lock.lock().await?;
///     // ... this process alone writes the file ...
///     assert!(lock.try_lock().unwrap_err().is_held_by_this_process());
/// } // unlocked here
/// let _shared = lock.try_lock_shared()?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileLock {
    inner: Arc<Inner>,
    span: Span,
}

impl FileLock {
    /// The first pause of an async wait between two attempts.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(1);
    /// The longest pause of an async wait between two attempts; once a pause would exceed
    /// it, the wait moves to a thread blocked in the kernel.
    pub const MAX_PAUSE: Duration = Duration::from_millis(16);

    /// Opens (creating it if missing, mode `0644` before the umask) the file at `path` for
    /// open-file-description locks over the whole file.
    ///
    /// # Errors
    /// When the file cannot be opened for reading and writing or created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenFileLockError> {
        Self::open_with(path.as_ref(), Flavor::Ofd)
    }

    /// Opens (creating it if missing) the file at `path` for `flock(2)` locks, which
    /// `flock(1)` and Python's `fcntl.flock` take too: use this mode to exclude scripts using
    /// those. `flock` locks cover the whole file ([`range`](Self::range) panics).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_flock(path: impl AsRef<Path>) -> Result<Self, OpenFileLockError> {
        Self::open_with(path.as_ref(), Flavor::Flock)
    }

    fn open_with(path: &Path, flavor: Flavor) -> Result<Self, OpenFileLockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(OpenFileLockError)?;
        let meta = file.metadata().map_err(OpenFileLockError)?;
        Ok(Self {
            inner: Arc::new(Inner {
                file,
                path: path.to_owned(),
                flavor,
                id: (meta.dev(), meta.ino()),
            }),
            span: Span::WHOLE,
        })
    }

    /// A lock on the byte range `range` of the same open file (`..` is the whole file, `n..`
    /// runs to the end of the file however it grows). Non-overlapping ranges are locked
    /// independently, by this process or others.
    ///
    /// # Panics
    /// When the lock was opened with [`open_flock`](Self::open_flock) (`flock` has no ranges),
    /// or the range is empty.
    pub fn range(&self, range: impl RangeBounds<u64>) -> FileLock {
        assert!(
            self.inner.flavor == Flavor::Ofd,
            "flock locks cover whole files; open the lock with FileLock::open for ranges"
        );
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        assert!(start < end, "a file lock range cannot be empty");
        FileLock {
            inner: self.inner.clone(),
            span: Span { start, end },
        }
    }

    /// The path the lock was opened with.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Takes the lock exclusively, waiting as long as another process holds any part of the
    /// range.
    ///
    /// # Errors
    /// [`FileLockError::HeldByThisProcess`] when this process holds (or waits for) an
    /// overlapping range; [`FileLockError::Io`] when the kernel refuses (`ENOLCK`, a file system
    /// without locks), when `/proc/self/fd` cannot reopen the file, or outside a tokio runtime.
    ///
    /// # Panics
    /// On a tokio runtime built without timers (`enable_time`), as `tokio::time::sleep` does.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future never leaves the lock taken. Each polled attempt takes the
    /// lock and returns in the same poll, or takes nothing; a helper thread still blocked when
    /// the future is dropped releases the lock as soon as it gets it.
    pub async fn lock(&self) -> Result<FileLockGuard, FileLockError> {
        self.lock_kind(LockKind::Exclusive).await
    }

    /// Takes the lock shared (a read lock): any number of shared holders, no exclusive one.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn lock_shared(&self) -> Result<FileLockGuard, FileLockError> {
        self.lock_kind(LockKind::Shared).await
    }

    /// [`lock`](Self::lock), giving up after `timeout`.
    ///
    /// # Errors
    /// [`FileLockTimeoutError::Timeout`] when the lock was still held by another process;
    /// otherwise as [`lock`](Self::lock).
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<FileLockGuard, FileLockTimeoutError> {
        self.lock_kind_timeout(LockKind::Exclusive, timeout).await
    }

    /// [`lock_shared`](Self::lock_shared), giving up after `timeout`.
    ///
    /// # Errors
    /// As [`lock_timeout`](Self::lock_timeout).
    ///
    /// # Panics
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// As [`lock`](Self::lock).
    pub async fn lock_shared_timeout(
        &self,
        timeout: Duration,
    ) -> Result<FileLockGuard, FileLockTimeoutError> {
        self.lock_kind_timeout(LockKind::Shared, timeout).await
    }

    /// Takes the lock exclusively if no other process holds any of the range, without waiting.
    ///
    /// # Errors
    /// [`TryFileLockError::WouldBlock`] when another process holds a conflicting lock;
    /// [`TryFileLockError::HeldByThisProcess`] and [`TryFileLockError::Io`] as in
    /// [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<FileLockGuard, TryFileLockError> {
        self.attempt(LockKind::Exclusive)
    }

    /// [`try_lock`](Self::try_lock) for a shared lock.
    ///
    /// # Errors
    /// As [`try_lock`](Self::try_lock).
    pub fn try_lock_shared(&self) -> Result<FileLockGuard, TryFileLockError> {
        self.attempt(LockKind::Shared)
    }

    /// The blocking twin of [`lock`](Self::lock), for code outside a runtime: it waits in the
    /// kernel (`F_OFD_SETLKW` or `flock`), which wakes it as soon as the lock is free.
    ///
    /// # Errors
    /// As [`lock`](Self::lock) (the kernel reports `EDEADLK` for a deadlock it detects).
    pub fn blocking_lock(&self) -> Result<FileLockGuard, FileLockError> {
        self.blocking_kind(LockKind::Exclusive)
    }

    /// The blocking twin of [`lock_shared`](Self::lock_shared).
    ///
    /// # Errors
    /// As [`blocking_lock`](Self::blocking_lock).
    pub fn blocking_lock_shared(&self) -> Result<FileLockGuard, FileLockError> {
        self.blocking_kind(LockKind::Shared)
    }

    async fn lock_kind(&self, kind: LockKind) -> Result<FileLockGuard, FileLockError> {
        no_runtime_is_error()?;
        let mut pause = Self::FIRST_PAUSE;
        loop {
            match self.attempt(kind) {
                Ok(guard) => return Ok(guard),
                Err(TryFileLockError::WouldBlock) => {}
                Err(TryFileLockError::HeldByThisProcess) => {
                    return Err(FileLockError::HeldByThisProcess);
                }
                Err(TryFileLockError::Io(e)) => return Err(FileLockError::Io(e)),
            }
            if pause > Self::MAX_PAUSE {
                return self.lock_in_thread(kind).await;
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }

    /// The slow path of an async wait: a thread blocked in the kernel on a private open file
    /// description, queued fairly with other processes' blocked waiters.
    async fn lock_in_thread(&self, kind: LockKind) -> Result<FileLockGuard, FileLockError> {
        let reservation = self.reserve().ok_or(FileLockError::HeldByThisProcess)?;
        let private = self.reopen().map_err(FileLockError::Io)?;
        let (flavor, span) = (self.inner.flavor, self.span);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("multiproc-file-lock".into())
            .spawn(move || {
                let locked = kernel_on(&private, flavor, span, Some(kind), true).map(|_| private);
                // When the future is gone, the send fails (or the value is dropped with the
                // channel): the private description closes, releasing the lock at once.
                let _ = tx.send(locked);
            })
            .map_err(FileLockError::Io)?;
        match rx.await {
            Ok(Ok(private)) => Ok(reservation.into_guard(kind, Some(private))),
            Ok(Err(e)) => Err(FileLockError::Io(e)),
            Err(_) => Err(FileLockError::Io(io::Error::other(
                "the file lock's waiting thread ended without an answer",
            ))),
        }
    }

    /// A new open file description of the locked file (through `/proc/self/fd`, so a rename or
    /// removal of the path does not matter), whose locks are independent of `self`'s.
    fn reopen(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{}", self.inner.file.as_raw_fd()))
    }

    async fn lock_kind_timeout(
        &self,
        kind: LockKind,
        timeout: Duration,
    ) -> Result<FileLockGuard, FileLockTimeoutError> {
        // Before building the timer, which panics outside a runtime.
        no_runtime_is_error().map_err(|e| match e {
            FileLockError::Io(e) => FileLockTimeoutError::Io(e),
            FileLockError::HeldByThisProcess => FileLockTimeoutError::HeldByThisProcess,
        })?;
        // The first attempt does not depend on the timer, so a zero timeout still tries once.
        match self.attempt(kind) {
            Ok(guard) => return Ok(guard),
            Err(TryFileLockError::WouldBlock) => {}
            Err(TryFileLockError::HeldByThisProcess) => {
                return Err(FileLockTimeoutError::HeldByThisProcess);
            }
            Err(TryFileLockError::Io(e)) => return Err(FileLockTimeoutError::Io(e)),
        }
        match tokio::time::timeout(timeout, self.lock_kind(kind)).await {
            Ok(Ok(guard)) => Ok(guard),
            Ok(Err(FileLockError::HeldByThisProcess)) => {
                Err(FileLockTimeoutError::HeldByThisProcess)
            }
            Ok(Err(FileLockError::Io(e))) => Err(FileLockTimeoutError::Io(e)),
            Err(_) => Err(FileLockTimeoutError::Timeout),
        }
    }

    /// One non-blocking attempt, registered in the process table under its lock so that the
    /// check and the registration are one step.
    fn attempt(&self, kind: LockKind) -> Result<FileLockGuard, TryFileLockError> {
        let mut table = table();
        if self.held_here(&table) {
            return Err(TryFileLockError::HeldByThisProcess);
        }
        match self.kernel(Some(kind), false) {
            Ok(true) => {
                table.entry(self.inner.id).or_default().push(self.span);
                Ok(FileLockGuard {
                    lock: self.clone(),
                    kind,
                    private: None,
                })
            }
            Ok(false) => Err(TryFileLockError::WouldBlock),
            Err(e) => Err(TryFileLockError::Io(e)),
        }
    }

    fn blocking_kind(&self, kind: LockKind) -> Result<FileLockGuard, FileLockError> {
        // The range is ours in the table before the kernel wait, so no clone (which shares the
        // open file description, whose locks merge rather than conflict) can take it meanwhile
        // and no rollback is ever needed.
        let reservation = self.reserve().ok_or(FileLockError::HeldByThisProcess)?;
        blocking_hook();
        // Not under the table's lock: this may wait for a long time.
        self.kernel(Some(kind), true).map_err(FileLockError::Io)?;
        Ok(reservation.into_guard(kind, None))
    }

    /// Records this lock's range in the process table, or `None` when this process already
    /// holds or waits for an overlapping range.
    fn reserve(&self) -> Option<Reservation> {
        let mut table = table();
        if self.held_here(&table) {
            return None;
        }
        table.entry(self.inner.id).or_default().push(self.span);
        Some(Reservation {
            lock: Some(self.clone()),
        })
    }

    fn held_here(&self, table: &Table) -> bool {
        table
            .get(&self.inner.id)
            .is_some_and(|spans| spans.iter().any(|s| s.overlaps(self.span)))
    }

    /// The kernel call: lock `kind` (or unlock for `None`) this lock's range.
    fn kernel(&self, kind: Option<LockKind>, wait: bool) -> io::Result<bool> {
        kernel_on(&self.inner.file, self.inner.flavor, self.span, kind, wait)
    }
}

/// Locks `kind` (or unlocks for `None`) `span` of `file` with the `flavor`'s kernel lock.
fn kernel_on(
    file: &File,
    flavor: Flavor,
    span: Span,
    kind: Option<LockKind>,
    wait: bool,
) -> io::Result<bool> {
    let fd = file.as_fd();
    match flavor {
        Flavor::Flock => flock(fd, kind, wait),
        Flavor::Ofd => {
            let (start, len) = span.start_len();
            ofd_lock(fd, kind, start, len, wait)
        }
    }
}

/// `Err(FileLockError::Io)` outside a tokio runtime, whose timers the async waits need.
fn no_runtime_is_error() -> Result<(), FileLockError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(FileLockError::Io(io::Error::other(
            "async file lock outside of a tokio runtime",
        ))),
    }
}

/// A range recorded in the process table for a lock being taken: removed again when dropped,
/// unless it became a guard.
struct Reservation {
    /// `None` once it became a guard.
    lock: Option<FileLock>,
}

impl Reservation {
    fn into_guard(mut self, kind: LockKind, private: Option<File>) -> FileLockGuard {
        let lock = self.lock.take().expect("a reservation becomes one guard");
        FileLockGuard {
            lock,
            kind,
            private,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(lock) = &self.lock {
            unregister(&mut table(), lock);
        }
    }
}

fn unregister(table: &mut Table, lock: &FileLock) {
    if let Some(spans) = table.get_mut(&lock.inner.id) {
        if let Some(i) = spans.iter().position(|s| *s == lock.span) {
            spans.swap_remove(i);
        }
        if spans.is_empty() {
            table.remove(&lock.inner.id);
        }
    }
}

#[doc(hidden)]
/// Test hook: a pause inside [`FileLock::blocking_lock`] between the process-table check and the
/// kernel wait, set in milliseconds, to make races in that window deterministic in tests.
pub static BLOCKING_LOCK_TEST_PAUSE_MS: AtomicU64 = AtomicU64::new(0);

fn blocking_hook() {
    let ms = BLOCKING_LOCK_TEST_PAUSE_MS.load(Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl fmt::Debug for FileLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLock")
            .field("path", &self.inner.path)
            .field("flock", &(self.inner.flavor == Flavor::Flock))
            .field("range", &(self.span.start..self.span.end))
            .finish()
    }
}

/// A held [`FileLock`]; the range is unlocked when the guard is dropped.
#[must_use = "the file is unlocked as soon as the guard is dropped"]
pub struct FileLockGuard {
    lock: FileLock,
    kind: LockKind,
    /// The private open file description a waiting thread locked through, if any: closing it
    /// unlocks.
    private: Option<File>,
}

impl FileLockGuard {
    /// Whether this is a shared (read) lock rather than an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.kind == LockKind::Shared
    }

    /// The lock this guard holds.
    pub fn file_lock(&self) -> &FileLock {
        &self.lock
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        let mut table = table();
        match self.private.take() {
            // The private description holds nothing else: closing it releases the lock.
            Some(private) => drop(private),
            // Unlocking an open file description's own lock cannot fail short of a bad
            // descriptor.
            None => {
                let _ = self.lock.kernel(None, false);
            }
        }
        unregister(&mut table, &self.lock);
    }
}

impl fmt::Debug for FileLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLockGuard")
            .field("lock", &self.lock)
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// The ranges this process holds, by file.
type Table = HashMap<(u64, u64), Vec<Span>>;

fn table() -> MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_overlap_only_when_they_share_a_byte() {
        let a = Span { start: 0, end: 10 };
        assert!(a.overlaps(Span { start: 9, end: 20 }));
        assert!(!a.overlaps(Span { start: 10, end: 20 }));
        assert!(a.overlaps(Span::WHOLE));
        assert_eq!(Span::WHOLE.start_len(), (0, 0));
        assert_eq!(Span { start: 5, end: 8 }.start_len(), (5, 3));
    }
}
