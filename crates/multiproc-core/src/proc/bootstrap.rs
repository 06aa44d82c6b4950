//! How a re-executed copy of the program becomes a child that runs one function.
//!
//! The parent starts `/proc/self/exe` with `MULTIPROC_BOOTSTRAP=<fd>` and one end of a socket
//! pair at that descriptor. Before `main` runs (an `.init_array` constructor), the child finds
//! the variable, checks that the socket comes from the process that started it, reads a hello
//! from the socket naming the entry point, checks that it is the very same executable, and
//! jumps there; it never reaches `main`, so a program that spawns children in `main` can never
//! spawn them recursively. A process without the variable is not touched. (A child forked from
//! the fork server, itself such a copy, takes its socket from the server and enters at `enter`.)
//!
//! The entry point is an [`EntryPoint`]: a [`RemoteFn`] of the control socket, named and checked
//! like every function one process names for another (see `remote_fn`).
//!
//! # Who may name the function
//! Jumping to an offset read from a descriptor named by an environment variable is only sound
//! when whoever chose both is the parent, which could run that function anyway. Two checks
//! hold the line (the threat model is argued in ARCHITECTURE.md, "Spawning"):
//! - **Secure execution** (`AT_SECURE`: a setuid, setgid or file-capability program, or an LSM
//!   transition) means this process has privileges its launcher lacks, and its environment is
//!   the launcher's to choose. The constructor then ignores the variable and `main` runs, as if
//!   it were not set; and such a process spawns no children (they would be secure too, and run
//!   `main`).
//! - **The socket's origin**: the kernel records who made a socket pair (`SO_PEERCRED`). The
//!   control socket must have been made by a process with this process's effective user and
//!   group, which is its parent, or has exited or is exiting since (a detached child may
//!   outlive the parent that started it; a parent killed with its threads hands its children
//!   to another parent before the kernel marks it a zombie, so a dying maker counts as gone).
//!   Otherwise the child exits with [`BOOTSTRAP_FAILED_EXIT`] and runs nothing, not even
//!   `main`: a child is what it was started as.
//!
//! Only then is the hello read. It carries the program key (see `remote_fn`), a random key
//! drawn by the first process of the program, which therefore travels only over sockets that
//! passed these checks, never in the environment or the command line.
//!
//! # References
//! - [`getauxval(3)`](https://man7.org/linux/man-pages/man3/getauxval.3.html) (`AT_SECURE`),
//!   [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SO_PEERCRED`)
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::proc::remote_fn::{self, RemoteFn};
use crate::sys::identity;
use crate::sys::{self, Direction};

/// The environment variable that turns a process into a multiproc child.
pub const BOOTSTRAP_ENV: &str = "MULTIPROC_BOOTSTRAP";
/// Exit code of a child whose bootstrap failed before the entry point ran.
pub const BOOTSTRAP_FAILED_EXIT: i32 = 121;

const HELLO_MAGIC: [u8; 8] = *b"MPBOOT03";
/// Magic, entry token (shim and run offsets, tag), executable device and inode, program key
/// (two words).
const HELLO_LEN: usize = 8 + 24 + 16 + 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

#[used]
// SAFETY: `.init_array` holds `extern "C" fn()` pointers run by the dynamic loader before main;
// `bootstrap_hook` has exactly that type and is sound to run at that time (see its body).
#[unsafe(link_section = ".init_array")]
static BOOTSTRAP_HOOK: extern "C" fn() = bootstrap_hook;

/// What a child runs: `run(f, control)`, where `control` is the child end of its control
/// socket, named like any function sent to another process. Make one with
/// [`RemoteFn::new`]; `f` must be zero-sized (a `fn` item or a closure that captures nothing),
/// which is checked at compile time.
pub type EntryPoint = RemoteFn<OwnedFd, ()>;

/// A control socket whose child end makes a new process of this executable run an entry point:
/// the hello naming it is already queued. The spawner makes one for every child.
#[derive(Debug)]
pub struct ControlSocket {
    /// The parent's end.
    pub parent_end: OwnedFd,
    /// The child's end, close-on-exec: the spawner hands it to the child and then drops it.
    pub child_end: OwnedFd,
}

