//! The async process spawner across real child processes.

use std::time::{Duration, Instant};

use multiproc::pipe;
use multiproc::{Builder, spawn};
use multiproc_suite::{Even, eventually, process_gone, within, zombie_children};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn triple(x: u32) -> u32 {
    x * 3
}

async fn delayed_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    x * 2
}

fn sleep_forever(_: ()) {
    std::thread::sleep(Duration::from_secs(3600));
}

#[tokio::test]
async fn sync_and_async_functions_return_their_results() {
    assert_eq!(within("sync child", spawn(14, triple)).await.unwrap(), 42);
    assert_eq!(
        within("async child", spawn(21, delayed_double))
            .await
            .unwrap(),
        42
    );
    let joined = within(
        "closure child",
        spawn(("a".to_string(), 3), |(s, n): (String, usize)| s.repeat(n)),
    )
    .await;
    assert_eq!(joined.unwrap(), "aaa");
    let unit = within("unit child", spawn((), |()| ())).await;
    assert!(unit.is_ok());
}

#[tokio::test]
async fn child_panic_carries_message_and_location() {
    let err = within(
        "panicking child",
        spawn((), |()| -> u8 { panic!("boom {}", 7) }),
    )
    .await
    .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("boom 7"));
    assert!(
        err.panic_location().unwrap().contains("process_spawn.rs"),
        "{err}"
    );
    assert!(err.to_string().contains("panicked at"), "{err}");
}

#[tokio::test]
async fn async_child_panic_is_reported() {
    async fn fails(n: u32) -> u32 {
        tokio::task::yield_now().await;
        panic!("async failure {n}")
    }
    let err = within("async panic", spawn(5, fails)).await.unwrap_err();
    assert_eq!(err.panic_message(), Some("async failure 5"));
}

#[tokio::test]
async fn exit_code_is_reported_like_python() {
    let mut child = spawn(3, |code: i32| -> () { std::process::exit(code) });
    let err = within("exiting child", child.join()).await.unwrap_err();
    assert_eq!(err.exit_code(), Some(3), "{err}");
    assert!(!err.is_killed());
    assert_eq!(child.exit_status().unwrap().exitcode(), 3);
    assert!(err.to_string().contains("exit code 3"), "{err}");

    let mut ok = spawn((), |()| 1u8);
    within("clean child", ok.join()).await.unwrap();
    assert_eq!(ok.exit_status().unwrap().exitcode(), 0);
}

#[tokio::test]
async fn sigkill_and_sigterm_are_named() {
    let mut killed = spawn((), sleep_forever);
    killed.kill().unwrap();
    let err = within("killed child", killed.join()).await.unwrap_err();
    assert_eq!(err.signal(), Some(9), "{err}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert_eq!(killed.exit_status().unwrap().exitcode(), -9);

    let mut terminated = spawn((), sleep_forever);
    terminated.terminate().unwrap();
    let err = within("terminated child", terminated.join())
        .await
        .unwrap_err();
    assert_eq!(err.signal(), Some(15), "{err}");
    assert!(err.to_string().contains("SIGTERM"), "{err}");
    assert_eq!(terminated.exit_status().unwrap().exitcode(), -15);
}

#[tokio::test]
async fn join_timeout_returns_on_time_and_leaves_the_child_running() {
    let mut child = spawn((), sleep_forever);
    let start = Instant::now();
    let err = child
        .join_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(child.is_alive());
    assert!(child.exit_status().is_none());
    // A zero timeout only checks.
    assert!(
        child
            .join_timeout(Duration::ZERO)
            .await
            .unwrap_err()
            .is_timeout()
    );
    // A huge timeout waits as long as it takes (never panics).
    let killer = tokio::spawn({
        let pid = child.pid().unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            )
        }
    });
    let err = within("join_timeout(MAX)", child.join_timeout(Duration::MAX))
        .await
        .unwrap_err();
    assert!(err.is_killed(), "{err}");
    within("killer", killer).await.unwrap().unwrap();
    assert!(!child.is_alive());
    let again = within("second join", child.join()).await.unwrap_err();
    assert!(again.is_already_joined(), "{again}");
}

#[tokio::test]
async fn arguments_that_fail_to_decode_are_reported_not_hung() {
    let err = within("bad args", spawn(Even(3), |e: Even| e.0))
        .await
        .unwrap_err();
    assert!(err.is_bad_args(), "{err}");
    assert!(
        err.to_string().contains("could not decode its arguments"),
        "{err}"
    );
    assert_eq!(
        within("good args", spawn(Even(4), |e: Even| e.0))
            .await
            .unwrap(),
        4
    );
}

struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to serialize"))
    }
}

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[tokio::test]
async fn unencodable_arguments_fail_at_spawn() {
    let err = Builder::new()
        .spawn(Unencodable, |_: Unencodable| 0u8)
        .unwrap_err();
    assert!(err.is_encode(), "{err}");
    let deferred = within(
        "deferred spawn error",
        spawn(Unencodable, |_: Unencodable| 0u8),
    )
    .await
    .unwrap_err();
    assert!(deferred.is_spawn_failure(), "{deferred}");
}

#[tokio::test]
async fn sixty_four_children_at_once_leave_no_zombies() {
    let handles: Vec<_> = (0..64u64).map(|i| spawn(i, |i: u64| i * i)).collect();
    let pids: Vec<u32> = handles.iter().map(|h| h.pid().unwrap()).collect();
    let results = within("64 children", futures::future::join_all(handles)).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), (i * i) as u64);
    }
    for pid in pids {
        assert!(process_gone(pid), "child {pid} still present");
    }
    // A handle dropped without joining is reaped too.
    let dropped = spawn((), |()| ());
    let pid = dropped.pid().unwrap();
    drop(dropped);
    assert!(
        eventually(|| process_gone(pid) && !zombie_children().contains(&pid)).await,
        "dropped child {pid} left a zombie"
    );
}

#[tokio::test]
async fn kill_on_drop_kills() {
    let child = Builder::new()
        .kill_on_drop(true)
        .spawn((), sleep_forever)
        .unwrap();
    let pid = child.pid().unwrap();
    drop(child);
    assert!(
        eventually(|| process_gone(pid)).await,
        "child {pid} survived its dropped handle"
    );
}

/// Middle process: starts two grandchildren (daemon or not), reports their pids, then waits to
/// be killed. The first is re-executed, the second forked from the fork server that the first
/// spawn started: both kinds must follow the daemon setting.
async fn start_grandchild((daemon, mut report): (bool, pipe::Sender<u32>)) {
    let mut grandchildren = Vec::new();
    for _ in 0..2 {
        let grandchild = Builder::new()
            .daemon(daemon)
            .spawn((), sleep_forever)
            .unwrap();
        report.send(grandchild.pid().unwrap()).await.unwrap();
        grandchildren.push(grandchild);
    }
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn daemon_child_dies_with_its_parent_and_detached_one_does_not() {
    for daemon in [true, false] {
        let (tx, mut rx) = pipe::simplex::<u32>().unwrap();
        let mut middle = spawn((daemon, tx), start_grandchild);
        let mut grandchildren = Vec::new();
        for _ in 0..2 {
            grandchildren.push(within("grandchild pid", rx.recv()).await.unwrap().unwrap());
        }
        // The middle process alone dies (`kill()` would take its whole tree, detached
        // grandchildren included).
        middle.signal(9).unwrap();
        assert!(
            within("middle", middle.join())
                .await
                .unwrap_err()
                .is_killed()
        );
        if daemon {
            for grandchild in grandchildren {
                assert!(
                    eventually(|| process_gone(grandchild)).await,
                    "daemon grandchild {grandchild} outlived its parent"
                );
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for grandchild in grandchildren {
                assert!(
                    !process_gone(grandchild),
                    "detached grandchild {grandchild} died with its parent"
                );
                // Clean up the orphan we made on purpose.
                let _ = std::process::Command::new("kill")
                    .arg("-9")
                    .arg(grandchild.to_string())
                    .status();
                assert!(eventually(|| process_gone(grandchild)).await);
            }
        }
    }
}

#[tokio::test]
async fn builder_sets_name_and_environment() {
    let child = Builder::new()
        .name("mp-named-child")
        .env("MULTIPROC_TEST_VALUE", "forty-two")
        .spawn((), |()| {
            let arg0 = std::fs::read("/proc/self/cmdline").unwrap();
            let arg0 =
                String::from_utf8_lossy(arg0.split(|b| *b == 0).next().unwrap()).into_owned();
            (
                arg0,
                std::env::var("MULTIPROC_TEST_VALUE").ok(),
                std::env::var("MULTIPROC_BOOTSTRAP").ok(),
            )
        })
        .unwrap();
    assert_eq!(child.name(), Some("mp-named-child"));
    let (arg0, value, bootstrap) = within("named child", child).await.unwrap();
    assert_eq!(arg0, "mp-named-child");
    assert_eq!(value.as_deref(), Some("forty-two"));
    assert_eq!(
        bootstrap, None,
        "the bootstrap variable must not leak into the child's environment"
    );
}

#[tokio::test]
async fn children_can_spawn_children() {
    async fn outer(n: u32) -> u32 {
        spawn(n, |n: u32| n + 1).await.unwrap() * 10
    }
    assert_eq!(within("nested spawn", spawn(4, outer)).await.unwrap(), 50);
}

/// Child that says it has started (its daemon set-up is done by then), then sleeps.
fn ready_then_sleep(mut ready: pipe::Sender<()>) {
    let _ = ready.blocking_send(());
    std::thread::sleep(Duration::from_secs(3600));
}

/// The kernel's parent-death signal follows the *thread* that forked a child. A daemon child
/// must live on when the thread that called `spawn` ends while its process keeps running.
#[test]
fn daemon_child_outlives_the_thread_that_spawned_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rt, mut child) = std::thread::spawn(move || {
        let (tx, mut rx) = pipe::simplex::<()>().unwrap();
        let child = {
            let _runtime = rt.enter();
            spawn(tx, ready_then_sleep)
        };
        let ready = rx.blocking_recv_timeout(multiproc_suite::TEST_LIMIT);
        assert!(matches!(ready, Ok(Some(()))), "child not ready: {ready:?}");
        (rt, child)
    })
    .join()
    .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.pid().unwrap();
        assert!(
            child.is_alive() && !process_gone(pid),
            "daemon child {pid} died with the thread that spawned it"
        );
        child.kill().unwrap();
        let err = within("killed child", child.join()).await.unwrap_err();
        assert!(err.is_killed(), "{err}");
    });
}

