//! The child bootstrap runs a function only for the process that started the child: a hello on
//! a socket made by anyone else still running runs nothing (one made by a process that has
//! exited since is honoured, for detached children), and a setuid program ignores the
//! bootstrap variable altogether and runs `main`.
//!
//! These tests play the forger: they build a genuine hello with core's `control_socket` (so the
//! hello itself, key included, is as good as a parent's) and hand the socket to a process that
//! this test process did not start directly.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use multiproc::core::SharedFd;
use multiproc::{Builder, pipe};
use multiproc_core::proc::bootstrap::{self, BOOTSTRAP_ENV, BOOTSTRAP_FAILED_EXIT, EntryPoint};
use multiproc_suite::{TEST_LIMIT, within};

/// The exit code of the forged function: seeing it means the forgery worked.
const FORGED_RAN: i32 = 42;

#[derive(Clone, Copy)]
struct Forged;

fn forged(_: Forged, _: OwnedFd) {
    std::process::exit(FORGED_RAN)
}

/// A socket carrying a genuine hello for [`forged`], as an inheritable descriptor (the test
/// cannot use `pre_exec`), and the parent's end, which must stay open meanwhile.
fn forged_socket() -> (OwnedFd, OwnedFd) {
    let boot = bootstrap::control_socket(EntryPoint::new(Forged, forged)).unwrap();
    // `dup` leaves close-on-exec off on the copy.
    let inheritable = rustix::io::dup(&boot.child_end).unwrap();
    (inheritable, boot.parent_end)
}

/// Runs `command` to the end, killing it if it takes longer than [`TEST_LIMIT`].
fn run(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TEST_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("timed out after {TEST_LIMIT:?}: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_hello_on_a_socket_not_made_by_the_parent_runs_nothing() {
    let (socket, _parent_end) = forged_socket();
    // The shell forks this test binary: its parent is the shell, the socket is ours.
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#""$0" --exact no_such_test; exit $?"#)
        .arg(std::env::current_exe().unwrap())
        .env(BOOTSTRAP_ENV, socket.as_raw_fd().to_string());
    let out = run(command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(FORGED_RAN),
        "the forged function ran"
    );
    assert_eq!(out.status.code(), Some(BOOTSTRAP_FAILED_EXIT), "{stderr}");
    assert!(stderr.contains("not by the parent"), "{stderr}");
}

/// Runs in a child: makes a control socket with a hello for [`forged`], hands its child end
/// over, and exits (closing the parent's end: the hello stays queued).
async fn make_a_socket_and_exit(mut out: pipe::Sender<SharedFd>) {
    let boot = bootstrap::control_socket(EntryPoint::new(Forged, forged)).unwrap();
    out.send(SharedFd::new(boot.child_end)).await.unwrap();
}

/// A detached child may find the parent that made its socket gone before its bootstrap runs:
/// a socket whose maker has exited, with our user and group, is honoured.
#[tokio::test]
async fn a_hello_from_a_maker_that_has_exited_is_honoured() {
    let (tx, mut rx) = pipe::simplex::<SharedFd>().unwrap();
    let maker = Builder::new().spawn(tx, make_a_socket_and_exit).unwrap();
    let received = within("the socket", rx.recv()).await.unwrap().unwrap();
    within("the maker's exit", maker).await.unwrap();
    let socket = rustix::io::dup(received.try_clone_owned().unwrap()).unwrap();
    drop(received);
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "no_such_test"])
        .env(BOOTSTRAP_ENV, socket.as_raw_fd().to_string());
    let out = tokio::task::spawn_blocking(move || run(command))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(FORGED_RAN),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs in the setuid copy, as `main` (the test harness) would: a secure-execution program
/// cannot spawn (its children would ignore their bootstrap and run `main` too).
#[tokio::test]
#[ignore = "run by a_setuid_program_ignores_the_bootstrap_and_runs_main in a setuid copy"]
async fn setuid_copy_main() {
    let spawned = Builder::new().spawn((), |()| ());
    let error = spawned.expect_err("a setuid program spawned a child");
    // The reason is the error's cause (its `source()`), not part of its own message.
    let chain: Vec<String> =
        std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    assert!(chain.iter().any(|e| e.contains("setuid")), "{chain:?}");
}

/// A copy of this test binary, owned by root and setuid, in a fresh directory anyone may enter.
struct SetuidCopy {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl SetuidCopy {
    fn new() -> SetuidCopy {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("multiproc-setuid-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("setuid-copy");
        std::fs::copy(std::env::current_exe().unwrap(), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755)).unwrap();
        SetuidCopy { dir, path }
    }
}

impl Drop for SetuidCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The realistic attack: an unprivileged user runs a setuid-root multiproc program with the
/// bootstrap variable naming a socket that carries a hello. It must run `main`, not the
/// function. Needs root (to make the copy setuid root) and `setpriv` (util-linux).
#[test]
fn a_setuid_program_ignores_the_bootstrap_and_runs_main() {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let (false, Some(setpriv)) = (rustix::process::geteuid().as_raw() != 0, setpriv) else {
        eprintln!("skipped: needs root and setpriv to make and run a setuid copy");
        return;
    };
    let copy = SetuidCopy::new();
    let (socket, _parent_end) = forged_socket();
    let mut command = Command::new(setpriv);
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy.path)
        .args(["--ignored", "--exact", "setuid_copy_main", "--nocapture"])
        .env(BOOTSTRAP_ENV, socket.as_raw_fd().to_string());
    let out = run(command);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(FORGED_RAN),
        "the forged function ran"
    );
    assert!(
        out.status.success() && stdout.contains("test setuid_copy_main ... ok"),
        "main did not run: {:?}\n{stdout}\n{stderr}",
        out.status
    );
}
