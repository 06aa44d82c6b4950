//! Reaping children nobody waits for: one background thread reaps every child handed to it,
//! once the child exits.
//!
//! A child that exits stays a zombie (its pid and exit status kept by the kernel) until its
//! parent reaps it. A handle joined to the end reaps its child itself; a handle dropped before
//! cannot, and an async task cannot reliably take over: the runtime may shut down before the
//! child exits (every `#[tokio::test]` drops its runtime at its end), and its tasks are dropped
//! unrun. `tokio::process` keeps such children in an orphan queue that a later runtime drains
//! on `SIGCHLD`, so they stay zombies if no runtime comes. Here [`reap_orphan`] puts the child's
//! pidfd on the orphan queue, which a thread (`multiproc-reaper`, started on first use, never
//! stopped) drains: it waits in `poll(2)` on every orphan at once and reaps each as it exits.
//! It reaps only the children handed to it, by pidfd, never `waitpid(-1)`: other children of
//! the program are left to whoever started them. A child may come with an [`OnReaped`] call,
//! which the thread makes with the exit status once it reaps it (the process crate records
//! the exit of a child whose handle was dropped unjoined this way).
//!
//! # References
//! - [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html),
//!   [`eventfd(2)`](https://man7.org/linux/man-pages/man2/eventfd.2.html)

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use crate::proc::pidfd::PidFd;

/// The orphan queue, shared with the reaper thread.
struct Orphans {
    /// The process whose thread drains the queue: a process `fork`ed from it has no such
    /// thread, and its inherited queue names children that are not its own.
    owner: u32,
    /// Children handed over since the thread last looked.
    pending: Vec<Orphan>,
    /// The thread's wake-up eventfd, written when `pending` grows; `None` until it runs.
    wake: Option<Arc<OwnedFd>>,
}

static ORPHANS: Mutex<Orphans> = Mutex::new(Orphans {
    owner: 0,
    pending: Vec::new(),
    wake: None,
});

/// A call made by the reaper thread with a child's exit status once it reaped it. It runs on
/// that thread, so it must be short and must not block.
pub type OnReaped = Box<dyn FnOnce(ExitStatus) + Send>;

/// A child handed to the reaper, and what to call once it is reaped.
type Orphan = (Arc<PidFd>, Option<OnReaped>);

/// Makes `on_reaped`'s call, if any; a panic in it never stops the reaper thread.
fn reaped(on_reaped: Option<OnReaped>, status: ExitStatus) {
    if let Some(call) = on_reaped {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(status)));
    }
}

fn orphans() -> MutexGuard<'static, Orphans> {
    ORPHANS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps `child` now if it has exited, or in the background once it exits, so that it never
/// stays a zombie, whether or not any runtime is still running then. `child` must be a child
/// of this process; one that is not, or was reaped already, is ignored.
///
/// Nobody learns the exit status: hand over only children whose outcome nobody waits for.
pub fn reap_orphan(child: impl Into<Arc<PidFd>>) {
    reap_orphan_then(child, None);
}

/// [`reap_orphan`], calling `on_reaped` with the exit status once the child is reaped: at once
/// if it has exited already (on this thread), else on the reaper thread. Not called for a child
/// that is not ours to reap.
pub fn reap_orphan_then(child: impl Into<Arc<PidFd>>, on_reaped: Option<OnReaped>) {
    let child = child.into();
    match child.try_wait() {
        Ok(None) => {}
        Ok(Some(status)) => return reaped(on_reaped, status),
        Err(_) => return, // Not ours to reap.
    }
    let mut orphans = orphans();
    let me = std::process::id();
    if orphans.owner != me {
        orphans.owner = me;
        orphans.pending.clear();
        orphans.wake = None;
    }
    orphans.pending.push((child, on_reaped));
    match &orphans.wake {
        // A full counter (2^64 - 2 wake-ups unread) still wakes the thread: nothing to do.
        Some(wake) => drop(rustix::io::write(wake, &1u64.to_ne_bytes())),
        // Without a thread the child waits in the queue; the next orphan tries again.
        None => orphans.wake = start().ok(),
    }
}

fn start() -> io::Result<Arc<OwnedFd>> {
    let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    let wake = Arc::new(rustix::event::eventfd(0, flags)?);
    let theirs = wake.clone();
    std::thread::Builder::new()
        .name("multiproc-reaper".into())
        .spawn(move || reap(&theirs))?;
    Ok(wake)
}

/// The thread's body: takes what was queued, reaps what has exited, and sleeps until an orphan
/// exits or another is queued.
fn reap(wake: &OwnedFd) -> ! {
    let mut children: Vec<Orphan> = Vec::new();
    loop {
        // Reset the counter before taking the queue: an orphan queued after this wakes the
        // `poll` below at once.
        let mut count = [0u8; 8];
        let _ = rustix::io::read(wake, &mut count);
        children.append(&mut orphans().pending);
        // Keep only the children still running (an error means it is not ours to reap).
        let mut running = Vec::with_capacity(children.len());
        for (child, on_reaped) in children.drain(..) {
            match child.try_wait() {
                Ok(None) => running.push((child, on_reaped)),
                Ok(Some(status)) => reaped(on_reaped, status),
                Err(_) => {}
            }
        }
        children = running;
        // A pidfd polls readable once its process has exited.
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(wake, PollFlags::IN))
            .chain(
                children
                    .iter()
                    .map(|(c, _)| PollFd::new(&**c, PollFlags::IN)),
            )
            .collect();
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            // Out of memory for the poll set: try again a little later.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
