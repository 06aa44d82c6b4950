//! Descriptors that travel inside serde messages.
//!
//! A [`SharedFd`] serializes as an index into the list of descriptors that accompany the message
//! (sent beside the bytes as `SCM_RIGHTS`). [`crate::message::encode`] collects the descriptors,
//! [`crate::message::decode`] hands them back by index. Outside those two functions a `SharedFd`
//! refuses to serialize, so a descriptor can never be silently turned into a meaningless number.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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

// The descriptor context of the encodes and decodes in progress on this thread.
//
// Most messages carry no descriptor, so the context is built to cost them next to nothing: an
// encode or a decode without descriptors reads and writes one small `Copy` state in a
// thread-local `Cell` (no destructor, so no lazy registration either) and never touches the
// lists, which only a `SharedFd` actually met while encoding, a decode that received
// descriptors, or an error use. Encodes and decodes may nest (a `Serialize` impl may encode a
// message of its own): each saves the state and puts it back when it ends, even by unwinding.
thread_local! {
    static OUT: Cell<OutState> = const { Cell::new(OutState::IDLE) };
    /// Descriptors duplicated by the encodes in progress, innermost last.
    static OUT_FDS: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// Per encode depth (index `depth - 1`), the index each `SharedFd` already sent got, by the
    /// address of its shared descriptor, so that clones of one `SharedFd` travel once (a
    /// thousand locks of one arena cost one descriptor). Each key's `SharedFd` is kept beside
    /// its index, so no address is reused meanwhile; filled only by encodes that meet one.
    static OUT_SEEN: RefCell<Vec<HashMap<usize, (u32, SharedFd)>>> = const { RefCell::new(Vec::new()) };
    /// Why a descriptor failed to duplicate (`OutState::failed`).
    static OUT_ERROR: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };

    static IN: Cell<InState> = const { Cell::new(InState::IDLE) };
    /// The descriptors of the innermost decode that received some (`InMode::List`).
    static IN_FDS: RefCell<Vec<Claim>> = const { RefCell::new(Vec::new()) };
    /// The first descriptor problem of the innermost decode (`InState::has_error`).
    static IN_ERROR: Cell<Option<DescriptorError>> = const { Cell::new(None) };
    /// Why a handle refused what it received (`InState::refused`).
    static IN_REFUSAL: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };
}

/// Where the encodes on this thread stand.
#[derive(Clone, Copy)]
struct OutState {
    /// Encodes in progress; a `SharedFd` refuses to serialize outside them.
    depth: u32,
    /// A descriptor failed to duplicate during the innermost encode.
    failed: bool,
    /// Where the innermost encode's descriptors start in `OUT_FDS`.
    base: usize,
    /// `OUT_FDS.len()`: the cheap "did this encode meet a descriptor" flag.
    len: usize,
}

impl OutState {
    const IDLE: OutState = OutState {
        depth: 0,
        failed: false,
        base: 0,
        len: 0,
    };
}

/// Puts the enclosing encode's state back if the inner one unwinds (closing the descriptors
/// it duplicated); forgotten on the normal path, which restores the state itself.
struct OutUnwind(OutState);

impl Drop for OutUnwind {
    #[cold]
    fn drop(&mut self) {
        let now = OUT.get();
        if now.len != self.0.len {
            let rest = OUT_FDS.with_borrow_mut(|fds| fds.split_off(self.0.len));
            drop(rest);
            forget_seen(now.depth);
        }
        if now.failed {
            OUT_ERROR.with_borrow_mut(Option::take);
        }
        OUT.set(self.0);
    }
}

/// Whether an encode is in progress on this thread (a `Serialize` that sends a message of its
/// own): a `SharedFd` would then join the outer message's descriptors.
pub(crate) fn encoding() -> bool {
    OUT.get().depth != 0
}

/// Runs `f` with a fresh outgoing descriptor list; returns what `f` gave and the descriptors
/// serialized meanwhile, or the error met while duplicating one.
///
/// Without descriptors this reads and writes one thread-local state and allocates nothing.
#[inline]
pub(crate) fn collect_outgoing<R>(
    f: impl FnOnce() -> R,
) -> (R, Result<Vec<OwnedFd>, std::io::Error>) {
    let saved = OUT.get();
    OUT.set(OutState {
        depth: saved.depth + 1,
        failed: false,
        base: saved.len,
        len: saved.len,
    });
    let unwind = OutUnwind(saved);
    let out = f();
    std::mem::forget(unwind);
    let now = OUT.get();
    OUT.set(saved);
    if !now.failed && now.len == saved.len {
        return (out, Ok(Vec::new()));
    }
    (out, take_outgoing(now, saved))
}

