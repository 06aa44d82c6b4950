//! Descriptors that travel inside serde messages.
//!
//! A [`SharedFd`] serializes as an index into the list of descriptors that accompany the message
//! (sent beside the bytes as `SCM_RIGHTS`). [`crate::message::encode`] collects the descriptors,
//! [`crate::message::decode`] hands them back by index. Outside those two functions a `SharedFd`
//! refuses to serialize, so a descriptor can never be silently turned into a meaningless number.

use std::cell::{Cell, RefCell};
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
    /// The payload names the same descriptor twice.
    #[error("descriptor index {index} is used twice in one message")]
    Reused {
        /// The index found twice.
        index: u32,
    },
    /// A handle was decoded by something other than a multiproc channel.
    #[error("a descriptor-carrying handle can only be decoded by a multiproc channel")]
    NoContext,
}

// The descriptor context of the encodes and decodes in progress on this thread.
//
// Most messages carry no descriptor, so the context is built to cost them next to nothing: an
// encode or a decode without descriptors touches only the `Cell`s below (plain thread-local
// loads and stores: they have no destructor, so no lazy registration either) and never the
// lists. The lists are touched only by a `SharedFd` actually met while encoding, or by a decode
// that received descriptors. Encodes and decodes may nest (a `Serialize` impl may encode a
// message of its own): each saves what it changes and puts it back when it ends, even by panic.
thread_local! {
    /// Encodes in progress on this thread; a `SharedFd` refuses to serialize outside them.
    static OUT_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the innermost encode's descriptors start in `OUT_FDS`.
    static OUT_BASE: Cell<usize> = const { Cell::new(0) };
    /// `OUT_FDS.len()`, readable without borrowing the list: the cheap "did this encode meet a
    /// descriptor" flag.
    static OUT_LEN: Cell<usize> = const { Cell::new(0) };
    /// Whether a descriptor failed to duplicate during the innermost encode (`OUT_ERROR` holds why).
    static OUT_FAILED: Cell<bool> = const { Cell::new(false) };
    /// Descriptors duplicated by the encodes in progress, innermost last.
    static OUT_FDS: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    static OUT_ERROR: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };

    /// What the innermost decode offers a `SharedFd`: nothing (no decode), no descriptors, or
    /// the list in `IN_FDS`.
    static IN_MODE: Cell<InMode> = const { Cell::new(InMode::None) };
    /// The first descriptor problem of the innermost decode.
    static IN_ERROR: Cell<Option<DescriptorError>> = const { Cell::new(None) };
    static IN_FDS: RefCell<Vec<Option<OwnedFd>>> = const { RefCell::new(Vec::new()) };
    /// Whether a handle refused what it received during the innermost decode
    /// (`IN_REFUSAL` holds why).
    static IN_REFUSED: Cell<bool> = const { Cell::new(false) };
    static IN_REFUSAL: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };
}

/// Records why a handle being decoded refused what it received (a descriptor of the wrong
/// kind, a size its file does not hold), so that the decode error names it: serde's custom
/// errors lose their message in postcard. The first refusal of a decode wins.
pub(crate) fn refuse_handle(e: std::io::Error) {
    if !IN_REFUSED.replace(true) {
        IN_REFUSAL.set(Some(e));
    }
}

/// What a decode offers the `SharedFd`s it meets.
#[derive(Clone, Copy)]
enum InMode {
    /// No decode in progress.
    None,
    /// A decode of a message that came without descriptors.
    Empty,
    /// A decode whose descriptors are in `IN_FDS`.
    List,
}

/// Restores the outgoing context of the enclosing encode, also when the inner one unwinds.
struct OutScope {
    depth: u32,
    base: usize,
    failed: bool,
}

impl Drop for OutScope {
    fn drop(&mut self) {
        // Descriptors of this encode not taken (it unwound) are closed here.
        if OUT_LEN.get() != OUT_BASE.get() {
            let rest = OUT_FDS.with_borrow_mut(|fds| fds.split_off(OUT_BASE.get()));
            drop(rest);
            OUT_LEN.set(OUT_BASE.get());
        }
        if OUT_FAILED.get() {
            OUT_ERROR.with_borrow_mut(Option::take);
        }
        OUT_DEPTH.set(self.depth);
        OUT_BASE.set(self.base);
        OUT_FAILED.set(self.failed);
    }
}

