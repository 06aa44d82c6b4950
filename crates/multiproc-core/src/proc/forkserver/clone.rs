//! Forking the single-threaded server with `CLONE_PARENT` by calling `clone3` (or `clone`)
//! directly, and redoing what glibc's `fork` would in the child (see the fork server's module
//! docs, "Forking without glibc's `fork`").
//!
//! # References
//! - [`clone(2)`](https://man7.org/linux/man-pages/man2/clone.2.html),
//!   [`PR_GET_TID_ADDRESS`](https://man7.org/linux/man-pages/man2/PR_GET_TID_ADDRESS.2const.html),
//!   [`get_robust_list(2)`](https://man7.org/linux/man-pages/man2/get_robust_list.2.html)
#![allow(unsafe_code)]

use std::io;

use rustix::io::Errno;

/// Forks this (single-threaded) process with `CLONE_PARENT`, keeping glibc's view of the new
/// process right (see the fork server's module docs).
pub(super) struct Forker {
    /// Where glibc keeps this thread's id (registered with `set_tid_address`).
    tid_address: usize,
    robust_list: (usize, usize),
}

pub(super) enum Forked {
    /// In the server, with the child's pid.
    Parent(u32),
    Child,
}

/// `struct clone_args` up to `tls` (`CLONE_ARGS_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// `prctl` option reading the `set_tid_address` pointer (not in the `libc` crate).
const PR_GET_TID_ADDRESS: libc::c_int = 40;

impl Forker {
    /// A forker; `ENOSYS` when this process cannot be forked safely here.
    pub(super) fn new() -> Result<Forker, Errno> {
        let mut address: usize = 0;
        // SAFETY: PR_GET_TID_ADDRESS stores one pointer at the address passed, `&mut address`.
        let rc = unsafe {
            libc::prctl(
                PR_GET_TID_ADDRESS,
                (&raw mut address) as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        if rc != 0 || address == 0 || !address.is_multiple_of(std::mem::align_of::<i32>()) {
            return Err(Errno::NOSYS);
        }
        // SAFETY: the kernel recorded this address from glibc's `set_tid_address(&self->tid)`:
        // a live, aligned `pid_t` in this thread's descriptor. Read once, to check that it holds
        // our thread id (musl registers another word, which would not).
        if unsafe { (address as *const i32).read_volatile() } != tid {
            return Err(Errno::NOSYS);
        }
        let (mut head, mut len): (usize, usize) = (0, 0);
        // SAFETY: get_robust_list(0, ...) stores the calling thread's list head and length at
        // the two addresses given.
        let rc =
            unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &raw mut head, &raw mut len) };
        if rc != 0 || threads() != Some(1) {
            return Err(Errno::NOSYS);
        }
        Ok(Forker {
            tid_address: address,
            robust_list: (head, len),
        })
    }

    /// Forks, and has the kernel write the child's pid at `slot_address` (a mapped, aligned
    /// `u32`, shared with the parent) before the call returns.
    pub(super) fn fork(&self, slot_address: usize) -> Result<Forked, Errno> {
        let flags = libc::CLONE_PARENT
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        let args = CloneArgs {
            flags: flags as u64,
            child_tid: self.tid_address as u64,
            parent_tid: slot_address as u64,
            // With `CLONE_PARENT` the child takes the server's exit signal (`SIGCHLD`, to the
            // parent); `clone3` insists this stays 0.
            exit_signal: 0,
            ..CloneArgs::default()
        };
        // SAFETY: like fork(2): no stack is given, so the child continues from this call on a
        // copy of this thread's stack, in a copy of this address space. The process has one
        // thread (checked in `new`) and holds no lock here, so the child finds every lock free.
        // `child_tid` is glibc's thread-id word (checked in `new`), which the kernel sets to the
        // child's id in the child only; `parent_tid` is the mapped slot, which it sets (shared
        // with the parent) before the call returns.
        let mut rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw const args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if rc == -1 && Errno::from_raw_os_error(errno()) == Errno::NOSYS {
            rc = clone(flags, slot_address, self.tid_address);
        }
        match rc {
            -1 => Err(Errno::from_raw_os_error(errno())),
            0 => {
                // SAFETY: re-registers the list head glibc registered for this thread (read in
                // `new`); the copy in this child is at the same address.
                unsafe {
                    libc::syscall(
                        libc::SYS_set_robust_list,
                        self.robust_list.0,
                        self.robust_list.1,
                    )
                };
                Ok(Forked::Child)
            }
            pid => Ok(Forked::Parent(pid as u32)),
        }
    }
}

/// `clone(2)` with `flags | SIGCHLD`, the parent's and the child's thread-id words, for kernels
/// (or seccomp filters) without `clone3`. The argument order is the generic one (x86-64,
/// AArch64, RISC-V).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
fn clone(flags: libc::c_int, parent_tid: usize, child_tid: usize) -> libc::c_long {
    // SAFETY: as for `clone3` in `Forker::fork`: fork semantics (no new stack), one thread.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            parent_tid,
            child_tid,
            0usize,
        )
    }
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
fn clone(_flags: libc::c_int, _parent_tid: usize, _child_tid: usize) -> libc::c_long {
    -1
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The number of threads in this process (`/proc/self/stat` field 20).
fn threads() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(17)?.parse().ok()
}
