//! Options for starting a child process.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use multiproc_core::proc::bootstrap::{self, ControlSocket, EntryPoint};
use multiproc_core::proc::limits::ResourceLimits;
use multiproc_core::proc::spawner::{self, SpawnOptions};
use multiproc_core::transport::channel::{self, RawSender};
use multiproc_core::{SendErrorKind, SharedFd, message};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::child::child_main;
use crate::children::Child;
use crate::error::SpawnError;
use crate::function::ChildOutput;
use crate::identity;
use crate::join::JoinHandle;
use crate::spawn_protocol::Setup;
use crate::stdio::Pipes;

/// Options for a child process: name, environment, stdio, lifetime. Finish with
/// [`spawn`](Self::spawn).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let child = multiproc::Builder::new()
///     .name("worker-1")
///     .env("RUST_LOG", "debug")
///     .kill_on_drop(true)
///     .spawn(21, |x: u32| x * 2)?;
/// assert_eq!(child.await?, 42);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Builder {
    name: Option<String>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    kill_on_drop: bool,
    daemon: bool,
    limits: ResourceLimits,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// Defaults: inherited environment, directory and stdio; a daemon child (it dies with this
    /// process); not killed when its handle is dropped.
    pub fn new() -> Self {
        Self {
            name: None,
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            stdin: None,
            stdout: None,
            stderr: None,
            kill_on_drop: false,
            daemon: true,
            limits: ResourceLimits::default(),
        }
    }

    /// Names the child: shown by `ps` (as `argv[0]`, and the first 15 bytes as its command
    /// name in `/proc/<pid>/comm`), by [`current_process`](crate::current_process) in the
    /// child and by [`JoinHandle::name`]. Without one, the child is named as in Python:
    /// `Process-N` (`Process-N:M` for a child's child).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the child.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Starts the child with an empty environment (plus what [`env`](Self::env) adds).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// Sets the child's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The child's standard input (default: inherited). With `Stdio::piped()`, take the
    /// parent's end with [`JoinHandle::stdin`] (a tokio `AsyncWrite`).
    pub fn stdin(mut self, stdio: impl Into<Stdio>) -> Self {
        self.stdin = Some(stdio.into());
        self
    }

    /// The child's standard output (default: inherited). With `Stdio::piped()`, take the
    /// parent's end with [`JoinHandle::stdout`] (a tokio `AsyncRead`).
    pub fn stdout(mut self, stdio: impl Into<Stdio>) -> Self {
        self.stdout = Some(stdio.into());
        self
    }

    /// The child's standard error (default: inherited). With `Stdio::piped()`, take the
    /// parent's end with [`JoinHandle::stderr`] (a tokio `AsyncRead`).
    pub fn stderr(mut self, stdio: impl Into<Stdio>) -> Self {
        self.stderr = Some(stdio.into());
        self
    }

    /// Limits the child's memory to `bytes` of address space (`RLIMIT_AS`, set by the child on
    /// itself before its function runs). An allocation past it fails and the child aborts;
    /// the join then reports [`JoinError::is_out_of_memory`](crate::JoinError::is_out_of_memory)
    /// with the limit. Address space counts more than resident memory (thread stacks,
    /// reservations), so leave room: tens of megabytes above what the function needs.
    ///
    /// This is an rlimit everywhere today; see the guide on cgroups.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.limits.memory = Some(bytes);
        self
    }

    /// Limits the child's CPU time (`RLIMIT_CPU`, whole seconds, rounded up): past it the
    /// kernel sends `SIGXCPU`, which ends the child ([`JoinError::signal`](crate::JoinError::signal)
    /// is 24).
    pub fn cpu_time_limit(mut self, limit: Duration) -> Self {
        self.limits.set_cpu_time(limit);
        self
    }

    /// Limits the number of descriptors the child may have open (`RLIMIT_NOFILE`): opening
    /// one more fails with `EMFILE`.
    pub fn open_files_limit(mut self, files: u64) -> Self {
        self.limits.open_files = Some(files);
        self
    }

    /// All of a pool worker's limits at once.
    pub(crate) fn limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Kill the child (`SIGKILL`) when its [`JoinHandle`] is dropped before it finished.
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.kill_on_drop = kill;
        self
    }

    /// Whether the child dies with this process (default `true`): a daemon child is killed as
    /// soon as this process exits, however it exits (even `SIGKILL`), so no orphan is left.
    ///
    /// `daemon(false)` detaches on purpose: the child finishes its function even if this
    /// process is gone (its result then has nowhere to go and is dropped).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Starts a child process running `f(args)` and returns a handle to await its result.
    ///
    /// `f` must be a `fn` item or a closure that captures nothing (a capturing closure is a
    /// compile-time error): the child is this same program, re-executed, and finds `f` by its
    /// address. It may return a value or a future (an `async fn`); an async function runs on a
    /// current-thread tokio runtime in the child. `args` and the result are serde types and may
    /// contain handles (pipe ends, locks, shared memory...), which arrive usable.
    ///
    /// A child forked by the fork server is handed out as soon as the request is sent, before
    /// the server has answered: the handle learns its pid on first need (see
    /// [`JoinHandle::pid`]), so spawns in a row overlap with the server's work.
    ///
    /// # Errors
    /// [`SpawnError`] when `args` cannot be encoded or the process cannot be started, and in a
    /// setuid or setcap program, which spawns no children (see the guide). A child the fork
    /// server did not fork (it died or stopped answering) is re-executed instead; if that fails
    /// too, its join reports it ([`JoinError::is_spawn_failure`](crate::JoinError::is_spawn_failure)).
    ///
    /// # Panics
    /// Outside a tokio runtime (with I/O and time drivers).
    pub fn spawn<A, R, M, F>(self, args: A, f: F) -> Result<JoinHandle<R::Output>, SpawnError>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> R + Copy + Send + 'static,
        R: ChildOutput<M>,
    {
        // The handle is joined on a runtime (the pidfd and control socket register with its
        // reactor): refuse to start a child outside of one, as documented.
        let _ = tokio::runtime::Handle::current();
        let entry = EntryPoint::new(f, child_main::<A, R, M, F>);
        let (identity, default_name) = identity::next_child();
        let name = self.name.unwrap_or(default_name);
        #[cfg(feature = "tracing")]
        let (span, trace_parent) =
            crate::trace::spawn_span(Some(&name), std::any::type_name::<F>());
        #[cfg(not(feature = "tracing"))]
        let trace_parent = None;
        // Encoded before the child exists: arguments that do not encode start no process.
        let setup = Setup {
            parent_pid: std::process::id(),
            die_with_parent: self.daemon,
            name: name.clone(),
            identity,
            limits: self.limits,
            trace_parent,
        };
        let setup = message::encode(&setup).map_err(|e| SpawnError::io(io::Error::other(e)))?;
        let args = message::encode(&args).map_err(SpawnError::encode)?;

        let options = SpawnOptions {
            arg0: Some(name.clone().into()),
            env_clear: self.env_clear,
            env: self.env,
            current_dir: self.current_dir,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
        };
        // The setup and the arguments are queued behind the hello before the child exists, so
        // that it finds everything at once instead of waiting for a second wake-up. What does
        // not fit in the socket now is sent by the dropped sender in the background.
        let ControlSocket {
            parent_end,
            child_end,
        } = bootstrap::control_socket(entry).map_err(SpawnError::io)?;
        let (mut tx, rx) = channel::split(SharedFd::new(parent_end)).map_err(SpawnError::io)?;
        push(&mut tx, setup)
            .and_then(|()| push(&mut tx, args))
            .and_then(|()| tx.blocking_flush(Some(Instant::now())))
            .map_err(|e| SpawnError::io(io::Error::other(e)))?;
        let starting = spawner::start_on(child_end, options).map_err(|e| {
            multiproc_core::trace_warn!(error = %e, "cannot start a child process");
            SpawnError::io(e)
        })?;
        // A child asked of the fork server is handed out before its pid is known: the handle
        // learns it on first need (see `Child`), so the server forks this child while the
        // caller goes on, and spawns in a row overlap. A span that records the pid, and piped
        // streams (never the server's: their children are re-executed), need it now.
        #[cfg(feature = "tracing")]
        let wanted_now = span.id().is_some();
        #[cfg(not(feature = "tracing"))]
        let wanted_now = false;
        let child = if wanted_now || starting.is_settled() {
            let (pidfd, pipes) = starting.finish().map_err(|e| {
                multiproc_core::trace_warn!(error = %e, "cannot start a child process");
                SpawnError::io(e)
            })?;
            #[cfg(feature = "tracing")]
            span.record("pid", pidfd.pid());
            let (pidfd, pipes) = Pipes::for_child(pidfd, pipes)?;
            (Child::register(pidfd, name, self.limits.memory), pipes)
        } else {
            let child = Child::register_starting(starting, name, self.limits.memory);
            (child, Pipes::default())
        };
        let (child, pipes) = child;
        let handle = JoinHandle::start(child, self.kill_on_drop, rx, pipes);
        #[cfg(feature = "tracing")]
        let handle = handle.traced(span);
        Ok(handle)
    }
}

/// Queues one frame already encoded (bytes and descriptors) on the control socket.
fn push(tx: &mut RawSender, (bytes, fds): (Vec<u8>, Vec<OwnedFd>)) -> Result<(), SendErrorKind> {
    tx.push(move |buf| {
        buf.extend_from_slice(&bytes);
        Ok(fds)
    })
}
