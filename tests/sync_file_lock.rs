//! `FileLock` across real processes and against other programs: exclusion, shared locks, byte
//! ranges, a holder killed with SIGKILL, cancellation of a waiting lock, a second lock in one
//! process, and interoperability with `flock(1)` and Python's `fcntl.flock`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::poll;
use multiproc::error::{FileLockError, FileLockTimeoutError, TryFileLockError};
use multiproc::sync::FileLock;
use multiproc::{Event, spawn};
use multiproc_suite::{within, within_blocking};

/// A fresh path under the temporary directory, unique per process and call.
fn lock_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "multiproc-test-{what}-{}-{n}.lock",
        std::process::id()
    ))
}

/// A child that takes the lock (`flock` mode when asked) on `range` of `path`, exclusive or
/// shared, says so through `locked`, and sleeps until it is killed.
fn hold_forever((path, flock, shared, range, locked): (PathBuf, bool, bool, (u64, u64), Event)) {
    let lock = if flock {
        FileLock::open_flock(&path).unwrap()
    } else {
        FileLock::open(&path).unwrap().range(range.0..range.1)
    };
    let _guard = if shared {
        lock.blocking_lock_shared().unwrap()
    } else {
        lock.blocking_lock().unwrap()
    };
    locked.set();
    std::thread::sleep(Duration::from_secs(3600));
}

const WHOLE: (u64, u64) = (0, u64::MAX);

