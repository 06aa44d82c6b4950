//! Errors of the core layer.

use std::fmt;
use std::io;

use crate::fd::DescriptorError;
pub use crate::sys::nofile::LimitError;

/// A value could not be turned into a message.
#[derive(thiserror::Error)]
#[error(transparent)]
pub struct EncodeError {
    kind: EncodeErrorKind,
}

#[derive(Debug, thiserror::Error)]
enum EncodeErrorKind {
    #[error("cannot encode message")]
    Serde(#[source] postcard::Error),
    #[error("cannot encode message")]
    Fixed(#[source] crate::message::FixedError),
    #[error("cannot duplicate a descriptor for the message")]
    Descriptor(#[source] io::Error),
}

impl EncodeError {
    pub(crate) fn serde(e: postcard::Error) -> Self {
        Self {
            kind: EncodeErrorKind::Serde(e),
        }
    }
    pub(crate) fn fixed(e: crate::message::FixedError) -> Self {
        Self {
            kind: EncodeErrorKind::Fixed(e),
        }
    }
    pub(crate) fn descriptor(e: io::Error) -> Self {
        Self {
            kind: EncodeErrorKind::Descriptor(e),
        }
    }
    /// True when a descriptor inside the value could not be duplicated (`EMFILE`...).
    pub fn is_descriptor(&self) -> bool {
        matches!(self.kind, EncodeErrorKind::Descriptor(_))
    }
}

impl fmt::Debug for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

/// Received bytes could not be turned into the expected type.
#[derive(thiserror::Error)]
#[error(transparent)]
pub struct DecodeError {
    kind: DecodeErrorKind,
}

#[derive(Debug, thiserror::Error)]
enum DecodeErrorKind {
    #[error("cannot decode message as `{ty}` (does the other side send this type?)")]
    Serde {
        ty: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot decode message as `{ty}` (does the other side send this type?)")]
    Fixed {
        ty: &'static str,
        #[source]
        source: crate::message::FixedError,
    },
    #[error(
        "message has {rest} trailing bytes of {total} after a `{ty}` \
         (does the other side send this type?)"
    )]
    Trailing {
        ty: &'static str,
        rest: usize,
        total: usize,
    },
    #[error("bad descriptor in message")]
    Descriptor(#[source] DescriptorError),
    #[error("message carries a handle that cannot be used here")]
    Handle(#[source] io::Error),
    #[error(
        "message carries handles ({count} descriptor(s)), which plain bytes cannot hold; \
         skipped (does the other side send a typed message?)"
    )]
    UnexpectedDescriptors { count: usize },
    #[error(
        "message carries handles ({count} descriptor(s)), which a borrowed receive cannot \
         hand out; skipped (receive such messages with `recv`)"
    )]
    BorrowedDescriptors { count: usize },
}

