//! Shared memory handles: [`SharedValue`], [`SharedArray`] and [`SharedMemory`].

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use multiproc_core::shm::{Pod, SharedRegion};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CreateError, LockError};
use crate::lock::{Lock, LockGuard};

// Header of typed regions: element size, element alignment, element count; data at DATA.
const SIZE: usize = 0;
const ALIGN: usize = 8;
const COUNT: usize = 16;
const DATA: usize = 64;

/// A typed region: header plus `count` elements of `T`.
struct Typed<T> {
    region: SharedRegion,
    count: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Typed<T> {
    fn clone(&self) -> Self {
        Self {
            region: self.region.clone(),
            count: self.count,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Typed<T> {
    fn new(count: usize) -> Result<Self, CreateError> {
        assert!(
            align_of::<T>() <= DATA,
            "shared values support alignment up to 64"
        );
        let bytes = size_of::<T>()
            .checked_mul(count)
            .and_then(|b| b.checked_add(DATA));
        let bytes = bytes.ok_or_else(|| {
            CreateError(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a shared array of {count} elements of {} bytes is too large",
                    size_of::<T>()
                ),
            ))
        })?;
        let region = SharedRegion::new(bytes)?;
        region
            .atomic_u64(SIZE)
            .store(size_of::<T>() as u64, Ordering::SeqCst);
        region
            .atomic_u64(ALIGN)
            .store(align_of::<T>() as u64, Ordering::SeqCst);
        region
            .atomic_u64(COUNT)
            .store(count as u64, Ordering::SeqCst);
        Ok(Self {
            region,
            count,
            _t: PhantomData,
        })
    }

    fn from_region(region: SharedRegion) -> Result<Self, String> {
        if region.len() < DATA {
            return Err("received shared region is too small for a shared value".into());
        }
        let size = region.atomic_u64(SIZE).load(Ordering::SeqCst);
        let align = region.atomic_u64(ALIGN).load(Ordering::SeqCst);
        let count = region.atomic_u64(COUNT).load(Ordering::SeqCst);
        if size != size_of::<T>() as u64 || align != align_of::<T>() as u64 {
            return Err(format!(
                "received shared data of {size}-byte elements aligned to {align}, expected {} aligned to {}",
                size_of::<T>(),
                align_of::<T>()
            ));
        }
        let count = usize::try_from(count).map_err(|e| e.to_string())?;
        let fits = size_of::<T>()
            .checked_mul(count)
            .and_then(|b| b.checked_add(DATA))
            .is_some_and(|b| b <= region.len());
        if !fits {
            return Err("received shared region is shorter than its header says".into());
        }
        Ok(Self {
            region,
            count,
            _t: PhantomData,
        })
    }

    fn get(&self, i: usize) -> T {
        assert!(
            i < self.count,
            "index {i} out of bounds for length {}",
            self.count
        );
        self.region.read(DATA + i * size_of::<T>())
    }

    fn set(&self, i: usize, v: T) {
        assert!(
            i < self.count,
            "index {i} out of bounds for length {}",
            self.count
        );
        self.region.write(DATA + i * size_of::<T>(), v);
    }
}

impl<T: Pod> Serialize for Typed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.region.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Typed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Typed::from_region(SharedRegion::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

/// One value of plain-old-data type `T` in shared memory, with an associated [`Lock`]: Python's
/// `multiprocessing.Value`.
///
/// [`get`](Self::get) and [`set`](Self::set) copy the value in or out without locking; a
/// read-modify-write (`+= 1`) must hold the lock, most simply through
/// [`lock`](Self::lock), whose guard derefs to a copy of the value and writes it back when
/// dropped. A value starts zeroed, or at the value given to [`new`](Self::new).
///
/// Any [`Pod`] type works: integers, floats, arrays of them, and `#[repr(C)]` structs for which
/// you implement `Pod`. A handle decoded as a different type (size or alignment mismatch) is a
/// decode error.
///
/// # Crash behavior
/// As [`Lock`]: a process that dies holding the lock leaves the value as last written back;
/// the next guard reports [`SharedValueGuard::owner_died`].
///
/// # Examples
/// ```
/// use multiproc::SharedValue;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let counter = SharedValue::new(0u64)?;
/// let other = counter.clone(); // or: pass `counter` to child processes
/// {
///     let mut guard = other.lock().await?;
///     *guard += 1;
/// } // written back and unlocked here
/// assert_eq!(counter.get(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SharedValue<T: Pod> {
    data: Typed<T>,
    lock: Lock,
}

impl<T: Pod> SharedValue<T> {
    /// Creates a shared value holding `value`, with a new lock.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd.
    ///
    /// # Panics
    /// When `T` needs an alignment above 64.
    pub fn new(value: T) -> Result<Self, CreateError> {
        Self::with_lock(value, Lock::new()?)
    }

    /// Creates a shared value guarded by an existing lock (Python's `Value(t, v, lock=lock)`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub fn with_lock(value: T, lock: Lock) -> Result<Self, CreateError> {
        let data = Typed::new(1)?;
        data.set(0, value);
        Ok(Self { data, lock })
    }

    /// Copies the value out (no locking).
    pub fn get(&self) -> T {
        self.data.get(0)
    }

    /// Overwrites the value (no locking).
    pub fn set(&self, value: T) {
        self.data.set(0, value)
    }

    /// The associated lock.
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// Locks the associated lock and returns a guard holding a copy of the value, written back
    /// when the guard is dropped.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Lock::lock`].
    pub async fn lock(&self) -> Result<SharedValueGuard<'_, T>, LockError> {
        let guard = self.lock.lock().await?;
        Ok(SharedValueGuard {
            value: self.get(),
            shared: self,
            guard,
        })
    }

