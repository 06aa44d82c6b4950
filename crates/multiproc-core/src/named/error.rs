//! The errors of [`publish`](super::publish) and [`lookup`](super::lookup).

use std::fmt;
use std::io;

use crate::{DecodeError, EncodeError};

/// Error of [`publish`](super::publish) (and of every constructor that publishes a name, such
/// as a named `SharedMemory`).
#[derive(thiserror::Error)]
#[error("{kind}")]
pub struct PublishError {
    kind: PublishErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishErrorKind {
    #[error("invalid name `{name}`: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("the name `{0}` is already published")]
    AlreadyExists(String),
    #[error("the value cannot be published")]
    Encode(#[source] EncodeError),
    #[error("the value is too large to publish ({0} bytes or {1} descriptors)")]
    TooLarge(usize, usize),
    #[error("cannot publish the name")]
    Io(#[source] io::Error),
}

impl PublishError {
    pub(crate) fn new(kind: PublishErrorKind) -> Self {
        Self { kind }
    }

    /// Whether the name is already published (by this process or another one, of any user):
    /// Python's `FileExistsError`.
    pub fn is_already_exists(&self) -> bool {
        matches!(self.kind, PublishErrorKind::AlreadyExists(_))
    }

    /// Whether the name is empty, too long or holds a NUL byte or a `/`.
    pub fn is_invalid_name(&self) -> bool {
        matches!(self.kind, PublishErrorKind::InvalidName { .. })
    }
}

impl fmt::Debug for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

/// Error of [`lookup`](super::lookup) and [`blocking_lookup`](super::blocking_lookup) (and of
/// attaching a named `SharedMemory`).
#[derive(thiserror::Error)]
#[error("{kind}")]
pub struct LookupError {
    kind: LookupErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupErrorKind {
    #[error("invalid name `{name}`: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("nothing is published under the name `{0}`")]
    NotFound(String),
    #[error("the name `{name}` is published by user {uid}, not by this user")]
    OtherUser { name: String, uid: u32 },
    #[error("the name `{0}` was withdrawn or its publisher refused the lookup")]
    Refused(String),
    #[error("`{name}` is published as `{published}`, not as `{expected}`")]
    WrongType {
        name: String,
        published: String,
        expected: &'static str,
    },
    #[error("the publisher of `{0}` did not answer in time")]
    TimedOut(String),
    #[error("the value published under `{name}` cannot be decoded")]
    Decode {
        name: String,
        #[source]
        source: DecodeError,
    },
    #[error("cannot look the name up")]
    Io(#[source] io::Error),
}

impl LookupError {
    pub(crate) fn new(kind: LookupErrorKind) -> Self {
        Self { kind }
    }

    /// Whether nothing is published under the name (never was, withdrawn, or its publisher
    /// died): Python's `FileNotFoundError`.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.kind,
            LookupErrorKind::NotFound(_) | LookupErrorKind::Refused(_)
        )
    }

    /// Whether the name is held by a process of another user (who may be squatting it).
    pub fn is_other_user(&self) -> bool {
        matches!(self.kind, LookupErrorKind::OtherUser { .. })
    }

    /// Whether the name was published with another type than the one looked up.
    pub fn is_wrong_type(&self) -> bool {
        matches!(self.kind, LookupErrorKind::WrongType { .. })
    }

    /// Whether the publisher did not answer within the lookup's time limit (it is stopped or
    /// overloaded).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, LookupErrorKind::TimedOut(_))
    }

    /// Whether the name is empty, too long or holds a NUL byte or a `/`.
    pub fn is_invalid_name(&self) -> bool {
        matches!(self.kind, LookupErrorKind::InvalidName { .. })
    }
}

impl fmt::Debug for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}
