//! The benchmark's spawn floor: `fork`, the child `_exit`s at once, the parent waits. Not
//! part of the API (hidden from the docs): `multiproc-bench` measures [`spawn`] against it and
//! forbids `unsafe` itself, so the one `fork` lives here.
//!
//! Forking a multi-threaded process (the benchmark runs tokio and the spawner thread) is sound
//! only if the child calls nothing but async-signal-safe functions until it execs or exits:
//! the child here calls `_exit(0)` and nothing else.
//!
//! # References
//! - [`fork(2)`](https://man7.org/linux/man-pages/man2/fork.2.html),
//!   [`_exit(2)`](https://man7.org/linux/man-pages/man2/_exit.2.html),
//!   [`waitpid(2)`](https://man7.org/linux/man-pages/man2/waitpid.2.html),
//!   [`signal-safety(7)`](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
//!
//! [`spawn`]: crate::proc::spawner::spawn
#![allow(unsafe_code)]

use std::io;

/// Forks `count` children that each exit with status 0 at once, then waits for all of them,
/// in the order they were forked.
///
/// # Errors
/// When a `fork` or a `waitpid` fails, or a child did not exit with status 0. The children
/// forked before a failing `fork` are still waited for (none is left a zombie).
pub fn fork_exit_wait(count: usize) -> io::Result<()> {
    let mut pids = Vec::with_capacity(count);
    let mut failed = None;
    for _ in 0..count {
        // SAFETY: the child runs only `_exit`, which is async-signal-safe, so it never touches
        // a lock or allocator state another thread of this process held at the fork.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: ends the child at once, without running atexit handlers or
                // destructors (which belong to the parent's state).
                unsafe { libc::_exit(0) }
            }
            -1 => {
                failed = Some(io::Error::last_os_error());
                break;
            }
            pid => pids.push(pid),
        }
    }
    for pid in pids {
        let mut status = 0;
        loop {
            // SAFETY: `pid` is a child forked above and not reaped yet; `status` is a valid
            // place for the kernel to write the exit status into.
            let got = unsafe { libc::waitpid(pid, &mut status, 0) };
            if got == pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                failed.get_or_insert(e);
                break;
            }
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failed.get_or_insert_with(|| {
                io::Error::other(format!("forked child {pid} ended with status {status:#x}"))
            });
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
