//! [`PoolError`]: why a distributed task has no result, and [`WireError`], the form in which a
//! worker host sends a failure back to the submitter.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::RemoteError;

/// Why a task submitted to a distributed [`Pool`](super::Pool) has no result.
///
/// Opaque; ask it with the predicates. The same questions as the local pool's error
/// ([`is_panic`](Self::is_panic), [`is_worker_died`](Self::is_worker_died),
/// [`item`](Self::item)...), plus the distributed ones: a fingerprint mismatch, a function no
/// host knows, a task that used up its attempts and went to the dead-letter subject, the
/// server failing.
pub struct PoolError {
    kind: Kind,
    item: Option<usize>,
}

#[derive(Debug)]
enum Kind {
    Wire(WireError),
    BadResult(String),
    Encode(String),
    Remote(RemoteError),
    Closed,
    Timeout,
}

/// A failure as a worker host reports it to the submitter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// The function panicked (not retried: a panic is an answer).
    Panicked { message: String, host: String },
    /// The local worker process running it died; reported by the retry policy.
    WorkerDied {
        cause: String,
        host: String,
        attempts: u32,
    },
    /// The host has this function under another signature.
    Mismatch {
        function: String,
        host_signature: String,
        submitter_signature: String,
        host: String,
    },
    /// The host has no function of this name.
    Unknown { function: String, host: String },
    /// The host could not decode the arguments.
    BadArgs { message: String, host: String },
    /// The task used up its attempts and was sent to the dead-letter subject.
    Exhausted {
        attempts: u32,
        dead_letter: String,
        last_cause: String,
    },
}

impl PoolError {
    pub(crate) fn wire(e: WireError) -> Self {
        Self::new(Kind::Wire(e))
    }
    pub(crate) fn bad_result(message: String) -> Self {
        Self::new(Kind::BadResult(message))
    }
    pub(crate) fn encode(message: String) -> Self {
        Self::new(Kind::Encode(message))
    }
    pub(crate) fn remote(e: RemoteError) -> Self {
        Self::new(Kind::Remote(e))
    }
    pub(crate) fn closed() -> Self {
        Self::new(Kind::Closed)
    }
    pub(crate) fn timeout() -> Self {
        Self::new(Kind::Timeout)
    }
    fn new(kind: Kind) -> Self {
        Self { kind, item: None }
    }
    pub(crate) fn at_item(mut self, item: usize) -> Self {
        self.item = Some(item);
        self
    }

    /// For an error of [`map`](super::Pool::map) or an `imap` stream: which item failed.
    pub fn item(&self) -> Option<usize> {
        self.item
    }
    /// True when the function panicked on its host.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Wire(WireError::Panicked { .. }))
    }
    /// The panic message, for a panic.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Wire(WireError::Panicked { message, .. }) => Some(message),
            _ => None,
        }
    }
    /// True when the worker process running the task died and the retry policy reports it.
    pub fn is_worker_died(&self) -> bool {
        matches!(self.kind, Kind::Wire(WireError::WorkerDied { .. }))
    }
    /// True when the host's function of this name has other argument or result types than
    /// the submitter's (two builds that disagree).
    pub fn is_fingerprint_mismatch(&self) -> bool {
        matches!(self.kind, Kind::Wire(WireError::Mismatch { .. }))
    }
    /// True when the host that took the task has no function of this name.
    pub fn is_unknown_function(&self) -> bool {
        matches!(self.kind, Kind::Wire(WireError::Unknown { .. }))
    }
    /// True when the task failed on every one of its attempts and went to the dead-letter
    /// subject.
    pub fn is_retries_exhausted(&self) -> bool {
        matches!(self.kind, Kind::Wire(WireError::Exhausted { .. }))
    }
    /// How many times the task was attempted, when the host said.
    pub fn attempts(&self) -> Option<u32> {
        match &self.kind {
            Kind::Wire(WireError::Exhausted { attempts, .. })
            | Kind::Wire(WireError::WorkerDied { attempts, .. }) => Some(*attempts),
            _ => None,
        }
    }
    /// The subject the task was sent to after its last attempt.
    pub fn dead_letter_subject(&self) -> Option<&str> {
        match &self.kind {
            Kind::Wire(WireError::Exhausted { dead_letter, .. }) => Some(dead_letter),
            _ => None,
        }
    }
    /// The host that reported the failure, when one did.
    pub fn host(&self) -> Option<&str> {
        match &self.kind {
            Kind::Wire(
                WireError::Panicked { host, .. }
                | WireError::WorkerDied { host, .. }
                | WireError::Mismatch { host, .. }
                | WireError::Unknown { host, .. }
                | WireError::BadArgs { host, .. },
            ) => Some(host),
            _ => None,
        }
    }
    /// True when the server or the network failed.
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote(_))
    }
    /// True when a `result_timeout` passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout)
    }
    /// True when the pool's client stopped (it was dropped) before the result came.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }
    /// True when the host could not decode the arguments, or this side the result.
    pub fn is_bad_data(&self) -> bool {
        matches!(
            self.kind,
            Kind::BadResult(_) | Kind::Encode(_) | Kind::Wire(WireError::BadArgs { .. })
        )
    }
}

impl fmt::Debug for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolError")
            .field("kind", &self.kind)
            .field("item", &self.item)
            .finish()
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(item) = self.item {
            write!(f, "item {item}: ")?;
        }
        match &self.kind {
            Kind::Wire(WireError::Panicked { message, host }) => {
                write!(f, "task panicked on host {host}: {message}")
            }
            Kind::Wire(WireError::WorkerDied {
                cause,
                host,
                attempts,
            }) => write!(
                f,
                "the worker process running the task on host {host} died ({cause}) on attempt {attempts}"
            ),
            Kind::Wire(WireError::Mismatch {
                function,
                host_signature,
                submitter_signature,
                host,
            }) => write!(
                f,
                "function `{function}` is `{host_signature}` on host {host} but the submitter \
                 called it as `{submitter_signature}` (two builds disagree)"
            ),
            Kind::Wire(WireError::Unknown { function, host }) => {
                write!(f, "host {host} has no function named `{function}`")
            }
            Kind::Wire(WireError::BadArgs { message, host }) => {
                write!(
                    f,
                    "host {host} could not decode the task's arguments: {message}"
                )
            }
            Kind::Wire(WireError::Exhausted {
                attempts,
                dead_letter,
                last_cause,
            }) => write!(
                f,
                "task failed on all {attempts} attempts (last: {last_cause}); sent to the \
                 dead-letter subject {dead_letter}"
            ),
            Kind::BadResult(message) => write!(f, "cannot decode the task's result: {message}"),
            Kind::Encode(message) => write!(f, "cannot encode the task's arguments: {message}"),
            Kind::Remote(_) => f.write_str("the nats server failed the task"),
            Kind::Closed => f.write_str("the pool client stopped before the result came"),
            Kind::Timeout => f.write_str("timed out waiting for the task's result"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Remote(e) => Some(e),
            _ => None,
        }
    }
}
