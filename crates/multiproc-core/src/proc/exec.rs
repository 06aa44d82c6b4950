//! Re-executing this program as a child: `posix_spawn` of `/proc/self/exe` with the control
//! socket, or `std::process::Command` for what `posix_spawn` cannot do here.
//!
//! `posix_spawn` is glibc's `clone(CLONE_VM | CLONE_VFORK)` + `exec`: unlike `fork`, it neither
//! copies this process's page tables nor leaves its pages copy-on-write behind. The child gets
//! the control socket through a `dup2` file action, which clears close-on-exec on its copy only.
//! `std::process::Command` falls back to `fork` because the control socket then needs a
//! `pre_exec` hook; it is still used for custom stdio, which `std::process::Stdio` keeps opaque,
//! and for a working directory (see [`SpawnOptions`]).
//!
//! # References
//! - [`posix_spawn(3)`](https://man7.org/linux/man-pages/man3/posix_spawn.3.html)
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsString, c_char};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::proc::bootstrap::BOOTSTRAP_ENV;

/// How to start a child, beyond the function it runs. Every field defaults to "as this
/// process". Setting `current_dir` or a standard stream makes `spawner::spawn` take the slower
/// `fork` path of `std::process::Command`.
#[derive(Debug, Default)]
pub struct SpawnOptions {
    /// `argv[0]`, what `ps` shows (default: the program path).
    pub arg0: Option<OsString>,
    /// Start from an empty environment instead of this process's.
    pub env_clear: bool,
    /// Variables to set (`Some`) or remove (`None`), applied in order after `env_clear`.
    pub env: Vec<(OsString, Option<OsString>)>,
    /// The working directory.
    pub current_dir: Option<PathBuf>,
    /// Standard input.
    pub stdin: Option<Stdio>,
    /// Standard output.
    pub stdout: Option<Stdio>,
    /// Standard error.
    pub stderr: Option<Stdio>,
}

impl SpawnOptions {
    /// True when `posix_spawn` can do all of it. `Stdio` is opaque, and `current_dir` needs
    /// `posix_spawn_file_actions_addchdir_np` (glibc 2.29), so those go through `Command`.
    pub(crate) fn posix_spawnable(&self) -> bool {
        self.current_dir.is_none()
            && self.stdin.is_none()
            && self.stdout.is_none()
            && self.stderr.is_none()
    }
}

/// The program every child runs: this executable.
const PROGRAM: &std::ffi::CStr = c"/proc/self/exe";

fn nul_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} contains a NUL byte"),
    )
}

/// The parent's ends of a child's standard streams that were set to `Stdio::piped()`.
#[derive(Debug, Default)]
pub struct StdioPipes {
    /// The write end of the child's standard input.
    pub stdin: Option<OwnedFd>,
    /// The read end of the child's standard output.
    pub stdout: Option<OwnedFd>,
    /// The read end of the child's standard error.
    pub stderr: Option<OwnedFd>,
}

impl StdioPipes {
    /// Takes the pipe ends of a spawned `std::process::Child`.
    pub(crate) fn take(child: &mut std::process::Child) -> Self {
        Self {
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        }
    }
}