    /// The blocking twin of [`lock`](Self::lock).
    ///
    /// # Errors
    /// As [`Lock::blocking_lock`].
    pub fn blocking_lock(&self) -> Result<SharedValueGuard<'_, T>, LockError> {
        let guard = self.lock.blocking_lock()?;
        Ok(SharedValueGuard {
            value: self.get(),
            shared: self,
            guard,
        })
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedValue")
            .field("value", &self.get())
            .finish()
    }
}

/// A locked copy of a [`SharedValue`]; written back and unlocked when dropped.
#[must_use = "the value is written back and unlocked as soon as the guard is dropped"]
pub struct SharedValueGuard<'a, T: Pod> {
    value: T,
    shared: &'a SharedValue<T>,
    guard: LockGuard<'a>,
}

impl<T: Pod> SharedValueGuard<'_, T> {
    /// Whether the lock's previous holder died while holding it.
    pub fn owner_died(&self) -> bool {
        self.guard.owner_died()
    }
}

impl<T: Pod> Deref for SharedValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Pod> DerefMut for SharedValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Pod> Drop for SharedValueGuard<'_, T> {
    fn drop(&mut self) {
        self.shared.set(self.value);
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedValueGuard")
            .field("value", &self.value)
            .finish()
    }
}

/// A fixed-length array of plain-old-data `T` in shared memory, with an associated [`Lock`]:
/// Python's `multiprocessing.Array`.
///
/// Element access ([`get`](Self::get), [`set`](Self::set)) and whole-array copies do not lock;
/// [`lock`](Self::lock) returns a guard that derefs to a copy of the whole array and writes it
/// back when dropped.
///
/// # Crash behavior
/// As [`SharedValue`].
///
/// # Examples
/// ```
/// use multiproc::SharedArray;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let squares = SharedArray::<u32>::new(4)?;
/// for i in 0..4 {
///     squares.set(i, (i * i) as u32); // e.g. in a child process
/// }
/// assert_eq!(squares.to_vec(), [0, 1, 4, 9]);
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SharedArray<T: Pod> {
    data: Typed<T>,
    lock: Lock,
}

impl<T: Pod> SharedArray<T> {
    /// Creates a zeroed array of `len` elements with a new lock.
    ///
    /// # Errors
    /// When the kernel refuses a memfd, mapping or eventfd, or the array's size in bytes does
    /// not fit a `usize` ([`InvalidInput`](std::io::ErrorKind::InvalidInput)).
    ///
    /// # Panics
    /// When `T` needs an alignment above 64.
    pub fn new(len: usize) -> Result<Self, CreateError> {
        Ok(Self {
            data: Typed::new(len)?,
            lock: Lock::new()?,
        })
    }

    /// Creates an array holding a copy of `values`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub fn from_slice(values: &[T]) -> Result<Self, CreateError> {
        let array = Self::new(values.len())?;
        array.copy_from_slice(values);
        Ok(array)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.count
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.count == 0
    }

    /// Copies element `index` out, or `None` when out of bounds.
    pub fn get(&self, index: usize) -> Option<T> {
        (index < self.len()).then(|| self.data.get(index))
    }

    /// Overwrites element `index`.
    ///
    /// # Panics
    /// When `index >= len()`.
    pub fn set(&self, index: usize, value: T) {
        self.data.set(index, value)
    }

    /// Copies the whole array out.
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len()).map(|i| self.data.get(i)).collect()
    }

    /// Overwrites the whole array.
    ///
    /// # Panics
    /// When `values.len() != len()`.
    pub fn copy_from_slice(&self, values: &[T]) {
        assert_eq!(
            values.len(),
            self.len(),
            "source slice length does not match the shared array"
        );
        self.data.region.write_slice(DATA, values);
    }

    /// The associated lock.
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// Locks the associated lock and returns a guard holding a copy of the array, written back
    /// when the guard is dropped.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Lock::lock`].
    pub async fn lock(&self) -> Result<SharedArrayGuard<'_, T>, LockError> {
        let guard = self.lock.lock().await?;
        Ok(SharedArrayGuard {
            values: self.to_vec(),
            shared: self,
            guard,
        })
    }

    /// The blocking twin of [`lock`](Self::lock).
    ///
    /// # Errors
    /// As [`Lock::blocking_lock`].
    pub fn blocking_lock(&self) -> Result<SharedArrayGuard<'_, T>, LockError> {
        let guard = self.lock.blocking_lock()?;
        Ok(SharedArrayGuard {
            values: self.to_vec(),
            shared: self,
            guard,
        })
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("values", &self.to_vec())
            .finish()
    }
}

