//! The fork server: children forked from it get the parent's set-up as of the spawn, behave like
//! re-executed ones, and a server that dies or is turned off costs nothing but speed.

use multiproc::{Builder, spawn};
use multiproc_suite::{eventually, fork_server, process_gone, within, zombie_children};
use serde::{Deserialize, Serialize};

/// A variable every probed child gets from its builder. A re-executed child finds it in the
/// environment block the kernel built at `exec` (`/proc/self/environ`); a child forked from the
/// server does not, since that block is the server's.
const MARKER: &str = "MULTIPROC_TEST_SPAWN_MARKER";

/// What a child sees of itself.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    forked: bool,
    args: Vec<String>,
    cmdline_arg0: String,
    env_marker: Option<String>,
    cwd: std::path::PathBuf,
    stdout: std::path::PathBuf,
    parent: u32,
    cpus: Vec<usize>,
    thread_result: u32,
    /// Open descriptors above standard error, as `readlink` shows them.
    extra_fds: Vec<String>,
}

fn allowed_cpus() -> Vec<usize> {
    let set = rustix::thread::sched_getaffinity(None).unwrap();
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&i| set.is_set(i))
        .collect()
}

fn probe(_: ()) -> Probe {
    let environ = std::fs::read("/proc/self/environ").unwrap();
    let marker = format!("{MARKER}=");
    let forked = !environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(marker.as_bytes()));
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
    Probe {
        forked,
        args: std::env::args().collect(),
        cmdline_arg0: String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap())
            .into_owned(),
        env_marker: std::env::var(MARKER).ok(),
        cwd: std::env::current_dir().unwrap(),
        stdout: std::fs::read_link("/proc/self/fd/1").unwrap(),
        parent: std::os::unix::process::parent_id(),
        cpus: allowed_cpus(),
        // Threads work in a forked child (glibc's view of the process is right).
        thread_result: std::thread::spawn(|| 6 * 7).join().unwrap(),
        extra_fds: open_descriptors_above_stderr(),
    }
}

fn open_descriptors_above_stderr() -> Vec<String> {
    let listing: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .collect();
    listing
        .iter()
        .filter(|entry| entry.file_name().to_str().unwrap().parse::<u32>().unwrap() > 2)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|link| link.display().to_string())
        // The listing's own descriptor is gone by the time it is read back.
        .filter(|link| !link.starts_with("/proc/"))
        .collect()
}

fn probed(name: &str) -> Builder {
    Builder::new().name(name).env(MARKER, name)
}

/// Makes sure this process's fork server is running: the first spawn starts it.
async fn warm_up() {
    within("warm-up child", spawn((), |()| ())).await.unwrap();
}

#[tokio::test]
async fn forked_children_get_the_parents_setup() {
    warm_up().await;
    let child = probed("mp-forked").spawn((), probe).unwrap();
    let seen = within("probe child", child).await.unwrap();
    assert!(seen.forked, "not forked from the server: {seen:?}");
    assert_eq!(seen.args, ["mp-forked"]);
    assert_eq!(seen.cmdline_arg0, "mp-forked");
    assert_eq!(seen.env_marker.as_deref(), Some("mp-forked"));
    assert_eq!(seen.cwd, std::env::current_dir().unwrap());
    assert_eq!(seen.stdout, std::fs::read_link("/proc/self/fd/1").unwrap());
    assert_eq!(
        seen.parent,
        std::process::id(),
        "CLONE_PARENT: we are its parent"
    );
    assert_eq!(seen.cpus, allowed_cpus());
    assert_eq!(seen.thread_result, 42);
    // The control socket and what any child inherits from us (descriptors without
    // close-on-exec, such as ones a shell passed down): nothing of the server's or the
    // request's leaks into the child.
    let inherited = inheritable_descriptors();
    assert_eq!(
        seen.extra_fds.len(),
        inherited.len() + 1,
        "{seen:?} {inherited:?}"
    );
    for link in &inherited {
        assert!(seen.extra_fds.contains(link), "{seen:?} {inherited:?}");
    }
}

