//! Starting another program (Python's `subprocess.Popen`) with multiproc handles passed at
//! fixed descriptor numbers and named in its environment, so a Python or shell worker can use
//! a pipe end, a socket or any descriptor-backed handle.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use multiproc_core::proc::pidfd::PidFd;
use multiproc_core::proc::reaper;
use multiproc_core::proc::spawner::{self, ProgramOptions};

use crate::children::Child;
use crate::error::SpawnError;
use crate::status::ExitStatus;
use crate::stdio::{ChildStderr, ChildStdin, ChildStdout, Pipes};

/// The environment variable prefix naming a passed descriptor: [`Command::pass_fd`] with name
/// `"jobs"` sets `MULTIPROC_FD_JOBS` to the descriptor's number in the child.
pub const FD_ENV_PREFIX: &str = "MULTIPROC_FD_";

/// Options for starting an external program; finish with [`spawn`](Self::spawn).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::unix::net::UnixStream;
///
/// let (ours, theirs) = UnixStream::pair()?;
/// let mut child = multiproc::process::Command::new("python3")
///     .arg("-c")
///     .arg("import os; os.write(int(os.environ['MULTIPROC_FD_REPLY']), b'hi')")
///     .pass_fd("reply", theirs)
///     .spawn()?;
/// assert!(child.wait().await?.success());
/// # drop(ours);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Command {
    options: ProgramOptions,
    next_fd: i32,
    kill_on_drop: bool,
    /// A descriptor that could not be duplicated: reported by `spawn`.
    fd_error: Option<io::Error>,
}

impl Command {
    /// A command running `program` (looked up in `PATH` when it has no slash). Defaults as
    /// [`Builder`](crate::Builder): inherited environment, directory and stdio; the program
    /// dies with this process (`daemon(true)`); not killed when its handle is dropped.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            options: ProgramOptions {
                program: program.into(),
                die_with_parent: true,
                ..ProgramOptions::default()
            },
            next_fd: 3,
            kill_on_drop: false,
            fd_error: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.options.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.options.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.options
            .common
            .env
            .push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the program.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.options.common.env.push((key.into(), None));
        self
    }

    /// Starts the program with an empty environment (plus what [`env`](Self::env) and
    /// [`pass_fd`](Self::pass_fd) add).
    pub fn env_clear(mut self) -> Self {
        self.options.common.env_clear = true;
        self.options.common.env.clear();
        self
    }

    /// Sets the program's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.common.current_dir = Some(dir.into());
        self
    }

    /// The program's standard input; `Stdio::piped()` gives [`CommandChild::stdin`].
    pub fn stdin(mut self, stdio: impl Into<Stdio>) -> Self {
        self.options.common.stdin = Some(stdio.into());
        self
    }

    /// The program's standard output; `Stdio::piped()` gives [`CommandChild::stdout`].
    pub fn stdout(mut self, stdio: impl Into<Stdio>) -> Self {
        self.options.common.stdout = Some(stdio.into());
        self
    }

    /// The program's standard error; `Stdio::piped()` gives [`CommandChild::stderr`].
    pub fn stderr(mut self, stdio: impl Into<Stdio>) -> Self {
        self.options.common.stderr = Some(stdio.into());
        self
    }

    /// Passes `fd` to the program at the next free number (3, 4, ...) and names it in its
    /// environment: `MULTIPROC_FD_<NAME>` (the name upper-cased) holds the number. The
    /// program owns a duplicate; ours stays open and ours.
    ///
    /// What the program reads or writes there is the handle's own protocol: raw bytes for a
    /// socket or an OS pipe.
    pub fn pass_fd(self, name: &str, fd: impl AsFd) -> Self {
        let number = self.next_fd;
        self.fd_at(number, fd).named(name, number)
    }

    /// Passes `fd` to the program at exactly `number` (3 or more), without naming it.
    pub fn fd_at(mut self, number: i32, fd: impl AsFd) -> Self {
        match fd.as_fd().try_clone_to_owned() {
            Ok(copy) => self.options.fds.push((number, copy)),
            // Out of descriptors, say: `spawn` reports it.
            Err(e) => self.fd_error = self.fd_error.take().or(Some(e)),
        }
        self.next_fd = self.next_fd.max(number + 1);
        self
    }

    fn named(self, name: &str, number: i32) -> Self {
        let key = format!("{FD_ENV_PREFIX}{}", name.to_ascii_uppercase());
        self.env(key, number.to_string())
    }

    /// Whether the program dies with this process (default `true`, `PR_SET_PDEATHSIG`).
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.options.die_with_parent = daemon;
        self
    }

    /// Kill the program and its tree when its [`CommandChild`] is dropped before it exited.
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.kill_on_drop = kill;
        self
    }

    /// Starts the program.
    ///
    /// # Errors
    /// When the program cannot be started (not found, not executable), a descriptor could
    /// not be duplicated, a descriptor number is below 3 or used twice, or the pipes cannot be
    /// registered with the runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (with the I/O driver).
    pub fn spawn(self) -> Result<CommandChild, SpawnError> {
        let _ = tokio::runtime::Handle::current();
        if let Some(e) = self.fd_error {
            return Err(SpawnError::io(e));
        }
        let name = self.options.program.to_string_lossy().into_owned();
        let (pidfd, pipes) = spawner::spawn_program(self.options).map_err(SpawnError::io)?;
        let (pidfd, pipes) = Pipes::for_child(pidfd, pipes)?;
        let pidfd = Arc::new(pidfd);
        Ok(CommandChild {
            child: Child::register(pidfd.clone(), name, None),
            pidfd,
            pipes,
            kill_on_drop: self.kill_on_drop,
            reaped: false,
        })
    }
}