/// The slow path: `std::process::Command` of this executable with the control socket and
/// `options` (it uses `fork`, since the socket needs a `pre_exec` hook).
pub(crate) fn command_spawn_child(
    child_end: &OwnedFd,
    options: SpawnOptions,
) -> io::Result<(u32, StdioPipes)> {
    let mut command = Command::new(PROGRAM.to_str().expect("an ASCII path"));
    configure(&mut command, options);
    // Last, so that the child finds it whatever the options did to the environment.
    let raw = child_end.as_raw_fd();
    command.env(BOOTSTRAP_ENV, raw.to_string());
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (fcntl) on a value captured by copy.
    unsafe {
        command.pre_exec(move || {
            // `raw` is open in the child: it is `child_end`, open in the parent when it forked;
            // we only clear its close-on-exec flag.
            let fd = rustix::fd::BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    // `std::process::Child` neither kills nor reaps on drop; the caller reaps by pidfd.
    let mut child = command.spawn()?;
    Ok((child.id(), StdioPipes::take(&mut child)))
}

/// Applies `options` to `command`: `argv[0]`, the environment, the working directory and the
/// standard streams.
pub(crate) fn configure(command: &mut Command, options: SpawnOptions) {
    if let Some(arg0) = &options.arg0 {
        command.arg0(arg0);
    }
    if options.env_clear {
        command.env_clear();
    }
    for (key, value) in &options.env {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    if let Some(dir) = options.current_dir {
        command.current_dir(dir);
    }
    if let Some(s) = options.stdin {
        command.stdin(s);
    }
    if let Some(s) = options.stdout {
        command.stdout(s);
    }
    if let Some(s) = options.stderr {
        command.stderr(s);
    }
}

/// `argv[0]` for a child: its name, or the program path.
pub(crate) fn arg0(options: &SpawnOptions) -> io::Result<CString> {
    match &options.arg0 {
        Some(arg0) => CString::new(arg0.as_bytes()).map_err(|_| nul_error("the child's name")),
        None => Ok(PROGRAM.to_owned()),
    }
}

/// The fast path: `posix_spawn` of this executable with `argv[0]`, the environment `env`
/// (from [`environment`]) and the control socket.
pub(crate) fn posix_spawn_child(
    child_end: &OwnedFd,
    arg0: &CStr,
    mut env: Vec<CString>,
) -> io::Result<u32> {
    // The child gets the control socket at `target`, a number free in this process and so in
    // the child (whose descriptor table starts as a copy of ours), through `dup2`, which clears
    // close-on-exec on the copy. (`dup2` onto the same number would only do so from glibc 2.29.)
    let target = rustix::io::fcntl_dupfd_cloexec(child_end, 3)?;

    let argv: [*const c_char; 2] = [arg0.as_ptr(), std::ptr::null()];
    let bootstrap = format!("{BOOTSTRAP_ENV}={}", target.as_raw_fd());
    env.push(CString::new(bootstrap).expect("no NUL in a name and a number"));
    let mut envp: Vec<*const c_char> = env.iter().map(|var| var.as_ptr()).collect();
    envp.push(std::ptr::null());

    let mut actions = FileActions::new()?;
    actions.dup2(child_end.as_raw_fd(), target.as_raw_fd())?;
    let attrs = Attributes::new()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: `PROGRAM` is NUL-terminated; `actions` and `attrs` are initialised and live until
    // after the call; `argv` and `envp` are NULL-terminated arrays of pointers to NUL-terminated
    // strings (`arg0`, `env`) that outlive the call. posix_spawn does not write through them
    // (the `*mut` in its signature is historical).
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            PROGRAM.as_ptr(),
            actions.as_ptr(),
            attrs.as_ptr(),
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(pid as u32)
}

/// The child's environment as `KEY=value` strings: ours (unless cleared) with the options'
/// changes, never the bootstrap variable (the spawn path adds its own).
pub(crate) fn environment(options: &SpawnOptions) -> io::Result<Vec<CString>> {
    let mut vars: BTreeMap<OsString, OsString> = if options.env_clear {
        BTreeMap::new()
    } else {
        std::env::vars_os().collect()
    };
    for (key, value) in &options.env {
        match value {
            Some(v) => vars.insert(key.clone(), v.clone()),
            None => vars.remove(key),
        };
    }
    vars.remove(std::ffi::OsStr::new(BOOTSTRAP_ENV));
    vars.iter()
        .map(|(key, value)| {
            let mut var = Vec::with_capacity(key.len() + value.len() + 1);
            var.extend_from_slice(key.as_bytes());
            var.push(b'=');
            var.extend_from_slice(value.as_bytes());
            CString::new(var).map_err(|_| nul_error(&format!("environment variable {key:?}")))
        })
        .collect()
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(Box<MaybeUninit<libc::posix_spawn_file_actions_t>>);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut actions = Box::new(MaybeUninit::uninit());
        // SAFETY: initialises the object in place; it is destroyed only on drop, after success.
        check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        Ok(Self(actions))
    }

    /// In the child, make `to` a copy of `from` (without close-on-exec).
    fn dup2(&mut self, from: i32, to: i32) -> io::Result<()> {
        // SAFETY: `self.0` was initialised by `posix_spawn_file_actions_init`.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(self.0.as_mut_ptr(), from, to) })
    }

    fn as_ptr(&self) -> *const libc::posix_spawn_file_actions_t {
        self.0.as_ptr()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (a `FileActions` exists only after success), destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(self.0.as_mut_ptr()) };
    }
}

/// `posix_spawnattr_t` set up like `std::process::Command` does: an empty signal mask and
/// `SIGPIPE` back to its default action in the child. Destroyed on drop.
struct Attributes(Box<MaybeUninit<libc::posix_spawnattr_t>>);

impl Attributes {
    fn new() -> io::Result<Self> {
        let mut attrs = Box::new(MaybeUninit::uninit());
        // SAFETY: initialises the object in place; it is destroyed only on drop, after success.
        check(unsafe { libc::posix_spawnattr_init(attrs.as_mut_ptr()) })?;
        let mut this = Self(attrs);
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigemptyset` initialises `set`; `sigaddset` and the setters read it after
        // that, and `this.0` is an initialised attribute object.
        unsafe {
            check(libc::sigemptyset(set.as_mut_ptr()))?;
            check(libc::posix_spawnattr_setsigmask(
                this.0.as_mut_ptr(),
                set.as_ptr(),
            ))?;
            check(libc::sigaddset(set.as_mut_ptr(), libc::SIGPIPE))?;
            check(libc::posix_spawnattr_setsigdefault(
                this.0.as_mut_ptr(),
                set.as_ptr(),
            ))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                this.0.as_mut_ptr(),
                flags as libc::c_short,
            ))?;
        }
        Ok(this)
    }

    fn as_ptr(&self) -> *const libc::posix_spawnattr_t {
        self.0.as_ptr()
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialised in `new` (an `Attributes` exists only after success), destroyed once.
        unsafe { libc::posix_spawnattr_destroy(self.0.as_mut_ptr()) };
    }
}

/// `posix_spawn*` calls return an error number; `sig*` calls return -1 and set `errno`.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