/// What a child sees of its own set-up.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    arg0: String,
    cwd: std::path::PathBuf,
    env: Vec<String>,
    stdout: std::path::PathBuf,
}

fn look_around(_: ()) -> Seen {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
    Seen {
        arg0: String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap()).into_owned(),
        cwd: std::env::current_dir().unwrap(),
        env: std::env::vars().map(|(k, _)| k).collect(),
        stdout: std::fs::read_link("/proc/self/fd/1").unwrap(),
    }
}

/// Default streams and directory take `posix_spawn`; custom stdio or a working directory take
/// `std::process::Command`. Both must apply every option and deliver the control socket.
#[tokio::test]
async fn builder_options_apply_on_both_spawn_paths() {
    let default_out = std::fs::read_link("/proc/self/fd/1").unwrap();
    let here = std::env::current_dir().unwrap();

    let fast = Builder::new()
        .name("mp-fast-path")
        .env_clear()
        .env("MULTIPROC_ONLY_VAR", "1")
        .spawn((), look_around)
        .unwrap();
    let seen = within("posix_spawn child", fast).await.unwrap();
    assert_eq!(seen.arg0, "mp-fast-path");
    assert_eq!(seen.env, ["MULTIPROC_ONLY_VAR"], "{seen:?}");
    assert_eq!(seen.cwd, here);
    assert_eq!(seen.stdout, default_out);

    let dir = std::env::temp_dir().canonicalize().unwrap();
    let slow = Builder::new()
        .name("mp-command-path")
        .env_clear()
        .env("MULTIPROC_ONLY_VAR", "2")
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .spawn((), look_around)
        .unwrap();
    let seen = within("Command child", slow).await.unwrap();
    assert_eq!(seen.arg0, "mp-command-path");
    assert_eq!(seen.env, ["MULTIPROC_ONLY_VAR"], "{seen:?}");
    assert_eq!(seen.cwd, dir);
    assert_eq!(seen.stdout, std::path::Path::new("/dev/null"));

    // A removed variable is gone on the fast path too.
    let removed = Builder::new()
        .env_remove("PATH")
        .spawn((), look_around)
        .unwrap();
    let seen = within("env_remove child", removed).await.unwrap();
    assert!(!seen.env.iter().any(|k| k == "PATH"), "{seen:?}");
    assert!(
        !seen.env.iter().any(|k| k == "MULTIPROC_BOOTSTRAP"),
        "{seen:?}"
    );
}
