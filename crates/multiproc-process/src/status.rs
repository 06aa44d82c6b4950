//! How a child process ended.

use std::fmt;
use std::os::unix::process::ExitStatusExt;

/// How a child process ended: an exit code or a signal.
///
/// [`exitcode`](Self::exitcode) gives Python's `Process.exitcode` convention: the code, or
/// minus the signal number when a signal killed it. A child whose function returned exits with
/// 0; one whose function panicked, or that could not decode its arguments or send its result,
/// exits with 1 (Python's code for an uncaught exception).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(std::process::ExitStatus);

impl ExitStatus {
    pub(crate) fn new(status: std::process::ExitStatus) -> Self {
        Self(status)
    }

    /// The exit code, if the process exited (rather than being killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.0.code()
    }

    /// The number of the signal that killed the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.0.signal()
    }

    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.0.success()
    }

    /// Python's `exitcode`: the exit code, or `-signal` when killed by a signal.
    pub fn exitcode(&self) -> i32 {
        match (self.code(), self.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => -sig,
            (None, None) => i32::MIN,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code(), self.signal()) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "signal {sig} ({})", signal_name(sig)),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

impl fmt::Debug for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExitStatus({self})")
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `SIG?` when unknown.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => "SIG?",
    }
}
