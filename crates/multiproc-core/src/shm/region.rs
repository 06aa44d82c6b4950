//! Shared memory regions: a sealed memfd mapped `MAP_SHARED`, travelling as its descriptor.
//!
//! A [`SharedRegion`] is the storage under every multiproc synchronization primitive and under
//! `SharedValue`/`SharedArray`/`SharedMemory`. Sending it (inside any message or spawn argument)
//! sends the memfd; the receiver maps the same pages, so both processes see the same bytes.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::mem::{MaybeUninit, align_of, size_of};
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SharedFd;

/// Plain old data: a `Copy` type for which every bit pattern of its size is a valid value and
/// which holds no pointers, so it can live in memory shared with other processes.
///
/// # Safety
/// Implement only for types with no padding bytes, no pointers or references, no interior
/// invariants, and for which any bit pattern (including all zeroes) is a valid value, such as
/// `#[repr(C)]` structs of integers and floats.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: primitive integers and floats accept every bit pattern and hold no pointers.
        unsafe impl Pod for $t {}
    )* };
}
pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

// SAFETY: an array of `Pod` has no padding between elements and every bit pattern is valid.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The panic of [`SharedRegion::check`], out of line so that every accessor inlines to a
/// compare and a branch.
#[cold]
#[inline(never)]
#[track_caller]
fn bad_access(offset: usize, size: usize, align: usize, len: usize) -> ! {
    match offset.checked_add(size) {
        None => panic!("shared region offset overflows"),
        Some(end) if end > len => {
            panic!("shared region access {offset}..{end} out of bounds ({len})")
        }
        Some(_) => panic!("shared region offset {offset} is not aligned to {align}"),
    }
}

/// A window of a [`SharedRegion`]: `len` bytes (at least [`Window::MIN_LEN`]) from a 64-aligned
/// offset, checked once by [`Window::of`], whose words the accessors then reach with no bounds
/// check for a constant offset below [`Window::MIN_LEN`]: the state of a wait queue (a region of
/// its own, or an arena slot), so that a lock's fast path is the atomic instruction on its word
/// and little else (no load through the region's shared mapping record, no bounds check).
#[derive(Clone, Debug)]
pub(crate) struct Window {
    /// The window's first byte, inside `region`'s mapping.
    start: NonNull<u8>,
    len: usize,
    /// Keeps the mapping alive as long as the window.
    region: SharedRegion,
}

// SAFETY: `start` points into the shared memory that `region` (itself `Send`) keeps mapped;
// every access through it is atomic.
unsafe impl Send for Window {}
// SAFETY: as above: shared references only lead to atomic accesses, which may race.
unsafe impl Sync for Window {}

impl Window {
    /// The least length of a window: a constant offset below it needs no check.
    pub(crate) const MIN_LEN: usize = 64;

    /// The `len` bytes at `offset` of `region`.
    ///
    /// # Panics
    /// When `len < MIN_LEN`, `offset` is not 64-aligned, or the bytes are out of bounds.
    pub(crate) fn of(region: SharedRegion, offset: usize, len: usize) -> Self {
        assert!(
            len >= Self::MIN_LEN,
            "a window of a shared region is at least 64 bytes"
        );
        let start = region.check(offset, len, Self::MIN_LEN);
        Self {
            start: NonNull::new(start).expect("a mapping is never at address 0"),
            len,
            region,
        }
    }

    /// The window's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The region the window is a part of.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The address of the `size`-byte word at `offset` (`size` a power of two up to 8).
    ///
    /// # Panics
    /// When the word is outside the window or `offset` is not a multiple of `size`. For a
    /// constant `offset` below [`Self::MIN_LEN`] the check folds away.
    #[inline]
    fn word(&self, offset: usize, size: usize) -> *mut u8 {
        let inside = if offset < Self::MIN_LEN && size <= Self::MIN_LEN - offset {
            true
        } else {
            offset.checked_add(size).is_some_and(|end| end <= self.len)
        };
        if !inside || !offset.is_multiple_of(size) {
            bad_access(offset, size, size, self.len);
        }
        // SAFETY: `offset + size <= len`, and the `len` bytes from `start` lie inside the
        // mapping (checked in `Window::of`), so the result stays inside it.
        unsafe { self.start.as_ptr().add(offset) }
    }