/// A locked copy of a [`SharedArray`]; written back and unlocked when dropped.
#[must_use = "the array is written back and unlocked as soon as the guard is dropped"]
pub struct SharedArrayGuard<'a, T: Pod> {
    values: Vec<T>,
    shared: &'a SharedArray<T>,
    guard: LockGuard<'a>,
}

impl<T: Pod> SharedArrayGuard<'_, T> {
    /// Whether the lock's previous holder died while holding it.
    pub fn owner_died(&self) -> bool {
        self.guard.owner_died()
    }
}

impl<T: Pod> Deref for SharedArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.values
    }
}

impl<T: Pod> DerefMut for SharedArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.values
    }
}

impl<T: Pod> Drop for SharedArrayGuard<'_, T> {
    fn drop(&mut self) {
        self.shared.copy_from_slice(&self.values);
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArrayGuard")
            .field("values", &self.values)
            .finish()
    }
}

/// A raw block of shared memory: Python's `shared_memory.SharedMemory`.
///
/// [`new`](Self::new) makes an anonymous block (a sealed memfd) that travels as a handle.
/// Named blocks are found by name from unrelated processes, with two lifetimes:
/// - [`create`](Self::create) / [`attach`](Self::attach): the name lives while the creating
///   process (its owner) keeps a handle, and vanishes with it, even when it is killed: nothing is
///   ever left behind in `/dev/shm` (the owner serves the memfd on an abstract socket, see
///   `multiproc::named`). Attached processes keep their mapping after the owner is gone.
/// - [`create_posix`](Self::create_posix) / [`attach_posix`](Self::attach_posix) /
///   [`unlink`](Self::unlink): a POSIX shared memory object named exactly as Python names it
///   (`/dev/shm/<name>`), so Python scripts attach to it and the other way round; it stays
///   until unlinked, as in Python.
///
/// Reads and writes copy bytes in and out; there is no locking (pair it with a [`Lock`] when
/// needed). The memory lives as long as any process holds a handle (or the POSIX name exists).
///
/// # Crash behavior
/// Nothing is locked: the bytes stay as last written. An owner's death withdraws a
/// [`create`](Self::create)d name (later attaches fail with `is_not_found`); a POSIX object
/// stays until someone unlinks it, as in Python (without Python's resource tracker, which
/// unlinks it when its creator dies uncleanly).
///
/// # Examples
/// ```
/// use multiproc::SharedMemory;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let shm = SharedMemory::new(16)?;
/// shm.write(4, b"hi");
/// let mut buf = [0u8; 2];
/// shm.read(4, &mut buf);
/// assert_eq!(&buf, b"hi");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedMemory {
    pub(crate) region: SharedRegion,
    /// The name, for named memory (see `named_memory.rs`).
    pub(crate) name: Option<Arc<crate::named_memory::Name>>,
}

impl SharedMemory {
    /// Creates `len` zeroed bytes of shared memory.
    ///
    /// # Errors
    /// When `len` is zero (Python's `SharedMemory(size=0)` refuses it too; the
    /// [`io_error`](CreateError::io_error) is [`InvalidInput`](std::io::ErrorKind::InvalidInput)),
    /// or when the kernel refuses a memfd or mapping.
    pub fn new(len: usize) -> Result<Self, CreateError> {
        Ok(Self {
            region: SharedRegion::new(len)?,
            name: None,
        })
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Always `false`: the memory holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Panics
    /// When the range is out of bounds.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.region.read_slice(offset, buf)
    }

    /// Copies `data` into the memory starting at `offset`.
    ///
    /// # Panics
    /// When the range is out of bounds.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.region.write_slice(offset, data)
    }

    /// Copies the whole memory out.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        self.read(0, &mut out);
        out
    }

    /// The underlying region, for atomics ([`SharedRegion::atomic_u64`]) and typed access.
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("len", &self.len())
            .finish()
    }
}