/// Makes a [`ControlSocket`] for a child that runs `entry`.
///
/// # Errors
/// When the socket cannot be created or `/proc/self/exe` cannot be read; in a secure-execution
/// program (setuid, setgid, file capabilities), which spawns no children (see the
/// [module docs](self)).
pub fn control_socket(entry: EntryPoint) -> io::Result<ControlSocket> {
    let (parent_end, child_end) = sys::stream_socketpair()?;
    send_hello(&parent_end, entry)?;
    Ok(ControlSocket {
        parent_end,
        child_end,
    })
}

/// Queues on `socket` the hello that makes the process at its other end run `entry`.
///
/// # Errors
/// In a secure-execution program: the child would be one too, ignore the hello and run `main`.
pub(crate) fn send_hello(socket: &OwnedFd, entry: EntryPoint) -> io::Result<()> {
    if secure_execution() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a setuid or setcap program cannot spawn children",
        ));
    }
    // Keep the constructor linked into every program that spawns.
    std::hint::black_box(&BOOTSTRAP_HOOK);
    let (dev, ino) = sys::exe_identity()?;
    let (shim, run, tag) = entry.token();
    let [k0, k1] = remote_fn::program_key();
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&HELLO_MAGIC);
    for word in [shim as u64, run as u64, tag, dev, ino, k0, k1] {
        hello.extend_from_slice(&word.to_le_bytes());
    }
    // A fresh socket buffer holds far more than the hello: this never blocks.
    let written = sys::send_with_fds(socket.as_fd(), &hello, &[])?;
    if written != hello.len() {
        return Err(io::Error::other("short write of the bootstrap hello"));
    }
    Ok(())
}

/// Whether this process runs in secure-execution mode: its `exec` gave it privileges that its
/// launcher, who chose its environment and descriptors, did not have.
///
/// # References
/// - [`getauxval(3)`](https://man7.org/linux/man-pages/man3/getauxval.3.html) (`AT_SECURE`)
fn secure_execution() -> bool {
    // SAFETY: `getauxval` only reads the auxiliary vector the kernel left at `exec`; glibc sets
    // it up before any constructor runs. 0 (absent) means not secure.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

extern "C" fn bootstrap_hook() {
    let Some(value) = std::env::var_os(BOOTSTRAP_ENV) else {
        return;
    };
    // Whoever started a secure-execution program chose the variable: ignore it, run `main`.
    if secure_execution() {
        return;
    }
    // SAFETY: constructors run before main, on the only thread of the process, so nothing can
    // read the environment concurrently.
    unsafe { std::env::remove_var(BOOTSTRAP_ENV) };
    // Rust's runtime setup (which ignores SIGPIPE) has not run yet; do it so that writing to a
    // closed pipe is an error, as in any Rust program, rather than death.
    // SAFETY: setting SIGPIPE's disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    finish(take_control(&value.to_string_lossy()).and_then(enter));
}

/// Ends a child whose entry point returned (`Ok`) or could not be reached (`Err`, reported on
/// standard error and by the exit code [`BOOTSTRAP_FAILED_EXIT`]).
pub(crate) fn finish(outcome: io::Result<()>) -> ! {
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("multiproc: child bootstrap failed: {e}");
            std::process::exit(BOOTSTRAP_FAILED_EXIT)
        }
    }
}

