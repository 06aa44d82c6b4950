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

/// Where the encodes on this thread stand, packed in one word so that an encode without
/// descriptors enters and leaves with one load and one store of it:
/// - `len` (bits 0-23): `OUT_FDS.len()`, the cheap "did this encode meet a descriptor" flag;
/// - `base` (bits 24-47): where the innermost encode's descriptors start in `OUT_FDS`;
/// - `depth` (bits 48-62): encodes in progress; a `SharedFd` refuses to serialize outside them;
/// - `failed` (bit 63): a descriptor failed to duplicate during the innermost encode.
#[derive(Clone, Copy, PartialEq, Eq)]
struct OutState(u64);

impl OutState {
    const IDLE: OutState = OutState(0);
    /// The most descriptors the encodes in progress on a thread may hold (far above any
    /// descriptor limit); one more fails the encode.
    const MAX_LEN: usize = (1 << 24) - 1;
    /// The most encodes nested on a thread.
    const MAX_DEPTH: u32 = (1 << 15) - 1;

    fn len(self) -> usize {
        (self.0 & Self::MAX_LEN as u64) as usize
    }
    fn base(self) -> usize {
        ((self.0 >> 24) & Self::MAX_LEN as u64) as usize
    }
    fn depth(self) -> u32 {
        ((self.0 >> 48) & u64::from(Self::MAX_DEPTH)) as u32
    }
    fn failed(self) -> bool {
        self.0 >> 63 != 0
    }
    /// The state of a new encode nested in this one: one deeper, not failed, its descriptors
    /// starting where the list ends now.
    #[inline]
    fn entered(self) -> OutState {
        assert!(
            self.depth() < Self::MAX_DEPTH,
            "more than {} encodes nested on one thread",
            Self::MAX_DEPTH
        );
        let len = self.0 & Self::MAX_LEN as u64;
        OutState(((u64::from(self.depth()) + 1) << 48) | (len << 24) | len)
    }
    fn with_len(self, len: usize) -> OutState {
        debug_assert!(len <= Self::MAX_LEN);
        OutState((self.0 & !(Self::MAX_LEN as u64)) | len as u64)
    }
    fn with_failed(self) -> OutState {
        OutState(self.0 | 1 << 63)
    }
}

/// Puts the enclosing encode's state back if the inner one unwinds (closing the descriptors
/// it duplicated); forgotten on the normal path, which restores the state itself.
struct OutUnwind(OutState);

impl Drop for OutUnwind {
    #[cold]
    fn drop(&mut self) {
        let now = OUT.get();
        if now.len() != self.0.len() {
            let rest = OUT_FDS.with_borrow_mut(|fds| fds.split_off(self.0.len()));
            drop(rest);
            forget_seen(now.depth());
        }
        if now.failed() {
            OUT_ERROR.with_borrow_mut(Option::take);
        }
        OUT.set(self.0);
    }
}

/// Whether an encode is in progress on this thread (a `Serialize` that sends a message of its
/// own): a `SharedFd` would then join the outer message's descriptors.
pub(crate) fn encoding() -> bool {
    OUT.get().depth() != 0
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
    let entered = saved.entered();
    OUT.set(entered);
    let unwind = OutUnwind(saved);
    let out = f();
    std::mem::forget(unwind);
    let now = OUT.get();
    OUT.set(saved);
    // Unchanged: no descriptor was met and none failed.
    if now == entered {
        return (out, Ok(Vec::new()));
    }
    (out, take_outgoing(now, saved))
}

