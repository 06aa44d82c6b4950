//! Named [`SharedMemory`]: the constructors that give a block a name, its serde form, and its
//! errors' kinds. Two lifetimes (see [`SharedMemory`]): served by its owner over an abstract
//! socket (core `named`, namespace [`SHM_NAMESPACE`]), or a POSIX object named as Python names
//! it (core `shm::posix`).

use std::io;
use std::sync::{Arc, Mutex};

use multiproc_core::named::{self, Publication};
use multiproc_core::shm::{self, SharedRegion};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::SharedMemory;
use crate::error::{AttachError, CreateNamedError, NamedErrorKind, UnlinkError};

/// The core `named` namespace of served shared memory names (apart from the registry's).
pub(crate) const SHM_NAMESPACE: &str = "shm";

/// The name of a named block, shared by the clones of one handle in one process.
pub(crate) struct Name {
    name: String,
    lifetime: Lifetime,
}

enum Lifetime {
    /// Served while an owner lives. `Some` in the owner (its clones share the publication),
    /// `None` in processes that attached or received the handle, or after `unlink`.
    Served(Mutex<Option<Publication>>),
    /// A POSIX shared memory object.
    Posix,
}

impl SharedMemory {
    /// Creates `len` zeroed bytes of shared memory under `name`, for this process's lifetime:
    /// any process of the same user can [`attach`](Self::attach) it by name while this process
    /// holds a handle to it (this one or a clone). When the last such handle is dropped, or this
    /// process dies however it dies, the name is gone (attached processes keep their memory);
    /// nothing is ever left in `/dev/shm`.
    ///
    /// # Errors
    /// [`CreateNamedError::is_already_exists`] when the name is taken (Python's
    /// `FileExistsError`); [`CreateNamedError::is_invalid`] when `len` is zero or the name is
    /// empty, too long (keep it under about 70 bytes) or holds a NUL or a `/`.
    ///
    /// # Examples
    /// ```
    /// use multiproc_sync::SharedMemory;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-shm-{}", std::process::id());
    /// let owner = SharedMemory::create(&name, 4096)?;
    /// owner.write(0, b"hello");
    /// // Any process of this user, e.g. one started separately:
    /// let other = SharedMemory::blocking_attach(&name)?;
    /// let mut buf = [0u8; 5];
    /// other.read(0, &mut buf);
    /// assert_eq!(&buf, b"hello");
    /// drop(owner);
    /// assert!(SharedMemory::blocking_attach(&name).unwrap_err().is_not_found());
    /// # Ok(()) }
    /// ```
    pub fn create(name: &str, len: usize) -> Result<Self, CreateNamedError> {
        let region = SharedRegion::new(len).map_err(|e| CreateNamedError::from_io(name, e))?;
        let publication = named::publish_in(SHM_NAMESPACE, name, &region).map_err(|e| {
            let kind = classify(
                e.is_already_exists(),
                NamedErrorKind::AlreadyExists,
                e.is_invalid_name(),
            );
            CreateNamedError::new(name, kind, e.into())
        })?;
        Ok(Self::served(name, region, Some(publication)))
    }