/// A running external program started by [`Command::spawn`].
///
/// Like [`JoinHandle`](crate::JoinHandle), it reaps the program however it ends: by
/// [`wait`](Self::wait), or, once dropped, by the reaper thread.
#[derive(Debug)]
pub struct CommandChild {
    child: Arc<Child>,
    /// The child's pidfd (known from the start: a program is not started by the fork server).
    pidfd: Arc<PidFd>,
    pipes: Pipes,
    kill_on_drop: bool,
    reaped: bool,
}

impl CommandChild {
    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    /// True while the program runs.
    pub fn is_alive(&self) -> bool {
        !self.pidfd.has_exited()
    }

    /// Waits until the program has exited, without reaping it (a sentinel).
    ///
    /// # Errors
    /// When the wait cannot be registered with the runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn exited(&self) -> io::Result<()> {
        self.pidfd.exited().await
    }

    /// Waits for the program to exit, reaps it and gives its status (again on later calls).
    ///
    /// # Errors
    /// When the wait cannot be registered with the runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: the program is reaped only in the call that returns its status.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.reap()? {
                self.reaped = true;
                return Ok(status);
            }
            self.pidfd.exited().await?;
        }
    }

    /// Sends `SIGKILL` to the program and its whole tree.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn kill(&self) -> io::Result<()> {
        self.child.kill_tree()
    }

    /// Sends `SIGTERM` to the program and its whole tree.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn terminate(&self) -> io::Result<()> {
        self.child.signal_tree(15)
    }

    /// `SIGTERM` to the tree, up to `grace` for the program to exit, then `SIGKILL`; gives the
    /// exit status.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait); the signals already sent stay sent.
    pub async fn shutdown(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.child.stop(grace).await;
        self.wait().await
    }

    /// Takes the parent's end of the program's piped standard input (once).
    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.pipes.stdin.take()
    }

    /// Takes the parent's end of the program's piped standard output (once).
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.pipes.stdout.take()
    }

    /// Takes the parent's end of the program's piped standard error (once).
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.pipes.stderr.take()
    }
}

impl Drop for CommandChild {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if self.kill_on_drop {
            let _ = self.child.kill_tree();
        }
        if matches!(self.child.reap(), Ok(None)) {
            reaper::reap_orphan(self.pidfd.clone());
        }
    }
}
