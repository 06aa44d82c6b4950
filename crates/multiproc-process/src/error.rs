//! Errors of spawning and joining child processes.

use std::fmt;
use std::io;

use multiproc_core::EncodeError;

use crate::status::{ExitStatus, signal_name};

/// A child process could not be started.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SpawnError {
    kind: SpawnErrorKind,
}

#[derive(Debug, thiserror::Error)]
enum SpawnErrorKind {
    #[error("cannot start child process")]
    Io(#[source] io::Error),
    #[error("cannot encode the child's arguments")]
    Encode(#[source] EncodeError),
}

impl SpawnError {
    pub(crate) fn io(e: io::Error) -> Self {
        Self {
            kind: SpawnErrorKind::Io(e),
        }
    }
    pub(crate) fn encode(e: EncodeError) -> Self {
        Self {
            kind: SpawnErrorKind::Encode(e),
        }
    }
    /// True when the arguments could not be encoded (no process was started).
    pub fn is_encode(&self) -> bool {
        matches!(self.kind, SpawnErrorKind::Encode(_))
    }
}

/// Why a child's result is not available.
///
/// Opaque; ask it with the predicates: [`is_panic`](Self::is_panic),
/// [`is_killed`](Self::is_killed), [`is_timeout`](Self::is_timeout)...
pub struct JoinError {
    kind: JoinErrorKind,
    pid: Option<u32>,
}

enum JoinErrorKind {
    Spawn(SpawnError),
    Panicked {
        message: String,
        location: Option<String>,
    },
    Exited(ExitStatus),
    /// Ended by a failed allocation under its memory limit (in bytes).
    OutOfMemory(ExitStatus, u64),
    BadArgs(String),
    BadResult(String),
    Timeout,
    AlreadyJoined,
    Io(io::Error),
}

impl JoinError {
    pub(crate) fn spawn(e: SpawnError) -> Self {
        Self {
            kind: JoinErrorKind::Spawn(e),
            pid: None,
        }
    }
    pub(crate) fn panicked(pid: u32, message: String, location: Option<String>) -> Self {
        Self {
            kind: JoinErrorKind::Panicked { message, location },
            pid: Some(pid),
        }
    }
    pub(crate) fn exited(pid: u32, status: ExitStatus) -> Self {
        Self {
            kind: JoinErrorKind::Exited(status),
            pid: Some(pid),
        }
    }
    pub(crate) fn out_of_memory(pid: u32, status: ExitStatus, limit: u64) -> Self {
        Self {
            kind: JoinErrorKind::OutOfMemory(status, limit),
            pid: Some(pid),
        }
    }
    pub(crate) fn bad_args(pid: u32, why: String) -> Self {
        Self {
            kind: JoinErrorKind::BadArgs(why),
            pid: Some(pid),
        }
    }
    pub(crate) fn bad_result(pid: u32, why: String) -> Self {
        Self {
            kind: JoinErrorKind::BadResult(why),
            pid: Some(pid),
        }
    }
    pub(crate) fn timeout(pid: u32) -> Self {
        Self {
            kind: JoinErrorKind::Timeout,
            pid: Some(pid),
        }
    }
    pub(crate) fn already_joined(pid: Option<u32>) -> Self {
        Self {
            kind: JoinErrorKind::AlreadyJoined,
            pid,
        }
    }
    pub(crate) fn io(pid: u32, e: io::Error) -> Self {
        Self {
            kind: JoinErrorKind::Io(e),
            pid: Some(pid),
        }
    }

    /// The child's process id, when it was started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// True when the child's function panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, JoinErrorKind::Panicked { .. })
    }

    /// The panic message, when the child's function panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            JoinErrorKind::Panicked { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Where the child panicked (`file:line:column`), when known.
    pub fn panic_location(&self) -> Option<&str> {
        match &self.kind {
            JoinErrorKind::Panicked { location, .. } => location.as_deref(),
            _ => None,
        }
    }

    /// True when a signal killed the child before it returned.
    pub fn is_killed(&self) -> bool {
        self.signal().is_some()
    }

    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.exit_status().and_then(|s| s.signal())
    }

    /// The exit code, when the child exited (e.g. `std::process::exit(3)`) without returning.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_status().and_then(|s| s.code())
    }

    /// How the child ended, when it ended without returning a result.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match &self.kind {
            JoinErrorKind::Exited(status) | JoinErrorKind::OutOfMemory(status, _) => Some(*status),
            _ => None,
        }
    }

    /// True when the child ran out of memory under the limit it was started with
    /// ([`Builder::memory_limit`](crate::Builder::memory_limit)): an allocation failed and the
    /// process aborted. [`memory_limit`](Self::memory_limit) gives the limit.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self.kind, JoinErrorKind::OutOfMemory(..))
    }

    /// The memory limit in bytes, for [`is_out_of_memory`](Self::is_out_of_memory) errors.
    pub fn memory_limit(&self) -> Option<u64> {
        match &self.kind {
            JoinErrorKind::OutOfMemory(_, limit) => Some(*limit),
            _ => None,
        }
    }

    /// True when a timed join gave up; the child is still running and can be joined again.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, JoinErrorKind::Timeout)
    }

    /// True when the child could not be started.
    pub fn is_spawn_failure(&self) -> bool {
        matches!(self.kind, JoinErrorKind::Spawn(_))
    }

    /// True when the child could not decode the arguments it was sent.
    pub fn is_bad_args(&self) -> bool {
        matches!(self.kind, JoinErrorKind::BadArgs(_))
    }

    /// True when the result could not be carried back (encode in the child or decode here).
    pub fn is_bad_result(&self) -> bool {
        matches!(self.kind, JoinErrorKind::BadResult(_))
    }

    /// True when the result was already taken by an earlier join.
    pub fn is_already_joined(&self) -> bool {
        matches!(self.kind, JoinErrorKind::AlreadyJoined)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pid = self.pid.map(|p| format!(" {p}")).unwrap_or_default();
        match &self.kind {
            JoinErrorKind::Spawn(e) => write!(f, "{e}"),
            JoinErrorKind::Panicked {
                message,
                location: Some(at),
            } => {
                write!(f, "child process{pid} panicked at {at}: {message}")
            }
            JoinErrorKind::Panicked {
                message,
                location: None,
            } => {
                write!(f, "child process{pid} panicked: {message}")
            }
            JoinErrorKind::Exited(status) => match (status.code(), status.signal()) {
                (None, Some(sig)) => {
                    write!(
                        f,
                        "child process{pid} was killed by signal {sig} ({})",
                        signal_name(sig)
                    )
                }
                _ => write!(
                    f,
                    "child process{pid} ended with {status} before returning a result"
                ),
            },
            JoinErrorKind::OutOfMemory(status, limit) => write!(
                f,
                "child process{pid} ran out of memory (limit {limit} bytes) and ended with {status}"
            ),
            JoinErrorKind::BadArgs(why) => {
                write!(
                    f,
                    "child process{pid} could not decode its arguments: {why}"
                )
            }
            JoinErrorKind::BadResult(why) => {
                write!(f, "result of child process{pid} is unusable: {why}")
            }
            JoinErrorKind::Timeout => write!(
                f,
                "timed out joining child process{pid}; it is still running"
            ),
            JoinErrorKind::AlreadyJoined => write!(f, "child process{pid} was already joined"),
            JoinErrorKind::Io(_) => write!(f, "cannot wait for child process{pid}"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinError({self})")
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            // A spawn failure is shown as the spawn error itself (its text is this error's), so
            // the chain goes on with that error's cause, not with the same text again.
            JoinErrorKind::Spawn(e) => e.source(),
            JoinErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