/// Runs `f` with a fresh outgoing descriptor list; returns what `f` gave and the descriptors
/// serialized meanwhile, or the error met while duplicating one.
///
/// Without descriptors this costs a few thread-local loads and stores, and allocates nothing.
pub(crate) fn collect_outgoing<R>(
    f: impl FnOnce() -> R,
) -> (R, Result<Vec<OwnedFd>, std::io::Error>) {
    let base = OUT_LEN.get();
    let scope = OutScope {
        depth: OUT_DEPTH.replace(OUT_DEPTH.get() + 1),
        base: OUT_BASE.replace(base),
        failed: OUT_FAILED.replace(false),
    };
    let out = f();
    let fds = if OUT_FAILED.get() {
        Err(OUT_ERROR
            .with_borrow_mut(Option::take)
            .unwrap_or_else(|| std::io::Error::other("could not duplicate a descriptor")))
    } else if OUT_LEN.get() == base {
        Ok(Vec::new())
    } else {
        let fds = OUT_FDS.with_borrow_mut(|fds| fds.split_off(base));
        OUT_LEN.set(base);
        Ok(fds)
    };
    drop(scope);
    (out, fds)
}

/// Restores the incoming context of the enclosing decode, also when the inner one unwinds.
struct InScope {
    mode: InMode,
    error: Option<DescriptorError>,
    refused: bool,
    /// The enclosing decode's list, set aside while this one has its own.
    list: Option<Vec<Option<OwnedFd>>>,
}

impl Drop for InScope {
    fn drop(&mut self) {
        if let Some(list) = self.list.take() {
            // Closes the descriptors this decode did not claim.
            drop(IN_FDS.replace(list));
        }
        IN_MODE.set(self.mode);
        IN_ERROR.set(self.error.take());
        if IN_REFUSED.replace(self.refused) && !self.refused {
            IN_REFUSAL.with_borrow_mut(Option::take);
        }
    }
}

/// What went wrong with the handles of a decode: a descriptor problem, or a handle that
/// refused what it received ([`refuse_handle`]).
pub(crate) enum HandleProblem {
    Descriptor(DescriptorError),
    Refused(std::io::Error),
}

/// Runs `f` with `fds` available to `SharedFd::deserialize`; returns what `f` gave and the
/// first problem met with a handle. Descriptors nobody claimed are closed.
///
/// Without descriptors this costs a few thread-local loads and stores, and allocates nothing.
pub(crate) fn with_incoming<R>(
    fds: Vec<OwnedFd>,
    f: impl FnOnce() -> R,
) -> (R, Option<HandleProblem>) {
    let (mode, list) = if fds.is_empty() {
        (InMode::Empty, None)
    } else {
        let list = fds.into_iter().map(Some).collect();
        (InMode::List, Some(IN_FDS.replace(list)))
    };
    let scope = InScope {
        mode: IN_MODE.replace(mode),
        error: IN_ERROR.take(),
        refused: IN_REFUSED.replace(false),
        list,
    };
    let out = f();
    let mut problem = IN_ERROR.take().map(HandleProblem::Descriptor);
    if IN_REFUSED.replace(false) {
        let refusal = IN_REFUSAL.with_borrow_mut(Option::take);
        if problem.is_none() {
            problem = refusal.map(HandleProblem::Refused);
        }
    }
    drop(scope);
    (out, problem)
}

impl Serialize for SharedFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if OUT_DEPTH.get() == 0 {
            return Err(S::Error::custom(
                "a descriptor-carrying handle can only be encoded by a multiproc channel",
            ));
        }
        match self.0.try_clone() {
            Ok(fd) => {
                let len = OUT_FDS.with_borrow_mut(|fds| {
                    fds.push(fd);
                    fds.len()
                });
                OUT_LEN.set(len);
                serializer.serialize_u32((len - 1 - OUT_BASE.get()) as u32)
            }
            Err(e) => {
                if !OUT_FAILED.replace(true) {
                    OUT_ERROR.set(Some(e));
                }
                Err(S::Error::custom("could not duplicate a descriptor"))
            }
        }
    }
}

impl<'de> Deserialize<'de> for SharedFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)?;
        let taken = match IN_MODE.get() {
            InMode::None => Err(DescriptorError::NoContext),
            InMode::Empty => Err(DescriptorError::OutOfRange { index, count: 0 }),
            InMode::List => IN_FDS.with_borrow_mut(|fds| {
                let count = fds.len();
                match fds.get_mut(index as usize) {
                    None => Err(DescriptorError::OutOfRange { index, count }),
                    Some(entry) => entry.take().ok_or(DescriptorError::Reused { index }),
                }
            }),
        };
        match taken {
            Ok(fd) => Ok(SharedFd::new(fd)),
            Err(e) => {
                if !matches!(e, DescriptorError::NoContext) {
                    let first = IN_ERROR.take().unwrap_or_else(|| e.clone());
                    IN_ERROR.set(Some(first));
                }
                Err(D::Error::custom(e.to_string()))
            }
        }
    }
}
