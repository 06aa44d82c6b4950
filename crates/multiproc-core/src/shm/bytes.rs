//! Immutable bytes in a sealed memfd: large messages handed over instead of streamed.
//!
//! A [`SharedBytes`] inside a message travels as its descriptor and its length (a few bytes on
//! the socket, whatever the size); the receiver maps the same pages read-only. So a 1 MiB
//! payload costs one copy in user space (into the memfd, or none when it is written there in
//! place with [`SharedBytesMut`]) instead of a socket's two copies in the kernel.
//!
//! Safety rests on seals. The memfd is sealed against writing, shrinking and growing
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before it ever leaves the
//! process that made it, so its bytes can never change again, in any process: handing out a
//! plain `&[u8]` into the mapping is sound, and no access can fault (`SIGBUS`) on a page that
//! a truncation took away. A receiver checks the seals and the size before mapping anything;
//! a peer that sends a descriptor of another kind, an unsealed memfd, or a length the file does
//! not hold gets a decode error, never a mapping.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SharedFd;

/// Seals every `SharedBytes` memfd carries: its bytes and its size are fixed for good.
const FROZEN: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A mapping of `len` bytes, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a read-only mapping of a memfd sealed against writes is immutable memory, valid
// from any thread until `munmap` in `Drop`; a writable one belongs to one `SharedBytesMut`,
// which hands out references only through `&self`/`&mut self`.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only read bytes that nobody can change.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, 0)`; `len` must not be zero.
    ///
    /// # Safety
    /// The file must hold at least `len` bytes and be sealed against shrinking, so that every
    /// page of the mapping stays backed.
    unsafe fn new(fd: &SharedFd, len: usize, prot: ProtFlags) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint, no MAP_FIXED) aliases no
        // Rust memory; the caller guarantees the pages stay backed.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are what `mmap` returned and was asked for; no reference into the
        // mapping outlives its owner, which borrows it for every slice it hands out.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An immutable byte buffer in shared memory that travels between processes without being
/// copied: a sealed memfd, mapped read-only.
///
/// Put it in any message (a pipe, a queue, a spawn argument): the descriptor travels beside the
/// message and the receiver maps the same pages, so a large payload costs one copy (into the
/// memfd) instead of the two a socket makes, and none with [`SharedBytesMut`]. Clones share
/// the mapping. Once made, the bytes can change in no process (the memfd is sealed against
/// writes, shrinking and growing), so the receiver never sees a later write of the sender.
///
/// For small messages a plain `Vec<u8>` is cheaper: creating, sealing and mapping a memfd costs
/// a few system calls and page allocations (worth it from a few hundred KiB on).
///
/// # Examples
/// ```
/// use multiproc_core::shm::SharedBytes;
///
/// let big = SharedBytes::copy_from_slice(&vec![7u8; 1 << 20])?;
/// assert_eq!(big.len(), 1 << 20);
/// assert_eq!(big[12345], 7);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedBytes {
    /// `None` for an empty buffer (a mapping needs at least one byte).
    map: Option<Arc<Mapping>>,
    fd: SharedFd,
}

impl SharedBytes {
    /// Copies `bytes` into a new sealed memfd (one `pwrite`) and maps it.
    ///
    /// # Errors
    /// When `memfd_create`, the write, sealing or `mmap` fail (out of memory or descriptors).
    ///
    /// # References
    /// - [`memfd_create(2)`](https://man7.org/linux/man-pages/man2/memfd_create.2.html),
    ///   [`fcntl(2)` file seals](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    pub fn copy_from_slice(bytes: &[u8]) -> io::Result<Self> {
        let fd = new_memfd()?;
        let file = std::fs::File::from(fd);
        file.write_all_at(bytes, 0)?;
        rustix::fs::fcntl_add_seals(&file, FROZEN)?;
        Self::map_frozen(SharedFd::new(file.into()), bytes.len())
    }

    /// Maps `len` bytes of a memfd sealed with [`FROZEN`] and holding at least `len` bytes.
    fn map_frozen(fd: SharedFd, len: usize) -> io::Result<Self> {
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the caller checked (or made) the seals, shrinking included, and the
            // size, so every page of the mapping stays backed.
            Some(Arc::new(unsafe {
                Mapping::new(&fd, len, ProtFlags::READ)?
            }))
        };
        Ok(Self { map, fd })
    }

    /// Maps a memfd received from another process after checking that it can never change:
    /// sealed against writing, shrinking and growing, and holding at least `len` bytes.
    fn from_received(fd: SharedFd, len: u64) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(invalid("shared bytes descriptor is not a memfd".into()));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|_| invalid("shared bytes descriptor is not a memfd".into()))?;
        let needed = SealFlags::WRITE | SealFlags::SHRINK;
        if !seals.contains(needed) {
            return Err(invalid(format!(
                "shared bytes memfd is not sealed against writing and shrinking (seals {:#x})",
                seals.bits()
            )));
        }
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        if size < len {
            return Err(invalid(format!(
                "shared bytes of {len} bytes are backed by a memfd of {size} bytes"
            )));
        }
        let len = usize::try_from(len)
            .map_err(|_| invalid(format!("shared bytes of {len} bytes do not fit in memory")))?;
        Self::map_frozen(fd, len)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.map {
            // SAFETY: the mapping is `len` readable bytes of a memfd sealed against writing and
            // shrinking, so they never change and never lose their backing while `self` (which
            // keeps the mapping alive) is borrowed.
            Some(map) => unsafe { std::slice::from_raw_parts(map.ptr.as_ptr(), map.len) },
            None => &[],
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len)
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for SharedBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SharedBytes {}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("fd", &self.fd)
            .field("len", &self.len())
            .finish()
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.fd, self.len() as u64).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (fd, len) = <(SharedFd, u64)>::deserialize(deserializer)?;
        SharedBytes::from_received(fd, len).map_err(|e| {
            let msg = e.to_string();
            crate::fd::refuse_handle(e);
            D::Error::custom(msg)
        })
    }
}