    /// Attaches the memory another process of this user [`create`](Self::create)d under
    /// `name`, all of it (Python's `SharedMemory(name)`: the size is the creator's), after one
    /// local round trip with the owner's serving thread (bounded by
    /// `multiproc::named::LOOKUP_TIMEOUT`), without blocking the runtime's thread.
    /// [`blocking_attach`](Self::blocking_attach) is the twin for code outside a runtime.
    ///
    /// # Errors
    /// [`AttachError::is_not_found`] when no live owner has the name (Python's
    /// `FileNotFoundError`); [`AttachError::is_invalid`] for an invalid name; other errors when
    /// a process of another user holds the name or the owner does not answer.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future attaches nothing and leaves the owner serving others.
    ///
    /// # Examples
    /// ```
    /// use multiproc_sync::SharedMemory;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc-shm-async-{}", std::process::id());
    /// let owner = SharedMemory::create(&name, 4096)?;
    /// owner.write(0, b"hello");
    /// let other = SharedMemory::attach(&name).await?;
    /// assert_eq!(&other.to_vec()[..5], b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn attach(name: &str) -> Result<Self, AttachError> {
        let region = named::lookup_in(SHM_NAMESPACE, name).await;
        Self::attached(name, region)
    }

    /// [`attach`](Self::attach) for code that is not async: blocks the calling thread for the
    /// round trip.
    ///
    /// # Errors
    /// As [`attach`](Self::attach).
    pub fn blocking_attach(name: &str) -> Result<Self, AttachError> {
        Self::attached(name, named::blocking_lookup_in(SHM_NAMESPACE, name))
    }

    /// The handle of an attach of `name` whose lookup gave `region`.
    fn attached(
        name: &str,
        region: Result<SharedRegion, named::LookupError>,
    ) -> Result<Self, AttachError> {
        let region = region.map_err(|e| {
            let kind = classify(
                e.is_not_found(),
                NamedErrorKind::NotFound,
                e.is_invalid_name(),
            );
            AttachError::new(name, kind, e.into())
        })?;
        Ok(Self::served(name, region, None))
    }

    /// Creates the POSIX shared memory object `name` of `len` zeroed bytes, exactly as Python's
    /// `SharedMemory(name=name, create=True, size=len)` does (`/dev/shm/<name>`, mode `0600`):
    /// Python scripts attach it with `SharedMemory(name=name)`. It stays until
    /// [`unlink`](Self::unlink)ed, by any process, even after every process exited.
    ///
    /// The object is an ordinary file that other programs can shrink: an access past its new
    /// end kills this process with `SIGBUS`, as it would a Python one. Prefer
    /// [`create`](Self::create) among multiproc programs.
    ///
    /// # Errors
    /// [`CreateNamedError::is_already_exists`] when `/dev/shm/<name>` exists (Python's
    /// `FileExistsError`); [`CreateNamedError::is_invalid`] when `len` is zero or the name is
    /// empty or holds a NUL or a `/` (one leading `/` is accepted and ignored).
    ///
    /// # Examples
    /// ```
    /// use multiproc_sync::SharedMemory;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let name = format!("doc_psm_{}", std::process::id());
    /// let shm = SharedMemory::create_posix(&name, 64)?; // Python: SharedMemory(name, True, 64)
    /// shm.write(0, b"hi");
    /// let again = SharedMemory::attach_posix(&name)?;   // Python: SharedMemory(name)
    /// assert_eq!(&again.to_vec()[..2], b"hi");
    /// shm.unlink()?;                                    // Python: shm.unlink()
    /// assert!(SharedMemory::attach_posix(&name).unwrap_err().is_not_found());
    /// # Ok(()) }
    /// ```
    pub fn create_posix(name: &str, len: usize) -> Result<Self, CreateNamedError> {
        let region =
            shm::create_posix(name, len).map_err(|e| CreateNamedError::from_io(name, e))?;
        Ok(Self::posix(name, region))
    }

    /// Attaches the POSIX shared memory object `name`, created by
    /// [`create_posix`](Self::create_posix) or by Python's
    /// `SharedMemory(name=name, create=True, ...)`, all of it.
    ///
    /// The object is opened without following a symbolic link (`O_NOFOLLOW`, as glibc's
    /// `shm_open` and so Python do): `/dev/shm` is writable by every user, and a link planted
    /// there must not make us map the file it points to.
    ///
    /// # Errors
    /// [`AttachError::is_not_found`] when there is no such object (Python's
    /// `FileNotFoundError`); [`AttachError::is_invalid`] for an invalid name, an empty object,
    /// or a `/dev/shm` entry that is a symbolic link or not a regular file.
    ///
    /// # Crash behavior
    /// A POSIX object is not sealed: another process that shrinks it (`ftruncate`) makes this
    /// process's accesses past the new end fault with `SIGBUS`, which terminates it, as it
    /// would any other program (Python included) mapping the object.
    pub fn attach_posix(name: &str) -> Result<Self, AttachError> {
        let region = shm::open_posix(name).map_err(|e| AttachError::from_io(name, e))?;
        Ok(Self::posix(name, region))
    }

    /// Served memory under `name`; an owner holds the `publication`.
    fn served(name: &str, region: SharedRegion, publication: Option<Publication>) -> Self {
        Self {
            region,
            name: Some(Arc::new(Name {
                name: name.to_owned(),
                lifetime: Lifetime::Served(Mutex::new(publication)),
            })),
        }
    }

    fn posix(name: &str, region: SharedRegion) -> Self {
        Self {
            region,
            name: Some(Arc::new(Name {
                name: name.strip_prefix('/').unwrap_or(name).to_owned(),
                lifetime: Lifetime::Posix,
            })),
        }
    }

    /// The name: `None` for anonymous memory ([`new`](Self::new)).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref().map(|n| n.name.as_str())
    }

    /// Removes the name, as Python's `unlink()`: a POSIX object is deleted from `/dev/shm`; a
    /// [`create`](Self::create)d name is withdrawn early (only its owner can). Mappings stay
    /// valid in every process; later attaches fail with `is_not_found`.
    ///
    /// # Errors
    /// [`UnlinkError::is_not_found`] when the name is already gone (a second `unlink`, as in
    /// Python), or this handle is not the owner of a served name; an error for anonymous memory.
    pub fn unlink(&self) -> Result<(), UnlinkError> {
        let Some(name) = self.name.as_deref() else {
            return Err(UnlinkError::new(
                "",
                NamedErrorKind::Invalid,
                "anonymous shared memory has no name".into(),
            ));
        };
        match &name.lifetime {
            Lifetime::Posix => {
                shm::unlink_posix(&name.name).map_err(|e| UnlinkError::from_io(&name.name, e))
            }
            Lifetime::Served(publication) => {
                let taken = publication.lock().unwrap_or_else(|e| e.into_inner()).take();
                match taken {
                    Some(publication) => {
                        drop(publication);
                        Ok(())
                    }
                    None => Err(UnlinkError::new(
                        &name.name,
                        NamedErrorKind::NotFound,
                        "this handle does not own the name, or it was already unlinked".into(),
                    )),
                }
            }
        }
    }
}