/// Ends a child whose function has run, as Python ends its children (`os._exit` after the
/// target returns): flushes standard output (standard error is not buffered), then `_exit`s
/// with `code`.
///
/// So `atexit` handlers and C destructors registered in the child do not run, nor does the
/// loader's finalization of every library: it touched pages of the program that the child
/// never used, a quarter of a short child's page faults. Rust runs no destructors on
/// `std::process::exit` either, so a Rust program loses nothing else.
///
/// # References
/// - [`_exit(2)`](https://man7.org/linux/man-pages/man2/_exit.2.html)
pub fn exit_child(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().lock().flush();
    // SAFETY: `_exit` ends the process at once and never returns; it reads no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Takes ownership of the control socket named by the bootstrap variable's `value`.
fn take_control(value: &str) -> io::Result<OwnedFd> {
    let raw: RawFd = value.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
        io::Error::other(format!("{BOOTSTRAP_ENV}={value:?} is not a descriptor"))
    })?;
    // Before main, nothing in this process owns descriptors beyond what it inherited; check that
    // the number is an open socket before taking ownership.
    // SAFETY: a borrow for the duration of the fstat only; fstat on a closed number fails safely.
    let probe = unsafe { rustix::fd::BorrowedFd::borrow_raw(raw) };
    if !sys::is_socket(probe) {
        return Err(io::Error::other(format!(
            "descriptor {raw} is not a socket"
        )));
    }
    // SAFETY: the descriptor is open (fstat succeeded), was placed for us by the parent, and no
    // other object in this process owns it: we run before main and take it exactly once (the
    // variable was removed above).
    let control = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&control, rustix::io::FdFlags::CLOEXEC)?;
    check_origin(&control)?;
    Ok(control)
}

/// Checks that the control socket was made by our parent (or by a process with our user and
/// group that has exited since): see the [module docs](self).
///
/// # References
/// - [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SO_PEERCRED`),
///   [`getppid(2)`](https://man7.org/linux/man-pages/man2/getppid.2.html)
fn check_origin(control: &OwnedFd) -> io::Result<()> {
    let maker = socket_maker(control)?;
    if maker.uid != rustix::process::geteuid().as_raw()
        || maker.gid != rustix::process::getegid().as_raw()
    {
        return Err(io::Error::other(
            "the control socket was made by another user or group",
        ));
    }
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    // Pid 0: made in a pid namespace we cannot see, so not by our parent, which we can.
    // A maker that is dying counts as gone: a parent killed right after it started us hands
    // us to a new parent before the kernel marks it a zombie.
    let maker_lives = |pid: u32| identity::is_running(pid, 0, 0) && !identity::is_exiting(pid);
    if maker.pid != parent && (maker.pid <= 0 || maker_lives(maker.pid as u32)) {
        return Err(io::Error::other(format!(
            "the control socket was made by process {}, not by the parent",
            maker.pid
        )));
    }
    Ok(())
}

/// `getsockopt(SO_PEERCRED)`: for a socket pair, the process that made it and its effective
/// user and group. (Not rustix's, whose `Pid` cannot hold the 0 the kernel reports for a
/// process in a pid namespace we cannot see.)
fn socket_maker(socket: &OwnedFd) -> io::Result<libc::ucred> {
    crate::sys::peer_ucred(socket.as_fd())
}

/// Reads the hello on `control`, checks it, and runs the entry point it names with `control`.
pub(crate) fn enter(control: OwnedFd) -> io::Result<()> {
    let hello = read_hello(&control)?;
    if hello[..8] != HELLO_MAGIC {
        return Err(io::Error::other(
            "control socket did not start with the multiproc hello",
        ));
    }
    let word = |i: usize| u64::from_le_bytes(hello[i..i + 8].try_into().expect("8 bytes"));
    let token = (word(8) as i64, word(16) as i64, word(24));
    if sys::exe_identity()? != (word(32), word(40)) {
        return Err(io::Error::other("the parent runs a different executable"));
    }
    // Only now: the key (and so every token this process accepts) comes from the same program.
    remote_fn::inherit_program_key([word(48), word(56)]);
    let entry = EntryPoint::from_token(token)
        .ok_or_else(|| io::Error::other("the hello names no entry point of this program"))?;
    entry.call(control);
    Ok(())
}

fn read_hello(control: &OwnedFd) -> io::Result<[u8; HELLO_LEN]> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut hello = [0u8; HELLO_LEN];
    let mut got = 0;
    while got < HELLO_LEN {
        // Exactly the hello's bytes: what follows it (the caller's first messages, often
        // queued already) stays in the socket for the entry point.
        match rustix::io::read(control, &mut hello[got..]) {
            Ok(0) => return Err(io::Error::other("parent closed before the hello")),
            Ok(n) => got += n,
            Err(rustix::io::Errno::AGAIN) => {
                if !sys::wait_ready(control.as_fd(), Direction::Read, Some(deadline))? {
                    return Err(io::Error::other("timed out waiting for the hello"));
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(hello)
}