/// A [`SharedBytes`] being written in place: a fresh memfd mapped read-write into this process
/// only, zero-filled; [`freeze`](Self::freeze) seals it into a `SharedBytes` without copying.
///
/// It does not travel (it is not `Serialize`): nothing outside this process can see the bytes
/// until they are frozen.
///
/// # Examples
/// ```
/// use multiproc_core::shm::SharedBytesMut;
///
/// let mut buf = SharedBytesMut::zeroed(4096)?;
/// buf[..5].copy_from_slice(b"hello");
/// let frozen = buf.freeze()?;
/// assert_eq!(&frozen[..5], b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct SharedBytesMut {
    map: Option<Mapping>,
    fd: SharedFd,
}

impl SharedBytesMut {
    /// A zero-filled buffer of `len` bytes.
    ///
    /// # Errors
    /// When `memfd_create`, `ftruncate` or `mmap` fail (out of memory or descriptors).
    pub fn zeroed(len: usize) -> io::Result<Self> {
        let fd = new_memfd()?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        // Nobody may change the size from now on (another process of the same user could open
        // the memfd through /proc and truncate it under our mapping otherwise).
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW)?;
        let fd = SharedFd::new(fd);
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the file holds `len` bytes and is sealed against shrinking.
            Some(unsafe { Mapping::new(&fd, len, ProtFlags::READ | ProtFlags::WRITE)? })
        };
        Ok(Self { map, fd })
    }

    /// Seals the bytes for good and maps them read-only: from now on they can change in no
    /// process, and the result can travel.
    ///
    /// # Errors
    /// When sealing fails: `EBUSY` if another writable mapping of the memfd exists (another
    /// process of the same user opened it through `/proc`), or `mmap` fails.
    pub fn freeze(self) -> io::Result<SharedBytes> {
        let len = self.len();
        let Self { map, fd } = self;
        // `F_SEAL_WRITE` needs every writable mapping gone.
        drop(map);
        rustix::fs::fcntl_add_seals(&fd, FROZEN)?;
        SharedBytes::map_frozen(fd, len)
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len)
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Deref for SharedBytesMut {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.map {
            // SAFETY: the mapping is `len` bytes of a memfd sealed against shrinking, which
            // only this value writes (it never left the process), borrowed as long as `self`.
            Some(map) => unsafe { std::slice::from_raw_parts(map.ptr.as_ptr(), map.len) },
            None => &[],
        }
    }
}

impl DerefMut for SharedBytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.map {
            // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
            Some(map) => unsafe { std::slice::from_raw_parts_mut(map.ptr.as_ptr(), map.len) },
            None => &mut [],
        }
    }
}

impl fmt::Debug for SharedBytesMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytesMut")
            .field("fd", &self.fd)
            .field("len", &self.len())
            .finish()
    }
}

/// A memfd that may be sealed, close-on-exec.
fn new_memfd() -> io::Result<std::os::fd::OwnedFd> {
    Ok(rustix::fs::memfd_create(
        "multiproc-bytes",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(b: &SharedBytes) -> Result<SharedBytes, crate::error::DecodeError> {
        let (bytes, fds) = crate::message::encode(b).unwrap();
        crate::message::decode(&bytes, fds)
    }

    #[test]
    fn copies_and_travels() {
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let b = SharedBytes::copy_from_slice(&data).unwrap();
        let back = round_trip(&b).unwrap();
        assert_eq!(back.as_slice(), &data[..]);
        assert_eq!(
            round_trip(&SharedBytes::copy_from_slice(&[]).unwrap())
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn written_in_place_then_frozen() {
        let mut m = SharedBytesMut::zeroed(10_000).unwrap();
        m[9_999] = 42;
        let b = m.freeze().unwrap();
        assert_eq!((b.len(), b[9_999], b[0]), (10_000, 42, 0));
        // Sealed: no write through any descriptor.
        let file = std::fs::File::from(b.fd.try_clone_owned().unwrap());
        assert!(file.write_at(b"x", 0).is_err());
        assert!(rustix::fs::ftruncate(&file, 0).is_err());
    }

    /// Sends `fd` with `len` as a `SharedBytes` would travel, and decodes it as one.
    fn forged(fd: std::os::fd::OwnedFd, len: u64) -> String {
        let (bytes, fds) = crate::message::encode(&(SharedFd::new(fd), len)).unwrap();
        let err = crate::message::decode::<SharedBytes>(&bytes, fds).unwrap_err();
        // The reason is the cause, below the decode error's own words.
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            chain += &format!(": {e}");
            source = e.source();
        }
        chain
    }

    #[test]
    fn bogus_descriptors_and_sizes_are_errors() {
        // Not sealed against writes.
        let fd = new_memfd().unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        let e = forged(fd, 4096);
        assert!(e.contains("not sealed"), "{e}");
        // Sealed, but smaller than announced.
        let fd = new_memfd().unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        rustix::fs::fcntl_add_seals(&fd, FROZEN).unwrap();
        let e = forged(fd, 1 << 20);
        assert!(e.contains("backed by a memfd of 4096"), "{e}");
        // Not a memfd at all.
        let (a, _b) = crate::sys::stream_socketpair().unwrap();
        let e = forged(a, 1);
        assert!(e.contains("not a memfd"), "{e}");
        let e = forged(std::fs::File::open("/proc/self/exe").unwrap().into(), 1);
        assert!(e.contains("not a memfd"), "{e}");
    }
}
