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
//! Functions are named by their address relative to an anchor in this binary, which survives
//! address-space randomisation because the child runs the identical file.
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
//!   group, which is its parent, or has exited since (a detached child may outlive the parent
//!   that started it). Otherwise the child exits with [`BOOTSTRAP_FAILED_EXIT`] and runs
//!   nothing, not even `main`: a child is what it was started as.
//!
//! Only then is the hello read. It carries the program key (see `remote_fn`), a random key
//! drawn by the first process of the program, which therefore travels only over sockets that
//! passed these checks, never in the environment or the command line.
//!
//! # References
//! - [`getauxval(3)`](https://man7.org/linux/man-pages/man3/getauxval.3.html) (`AT_SECURE`),
//!   [`unix(7)`](https://man7.org/linux/man-pages/man7/unix.7.html) (`SO_PEERCRED`)
#![allow(unsafe_code)]

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys::{self, Direction};

/// The environment variable that turns a process into a multiproc child.
pub const BOOTSTRAP_ENV: &str = "MULTIPROC_BOOTSTRAP";
/// Exit code of a child whose bootstrap failed before the entry point ran.
pub const BOOTSTRAP_FAILED_EXIT: i32 = 121;

const HELLO_MAGIC: [u8; 8] = *b"MPBOOT02";
/// Magic, shim and run offsets, executable device and inode, program key (two words).
const HELLO_LEN: usize = 8 + 8 + 8 + 8 + 8 + 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

#[used]
// SAFETY: `.init_array` holds `extern "C" fn()` pointers run by the dynamic loader before main;
// `bootstrap_hook` has exactly that type and is sound to run at that time (see its body).
#[unsafe(link_section = ".init_array")]
static BOOTSTRAP_HOOK: extern "C" fn() = bootstrap_hook;

/// Names a function the child runs, as offsets from this binary's anchor.
#[derive(Clone, Copy, Debug)]
pub struct EntryPoint {
    shim: i64,
    run: i64,
}

fn anchor() -> usize {
    bootstrap_hook as extern "C" fn() as usize
}

/// The offset of a function address from the anchor: the same in every process of this
/// executable.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor()) as i64
}

/// The address in this process of the function at `offset` from the anchor.
pub(crate) fn address_of(offset: i64) -> usize {
    anchor().wrapping_add(offset as usize)
}

impl EntryPoint {
    /// The entry point that calls `run(f, control)` in the child, where `control` is the child
    /// end of the bootstrap socket.
    ///
    /// `F` must be zero-sized (a `fn` item or a closure that captures nothing): the child
    /// rebuilds the value from its type alone, which is only meaningful when there is no data.
    /// Passing a capturing closure is a compile-time error.
    pub fn new<F: Copy + 'static>(f: F, run: fn(F, OwnedFd)) -> EntryPoint {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "multiproc: the child function must be a fn item or a closure that captures nothing"
            )
        };
        let _ = f;
        // Keep the constructor linked into every program that spawns.
        std::hint::black_box(&BOOTSTRAP_HOOK);
        EntryPoint {
            shim: offset_of(shim::<F> as fn(usize, OwnedFd) as usize),
            run: offset_of(run as usize),
        }
    }
}

/// Rebuilds the zero-sized `F` and calls the `run` function found at `run_addr`.
fn shim<F: Copy + 'static>(run_addr: usize, control: OwnedFd) {
    // SAFETY: `run_addr` is `anchor + offset` where the offset was computed by
    // `EntryPoint::new::<F>` from a `fn(F, OwnedFd)` in this same executable (the child checked
    // the executable's identity before calling us), so it is the address of a function of
    // exactly this type.
    let run = unsafe { std::mem::transmute::<usize, fn(F, OwnedFd)>(run_addr) };
    // SAFETY: `F` is zero-sized (asserted at compile time in `EntryPoint::new`), `Copy` (so it
    // has no drop glue and any number of copies may exist), and inhabited (the parent held a
    // value of it). A zero-sized value has no bytes, so the zeroed value equals that one.
    let f: F = unsafe { std::mem::zeroed() };
    run(f, control)
}

/// A command that starts this executable as a child running `entry`, plus the parent's end of
/// the control socket. The hello is already queued on the socket.
pub struct ChildCommand {
    /// The command to spawn (`/proc/self/exe`); add arguments, environment and stdio freely.
    pub command: Command,
    /// The parent's end of the control socket.
    pub parent_end: OwnedFd,
    /// The child's end; it must stay open until the command is spawned, then be dropped.
    pub child_end: OwnedFd,
}

/// Prepares a [`ChildCommand`] for `entry`.
///
/// # Errors
/// When the control socket cannot be created or `/proc/self/exe` cannot be read; in a
/// secure-execution program (setuid, setgid, file capabilities), which spawns no children
/// (see the [module docs](self)).
pub fn child_command(entry: EntryPoint) -> io::Result<ChildCommand> {
    let (parent_end, child_end) = sys::stream_socketpair()?;
    send_hello(&parent_end, entry)?;

    let mut command = Command::new("/proc/self/exe");
    let raw = child_end.as_raw_fd();
    command.env(BOOTSTRAP_ENV, raw.to_string());
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (fcntl) on a value captured by copy.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            // `raw` is open in the child: it is the parent's `child_end`, still open when the
            // fork happened; we only clear its close-on-exec flag.
            let fd = rustix::fd::BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    Ok(ChildCommand {
        command,
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
    let (dev, ino) = sys::exe_identity()?;
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(&HELLO_MAGIC);
    hello.extend_from_slice(&entry.shim.to_le_bytes());
    hello.extend_from_slice(&entry.run.to_le_bytes());
    hello.extend_from_slice(&dev.to_le_bytes());
    hello.extend_from_slice(&ino.to_le_bytes());
    for word in crate::proc::remote_fn::program_key() {
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
    if maker.pid != parent
        && (maker.pid <= 0 || crate::sys::identity::is_running(maker.pid as u32, 0, 0))
    {
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
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes, the size of `cred`, into `cred`, a plain
    // struct of integers; `socket` is an open descriptor for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
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
    let (shim, run, dev, ino) = (word(8) as i64, word(16) as i64, word(24), word(32));
    if sys::exe_identity()? != (dev, ino) {
        return Err(io::Error::other("the parent runs a different executable"));
    }
    crate::proc::remote_fn::inherit_program_key([word(40), word(48)]);
    let shim_addr = address_of(shim);
    let run_addr = address_of(run);
    // SAFETY: the offset came from `EntryPoint::new` in the parent, which runs this identical
    // executable (checked just above), as the offset of `shim::<F>`, a `fn(usize, OwnedFd)`.
    let shim = unsafe { std::mem::transmute::<usize, fn(usize, OwnedFd)>(shim_addr) };
    shim(run_addr, control);
    Ok(())
}

fn read_hello(control: &OwnedFd) -> io::Result<[u8; HELLO_LEN]> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut hello = [0u8; HELLO_LEN];
    let mut got = 0;
    let mut file = std::fs::File::from(control.try_clone()?);
    while got < HELLO_LEN {
        match file.read(&mut hello[got..]) {
            Ok(0) => return Err(io::Error::other("parent closed before the hello")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !sys::wait_ready(control.as_fd(), Direction::Read, Some(deadline))? {
                    return Err(io::Error::other("timed out waiting for the hello"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hello)
}
