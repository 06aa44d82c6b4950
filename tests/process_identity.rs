//! Identity seen from the child (`current_process`, `parent_process`), Python's default names,
//! and the name shown in `ps` and `/proc/<pid>/comm`, on both spawn paths (the fork server
//! and re-execution).

use multiproc::process::{current_process, parent_process};
use multiproc::{Builder, spawn};
use multiproc_suite::{eventually, process_gone, within};
use serde::{Deserialize, Serialize};

/// What a child sees of itself.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    name: String,
    pid: u32,
    ppid: u32,
    depth: usize,
    daemon: bool,
    parent_pid: Option<u32>,
    parent_alive: bool,
    comm: String,
    arg0: String,
    /// Re-executed (the kernel's environment block has the builder's variable) or forked.
    reexecuted: bool,
}

const MARKER: &str = "MULTIPROC_TEST_IDENTITY_MARKER";

fn look(_: ()) -> Seen {
    let me = current_process();
    let parent = parent_process();
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
    let environ = std::fs::read("/proc/self/environ").unwrap();
    Seen {
        name: me.name().to_string(),
        pid: me.pid(),
        ppid: me.ppid(),
        depth: me.depth(),
        daemon: me.daemon(),
        parent_pid: parent.as_ref().map(|p| p.pid()),
        parent_alive: parent.as_ref().is_some_and(|p| p.is_alive()),
        comm: std::fs::read_to_string("/proc/self/comm")
            .unwrap()
            .trim_end()
            .to_string(),
        arg0: String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap()).into_owned(),
        reexecuted: environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(MARKER.as_bytes())),
    }
}

/// In a middle process: its own identity and what three children of its see, the first
/// unnamed, the second named, the third unnamed and not a daemon.
async fn family(_: ()) -> (Seen, Vec<(u32, Seen)>) {
    let mut seen = Vec::new();
    let builders = [
        Builder::new(),
        Builder::new().name("a-rather-long-worker-name"),
        Builder::new().daemon(false),
    ];
    for builder in builders {
        let child = builder.env(MARKER, "1").spawn((), look).unwrap();
        let pid = child.pid().unwrap();
        seen.push((pid, within("grandchild", child).await.unwrap()));
    }
    (look(()), seen)
}

fn check_family(me: &Seen, children: &[(u32, Seen)], middle_pid: u32) {
    assert_eq!(me.pid, middle_pid);
    assert_eq!(me.depth, 1);
    assert!(me.name.starts_with("Process-"), "default name: {}", me.name);
    assert_eq!(me.parent_pid, Some(std::process::id()));
    assert!(me.parent_alive);
    let n = |i: usize| format!("{}:{}", me.name, i);
    let expected = [n(1), "a-rather-long-worker-name".to_string(), n(3)];
    for (i, (pid, seen)) in children.iter().enumerate() {
        assert_eq!(seen.name, expected[i]);
        assert_eq!(seen.pid, *pid);
        assert_eq!(seen.ppid, middle_pid);
        assert_eq!(seen.parent_pid, Some(middle_pid));
        assert!(seen.parent_alive);
        assert_eq!(seen.depth, 2);
        assert_eq!(seen.daemon, i != 2);
        let comm: String = expected[i].chars().take(15).collect();
        assert_eq!(seen.comm, comm, "comm of child {i}");
        assert_eq!(seen.arg0, expected[i], "argv[0] of child {i}");
    }
}

#[tokio::test]
async fn the_main_process_is_main_process() {
    let me = current_process();
    assert_eq!(me.name(), "MainProcess");
    assert_eq!(me.depth(), 0);
    assert!(!me.daemon());
    assert_eq!(me.pid(), std::process::id());
    assert!(parent_process().is_none());
}

#[tokio::test]
async fn children_know_who_they_are_with_the_fork_server() {
    let middle = spawn((), family);
    let middle_pid = middle.pid().unwrap();
    let (me, children) = within("middle", middle).await.unwrap();
    check_family(&me, &children, middle_pid);
    assert!(
        children.iter().any(|(_, seen)| !seen.reexecuted),
        "the middle process's later children come from its fork server"
    );
}

#[tokio::test]
async fn children_know_who_they_are_when_re_executed() {
    let middle = Builder::new()
        .env("MULTIPROC_FORK_SERVER", "0")
        .spawn((), family)
        .unwrap();
    let middle_pid = middle.pid().unwrap();
    let (me, children) = within("middle", middle).await.unwrap();
    check_family(&me, &children, middle_pid);
    assert!(children.iter().all(|(_, seen)| seen.reexecuted));
}

/// A non-daemon child that stops as soon as its parent has gone.
async fn outlive_parent_briefly(_: ()) {
    let parent = parent_process().expect("a child has a parent");
    parent.exited().await.unwrap();
    assert!(!parent.is_alive());
}

/// Starts a non-daemon child watching it, reports its pid, and returns (ending the process).
async fn leave_a_watcher(_: ()) -> u32 {
    let child = Builder::new()
        .daemon(false)
        .spawn((), outlive_parent_briefly)
        .unwrap();
    child.pid().unwrap()
}

#[tokio::test]
async fn a_detached_child_can_stop_when_its_parent_exits() {
    let watcher = within("middle", spawn((), leave_a_watcher)).await.unwrap();
    assert!(
        eventually(|| process_gone(watcher)).await,
        "the watcher did not see its parent exit"
    );
}

#[tokio::test]
async fn handles_carry_the_default_name() {
    let child = spawn((), |()| current_process().name().to_string());
    let name = child.name().unwrap().to_string();
    assert!(name.starts_with("Process-"));
    assert_eq!(within("child", child).await.unwrap(), name);
}