    /// The `AtomicU32` at byte `offset` of the window.
    ///
    /// # Panics
    /// When out of the window or misaligned; never for a constant `offset` below
    /// [`Self::MIN_LEN`] that is a multiple of 4 (the check folds away).
    #[inline]
    pub(crate) fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let p = self.word(offset, size_of::<AtomicU32>());
        // SAFETY: `p` is inside the mapping (`word`) and 4-aligned (the window starts 64-aligned
        // in a page-aligned mapping, and `offset` is a multiple of 4); `self.region` keeps the
        // mapping alive as long as `&self`; every process accesses these words atomically only.
        unsafe { &*p.cast::<AtomicU32>() }
    }

    /// The `AtomicU64` at byte `offset` of the window; panics and folds as
    /// [`Self::atomic_u32`].
    #[inline]
    pub(crate) fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        let p = self.word(offset, size_of::<AtomicU64>());
        // SAFETY: as in `atomic_u32`, with 8-byte bounds and alignment.
        unsafe { &*p.cast::<AtomicU64>() }
    }
}

/// The mapping itself; unmapped when the last clone of the region in this process is dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, valid from any thread until `munmap` in `Drop`;
// all access through `SharedRegion` is atomic or volatile.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only lead to atomic or volatile accesses.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what `mmap` returned and requested; no reference into
        // the mapping outlives `self` because every accessor borrows the owning region.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A region of memory shared between processes: a sealed memfd mapped read-write and
/// `MAP_SHARED`, zero-filled at creation.
///
/// Clones share the mapping within a process. Serializing the region (inside
/// [`crate::message::encode`]) sends its descriptor; decoding maps the same pages again. A
/// memfd region is sealed against shrinking, so no process can make another's mapping fault.
/// A region mapping a POSIX shared memory object ([`crate::shm::create_posix`],
/// [`crate::shm::open_posix`]) is not sealed: a process shrinking the object makes accesses
/// past its new end fault with `SIGBUS` (no undefined behaviour: accesses are volatile or
/// atomic and no reference into the mapping exists, but the process dies), as in every other
/// program mapping it.
///
/// Every accessor checks bounds and alignment and panics on a violation, which is a bug in the
/// caller's layout, never a consequence of input from another process.
#[derive(Clone)]
pub struct SharedRegion {
    map: Arc<Mapping>,
    fd: SharedFd,
}

