//! Descriptors that travel inside serde messages.
//!
//! A [`SharedFd`] serializes as an index into the list of descriptors that accompany the message
//! (sent beside the bytes as `SCM_RIGHTS`). [`crate::message::encode`] collects the descriptors,
//! [`crate::message::decode`] hands them back by index. Outside those two functions a `SharedFd`
//! refuses to serialize, so a descriptor can never be silently turned into a meaningless number.

use std::cell::RefCell;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A reference-counted file descriptor that can be a field of any message.
///
/// Cloning is cheap and shares the descriptor within the process; sending it to another process
/// duplicates the descriptor into that process, where it arrives close-on-exec. The descriptor
/// is closed when the last clone in this process is dropped.
///
/// Every multiproc handle (a pipe end, a lock, a queue, shared memory) is built from
/// `SharedFd`s, which is what lets handles be fields of messages and spawn arguments.
#[derive(Clone)]
pub struct SharedFd(Arc<OwnedFd>);

impl SharedFd {
    /// Wraps an owned descriptor.
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }

    /// Duplicates the descriptor into a new, independently owned one (close-on-exec).
    ///
    /// # Errors
    /// Fails when the process is out of descriptors (`EMFILE`).
    pub fn try_clone_owned(&self) -> std::io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for SharedFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<OwnedFd> for SharedFd {
    fn from(fd: OwnedFd) -> Self {
        Self::new(fd)
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedFd").field(&self.as_raw_fd()).finish()
    }
}

/// What went wrong with a descriptor while decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// The payload names a descriptor the message did not carry.
    #[error("descriptor index {index} is out of range: the message carried {count}")]
    OutOfRange {
        /// The index found in the payload.
        index: u32,
        /// How many descriptors arrived with the message.
        count: usize,
    },
    /// A handle was decoded by something other than a multiproc channel.
    #[error("a descriptor-carrying handle can only be decoded by a multiproc channel")]
    NoContext,
}

thread_local! {
    static OUTGOING: RefCell<Option<Outgoing>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Incoming>> = const { RefCell::new(None) };
}

struct Outgoing {
    fds: Vec<OwnedFd>,
    /// The index each `SharedFd` already in `fds` got, by the address of its shared
    /// descriptor, so that clones of one `SharedFd` travel once. Made at the first descriptor;
    /// each key's `SharedFd` is kept beside its index, so no address is reused meanwhile.
    seen: Option<std::collections::HashMap<usize, (u32, SharedFd)>>,
    error: Option<std::io::Error>,
}

struct Incoming {
    /// The message's descriptors; each is wrapped at its first claim and shared by later ones.
    fds: Vec<Claim>,
    error: Option<DescriptorError>,
}

/// A received descriptor before and after its first claim.
enum Claim {
    Unclaimed(OwnedFd),
    Claimed(SharedFd),
    /// Only while a claim swaps one for the other.
    Moving,
}

/// Runs `f` with a fresh outgoing descriptor list; returns what `f` gave and the descriptors
/// serialized meanwhile, or the error met while duplicating one.
pub(crate) fn collect_outgoing<R>(
    f: impl FnOnce() -> R,
) -> (R, Result<Vec<OwnedFd>, std::io::Error>) {
    let saved = OUTGOING.with(|c| {
        c.replace(Some(Outgoing {
            fds: Vec::new(),
            seen: None,
            error: None,
        }))
    });
    let out = f();
    let ctx = OUTGOING
        .with(|c| c.replace(saved))
        .expect("outgoing context vanished");
    let fds = match ctx.error {
        Some(e) => Err(e),
        None => Ok(ctx.fds),
    };
    (out, fds)
}

/// Runs `f` with `fds` available to `SharedFd::deserialize`; returns what `f` gave and the
/// first descriptor problem met. Descriptors nobody claimed are closed.
pub(crate) fn with_incoming<R>(
    fds: Vec<OwnedFd>,
    f: impl FnOnce() -> R,
) -> (R, Option<DescriptorError>) {
    let incoming = Incoming {
        fds: fds.into_iter().map(Claim::Unclaimed).collect(),
        error: None,
    };
    let saved = INCOMING.with(|c| c.replace(Some(incoming)));
    let out = f();
    let ctx = INCOMING
        .with(|c| c.replace(saved))
        .expect("incoming context vanished");
    (out, ctx.error)
}

impl Serialize for SharedFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let index = OUTGOING.with(|c| {
            let mut slot = c.borrow_mut();
            let Some(ctx) = slot.as_mut() else {
                return Err(
                    "a descriptor-carrying handle can only be encoded by a multiproc channel",
                );
            };
            let key = Arc::as_ptr(&self.0) as usize;
            let seen = ctx.seen.get_or_insert_with(Default::default);
            if let Some((index, _)) = seen.get(&key) {
                return Ok(*index);
            }
            match self.0.try_clone() {
                Ok(fd) => {
                    ctx.fds.push(fd);
                    let index = (ctx.fds.len() - 1) as u32;
                    seen.insert(key, (index, self.clone()));
                    Ok(index)
                }
                Err(e) => {
                    ctx.error.get_or_insert(e);
                    Err("could not duplicate a descriptor")
                }
            }
        });
        match index {
            Ok(index) => serializer.serialize_u32(index),
            Err(msg) => Err(S::Error::custom(msg)),
        }
    }
}

impl<'de> Deserialize<'de> for SharedFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)?;
        let taken = INCOMING.with(|c| {
            let mut slot = c.borrow_mut();
            let Some(ctx) = slot.as_mut() else {
                return Err(DescriptorError::NoContext);
            };
            let count = ctx.fds.len();
            let result = match ctx.fds.get_mut(index as usize) {
                None => Err(DescriptorError::OutOfRange { index, count }),
                Some(entry) => Ok(entry.claim()),
            };
            if let Err(e) = &result {
                ctx.error.get_or_insert_with(|| e.clone());
            }
            result
        });
        taken.map_err(|e| D::Error::custom(e.to_string()))
    }
}

impl Claim {
    /// The descriptor as a `SharedFd`, shared with every other claim of it in the message.
    fn claim(&mut self) -> SharedFd {
        if let Claim::Claimed(fd) = self {
            return fd.clone();
        }
        let Claim::Unclaimed(fd) = std::mem::replace(self, Claim::Moving) else {
            unreachable!("a claim is never left moving")
        };
        let fd = SharedFd::new(fd);
        *self = Claim::Claimed(fd.clone());
        fd
    }
}