/// The slow end of an encode that met descriptors or failed to duplicate one.
#[cold]
fn take_outgoing(now: OutState, saved: OutState) -> Result<Vec<OwnedFd>, std::io::Error> {
    forget_seen(now.depth());
    let fds = OUT_FDS.with_borrow_mut(|fds| fds.split_off(saved.len()));
    if now.failed() {
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum InMode {
    /// No decode in progress.
    None = 0,
    /// A decode of a message that came without descriptors.
    Empty = 1,
    /// A decode whose descriptors are in `IN_FDS`.
    List = 2,
}

/// Where the decodes on this thread stand, packed in one byte (one load and one store to
/// enter or leave a decode without descriptors):
/// - the [`InMode`] (bits 0-1);
/// - `has_error` (bit 2): `IN_ERROR` holds the innermost decode's first descriptor problem;
/// - `refused` (bit 3): `IN_REFUSAL` holds why a handle of the innermost decode refused what
///   it received.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InState(u8);

impl InState {
    const IDLE: InState = InState(InMode::None as u8);
    const HAS_ERROR: u8 = 1 << 2;
    const REFUSED: u8 = 1 << 3;

    /// A decode in `mode` that met no problem yet.
    fn fresh(mode: InMode) -> InState {
        InState(mode as u8)
    }
    fn mode(self) -> InMode {
        match self.0 & 3 {
            0 => InMode::None,
            1 => InMode::Empty,
            _ => InMode::List,
        }
    }
    fn has_error(self) -> bool {
        self.0 & Self::HAS_ERROR != 0
    }
    fn refused(self) -> bool {
        self.0 & Self::REFUSED != 0
    }
    /// Whether the decode met a problem of either kind.
    fn troubled(self) -> bool {
        self.0 & (Self::HAS_ERROR | Self::REFUSED) != 0
    }
    fn with_error(self) -> InState {
        InState(self.0 | Self::HAS_ERROR)
    }
    fn with_refusal(self) -> InState {
        InState(self.0 | Self::REFUSED)
    }
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
    if !state.refused() {
        IN_REFUSAL.set(Some(e));
        IN.set(state.with_refusal());
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
    if !fds.is_empty() || saved.troubled() {
        return with_incoming_slow(saved, fds, f);
    }
    let entered = InState::fresh(InMode::Empty);
    IN.set(entered);
    let unwind = InUnwind(saved);
    let out = f();
    std::mem::forget(unwind);
    let now = IN.get();
    IN.set(saved);
    // Unchanged: no handle met a problem.
    if now == entered {
        return (out, None);
    }
    (out, Some(take_problem(now)))
}

/// The problem a decode met (`now` says which kinds there are); the descriptor one first.
#[cold]
fn take_problem(now: InState) -> HandleProblem {
    let error = IN_ERROR.take();
    let refusal = IN_REFUSAL.with_borrow_mut(Option::take);
    match (now.has_error(), error, refusal) {
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
    IN.set(InState::fresh(mode));
    let out = f();
    let now = IN.get();
    let problem = now.troubled().then(|| take_problem(now));
    drop(scope);
    (out, problem)
}

impl Serialize for SharedFd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = OUT.get();
        if state.depth() == 0 {
            return Err(S::Error::custom(
                "a descriptor-carrying handle can only be encoded by a multiproc channel",
            ));
        }
        let key = Arc::as_ptr(&self.0) as usize;
        let level = state.depth() as usize - 1;
        if state.len() != state.base() {
            let sent = OUT_SEEN.with_borrow(|seen| {
                seen.get(level)
                    .and_then(|m| m.get(&key))
                    .map(|(index, _)| *index)
            });
            if let Some(index) = sent {
                return serializer.serialize_u32(index);
            }
        }
        let cloned = match state.len() {
            OutState::MAX_LEN => Err(std::io::Error::other(
                "too many descriptors in the encodes in progress on this thread",
            )),
            _ => self.0.try_clone(),
        };
        match cloned {
            Ok(fd) => {
                let len = OUT_FDS.with_borrow_mut(|fds| {
                    fds.push(fd);
                    fds.len()
                });
                OUT.set(state.with_len(len));
                let index = (len - 1 - state.base()) as u32;
                OUT_SEEN.with_borrow_mut(|seen| {
                    if seen.len() <= level {
                        seen.resize_with(level + 1, HashMap::new);
                    }
                    seen[level].insert(key, (index, self.clone()));
                });
                serializer.serialize_u32(index)
            }
            Err(e) => {
                if !state.failed() {
                    OUT_ERROR.set(Some(e));
                    OUT.set(state.with_failed());
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
        let taken = match state.mode() {
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
                if !matches!(e, DescriptorError::NoContext) && !state.has_error() {
                    IN_ERROR.set(Some(e.clone()));
                    IN.set(state.with_error());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed encode state keeps each field apart at the edges of its range.
    #[test]
    fn the_packed_encode_state_keeps_its_fields_apart() {
        let mut state = OutState::IDLE;
        assert_eq!((state.depth(), state.len(), state.base()), (0, 0, 0));
        assert!(!state.failed());
        for depth in 1..=3 {
            state = state.entered().with_len(OutState::MAX_LEN);
            assert_eq!(state.depth(), depth);
            assert_eq!(state.len(), OutState::MAX_LEN);
        }
        let inner = state.entered();
        assert_eq!(
            (inner.depth(), inner.base(), inner.len()),
            (4, OutState::MAX_LEN, OutState::MAX_LEN)
        );
        let failed = inner.with_len(7).with_failed();
        assert!(failed.failed());
        assert_eq!(
            (failed.depth(), failed.base(), failed.len()),
            (4, OutState::MAX_LEN, 7)
        );
        assert!(
            !failed.entered().failed(),
            "a nested encode starts without failure"
        );
        let mut deep = OutState::IDLE;
        for _ in 0..OutState::MAX_DEPTH {
            deep = deep.entered();
        }
        assert_eq!(deep.depth(), OutState::MAX_DEPTH);
        assert!(std::panic::catch_unwind(|| deep.entered()).is_err());
    }

    /// The packed decode state: each mode with each problem flag.
    #[test]
    fn the_packed_decode_state_keeps_its_fields_apart() {
        for mode in [InMode::None, InMode::Empty, InMode::List] {
            let fresh = InState::fresh(mode);
            assert!(fresh.mode() == mode && !fresh.troubled());
            let both = fresh.with_error().with_refusal();
            assert!(both.mode() == mode && both.has_error() && both.refused());
            assert!(fresh.with_error().troubled() && !fresh.with_error().refused());
            assert!(fresh.with_refusal().troubled() && !fresh.with_refusal().has_error());
        }
    }
}