/// The slow end of an encode that met descriptors or failed to duplicate one.
#[cold]
fn take_outgoing(now: OutState, saved: OutState) -> Result<Vec<OwnedFd>, std::io::Error> {
    forget_seen(now.depth);
    let fds = OUT_FDS.with_borrow_mut(|fds| fds.split_off(saved.len));
    if now.failed {
        drop(fds);
        return Err(OUT_ERROR
            .with_borrow_mut(Option::take)
            .unwrap_or_else(|| std::io::Error::other("could not duplicate a descriptor")));
    }
    Ok(fds)
}

/// Empties the record of the descriptors sent by the encode at `depth`.
#[cold]
fn forget_seen(depth: u32) {
    let seen =
        OUT_SEEN.with_borrow_mut(|seen| seen.get_mut(depth as usize - 1).map(std::mem::take));
    // The `SharedFd`s it kept are dropped outside the borrow (a drop may close a descriptor).
    drop(seen);
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

/// Where the decodes on this thread stand.
#[derive(Clone, Copy)]
struct InState {
    mode: InMode,
    /// `IN_ERROR` holds the innermost decode's first descriptor problem.
    has_error: bool,
    /// `IN_REFUSAL` holds why a handle of the innermost decode refused what it received.
    refused: bool,
}

impl InState {
    const IDLE: InState = InState {
        mode: InMode::None,
        has_error: false,
        refused: false,
    };
}

/// What went wrong with the handles of a decode: a descriptor problem, or a handle that
/// refused what it received ([`refuse_handle`]).
pub(crate) enum HandleProblem {
    Descriptor(DescriptorError),
    Refused(std::io::Error),
}

/// Records why a handle being decoded refused what it received (a descriptor of the wrong
/// kind, a size its file does not hold), so that the decode error names it: serde's custom
/// errors lose their message in postcard. The first refusal of a decode wins.
pub(crate) fn refuse_handle(e: std::io::Error) {
    let state = IN.get();
    if !state.refused {
        IN_REFUSAL.set(Some(e));
        IN.set(InState {
            refused: true,
            ..state
        });
    }
}

/// What an enclosing decode had that an inner one must not disturb: its error details and
/// its descriptor list. Restored on both paths (and by unwinding).
struct InScope {
    state: InState,
    error: Option<DescriptorError>,
    refusal: Option<std::io::Error>,
    list: Option<Vec<Claim>>,
}

impl Drop for InScope {
    fn drop(&mut self) {
        if let Some(list) = self.list.take() {
            // Closes the descriptors the inner decode did not claim.
            drop(IN_FDS.replace(list));
        }
        IN_ERROR.set(self.error.take());
        IN_REFUSAL.set(self.refusal.take());
        IN.set(self.state);
    }
}

/// Puts the enclosing decode's state back if a descriptor-less inner one unwinds.
struct InUnwind(InState);

impl Drop for InUnwind {
    #[cold]
    fn drop(&mut self) {
        IN_ERROR.take();
        IN_REFUSAL.with_borrow_mut(Option::take);
        IN.set(self.0);
    }
}

/// Runs `f` with `fds` available to `SharedFd::deserialize`; returns what `f` gave and the
/// first problem met with a handle. Descriptors nobody claimed are closed.
///
/// Without descriptors this reads and writes one thread-local state and allocates nothing.
#[inline]
pub(crate) fn with_incoming<R>(
    fds: Vec<OwnedFd>,
    f: impl FnOnce() -> R,
) -> (R, Option<HandleProblem>) {
    let saved = IN.get();
    if !fds.is_empty() || saved.has_error || saved.refused {
        return with_incoming_slow(saved, fds, f);
    }
    IN.set(InState {
        mode: InMode::Empty,
        has_error: false,
        refused: false,
    });
    let unwind = InUnwind(saved);
    let out = f();
    std::mem::forget(unwind);
    let now = IN.get();
    IN.set(saved);
    if !now.has_error && !now.refused {
        return (out, None);
    }
    (out, Some(take_problem(now)))
}

/// The problem a decode met (`now` says which kinds there are); the descriptor one first.
#[cold]
fn take_problem(now: InState) -> HandleProblem {
    let error = IN_ERROR.take();
    let refusal = IN_REFUSAL.with_borrow_mut(Option::take);
    match (now.has_error, error, refusal) {
        (true, Some(e), _) => HandleProblem::Descriptor(e),
        (_, _, Some(r)) => HandleProblem::Refused(r),
        _ => HandleProblem::Refused(std::io::Error::other("a handle could not be decoded")),
    }
}

/// [`with_incoming`] for a message with descriptors, or inside a decode that has already met
/// a problem (whose details must survive the inner decode).
#[cold]
fn with_incoming_slow<R>(
    saved: InState,
    fds: Vec<OwnedFd>,
    f: impl FnOnce() -> R,
) -> (R, Option<HandleProblem>) {
    let (mode, list) = if fds.is_empty() {
        (InMode::Empty, None)
    } else {
        let list = fds.into_iter().map(Claim::Unclaimed).collect();
        (InMode::List, Some(IN_FDS.replace(list)))
    };
    let scope = InScope {
        state: saved,
        error: IN_ERROR.take(),
        refusal: IN_REFUSAL.with_borrow_mut(Option::take),
        list,
    };
    IN.set(InState {
        mode,
        has_error: false,
        refused: false,
    });
    let out = f();
    let now = IN.get();
    let problem = (now.has_error || now.refused).then(|| take_problem(now));
    drop(scope);
    (out, problem)
}

impl Serialize for SharedFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = OUT.get();
        if state.depth == 0 {
            return Err(S::Error::custom(
                "a descriptor-carrying handle can only be encoded by a multiproc channel",
            ));
        }
        let key = Arc::as_ptr(&self.0) as usize;
        let level = state.depth as usize - 1;
        if state.len != state.base {
            let sent = OUT_SEEN.with_borrow(|seen| {
                seen.get(level)
                    .and_then(|m| m.get(&key))
                    .map(|(index, _)| *index)
            });
            if let Some(index) = sent {
                return serializer.serialize_u32(index);
            }
        }
        match self.0.try_clone() {
            Ok(fd) => {
                let len = OUT_FDS.with_borrow_mut(|fds| {
                    fds.push(fd);
                    fds.len()
                });
                OUT.set(OutState { len, ..state });
                let index = (len - 1 - state.base) as u32;
                OUT_SEEN.with_borrow_mut(|seen| {
                    if seen.len() <= level {
                        seen.resize_with(level + 1, HashMap::new);
                    }
                    seen[level].insert(key, (index, self.clone()));
                });
                serializer.serialize_u32(index)
            }
            Err(e) => {
                if !state.failed {
                    OUT_ERROR.set(Some(e));
                    OUT.set(OutState {
                        failed: true,
                        ..state
                    });
                }
                Err(S::Error::custom("could not duplicate a descriptor"))
            }
        }
    }
}

impl<'de> Deserialize<'de> for SharedFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)?;
        let state = IN.get();
        let taken = match state.mode {
            InMode::None => Err(DescriptorError::NoContext),
            InMode::Empty => Err(DescriptorError::OutOfRange { index, count: 0 }),
            InMode::List => IN_FDS.with_borrow_mut(|fds| {
                let count = fds.len();
                match fds.get_mut(index as usize) {
                    None => Err(DescriptorError::OutOfRange { index, count }),
                    Some(entry) => Ok(entry.claim()),
                }
            }),
        };
        match taken {
            Ok(fd) => Ok(fd),
            Err(e) => {
                if !matches!(e, DescriptorError::NoContext) && !state.has_error {
                    IN_ERROR.set(Some(e.clone()));
                    IN.set(InState {
                        has_error: true,
                        ..state
                    });
                }
                Err(D::Error::custom(e.to_string()))
            }
        }
    }
}

/// A received descriptor before and after its first claim.
enum Claim {
    Unclaimed(OwnedFd),
    Claimed(SharedFd),
    /// Only while a claim swaps one for the other.
    Moving,
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
