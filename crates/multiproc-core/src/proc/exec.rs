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

use std::ffi::{CStr, CString, OsStr, OsString, c_char};
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
    mut env: Environment,
) -> io::Result<u32> {
    // The child gets the control socket at `target`, a number free in this process and so in
    // the child (whose descriptor table starts as a copy of ours), through `dup2`, which clears
    // close-on-exec on the copy. (`dup2` onto the same number would only do so from glibc 2.29.)
    let target = rustix::io::fcntl_dupfd_cloexec(child_end, 3)?;

    let argv: [*const c_char; 2] = [arg0.as_ptr(), std::ptr::null()];
    let bootstrap = format!("{BOOTSTRAP_ENV}={}", target.as_raw_fd());
    env.push(&CString::new(bootstrap).expect("no NUL in a name and a number"));
    let envp = env.pointers();

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
/// changes, never the bootstrap variable (the spawn path adds its own). Sorted by name, one
/// string per name (the last change wins), in one buffer: a spawn makes one allocation for it
/// here, not one per variable.
pub(crate) fn environment(options: &SpawnOptions) -> io::Result<Environment> {
    let ours: Vec<(OsString, OsString)> = match options.env_clear {
        true => Vec::new(),
        false => std::env::vars_os().collect(),
    };
    // Every change in order (ours first, then the options', then the bootstrap variable's
    // removal); a stable sort by name keeps that order among equal names, so the last one of
    // each name is its value (`None`: removed).
    let mut changes: Vec<(&OsStr, Option<&OsStr>)> =
        Vec::with_capacity(ours.len() + options.env.len() + 1);
    changes.extend(
        ours.iter()
            .map(|(key, value)| (key.as_os_str(), Some(value.as_os_str()))),
    );
    changes.extend(
        options
            .env
            .iter()
            .map(|(key, value)| (key.as_os_str(), value.as_deref())),
    );
    changes.push((OsStr::new(BOOTSTRAP_ENV), None));
    changes.sort_by(|a, b| a.0.cmp(b.0));
    let mut block = Vec::with_capacity(
        changes
            .iter()
            .map(|(key, value)| key.len() + value.map_or(0, OsStr::len) + 2)
            .sum(),
    );
    for (i, &(key, value)) in changes.iter().enumerate() {
        let last_of_its_name = changes.get(i + 1).is_none_or(|next| next.0 != key);
        let Some(value) = value.filter(|_| last_of_its_name) else {
            continue;
        };
        if key.as_bytes().contains(&0) || value.as_bytes().contains(&0) {
            return Err(nul_error(&format!("environment variable {key:?}")));
        }
        block.extend_from_slice(key.as_bytes());
        block.push(b'=');
        block.extend_from_slice(value.as_bytes());
        block.push(0);
    }
    Ok(Environment(block))
}

/// A child's environment (from [`environment`]): `KEY=value` strings, each ended by a NUL and
/// with none inside, in one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Environment(Vec<u8>);

impl Environment {
    /// The strings, without their NULs.
    pub(crate) fn vars(&self) -> impl Iterator<Item = &[u8]> {
        self.0
            .split_inclusive(|&b| b == 0)
            .map(|var| &var[..var.len() - 1])
    }

    /// The bytes of all strings, each ended by its NUL.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether a string starts with `prefix` (say `KEY=`).
    pub(crate) fn has(&self, prefix: &[u8]) -> bool {
        self.vars().any(|var| var.starts_with(prefix))
    }

    /// Appends `var` (`KEY=value`; the caller knows `KEY` is not there yet).
    pub(crate) fn push(&mut self, var: &CStr) {
        self.0.extend_from_slice(var.to_bytes_with_nul());
    }

    /// A null-terminated array of pointers to the strings, for `execve`-style calls; valid
    /// while `self` is neither changed nor dropped.
    fn pointers(&self) -> Vec<*const c_char> {
        let mut envp: Vec<*const c_char> = self
            .0
            .split_inclusive(|&b| b == 0)
            .map(|var| var.as_ptr().cast())
            .collect();
        envp.push(std::ptr::null());
        envp
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn options(clear: bool, env: &[(&str, Option<&str>)]) -> SpawnOptions {
        SpawnOptions {
            env_clear: clear,
            env: env
                .iter()
                .map(|(key, value)| (key.into(), value.map(Into::into)))
                .collect(),
            ..SpawnOptions::default()
        }
    }

    fn vars(env: &Environment) -> Vec<String> {
        env.vars()
            .map(|var| String::from_utf8(var.to_vec()).expect("UTF-8"))
            .collect()
    }

    #[test]
    fn the_last_change_of_a_name_wins_in_name_order() {
        let changes = [
            ("B", Some("1")),
            ("A", Some("1")),
            ("B", Some("2")),
            ("C", Some("x")),
            ("C", None),
            ("D", None),
            ("E", None),
            ("E", Some("")),
            (BOOTSTRAP_ENV, Some("5")),
        ];
        let env = environment(&options(true, &changes)).expect("no NUL");
        assert_eq!(vars(&env), ["A=1", "B=2", "E="]);
        assert_eq!(env.len(), b"A=1\0B=2\0E=\0".len());
        assert!(env.has(b"E=") && !env.has(b"C="));
        let pointers = env.pointers();
        assert_eq!(pointers.len(), 4);
        assert!(pointers[3].is_null());
        assert!(
            environment(&options(true, &[]))
                .expect("empty")
                .vars()
                .next()
                .is_none(),
            "an empty environment has no strings"
        );
    }

    #[test]
    fn ours_with_changes_is_what_a_map_of_them_gives() {
        let changes = [("MULTIPROC_EXEC_TEST", Some("1")), ("PATH", None)];
        let mut expected: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        expected.insert("MULTIPROC_EXEC_TEST".into(), "1".into());
        expected.remove(OsStr::new("PATH"));
        expected.remove(OsStr::new(BOOTSTRAP_ENV));
        let expected: Vec<Vec<u8>> = expected
            .iter()
            .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
            .collect();
        let env = environment(&options(false, &changes)).expect("no NUL");
        assert_eq!(env.vars().map(<[u8]>::to_vec).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn a_nul_in_a_name_or_value_is_refused() {
        for changes in [[("A\0B", Some("1"))], [("A", Some("1\0"))]] {
            let e = environment(&options(true, &changes)).expect_err("a NUL");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        // A removed variable is never written, whatever it holds.
        let env = environment(&options(true, &[("A", Some("1\0")), ("A", None)]));
        assert!(env.expect("removed").vars().next().is_none());
    }
}