/// The wire form: anonymous and served memory travel as their memfd (a served name's receiver
/// is not an owner); a POSIX object travels as its name and is opened again on arrival, as
/// Python's pickling does (an unlinked name fails to decode).
#[derive(Serialize, Deserialize)]
enum Wire {
    Anonymous(SharedRegion),
    Served { name: String, region: SharedRegion },
    Posix { name: String },
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match self.name.as_deref() {
            None => Wire::Anonymous(self.region.clone()),
            Some(Name {
                name,
                lifetime: Lifetime::Served(_),
            }) => Wire::Served {
                name: name.clone(),
                region: self.region.clone(),
            },
            Some(Name {
                name,
                lifetime: Lifetime::Posix,
            }) => Wire::Posix { name: name.clone() },
        };
        wire.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Wire::deserialize(deserializer)? {
            Wire::Anonymous(region) => Self { region, name: None },
            Wire::Served { name, region } => Self::served(&name, region, None),
            Wire::Posix { name } => {
                let region = shm::open_posix(&name).map_err(|e| {
                    D::Error::custom(format!("cannot open shared memory `{name}`: {e}"))
                })?;
                Self::posix(&name, region)
            }
        })
    }
}

/// The kind of a core `named` error: `expected` when `is_expected`, invalid for a bad name,
/// other otherwise.
fn classify(is_expected: bool, expected: NamedErrorKind, is_invalid: bool) -> NamedErrorKind {
    if is_expected {
        expected
    } else if is_invalid {
        NamedErrorKind::Invalid
    } else {
        NamedErrorKind::Other
    }
}

/// What kind of failure a named-memory error is (shared by the three error types).
pub(crate) fn kind_of(e: &io::Error) -> NamedErrorKind {
    match e.kind() {
        io::ErrorKind::AlreadyExists => NamedErrorKind::AlreadyExists,
        io::ErrorKind::NotFound => NamedErrorKind::NotFound,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => NamedErrorKind::Invalid,
        _ => NamedErrorKind::Other,
    }
}
