//! Support shared by the multiproc examples and the cross-process integration tests.
//! Users depend on the `multiproc` crate, not on this one.

use std::future::IntoFuture;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How long any single wait in a test may take before the test fails instead of hanging CI.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `f`, panicking with `what` if it takes longer than [`TEST_LIMIT`].
pub async fn within<T>(what: &str, f: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TEST_LIMIT:?}: {what}"),
    }
}

/// Runs the blocking call `f` on a thread of its own and waits for it at most [`TEST_LIMIT`],
/// panicking with `what` if it takes longer (the thread is left behind) or panics.
///
/// For a blocking call that should return at once, so that a bug fails the test instead of
/// hanging it.
pub async fn within_blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    returned(what, within(what, on_thread(f)).await)
}

/// How long [`blocked_until`] lets a blocking call run before it checks that it still waits.
pub const STILL_WAITING: Duration = Duration::from_millis(200);

/// Runs the blocking call `blocking` on a thread, checks that it is still waiting after
/// [`STILL_WAITING`], then calls `unblock` and awaits what it returns (which should let the
/// call complete) and waits, at most [`TEST_LIMIT`], for the call to return. Gives both
/// results; panics naming `what` if the call returned before `unblock` or never returned.
pub async fn blocked_until<T: Send + 'static, F: IntoFuture>(
    what: &str,
    blocking: impl FnOnce() -> T + Send + 'static,
    unblock: impl FnOnce() -> F,
) -> (T, F::Output) {
    let mut call = on_thread(blocking);
    tokio::time::sleep(STILL_WAITING).await;
    if let Ok(early) = call.try_recv() {
        returned(what, Ok(early));
        panic!("{what}: returned before it could complete");
    }
    let unblocked = within(what, unblock()).await;
    (returned(what, within(what, call).await), unblocked)
}

/// Runs `f` on a thread of its own (not `spawn_blocking`: a runtime that drops waits for its
/// blocking tasks, so a call that never returns would hang the test after it failed).
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<std::thread::Result<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    rx
}

/// The value of a call run by [`on_thread`]; its panic goes on here.
fn returned<T>(
    what: &str,
    call: Result<std::thread::Result<T>, tokio::sync::oneshot::error::RecvError>,
) -> T {
    match call {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// True when process `pid` has ended: gone from `/proc`, or a zombie waiting to be reaped.
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Polls `cond` every 10 ms until it holds; false if it still fails after [`TEST_LIMIT`].
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + TEST_LIMIT;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// [`eventually`] for code without a runtime: polls `cond` every 10 ms, blocking the thread,
/// until it holds; false if it still fails after `limit`.
pub fn blocking_eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// This process's children, alive or zombie, found in `/proc`: each one's pid, its state
/// letter (`R`, `S`, `Z`, ...) and its name (`argv[0]`).
fn children() -> Vec<(u32, String, Vec<u8>)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or_default().to_owned();
        if fields.next().and_then(|p| p.parse::<u32>().ok()) != Some(me) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let name = cmdline
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default()
            .to_vec();
        found.push((pid, state, name));
    }
    found
}

/// This process's fork server: its child named `multiproc-fork-server`.
pub fn fork_server() -> Option<u32> {
    children()
        .into_iter()
        .find(|(_, _, name)| name.starts_with(b"multiproc-fork-server"))
        .map(|(pid, _, _)| pid)
}

/// The children of this process named `name` (their `argv[0]`), alive or zombie.
pub fn children_named(name: &str) -> Vec<u32> {
    children()
        .into_iter()
        .filter(|(_, _, n)| n == name.as_bytes())
        .map(|(pid, _, _)| pid)
        .collect()
}

/// The zombie children of this process, found in `/proc`.
pub fn zombie_children() -> Vec<u32> {
    children()
        .into_iter()
        .filter(|(_, state, _)| state == "Z")
        .map(|(pid, _, _)| pid)
        .collect()
}

/// A fresh empty file in the temporary directory, named after `what`, this process and a
/// unique suffix (tests run in parallel).
pub fn temp_file(what: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "multiproc-test-{what}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::write(&path, "").unwrap();
    path
}

/// Deserializes only even numbers, to make a child fail on its arguments.
#[derive(Debug)]
pub struct Even(pub u32);

impl Serialize for Even {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Even {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n % 2 == 0 {
            Ok(Even(n))
        } else {
            Err(serde::de::Error::custom(format!("{n} is odd")))
        }
    }
}