impl DecodeError {
    pub(crate) fn serde(source: postcard::Error, ty: &'static str) -> Self {
        Self {
            kind: DecodeErrorKind::Serde { ty, source },
        }
    }
    pub(crate) fn fixed(source: crate::message::FixedError, ty: &'static str) -> Self {
        Self {
            kind: DecodeErrorKind::Fixed { ty, source },
        }
    }
    pub(crate) fn trailing(ty: &'static str, rest: usize, total: usize) -> Self {
        Self {
            kind: DecodeErrorKind::Trailing { ty, rest, total },
        }
    }
    pub(crate) fn from_handle_problem(problem: crate::fd::HandleProblem) -> Self {
        let kind = match problem {
            crate::fd::HandleProblem::Descriptor(e) => DecodeErrorKind::Descriptor(e),
            crate::fd::HandleProblem::Refused(e) => DecodeErrorKind::Handle(e),
        };
        Self { kind }
    }
    pub(crate) fn unexpected_descriptors(count: usize) -> Self {
        Self {
            kind: DecodeErrorKind::UnexpectedDescriptors { count },
        }
    }
    pub(crate) fn borrowed_descriptors(count: usize) -> Self {
        Self {
            kind: DecodeErrorKind::BorrowedDescriptors { count },
        }
    }
    /// Whether the message came with descriptors (handles) where none may come: received as
    /// plain bytes or borrowed. The message was skipped and its descriptors closed.
    pub fn carries_descriptors(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::UnexpectedDescriptors { .. }
                | DecodeErrorKind::BorrowedDescriptors { .. }
        )
    }
    /// The descriptor problem, when that is what failed.
    pub fn descriptor_error(&self) -> Option<&DescriptorError> {
        match &self.kind {
            DecodeErrorKind::Descriptor(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Debug for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

/// Why a message could not be sent. Carries the message back when the operation had one.
///
/// `Debug` does not require `T: Debug`.
pub struct SendError<T = ()> {
    value: T,
    kind: SendErrorKind,
}

/// What went wrong in a send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Every receiving end is gone; nothing more can be delivered.
    #[error("the receiving end is closed")]
    Closed,
    /// The encoded message exceeds the end's size limit; nothing was sent.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The message could not be encoded; nothing was sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The message holds handles (`count` descriptors) and the transport cannot carry
    /// descriptors (a TCP or TLS connection); nothing was sent and the end stays usable.
    #[error(
        "message holds {count} handle(s), which cannot travel over this transport \
         (descriptors cross only Unix sockets); nothing was sent"
    )]
    HandlesNotSupported {
        /// How many descriptors the message holds.
        count: usize,
    },
    /// The socket failed.
    #[error("socket error while sending")]
    Io(#[source] io::Error),
}

impl<T> SendError<T> {
    /// Builds an error carrying `value` back.
    pub fn new(value: T, kind: SendErrorKind) -> Self {
        Self { value, kind }
    }
    /// What went wrong.
    pub fn kind(&self) -> &SendErrorKind {
        &self.kind
    }
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        self.value
    }
    /// Splits into the message and what went wrong.
    pub fn into_parts(self) -> (T, SendErrorKind) {
        (self.value, self.kind)
    }
    /// True when the peer is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, SendErrorKind::Closed)
    }
    /// Replaces the carried value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SendError<U> {
        SendError {
            value: f(self.value),
            kind: self.kind,
        }
    }
}

impl SendErrorKind {
    /// The kind for a failed write: `Closed` when the peer is gone, else `Io`.
    pub fn from_io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected => SendErrorKind::Closed,
            _ => SendErrorKind::Io(e),
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl<T> std::error::Error for SendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// Why a message could not be received.
///
/// [`is_fatal`](Self::is_fatal) tells whether the channel is still usable: after a fatal error
/// the receiving end reports end-of-stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// A whole message arrived but is not the expected type; it was discarded and the channel
    /// stays usable.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer announced a message larger than this end accepts; it was skipped unread and the
    /// channel stays usable.
    #[error("incoming message of {len} bytes exceeds the limit of {limit} bytes; skipped")]
    TooLarge {
        /// Announced size in bytes.
        len: usize,
        /// This end's limit.
        limit: usize,
    },
    /// The byte stream is not multiproc frames (or was damaged); the channel is closed.
    #[error("corrupt frame: {reason}; channel closed")]
    Corrupt {
        /// What was wrong.
        reason: String,
    },
    /// The peer went away in the middle of a message (killed while writing?); the channel is
    /// closed.
    #[error(
        "peer closed in the middle of a message ({received} of {expected} bytes); channel closed"
    )]
    Truncated {
        /// Bytes of the unfinished frame that arrived (header included).
        received: usize,
        /// Bytes the frame needed (header included; the header's own size when unknown).
        expected: usize,
    },
    /// Descriptors sent with a message did not arrive (the kernel drops them when this process
    /// is out of descriptors); the channel is closed.
    #[error(
        "descriptors sent with a message were lost ({arrived} of {declared} arrived; out of descriptors?); channel closed"
    )]
    LostDescriptors {
        /// How many the frame declared.
        declared: usize,
        /// How many arrived.
        arrived: usize,
    },
    /// The socket failed; the channel is closed.
    #[error("socket error while receiving")]
    Io(#[source] io::Error),
}

impl RecvError {
    /// True when the channel can no longer be used after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, RecvError::Decode(_) | RecvError::TooLarge { .. })
    }
}