impl SharedRegion {
    /// Creates a zero-filled region of `len` bytes.
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] when `len` is zero (a mapping needs at least one byte);
    /// otherwise when `memfd_create`, `ftruncate`, sealing or `mmap` fail (out of memory or
    /// descriptors).
    ///
    /// # References
    /// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html),
    ///   [`mmap(2)`](https://man7.org/linux/man-pages/man2/mmap.2.html)
    pub fn new(len: usize) -> io::Result<Self> {
        Self::create(len, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
    }

    /// Creates a zero-filled region of `len` bytes whose memfd may grow past them: it is sealed
    /// against shrinking only, so the mapping stays backed while the file's bytes after it
    /// serve as storage reached with `pread`/`pwrite` at file offsets (a queue keeps its log
    /// there, so that its state and its log cost one descriptor). A receiver maps the first
    /// `len` bytes, as for any region.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn new_growable(len: usize) -> io::Result<Self> {
        Self::create(len, SealFlags::SHRINK | SealFlags::SEAL)
    }

    fn create(len: usize, seals: SealFlags) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shared memory needs at least one byte",
            ));
        }
        crate::sys::nofile::creating(|| {
            let fd = rustix::fs::memfd_create(
                "multiproc-shm",
                MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
            )?;
            rustix::fs::ftruncate(&fd, len as u64)?;
            rustix::fs::fcntl_add_seals(&fd, seals)?;
            let fd = SharedFd::new(fd);
            let map = map(&fd, len)?;
            Ok(Self {
                map: Arc::new(map),
                fd,
            })
        })
    }

    /// Maps a memfd received from another process after checking that it is sealed against
    /// shrinking and holds at least `len` bytes.
    pub(crate) fn from_received(fd: SharedFd, len: usize) -> io::Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "shared region descriptor {} is not a memfd sealed against shrinking",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                ),
            ));
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        if len == 0 || size < 0 || (size as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared region of {len} bytes is backed by a file of {size} bytes"),
            ));
        }
        let map = map(&fd, len)?;
        Ok(Self {
            map: Arc::new(map),
            fd,
        })
    }

    /// Maps a file that is not sealed (a POSIX shared memory object), all `len` bytes of it.
    /// Another process that shrinks the file makes accesses past its new end fault (`SIGBUS`),
    /// as they would in every other program mapping it; see `shm::posix`.
    pub(crate) fn from_unsealed_file(fd: SharedFd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cannot map an empty shared memory object",
            ));
        }
        let map = map_unsealed(&fd, len)?;
        // Narrow the window of a concurrent shrink: refuse an object that already shrank.
        let size = rustix::fs::fstat(&fd)?.st_size;
        if size < 0 || (size as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared memory object shrank to {size} bytes while being mapped"),
            ));
        }
        Ok(Self {
            map: Arc::new(map),
            fd,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// Always `false`: a region holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The memfd behind the region.
    pub fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Faults the pages of `offset..offset + len` (page-aligned) in for this process ahead of
    /// use, allocating those that are holes, without changing their contents: one system call
    /// instead of a page fault per page. Best effort: nothing happens on kernels before 5.14 or
    /// for a range outside the region or not aligned.
    ///
    /// # References
    /// - [`madvise(2)`](https://man7.org/linux/man-pages/man2/madvise.2.html)
    ///   (`MADV_POPULATE_WRITE`)
    pub fn populate(&self, offset: usize, len: usize) {
        if !offset.is_multiple_of(4096)
            || offset.checked_add(len).is_none_or(|end| end > self.map.len)
        {
            return;
        }
        // SAFETY: the range lies inside this region's mapping (checked above), which lives as
        // long as `self`; MADV_POPULATE_WRITE only faults pages in as a write would, without
        // writing, so no memory anyone reads changes.
        let _ = unsafe {
            rustix::mm::madvise(
                self.map.ptr.as_ptr().add(offset).cast(),
                len,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
    }

    /// Zeroes `offset..offset + len` and gives the whole pages inside it back to the system:
    /// they read as zeroes afterwards, in every process, and take memory again only when
    /// written. For large sparse regions whose parts are used one after another (a queue's
    /// ring); align the range to pages for it to free anything.
    ///
    /// # Errors
    /// When the range is not inside the region, or `fallocate` fails.
    ///
    /// # References
    /// - [`fallocate(2)`](https://man7.org/linux/man-pages/man2/fallocate.2.html)
    ///   (`FALLOC_FL_PUNCH_HOLE`)
    pub fn punch_hole(&self, offset: usize, len: usize) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.map.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hole outside the shared region",
            ));
        }
        punch_hole(&self.fd, offset as u64, len as u64)
    }

    /// Whether `self` and `other` are the same shared memory (possibly mapped twice, e.g. after
    /// a round trip through another process).
    pub fn same_region(&self, other: &SharedRegion) -> bool {
        match (rustix::fs::fstat(&self.fd), rustix::fs::fstat(&other.fd)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// The start of the mapping, for tests that tell two mappings apart.
    #[cfg(test)]
    fn as_ptr(&self) -> *mut u8 {
        self.map.ptr.as_ptr()
    }

    /// A pointer to `size` bytes at byte `offset`, checked to lie inside the mapping and be
    /// `align`-aligned; panics otherwise.
    #[inline]
    pub(crate) fn check(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        match offset.checked_add(size) {
            Some(end) if end <= self.map.len && offset.is_multiple_of(align) => {
                // SAFETY: `offset + size <= len`, so the result stays inside the mapping.
                unsafe { self.map.ptr.as_ptr().add(offset) }
            }
            _ => bad_access(offset, size, align, self.map.len),
        }
    }

    /// The `AtomicU32` at byte `offset`.
    ///
    /// # Panics
    /// When `offset` is out of bounds or not 4-aligned.
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        let p = self.check(offset, size_of::<AtomicU32>(), align_of::<AtomicU32>());
        // SAFETY: `p` is in bounds and aligned (the mapping is page-aligned), the memory lives
        // as long as `&self`, and atomics may be mutated concurrently through shared references
        // (including by other processes, which only use atomic accesses on these words).
        unsafe { &*p.cast::<AtomicU32>() }
    }

    /// The `AtomicU64` at byte `offset`.
    ///
    /// # Panics
    /// When `offset` is out of bounds or not 8-aligned.
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        let p = self.check(offset, size_of::<AtomicU64>(), align_of::<AtomicU64>());
        // SAFETY: as in `atomic_u32`, with 8-byte bounds and alignment checked.
        unsafe { &*p.cast::<AtomicU64>() }
    }

    /// Stores `bytes` at byte `offset` as relaxed atomic 8-byte words, the last one padded with
    /// zeros: a copy that another process may read at the same time, with
    /// [`load_words`](Self::load_words), without a data race. Ordering is the caller's: publish
    /// the bytes with a release store after this.
    ///
    /// # Panics
    /// When the padded bytes are out of bounds or `offset` is not 8-aligned.
    pub fn store_words(&self, offset: usize, bytes: &[u8]) {
        let words = self.atomic_words(offset, bytes.len().div_ceil(8));
        // Whole arrays, and the words checked once: a loop that checked each word and split
        // the bytes with `chunks_exact` took a third longer.
        let (chunks, rest) = bytes.as_chunks::<8>();
        for (word, chunk) in words.iter().zip(chunks) {
            word.store(u64::from_ne_bytes(*chunk), Ordering::Relaxed);
        }
        if let Some(word) = words.get(chunks.len()) {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            word.store(u64::from_ne_bytes(last), Ordering::Relaxed);
        }
    }

    /// Replaces the contents of `out` with the `len` bytes at byte `offset`, read as relaxed
    /// atomic 8-byte words (the twin of [`store_words`](Self::store_words)).
    ///
    /// # Panics
    /// When the bytes, padded to whole words, are out of bounds or `offset` is not 8-aligned.
    pub fn load_words(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        let words = self.atomic_words(offset, len.div_ceil(8));
        out.clear();
        out.reserve(words.len() * 8);
        // Written into the spare capacity, then the length set: a copy with `extend` checked the
        // capacity at every word (2.6 times slower over a pool's 8 KiB chunk of results).
        let (chunks, _) = out.spare_capacity_mut().as_chunks_mut::<8>();
        for (word, chunk) in words.iter().zip(chunks) {
            *chunk = word
                .load(Ordering::Relaxed)
                .to_ne_bytes()
                .map(MaybeUninit::new);
        }
        // SAFETY: `reserve` made the spare capacity at least `words.len() * 8 >= len` bytes
        // long, and the loop initialized that many: one array for each word.
        unsafe { out.set_len(len) };
    }

    /// The `count` consecutive `AtomicU64`s from byte `offset`, checked once.
    ///
    /// # Panics
    /// When they are out of bounds or `offset` is not 8-aligned.
    fn atomic_words(&self, offset: usize, count: usize) -> &[AtomicU64] {
        let size = count.checked_mul(8).expect("too many words");
        let p = self.check(offset, size, align_of::<AtomicU64>());
        // SAFETY: as in `atomic_u64`, for `count` words: the range is in bounds and aligned,
        // lives as long as `&self`, and is only accessed atomically.
        unsafe { std::slice::from_raw_parts(p.cast::<AtomicU64>(), count) }
    }

    /// Copies the `T` at byte `offset` out of the region (volatile read; a concurrent writer in
    /// another process may produce a torn, but still valid, value).
    ///
    /// # Panics
    /// When the value is out of bounds or misaligned.
    pub fn read<T: Pod>(&self, offset: usize) -> T {
        let p = self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned; `T: Pod` accepts any bit pattern, so even a torn read
        // is a valid `T`; volatile keeps the compiler from assuming no other writer.
        unsafe { p.cast::<T>().read_volatile() }
    }

    /// Writes `value` at byte `offset` (volatile write).
    ///
    /// # Panics
    /// When the value is out of bounds or misaligned.
    pub fn write<T: Pod>(&self, offset: usize, value: T) {
        let p = self.check(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned; shared memory written only through volatile or atomic
        // accesses, never through Rust references.
        unsafe { p.cast::<T>().write_volatile(value) }
    }

    /// Copies `out.len()` consecutive `T`s starting at byte `offset` into `out`.
    ///
    /// # Panics
    /// When the range is out of bounds or misaligned.
    pub fn read_slice<T: Pod>(&self, offset: usize, out: &mut [T]) {
        let size = size_of::<T>()
            .checked_mul(out.len())
            .expect("slice too large");
        let p = self.check(offset, size, align_of::<T>()).cast::<T>();
        for (i, slot) in out.iter_mut().enumerate() {
            // SAFETY: element `i < out.len()` lies inside the checked range; see `read`.
            *slot = unsafe { p.add(i).read_volatile() };
        }
    }

    /// Copies `data` into consecutive `T`s starting at byte `offset`.
    ///
    /// # Panics
    /// When the range is out of bounds or misaligned.
    pub fn write_slice<T: Pod>(&self, offset: usize, data: &[T]) {
        let size = size_of::<T>()
            .checked_mul(data.len())
            .expect("slice too large");
        let p = self.check(offset, size, align_of::<T>()).cast::<T>();
        for (i, value) in data.iter().enumerate() {
            // SAFETY: element `i < data.len()` lies inside the checked range; see `write`.
            unsafe { p.add(i).write_volatile(*value) };
        }
    }
}

/// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len)`: frees the pages of
/// a memfd range, which reads as zeroes afterwards.
///
/// # References
/// - [`fallocate(2)`](https://man7.org/linux/man-pages/man2/fallocate.2.html)
pub(crate) fn punch_hole(fd: &SharedFd, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    Ok(rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?)
}

/// [`mmap_shared`] of a memfd sealed against shrinking that holds at least `len` bytes (the
/// callers check both): every page of the mapping stays backed for its whole life.
fn map(fd: &SharedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: the file holds at least `len` bytes and is sealed against shrinking (checked or
    // set by every caller), so every page stays backed; see `mmap_shared` for the rest.
    unsafe { mmap_shared(fd, len) }
}

/// [`mmap_shared`] of a file that is not sealed (a POSIX shared memory object): another process
/// may shrink it at any time, after which an access past the new end raises `SIGBUS`.
fn map_unsealed(fd: &SharedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: a shrink by another process does not make the mapping alias Rust memory or
    // invalidate a reference: no Rust reference into a mapping ever exists, every access is
    // volatile or atomic through a raw pointer, so a page losing its backing faults (`SIGBUS`,
    // which terminates the process) rather than being undefined behaviour; that crash is
    // documented on `shm::create_posix`/`shm::open_posix` and `SharedRegion`.
    unsafe { mmap_shared(fd, len) }
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
///
/// # Safety
/// The caller states what keeps the pages of `fd` backed (or what happens when they are not).
unsafe fn mmap_shared(fd: &SharedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh mapping chosen by the kernel (null hint, no MAP_FIXED) aliases no Rust
    // memory; the caller's contract covers what backs its pages.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd.as_fd(),
            0,
        )
    }?;
    let ptr =
        NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
    Ok(Mapping { ptr, len })
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("fd", &self.fd)
            .field("len", &self.map.len)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    fd: SharedFd,
    len: u64,
}

