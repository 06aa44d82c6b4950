//! Killing or terminating a child takes its whole tree: its multiproc children, the external
//! programs they started, and the orphans those left behind, on both spawn paths. Checked in
//! `/proc`: no survivor.

use std::process::Stdio;
use std::time::Duration;

use multiproc::pipe::{self, Sender};
use multiproc::process::Command;
use multiproc::{Builder, spawn};
use multiproc_suite::{eventually, process_gone, within};
use tokio::io::AsyncReadExt;

/// Third level: an external `sleep`, plus an orphan (a `sleep` whose shell exited, adopted by
/// the nearest subreaper: a multiproc child). Reports their pids and its own, then waits.
async fn grandchild(pids: Sender<Vec<u32>>) {
    let mut pids = pids;
    let sleeper = Command::new("sleep").arg("3600").spawn().unwrap();
    let mut shell = Command::new("sh")
        .arg("-c")
        // The orphan must not hold the pipe, or reading to its end would wait an hour.
        .arg("sleep 3600 </dev/null >/dev/null 2>&1 & echo $!")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    shell
        .stdout()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(shell.wait().await.unwrap().success());
    let orphan: u32 = out.trim().parse().unwrap();
    pids.send(vec![std::process::id(), sleeper.pid(), orphan])
        .await
        .unwrap();
    std::future::pending::<()>().await;
}

/// Second level: a multiproc grandchild, and an external `sleep` of its own.
async fn child(pids: Sender<Vec<u32>>) {
    let mut pids = pids;
    let sleeper = Command::new("sleep").arg("3600").spawn().unwrap();
    pids.send(vec![std::process::id(), sleeper.pid()])
        .await
        .unwrap();
    let below = spawn(pids, grandchild);
    let _ = below.await;
    std::future::pending::<()>().await;
}

/// Builds the tree under `builder`, collects every pid in it, ends it (kill, or terminate with
/// a grace period), and checks that no process of it is left.
async fn tree_torn_down(builder: Builder, terminate: bool) {
    let (tx, mut rx) = pipe::simplex::<Vec<u32>>().unwrap();
    let mut top = builder.spawn(tx, child).unwrap();
    let mut all = Vec::new();
    for _ in 0..2 {
        let pids = within("pids of a level", rx.recv()).await.unwrap().unwrap();
        all.extend(pids);
    }
    assert_eq!(all.len(), 5);
    for &pid in &all {
        assert!(!process_gone(pid), "{pid} should run before the teardown");
    }
    let result = if terminate {
        within("shutdown", top.shutdown(Duration::from_secs(30))).await
    } else {
        top.kill().unwrap();
        within("join", top.join()).await
    };
    let expected = if terminate { 15 } else { 9 };
    assert_eq!(result.unwrap_err().signal(), Some(expected));
    assert!(
        eventually(|| all.iter().all(|&pid| process_gone(pid))).await,
        "survivors: {:?}",
        all.iter()
            .filter(|&&p| !process_gone(p))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn kill_takes_the_whole_tree() {
    tree_torn_down(Builder::new().kill_on_drop(true), false).await;
}

#[tokio::test]
async fn terminate_takes_the_whole_tree() {
    tree_torn_down(Builder::new().kill_on_drop(true), true).await;
}

/// The same from a process whose children are all re-executed.
async fn torn_down_without_fork_server(terminate: bool) {
    tree_torn_down(Builder::new().kill_on_drop(true), terminate).await;
}

#[tokio::test]
async fn the_tree_goes_on_the_re_exec_path_too() {
    for terminate in [false, true] {
        let middle = Builder::new()
            .kill_on_drop(true)
            .env("MULTIPROC_FORK_SERVER", "0")
            .spawn(terminate, torn_down_without_fork_server)
            .unwrap();
        within("middle", middle).await.unwrap();
    }
}

#[tokio::test]
async fn kill_on_drop_takes_the_tree_too() {
    let (tx, mut rx) = pipe::simplex::<Vec<u32>>().unwrap();
    let top = Builder::new().kill_on_drop(true).spawn(tx, child).unwrap();
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend(within("pids", rx.recv()).await.unwrap().unwrap());
    }
    drop(top);
    assert!(eventually(|| all.iter().all(|&pid| process_gone(pid))).await);
}