/// What a child sees of its environment: whether it was forked, its variables as std reads
/// them, and as a program it runs inherits them (`env`, started with no changes, so from the
/// C library's `environ` itself).
fn environment(_: ()) -> (bool, Vec<(String, String)>, Vec<String>) {
    let forked = probe(()).forked;
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    let output = std::process::Command::new("env").output().unwrap();
    let mut inherited: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    inherited.sort();
    (forked, vars, inherited)
}

#[tokio::test]
async fn forked_children_get_exactly_the_requested_environment() {
    warm_up().await;
    let child = probed("mp-environment")
        .env("MULTIPROC_TEST_ADDED", "added value")
        .env_remove("PATH")
        .spawn((), environment)
        .unwrap();
    let (forked, vars, inherited) = within("environment child", child).await.unwrap();
    assert!(forked, "not forked from the server");
    let mut expected: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| key != "PATH")
        .chain([
            ("MULTIPROC_TEST_ADDED".into(), "added value".into()),
            (MARKER.into(), "mp-environment".into()),
        ])
        .collect();
    expected.sort();
    // Nothing of the server's own environment (such as `LD_BIND_NOW`) reaches the child.
    assert_eq!(vars, expected);
    let mut expected: Vec<String> = expected
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    expected.sort();
    assert_eq!(inherited, expected);
}

/// A variable whose value's size changes from child to child.
const SIZED: &str = "MULTIPROC_TEST_SIZED";

/// Whether the child was forked, and its [`SIZED`] value.
fn sized(_: ()) -> (bool, Option<String>) {
    (probe(()).forked, std::env::var(SIZED).ok())
}

#[tokio::test]
async fn each_forked_child_gets_its_own_environment_whatever_came_before() {
    warm_up().await;
    // The server receives every request into the same buffer: a short request after a long
    // one must not see the long one's bytes. A request larger than that buffer is refused by
    // the parent and that child is re-executed, with the same environment.
    let sizes = [40_000, 3, 20_000, 0, 70_000, 1];
    for (i, size) in sizes.into_iter().enumerate() {
        let value: String = (0..size)
            .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
            .collect();
        let child = probed("mp-sized")
            .env(SIZED, &value)
            .spawn((), sized)
            .unwrap();
        let (forked, seen) = within("sized child", child).await.unwrap();
        assert_eq!(forked, size < 64 * 1024, "child {i} ({size} bytes)");
        assert_eq!(
            seen.as_deref(),
            Some(value.as_str()),
            "child {i} ({size} bytes)"
        );
    }
}

/// Descriptors above standard error that a child process inherits: those without close-on-exec
/// (`O_CLOEXEC` in the `flags` line of `/proc/self/fdinfo/<fd>`, in octal).
fn inheritable_descriptors() -> Vec<String> {
    const O_CLOEXEC: u32 = 0o2000000;
    let mut links = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        if name.parse::<u32>().unwrap() <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else {
            continue; // the listing's own descriptor, closed by now
        };
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .map(|octal| u32::from_str_radix(octal.trim(), 8).unwrap())
            .unwrap();
        if flags & O_CLOEXEC == 0 {
            links.push(entry.path().read_link().unwrap().display().to_string());
        }
    }
    links
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

fn abort(_: ()) {
    std::process::abort()
}

fn panic(_: ()) {
    panic!("forked panic")
}

#[tokio::test]
async fn forked_children_report_exits_signals_and_panics() {
    warm_up().await;
    let exit = within("exiting child", spawn(7, exit_with)).await;
    assert_eq!(exit.unwrap_err().exit_code(), Some(7));
    // `abort` raises SIGABRT at the calling thread by its id, which glibc must know.
    let abort = within("aborting child", spawn((), abort)).await;
    assert_eq!(abort.unwrap_err().signal(), Some(6));
    let panic = within("panicking child", spawn((), panic)).await;
    assert_eq!(panic.unwrap_err().panic_message(), Some("forked panic"));
}