#[tokio::test]
async fn holder_killed_with_sigkill_releases_the_lock_to_the_next_waiter() {
    let path = lock_path("sigkill");
    let locked = Event::new().unwrap();
    let mut child = spawn(
        (path.clone(), false, false, WHOLE, locked.clone()),
        hold_forever,
    );
    within("child holds the lock", locked.wait()).await.unwrap();
    let lock = FileLock::open(&path).unwrap();
    assert!(matches!(lock.try_lock(), Err(TryFileLockError::WouldBlock)));
    assert!(lock.try_lock_shared().unwrap_err().is_would_block());
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.lock().await.map(|g| g.is_shared()) }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "the lock was taken while held");
    child.kill().unwrap();
    let shared = within("lock after the holder's death", waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(!shared);
    assert!(
        within("killed child", child.join())
            .await
            .unwrap_err()
            .is_killed()
    );
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn shared_locks_coexist_across_processes_and_exclude_an_exclusive_one() {
    let path = lock_path("shared");
    let locked = Event::new().unwrap();
    let mut child = spawn(
        (path.clone(), false, true, WHOLE, locked.clone()),
        hold_forever,
    );
    within("child holds a shared lock", locked.wait())
        .await
        .unwrap();
    let lock = FileLock::open(&path).unwrap();
    let shared = lock.try_lock_shared().unwrap();
    assert!(shared.is_shared());
    drop(shared);
    let start = Instant::now();
    let err = lock
        .lock_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(100));
    child.kill().unwrap();
    let guard = within("exclusive after the shared holder died", lock.lock())
        .await
        .unwrap();
    assert!(!guard.is_shared());
    let _ = within("killed child", child.join()).await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn byte_ranges_lock_independently_across_processes() {
    let path = lock_path("ranges");
    let locked = Event::new().unwrap();
    let mut child = spawn(
        (path.clone(), false, false, (0, 10), locked.clone()),
        hold_forever,
    );
    within("child holds bytes 0..10", locked.wait())
        .await
        .unwrap();
    let lock = FileLock::open(&path).unwrap();
    let tail = lock.range(10..).try_lock().unwrap();
    // 5..15 overlaps our own 10..: this process's error comes first.
    assert!(
        lock.range(5..15)
            .try_lock()
            .unwrap_err()
            .is_held_by_this_process()
    );
    drop(tail);
    assert!(lock.range(5..15).try_lock().unwrap_err().is_would_block());
    assert!(lock.range(..=9).try_lock().unwrap_err().is_would_block());
    assert!(lock.try_lock().unwrap_err().is_would_block());
    child.kill().unwrap();
    let _ = within("killed child", child.join()).await;
    let _whole = within("whole file after the child died", lock.lock())
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_second_lock_of_the_same_range_in_one_process_is_an_error() {
    let path = lock_path("twice");
    let first = FileLock::open(&path).unwrap();
    let second = FileLock::open(&path).unwrap(); // another open of the same file
    let guard = first.lock().await.unwrap();
    assert!(second.try_lock().unwrap_err().is_held_by_this_process());
    assert!(
        first
            .try_lock_shared()
            .unwrap_err()
            .is_held_by_this_process()
    );
    assert!(matches!(
        second.lock().await,
        Err(FileLockError::HeldByThisProcess)
    ));
    assert!(matches!(
        second.lock_timeout(Duration::from_secs(1)).await,
        Err(FileLockTimeoutError::HeldByThisProcess)
    ));
    assert!(
        second
            .blocking_lock()
            .unwrap_err()
            .is_held_by_this_process()
    );
    drop(guard);
    // Disjoint ranges are fine; overlapping ones are not, whatever the kinds.
    let a = second.range(0..100).lock_shared().await.unwrap();
    let b = first.range(100..200).try_lock().unwrap();
    assert!(
        first
            .range(50..150)
            .try_lock_shared()
            .unwrap_err()
            .is_held_by_this_process()
    );
    drop((a, b));
    let flock = FileLock::open_flock(&path).unwrap();
    let g = flock.try_lock().unwrap();
    assert!(first.try_lock().unwrap_err().is_held_by_this_process());
    drop(g);
    let _ok = second.blocking_lock().unwrap();
    std::fs::remove_file(&path).unwrap();
}

/// Holds the lock until `release` is set, after saying so through `locked`.
async fn hold_until((path, locked, release): (PathBuf, Event, Event)) {
    let lock = FileLock::open(&path).unwrap();
    let guard = lock.lock().await.unwrap();
    locked.set();
    release.wait().await.unwrap();
    drop(guard);
}

/// Takes and releases the lock once without waiting; whether it could.
fn try_once(path: PathBuf) -> bool {
    FileLock::open(&path).unwrap().try_lock().is_ok()
}

#[tokio::test]
async fn a_cancelled_lock_future_leaves_nothing_locked() {
    let path = lock_path("cancel");
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let holder = spawn((path.clone(), locked.clone(), release.clone()), hold_until);
    within("holder locked", locked.wait()).await.unwrap();
    let lock = FileLock::open(&path).unwrap();
    {
        let mut waiting = Box::pin(lock.lock());
        assert!(matches!(poll!(&mut waiting), Poll::Pending));
        // The holder lets go while our future is pending; we drop the future without polling
        // it again, and then after a pause in which it could have retried.
        release.set();
        within("holder exits", holder).await.unwrap();
        assert!(lock.lock_timeout(Duration::from_millis(1)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(30)).await;
    } // dropped here
    // Nothing holds the lock: not this process, and another process can take it.
    let again = lock.try_lock().unwrap();
    drop(again);
    let child = spawn(path.clone(), try_once);
    assert!(within("child takes the lock", child).await.unwrap());
    // A timed-out wait leaves nothing behind either.
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let holder = spawn((path.clone(), locked.clone(), release.clone()), hold_until);
    within("holder locked again", locked.wait()).await.unwrap();
    assert!(
        lock.lock_timeout(Duration::from_millis(30))
            .await
            .unwrap_err()
            .is_timeout()
    );
    release.set();
    within("holder exits", holder).await.unwrap();
    let child = spawn(path.clone(), try_once);
    assert!(within("child takes the lock", child).await.unwrap());
    std::fs::remove_file(&path).unwrap();
}

/// Starts `program args`, waits for its first line of output (`ready`, perhaps followed by
/// more words) and returns it running, with the rest of the line.
async fn started(program: &str, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let line = within_blocking("the program's first line", move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await;
    let rest = line.trim().strip_prefix("ready");
    let rest = rest.unwrap_or_else(|| panic!("{program} {args:?} said {line:?}"));
    (child, rest.trim().to_owned())
}

/// Runs `program args` to completion (at most the test limit); its exit code.
async fn exit_code(program: &str, args: &[String]) -> i32 {
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::null());
    within_blocking("program", move || command.status().unwrap())
        .await
        .code()
        .unwrap()
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn flock_mode_excludes_and_is_excluded_by_flock_1() {
    let path = lock_path("flock1");
    let lock = FileLock::open_flock(&path).unwrap();
    let guard = lock.lock().await.unwrap();
    // flock(1) without waiting fails (exit 1) while we hold the lock...
    let args = ["-n".to_owned(), s(&path), "true".to_owned()];
    assert_eq!(exit_code("flock", &args).await, 1);
    assert_eq!(
        exit_code(
            "flock",
            &["-n".into(), "-s".into(), s(&path), "true".into()]
        )
        .await,
        1
    );
    drop(guard);
    // ...and takes it once we let go.
    assert_eq!(exit_code("flock", &args).await, 0);
    // The other way: flock(1) holds it, we wait until it is killed.
    // (flock(1) runs the command with the locked descriptor inherited: both must die.)
    let (mut holder, shell) =
        started("flock", &[&s(&path), "-c", "echo ready $$; exec sleep 600"]).await;
    assert!(lock.try_lock().unwrap_err().is_would_block());
    assert!(
        lock.lock_timeout(Duration::from_millis(50))
            .await
            .unwrap_err()
            .is_timeout()
    );
    let shell = rustix::process::Pid::from_raw(shell.parse().unwrap()).unwrap();
    rustix::process::kill_process(shell, rustix::process::Signal::KILL).unwrap();
    holder.kill().unwrap();
    let _guard = within("lock after flock(1) was killed", lock.lock())
        .await
        .unwrap();
    holder.wait().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn flock_mode_interoperates_with_python_fcntl_flock() {
    let path = lock_path("pyflock");
    let lock = FileLock::open_flock(&path).unwrap();
    let guard = lock.lock_shared().await.unwrap();
    let probe = "import fcntl, sys\n\
                 f = open(sys.argv[1], 'a')\n\
                 try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n\
                 fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\n";
    let args = ["-c".to_owned(), probe.to_owned(), s(&path)];
    assert_eq!(
        exit_code("python3", &args).await,
        3,
        "python took an exclusive lock we share"
    );
    drop(guard);
    assert_eq!(exit_code("python3", &args).await, 0);
    let holder_script = "import fcntl, sys, time\n\
                         f = open(sys.argv[1], 'a')\n\
                         fcntl.flock(f, fcntl.LOCK_EX)\n\
                         print('ready', flush=True)\n\
                         time.sleep(600)\n";
    let (mut holder, _) = started("python3", &["-c", holder_script, &s(&path)]).await;
    assert!(lock.try_lock_shared().unwrap_err().is_would_block());
    holder.kill().unwrap();
    let _guard = within("lock after python was killed", lock.lock())
        .await
        .unwrap();
    holder.wait().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn ofd_ranges_conflict_with_python_fcntl_lockf_ranges() {
    // Python's fcntl.lockf takes classic POSIX record locks, which the kernel checks against
    // open-file-description locks: the default mode excludes Python's lockf users too.
    let path = lock_path("pylockf");
    let lock = FileLock::open(&path).unwrap();
    let _head = lock.range(0..100).lock().await.unwrap();
    let probe = "import fcntl, sys\n\
                 f = open(sys.argv[1], 'r+')\n\
                 start = int(sys.argv[2])\n\
                 try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, start)\nexcept OSError:\n    sys.exit(3)\n";
    let run = |start: &str| {
        vec![
            "-c".to_owned(),
            probe.to_owned(),
            s(&path),
            start.to_owned(),
        ]
    };
    assert_eq!(exit_code("python3", &run("50")).await, 3);
    assert_eq!(exit_code("python3", &run("100")).await, 0);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn blocking_lock_waits_in_the_kernel_for_another_process() {
    let path = lock_path("blocking");
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let holder = spawn((path.clone(), locked.clone(), release.clone()), hold_until);
    within("holder locked", locked.wait()).await.unwrap();
    let (taken, ()) = multiproc_suite::blocked_until(
        "blocking_lock",
        {
            let path = path.clone();
            move || FileLock::open(&path).unwrap().blocking_lock().is_ok()
        },
        || async {
            release.set();
        },
    )
    .await;
    assert!(taken);
    within("holder exits", holder).await.unwrap();
    std::fs::remove_file(&path).unwrap();
}

/// Review finding: `blocking_lock` checked the process table, then waited in the kernel. A
/// clone (same open file description, whose locks merge rather than conflict) taking the lock
/// in that window made the wait return at once, and its rollback unlock dropped the clone's
/// lock in the kernel while the clone's guard still believed it held it.
#[tokio::test]
async fn a_clone_cannot_slip_in_while_blocking_lock_is_about_to_wait() {
    let path = lock_path("reserve");
    let lock = FileLock::open(&path).unwrap();
    // Widen the window between the table check and the kernel wait of `blocking_lock`.
    multiproc::sync::BLOCKING_LOCK_TEST_PAUSE_MS.store(400, Ordering::Relaxed);
    let waiter = std::thread::spawn({
        let lock = lock.clone();
        move || lock.blocking_lock().map(drop)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let clone = lock.clone().try_lock();
    let waited = within_blocking("blocking_lock", move || waiter.join().unwrap()).await;
    multiproc::sync::BLOCKING_LOCK_TEST_PAUSE_MS.store(0, Ordering::Relaxed);
    match clone {
        // The clone came first (a slow start of the thread): the waiter must refuse, and the
        // clone's lock must still exclude other processes.
        Ok(guard) => {
            assert!(waited.unwrap_err().is_held_by_this_process());
            let child = spawn(path.clone(), try_once);
            assert!(
                !within("child tries", child).await.unwrap(),
                "another process took a lock this process's guard holds"
            );
            drop(guard);
        }
        // The waiter had reserved the range before waiting: the clone is refused.
        Err(e) => {
            assert!(e.is_held_by_this_process(), "{e:?}");
            waited.unwrap();
        }
    }
    std::fs::remove_file(&path).unwrap();
}

/// Takes and releases the lock in a loop with `blocking_lock`, holding it 2 ms each time,
/// until `stop` is set: a kernel waiter is almost always queued, which starves a poller.
fn churn((path, stop, started): (PathBuf, Event, Event)) {
    let lock = FileLock::open(&path).unwrap();
    started.set();
    while !stop.is_set() {
        let guard = lock.blocking_lock().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        drop(guard);
    }
}

/// Review finding: the async `lock` only polled, and the kernel hands a released lock straight
/// to blocked waiters, so two processes looping on `blocking_lock` could starve it for good.
#[tokio::test]
async fn async_lock_is_not_starved_by_processes_waiting_in_the_kernel() {
    let path = lock_path("starve");
    let stop = Event::new().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            let started = Event::new().unwrap();
            let child = spawn((path.clone(), stop.clone(), started.clone()), churn);
            (child, started)
        })
        .collect();
    for (_, started) in &children {
        within("churner started", started.wait()).await.unwrap();
    }
    let lock = FileLock::open(&path).unwrap();
    for _ in 0..5 {
        let guard = tokio::time::timeout(Duration::from_secs(10), lock.lock())
            .await
            .expect("the async lock starved behind kernel waiters")
            .unwrap();
        // The guard excludes the other processes while held.
        let child = spawn(path.clone(), try_once);
        assert!(!within("child tries", child).await.unwrap());
        drop(guard);
    }
    stop.set();
    for (child, _) in children {
        within("churner exits", child).await.unwrap();
    }
    std::fs::remove_file(&path).unwrap();
}

/// Review finding: `lock_timeout` built its tokio timer before checking for a runtime, so
/// outside one it panicked instead of returning the documented error.
#[test]
fn async_locking_outside_a_runtime_is_an_error_not_a_panic() {
    let path = lock_path("no-runtime");
    let lock = FileLock::open(&path).unwrap();
    let timed = futures::executor::block_on(lock.lock_timeout(Duration::from_secs(1)));
    assert!(
        matches!(timed, Err(FileLockTimeoutError::Io(_))),
        "{timed:?}"
    );
    let plain = futures::executor::block_on(lock.lock());
    assert!(matches!(plain, Err(FileLockError::Io(_))), "{plain:?}");
    // Nothing was left locked.
    drop(lock.try_lock().unwrap());
    std::fs::remove_file(&path).unwrap();
}

/// A wait that moved to the kernel-waiting thread and is then cancelled leaves nothing behind:
/// its range is free in this process at once, and the thread gives the lock back as soon as it
/// gets it.
#[tokio::test]
async fn a_cancelled_wait_in_the_kernel_leaves_nothing_locked() {
    let path = lock_path("cancel-thread");
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let holder = spawn((path.clone(), locked.clone(), release.clone()), hold_until);
    within("holder locked", locked.wait()).await.unwrap();
    let lock = FileLock::open(&path).unwrap();
    // Long enough to outlast the polled attempts (31 ms of pauses).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lock.lock())
            .await
            .is_err()
    );
    // Not reserved any more: the holder still has it, so this is contention, not our own.
    assert!(lock.try_lock().unwrap_err().is_would_block());
    release.set();
    within("holder exits", holder).await.unwrap();
    assert!(multiproc_suite::eventually(|| lock.try_lock().is_ok()).await);
    let child = spawn(path.clone(), try_once);
    assert!(within("child takes the lock", child).await.unwrap());
    std::fs::remove_file(&path).unwrap();
}
