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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use multiproc_core::proc::pidfd::PidFd;
use multiproc_core::proc::tree;

use crate::status::ExitStatus;

/// One child, shared by its handle and the registry.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pidfd: Arc<PidFd>,
    pub(crate) name: String,
    /// The memory limit the child was started with, for out-of-memory attribution.
    pub(crate) memory_limit: Option<u64>,
    status: Mutex<Option<ExitStatus>>,
}

/// Every child started here whose handle is still alive.
static REGISTRY: Mutex<Vec<Weak<Child>>> = Mutex::new(Vec::new());

impl Child {
    /// Wraps a new child and lists it for [`active_children`].
    pub(crate) fn register(pidfd: PidFd, name: String, memory_limit: Option<u64>) -> Arc<Self> {
        let child = Arc::new(Self {
            pidfd: Arc::new(pidfd),
            name,
            memory_limit,
            status: Mutex::new(None),
        });
        let mut all = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&child));
        child
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    /// Reaps the child if it has exited and nobody did yet; its status either way, `None`
    /// while it runs.
    pub(crate) fn reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none()
            && let Some(exit) = self.pidfd.try_wait()?
        {
            *status = Some(ExitStatus::new(exit));
        }
        Ok(*status)
    }

    /// The status if the child has exited, without reaping it.
    pub(crate) fn peek(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none()
            && let Ok(Some(exit)) = self.pidfd.peek_exit()
        {
            *status = Some(ExitStatus::new(exit));
        }
        *status
    }

    /// Sends `signal` to the child and its whole tree (its descendants now).
    pub(crate) fn signal_tree(&self, signal: i32) -> io::Result<()> {
        if self.pidfd.has_exited() {
            return Ok(());
        }
        tree::signal_tree(&self.pidfd, signal)
    }

    /// Stops the child gracefully: `SIGTERM` to its tree, up to `grace` for it to exit, then
    /// `SIGKILL` to the tree. Does not reap it.
    pub(crate) async fn stop(&self, grace: Duration) {
        if self.pidfd.has_exited() {
            return;
        }
        let _ = self.signal_tree(15);
        if tokio::time::timeout(grace, self.pidfd.exited())
            .await
            .is_err()
        {
            let _ = self.kill_tree();
        }
    }

    /// Kills the child and its whole tree.
    pub(crate) fn kill_tree(&self) -> io::Result<()> {
        if self.pidfd.has_exited() {
            // Its orphans, if any, were adopted elsewhere; nothing of ours is left to stop.
            return Ok(());
        }
        tree::kill_tree(&self.pidfd)
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
        .map(|c| ChildInfo {
            pid: c.pid(),
            name: c.name.clone(),
        })
        .collect()
}
