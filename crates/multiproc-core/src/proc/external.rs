//! Starting another program (not this one) with descriptors at fixed numbers: Python's
//! `subprocess` with `pass_fds`, where each descriptor lands at the number the caller chose.
//!
//! The descriptors are first duplicated above every target number (close-on-exec), so that no
//! target overwrites a source; in the forked child a `dup2` moves each to its target, which
//! clears close-on-exec on the copy only. The child may also ask to be killed when this
//! process exits (`PR_SET_PDEATHSIG`), which is why it is started on the spawner thread.
//!
//! # References
//! - [`dup2(2)`](https://man7.org/linux/man-pages/man2/dup2.2.html)
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::proc::exec::{self, SpawnOptions, StdioPipes};
use crate::proc::pidfd::PidFd;
use crate::proc::spawner;

/// How to start an external program.
#[derive(Debug, Default)]
pub struct ProgramOptions {
    /// The program, looked up in `PATH` when it has no slash.
    pub program: OsString,
    /// Its arguments (without `argv[0]`).
    pub args: Vec<OsString>,
    /// `argv[0]`, environment, working directory and standard streams, as for our children.
    pub common: SpawnOptions,
    /// Descriptors for the child, each at its number (3 or more, all different).
    pub fds: Vec<(i32, OwnedFd)>,
    /// Kill the child (`SIGKILL`) when this process exits.
    pub die_with_parent: bool,
}

/// Starts the program `options` describe; returns its pidfd (the caller reaps it) and the
/// parent's ends of its piped standard streams.
///
/// # Errors
/// When a target number is below 3 or repeated, or the program cannot be started.
pub fn spawn_program(options: ProgramOptions) -> io::Result<(PidFd, StdioPipes)> {
    let mut targets: Vec<i32> = options.fds.iter().map(|(t, _)| *t).collect();
    targets.sort_unstable();
    if targets.first().is_some_and(|&t| t < 3) || targets.windows(2).any(|w| w[0] == w[1]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptor numbers for a program must be 3 or more, each used once",
        ));
    }
    let floor = targets.last().map_or(3, |&t| t + 1);
    // Copies above every target: a `dup2` onto a target can then never close a source.
    let moves = options
        .fds
        .iter()
        .map(|(target, fd)| Ok((*target, rustix::io::fcntl_dupfd_cloexec(fd, floor)?)))
        .collect::<io::Result<Vec<(i32, OwnedFd)>>>()?;
    spawner::on_spawner_thread(move || start(options, moves))?
}

fn start(options: ProgramOptions, moves: Vec<(i32, OwnedFd)>) -> io::Result<(PidFd, StdioPipes)> {
    let mut command = Command::new(&options.program);
    command.args(&options.args);
    exec::configure(&mut command, options.common);
    let raw: Vec<(i32, i32)> = moves.iter().map(|(t, fd)| (fd.as_raw_fd(), *t)).collect();
    let die_with_parent = options.die_with_parent;
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (dup2, prctl) on values captured by copy; it allocates
    // nothing (`raw` was built before the fork and is only read).
    unsafe {
        command.pre_exec(move || {
            for &(from, to) in &raw {
                if libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop(moves);
    let pipes = StdioPipes::take(&mut child);
    Ok((spawner::open_pidfd(child.id())?, pipes))
}