impl Serialize for SharedRegion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            fd: self.fd.clone(),
            len: self.map.len as u64,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedRegion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let len = usize::try_from(wire.len).map_err(D::Error::custom)?;
        SharedRegion::from_received(wire.fd, len).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;
    use std::sync::atomic::Ordering;

    #[test]
    fn decoded_copy_shares_memory() {
        let a = SharedRegion::new(64).unwrap();
        a.atomic_u64(8).store(7, Ordering::SeqCst);
        let (bytes, fds) = message::encode(&a).unwrap();
        let b: SharedRegion = message::decode(&bytes, fds).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert!(a.same_region(&b));
        assert_eq!(b.atomic_u64(8).load(Ordering::SeqCst), 7);
        b.write_slice(16, &[1u32, 2, 3]);
        let mut out = [0u32; 3];
        a.read_slice(16, &mut out);
        assert_eq!(out, [1, 2, 3]);
        a.write::<f64>(40, 2.5);
        assert_eq!(b.read::<f64>(40), 2.5);
    }

    #[test]
    fn rejects_unsealed_or_short_file() {
        let fd = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 16).unwrap();
        let err = SharedRegion::from_received(SharedFd::new(fd), 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let region = SharedRegion::new(16).unwrap();
        let err = SharedRegion::from_received(region.shared_fd().clone(), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// Every length, whole words or not, comes back as stored, from a mapping of the region
    /// in another place, and the last word's padding is zeros.
    #[test]
    fn words_stored_are_the_words_loaded_at_every_length() {
        let a = SharedRegion::new(256).unwrap();
        let (bytes, fds) = message::encode(&a).unwrap();
        let b: SharedRegion = message::decode(&bytes, fds).unwrap();
        let mut out = vec![0xAA; 3];
        for len in 0..=64usize {
            a.write_slice(64, &[u64::MAX; 9]);
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            a.store_words(64, &data);
            b.load_words(64, len, &mut out);
            assert_eq!(out, data, "length {len}");
            let padded = len.div_ceil(8) * 8;
            b.load_words(64, padded, &mut out);
            assert!(
                out[len..].iter().all(|&byte| byte == 0),
                "padding after {len}"
            );
            assert_eq!(b.read::<u64>(64 + padded), u64::MAX, "word after {len}");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn words_out_of_bounds_panic() {
        let region = SharedRegion::new(64).unwrap();
        region.store_words(56, &[0; 9]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_panics() {
        let region = SharedRegion::new(8).unwrap();
        region.atomic_u64(8);
    }
}