/// Runs in a fresh process with a server of its own: kills the server, then spawns on.
async fn outlive_the_server(_: ()) -> (bool, bool, bool, bool) {
    warm_up().await;
    let server = fork_server().expect("a running fork server");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(eventually(|| process_gone(server) || zombie_children().contains(&server)).await);
    // Server gone: re-executed, and a new server starts.
    let first = within("after the kill", probed("after").spawn((), probe).unwrap())
        .await
        .unwrap();
    let second = within(
        "with the new server",
        probed("again").spawn((), probe).unwrap(),
    )
    .await
    .unwrap();
    let reaped = eventually(|| process_gone(server)).await;
    let replaced = fork_server().is_some_and(|pid| pid != server);
    (first.forked, second.forked, reaped, replaced)
}

#[tokio::test]
async fn a_killed_server_is_reaped_and_replaced() {
    let (first, second, reaped, replaced) = within(
        "middle process",
        Builder::new().spawn((), outlive_the_server).unwrap(),
    )
    .await
    .unwrap();
    assert!(!first, "the child after the kill must be re-executed");
    assert!(second, "the next child must come from the new server");
    assert!(reaped, "the killed server was left a zombie");
    assert!(replaced, "no new server was started");
}

/// A field of `/proc/<pid>/stat` after the command name: 0 is the state, 19 the start time.
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(index).map(str::to_owned)
}

/// How long a spawn may take with the server stopped: well under the 30 s it once stalled for.
const STOPPED_SERVER_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs in a fresh process with a server of its own: stops the server, then spawns on.
async fn outlast_a_stopped_server(_: ()) -> (bool, bool, bool, bool, bool) {
    warm_up().await;
    let server = fork_server().expect("a running fork server");
    let started = stat_field(server, 19);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    assert!(eventually(|| stat_field(server, 0).as_deref() == Some("T")).await);
    // `spawn` blocks its caller while the spawner works, so bound it from another thread.
    let first = tokio::time::timeout(STOPPED_SERVER_BOUND, async {
        let spawned = tokio::task::spawn_blocking(|| probed("after-stop").spawn((), probe));
        spawned.await.unwrap().unwrap().await
    })
    .await;
    let in_time = first.is_ok();
    let first_forked = first.is_ok_and(|seen| seen.unwrap().forked);
    // Killed and reaped: no such process, or its pid taken by a later one.
    let reaped = eventually(|| stat_field(server, 19).is_none_or(|t| Some(t) != started)).await;
    let second = within(
        "after the restart",
        probed("restarted").spawn((), probe).unwrap(),
    )
    .await
    .unwrap();
    let replaced = fork_server().is_some_and(|pid| pid != server);
    (in_time, first_forked, reaped, second.forked, replaced)
}

#[tokio::test]
async fn a_stopped_server_is_abandoned_and_replaced() {
    let (in_time, first_forked, reaped, second_forked, replaced) = within(
        "middle process",
        Builder::new().spawn((), outlast_a_stopped_server).unwrap(),
    )
    .await
    .unwrap();
    assert!(
        in_time,
        "the spawn after SIGSTOP did not finish within {STOPPED_SERVER_BOUND:?}"
    );
    assert!(
        !first_forked,
        "the child after the stop must be re-executed"
    );
    assert!(reaped, "the stopped server was left behind");
    assert!(second_forked, "the next child must come from a new server");
    assert!(replaced, "no new server was started");
}

/// Runs in a process started with `MULTIPROC_FORK_SERVER=0`.
async fn spawn_without_server(_: ()) -> (bool, bool, bool) {
    warm_up().await;
    let seen = within("unforked child", probed("exec").spawn((), probe).unwrap())
        .await
        .unwrap();
    (
        seen.forked,
        seen.env_marker.is_some(),
        fork_server().is_some(),
    )
}

#[tokio::test]
async fn the_server_can_be_turned_off() {
    let (forked, marker, server) = within(
        "middle process",
        Builder::new()
            .env("MULTIPROC_FORK_SERVER", "0")
            .spawn((), spawn_without_server)
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        !forked && marker,
        "with the server off, children are re-executed"
    );
    assert!(!server, "no server may run when it is turned off");
}
