//! Process descriptors: signal, watch and reap one exact process, immune to pid reuse.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Instant;

use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sys::{self, Direction};

/// A pidfd: a descriptor naming one process for as long as it is held.
///
/// # References
/// - [`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html),
///   [`pidfd_send_signal(2)`](https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html)
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: u32,
}

impl PidFd {
    /// Opens a pidfd for `pid`.
    ///
    /// # Errors
    /// `ESRCH` when no such process exists (or it was already reaped).
    pub fn open(pid: u32) -> io::Result<Self> {
        let raw = Pid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = rustix::process::pidfd_open(raw, PidfdFlags::empty())?;
        Ok(Self { fd, pid })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends signal number `signal` to the process. A process that already exited (even if not
    /// yet reaped) is not an error.
    ///
    /// # Errors
    /// When `signal` is not a valid signal number or permission is denied.
    pub fn send_signal(&self, signal: i32) -> io::Result<()> {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{signal} is not a signal number"),
            )
        })?;
        match rustix::process::pidfd_send_signal(&self.fd, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// True once the process has exited (it may not be reaped yet).
    pub fn has_exited(&self) -> bool {
        sys::wait_ready(self.fd.as_fd(), Direction::Read, Some(Instant::now())).unwrap_or(true)
    }

    /// Reaps the process if it has exited, giving its status; `None` while it runs. The
    /// process must be a child of this one.
    ///
    /// # Errors
    /// `ECHILD` when it is not a child of this process or was already reaped.
    ///
    /// # References
    /// - [`waitid(2)`](https://man7.org/linux/man-pages/man2/waitid.2.html) with `P_PIDFD`
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.wait_nohang(WaitIdOptions::empty())
    }

    /// The process's exit status if it has exited, without reaping it: it stays a zombie, and
    /// [`try_wait`](Self::try_wait) or [`wait`](Self::wait) still reaps it and gives the same
    /// status. `None` while it runs. The process must be a child of this one.
    ///
    /// # Errors
    /// As [`try_wait`](Self::try_wait).
    ///
    /// # References
    /// - [`waitid(2)`](https://man7.org/linux/man-pages/man2/waitid.2.html) with `P_PIDFD` and
    ///   `WNOWAIT`
    pub fn peek_exit(&self) -> io::Result<Option<ExitStatus>> {
        self.wait_nohang(WaitIdOptions::NOWAIT)
    }

    fn wait_nohang(&self, extra: WaitIdOptions) -> io::Result<Option<ExitStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | extra;
        loop {
            match rustix::process::waitid(WaitId::PidFd(self.fd.as_fd()), options) {
                Ok(status) => return Ok(status.and_then(|s| exit_status(&s))),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits without blocking a thread until the process exits, then reaps it (see
    /// [`try_wait`](Self::try_wait)).
    ///
    /// # Errors
    /// As [`try_wait`](Self::try_wait); outside a tokio runtime, or when the descriptor cannot
    /// be registered with its reactor.
    ///
    /// # Cancel safety
    /// Cancel safe: the process is only reaped in the poll that returns its status.
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("async wait outside of a tokio runtime"));
        }
        // A pidfd polls readable once its process has exited.
        // SAFETY: the borrowed descriptor is `self.fd`, which stays open and refers to the same
        // pidfd for as long as `self` is borrowed, which outlives the `AsyncFd` (dropped at the
        // end of this function); `BorrowedFd::as_raw_fd` is constant.
        let exited =
            unsafe { AsyncFd::register_with_interest(self.fd.as_fd(), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        loop {
            let mut ready = exited.readable().await?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl PidFd {
    /// Waits without blocking a thread until the process has exited, without reaping it: a
    /// sentinel. Any number of waits may run at once, each on its own duplicate of the pidfd.
    ///
    /// # Errors
    /// Outside a tokio runtime, or when the descriptor cannot be duplicated or registered.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn exited(&self) -> io::Result<()> {
        if self.has_exited() {
            return Ok(());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("async wait outside of a tokio runtime"));
        }
        // A duplicate of our own: epoll refuses a second registration of one descriptor, and
        // a join may be watching `self.fd` already.
        let own = rustix::io::fcntl_dupfd_cloexec(&self.fd, 3)?;
        // SAFETY: `own` is a descriptor of ours that stays open until the end of this
        // function, after the `AsyncFd` borrowing it is dropped.
        let watch = unsafe { AsyncFd::register_with_interest(own.as_fd(), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        // A pidfd stays readable once its process exited: nothing to clear.
        let _ready = watch.readable().await?;
        Ok(())
    }

    /// Blocks the calling thread until the process has exited or `deadline` passed (`None`:
    /// no deadline); true once it has exited. It does not reap the process.
    ///
    /// # Errors
    /// When `poll(2)` fails.
    pub fn blocking_exited(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::wait_ready(self.fd.as_fd(), Direction::Read, deadline)
    }
}

impl AsFd for PidFd {
    /// The pidfd, readable once the process has exited.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The status `wait` would have given, from `waitid`'s; `None` for a stop or continue.
fn exit_status(status: &WaitIdStatus) -> Option<ExitStatus> {
    let raw = if let Some(code) = status.exit_status() {
        (code & 0xff) << 8
    } else if let Some(signal) = status.terminating_signal() {
        signal | if status.dumped() { 0x80 } else { 0 }
    } else {
        return None;
    };
    Some(ExitStatus::from_raw(raw))
}

/// Kills this process (`SIGKILL`) as soon as process `parent` exits, however it exits (even
/// by `SIGKILL`). Kills it at once when `parent` is already gone.
///
/// The kernel does it (`PR_SET_PDEATHSIG`): no thread, no polling. Then `getppid()` is checked
/// against `parent`, which closes the race with a parent that died before the request was made
/// (this process was then already handed to another parent, and no signal would ever come).
///
/// The kernel sends the signal when the *thread* that forked this process ends, not the whole
/// parent process; so the parent must have started this process from a thread that lives as
/// long as it does, as the spawner's thread does. Call this from the thread that keeps running
/// for the life of this process (the main thread); the setting is not inherited by children.
///
/// # Errors
/// When the kernel refuses the request.
///
/// # References
/// - [`PR_SET_PDEATHSIG` in `prctl(2)`](https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html),
///   [`getppid(2)`](https://man7.org/linux/man-pages/man2/getppid.2.html)
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        kill_self();
    }
    Ok(())
}

fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    std::process::abort()
}
