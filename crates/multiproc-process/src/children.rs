//! The children this process started and has not reaped yet: what a [`JoinHandle`] shares with
//! the rest of the process (its pidfd, exit status, name, memory limit), and
//! [`active_children`] over all of them (Python's `multiprocessing.active_children()`).
//!
//! Reaping goes through [`Child::reap`], under the status lock: whoever reaps first (a join,
//! `active_children`, `exit_status`) stores the status, and everyone else reads it there, so a
//! child is reaped exactly once and its status is never lost.
//!
//! [`JoinHandle`]: crate::JoinHandle

use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use multiproc_core::proc::pidfd::PidFd;
use multiproc_core::proc::spawner::Starting;
use multiproc_core::proc::tree;

use crate::status::ExitStatus;

/// One child, shared by its handle and the registry.
///
/// A child asked of the fork server is handed out before the server has answered: its pidfd is
/// known on first need ([`pidfd`](Self::pidfd): a join, its pid, a signal, a drop), which waits
/// for the answer, or re-executes the child if the server could not fork it. A child that could
/// not be started after all has no pidfd; its join reports why.
#[derive(Debug)]
pub(crate) struct Child {
    /// Set once: the pidfd, or `None` when the child could not be started.
    pidfd: OnceLock<Option<Arc<PidFd>>>,
    /// The start in progress, until `pidfd` is set.
    starting: Mutex<Option<Starting>>,
    /// Why the child could not be started, for its join (taken once).
    start_error: Mutex<Option<io::Error>>,
    pub(crate) name: String,
    /// The memory limit the child was started with, for out-of-memory attribution.
    pub(crate) memory_limit: Option<u64>,
    status: Mutex<Option<ExitStatus>>,
}

/// Every child started here whose handle is still alive.
static REGISTRY: Mutex<Vec<Weak<Child>>> = Mutex::new(Vec::new());

impl Child {
    /// Wraps a new child and lists it for [`active_children`].
    pub(crate) fn register(
        pidfd: impl Into<Arc<PidFd>>,
        name: String,
        memory_limit: Option<u64>,
    ) -> Arc<Self> {
        let child = Self::new(name, memory_limit);
        let _ = child.pidfd.set(Some(pidfd.into()));
        Self::list(child)
    }

    /// Wraps a child being started (its pid may not be known yet) and lists it for
    /// [`active_children`].
    pub(crate) fn register_starting(
        starting: Starting,
        name: String,
        memory_limit: Option<u64>,
    ) -> Arc<Self> {
        let child = Self::new(name, memory_limit);
        *child.starting.lock().unwrap_or_else(|p| p.into_inner()) = Some(starting);
        Self::list(child)
    }

    fn new(name: String, memory_limit: Option<u64>) -> Self {
        Self {
            pidfd: OnceLock::new(),
            starting: Mutex::new(None),
            start_error: Mutex::new(None),
            name,
            memory_limit,
            status: Mutex::new(None),
        }
    }

    fn list(child: Self) -> Arc<Self> {
        let child = Arc::new(child);
        let mut all = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&child));
        child
    }

    /// The child's pidfd, waiting for the fork server's answer if it has not been read yet
    /// (see the type's docs); `None` when the child could not be started.
    pub(crate) fn pidfd(&self) -> Option<&Arc<PidFd>> {
        self.pidfd
            .get_or_init(|| {
                let starting = self
                    .starting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()?;
                match starting.finish() {
                    Ok((pidfd, _)) => Some(Arc::new(pidfd)),
                    Err(e) => {
                        multiproc_core::trace_warn!(error = %e, "cannot start a child process");
                        *self.start_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Its pid if known already, without waiting for the fork server.
    pub(crate) fn known_pid(&self) -> Option<u32> {
        self.pidfd.get().and_then(|p| p.as_ref()).map(|p| p.pid())
    }

    /// Why the child could not be started (once; a generic error afterwards).
    pub(crate) fn take_start_error(&self) -> io::Error {
        self.start_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| io::Error::other("the child process could not be started"))
    }

    /// Its pid; `None` when it could not be started.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pidfd().map(|p| p.pid())
    }

    /// Reaps the child if it has exited and nobody did yet; its status either way, `None`
    /// while it runs.
    ///
    /// # Errors
    /// When it cannot be reaped, or was never started.
    pub(crate) fn reap(&self) -> io::Result<Option<ExitStatus>> {
        let Some(pidfd) = self.pidfd() else {
            return Err(io::Error::other("the child process was not started"));
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none()
            && let Some(exit) = pidfd.try_wait()?
        {
            *status = Some(ExitStatus::new(exit));
        }
        Ok(*status)
    }

    /// The status if the child has exited, without reaping it.
    pub(crate) fn peek(&self) -> Option<ExitStatus> {
        let pidfd = self.pidfd()?;
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none()
            && let Ok(Some(exit)) = pidfd.peek_exit()
        {
            *status = Some(ExitStatus::new(exit));
        }
        *status
    }

    /// Sends `signal` to the child and its whole tree (its descendants now).
    pub(crate) fn signal_tree(&self, signal: i32) -> io::Result<()> {
        match self.pidfd() {
            Some(pidfd) if !pidfd.has_exited() => tree::signal_tree(pidfd, signal),
            _ => Ok(()),
        }
    }

    /// Stops the child gracefully: `SIGTERM` to its tree, up to `grace` for it to exit, then
    /// `SIGKILL` to the tree. Does not reap it.
    pub(crate) async fn stop(&self, grace: Duration) {
        let Some(pidfd) = self.pidfd().filter(|p| !p.has_exited()) else {
            return;
        };
        let _ = self.signal_tree(15);
        if tokio::time::timeout(grace, pidfd.exited()).await.is_err() {
            let _ = self.kill_tree();
        }
    }

    /// Kills the child and its whole tree.
    pub(crate) fn kill_tree(&self) -> io::Result<()> {
        match self.pidfd() {
            Some(pidfd) if !pidfd.has_exited() => tree::kill_tree(pidfd),
            // Its orphans, if any, were adopted elsewhere; nothing of ours is left to stop.
            _ => Ok(()),
        }
    }
}

/// A child listed by [`active_children`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    pid: u32,
    name: String,
}

impl ChildInfo {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its name ([`Builder::name`](crate::Builder::name), or `Process-N`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The children of this process that are still running and whose handles are alive (Python's
/// `multiprocessing.active_children()`): those started by [`spawn`](crate::spawn) and
/// [`Builder`](crate::Builder) (pool workers included), and programs started by
/// [`Command`](crate::Command). Like Python's, it reaps the ones that finished: their
/// status is kept for their handle's join, which still gives the result.
///
/// A child whose handle was dropped is not listed (the reaper thread owns it then).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let child = multiproc::spawn((), |()| std::thread::sleep(std::time::Duration::from_secs(1)));
/// let names: Vec<String> = multiproc::process::active_children()
///     .iter()
///     .map(|c| c.name().to_string())
///     .collect();
/// assert_eq!(names, ["Process-1"]);
/// child.await?;
/// # Ok(())
/// # }
/// ```
pub fn active_children() -> Vec<ChildInfo> {
    let children: Vec<Arc<Child>> = {
        let mut all = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    children
        .iter()
        .filter(|c| matches!(c.reap(), Ok(None)))
        .filter_map(|c| {
            Some(ChildInfo {
                pid: c.pid()?,
                name: c.name.clone(),
            })
        })
        .collect()
}
