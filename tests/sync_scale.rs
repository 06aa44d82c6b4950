//! What a primitive costs: 100,000 locks, events and semaphores in one process under a
//! 1,024-descriptor limit (soft and hard), locks of one arena received one by one and in a batch
//! of thousands at a cost of one arena's descriptors, contention on locks that share a wake-up
//! eventfd, and a process killed while it holds an arena's slots.
//!
//! Counts come from `/proc/self/fd` (descriptors) and the memfds' allocated blocks (shared
//! memory), so they do not depend on how loaded the machine is.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use multiproc::pipe::{self, Duplex};
use multiproc::{Builder, Event, Lock, Semaphore, SharedMemory, spawn};
use multiproc_core::wait::arena::{ARENA_SLOTS, WAKE_LANES};
use multiproc_suite::within;
use serde::{Deserialize, Serialize};

const N: usize = 100_000;
/// The limit the children run under, soft and hard.
const FD_LIMIT: u64 = 1024;
/// Descriptors of one arena: its memfd and its wake-up eventfds.
const PER_ARENA: usize = 1 + WAKE_LANES;

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The multiproc memfds this process holds open: inode -> bytes allocated to it.
fn memfds() -> std::collections::BTreeMap<u64, u64> {
    let mut found = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !link.to_string_lossy().starts_with("/memfd:multiproc-shm") {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(entry.path()) {
            found.insert(meta.ino(), meta.blocks() * 512);
        }
    }
    found
}

fn shm_bytes() -> u64 {
    memfds().values().sum()
}

/// The descriptor limit, soft and hard.
fn fd_limit() -> (Option<u64>, Option<u64>) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (l.current, l.maximum)
}

/// What a child saw while creating `N` primitives of one kind.
#[derive(Debug, Serialize, Deserialize)]
struct Made {
    limit: (Option<u64>, Option<u64>),
    made: usize,
    /// Descriptors opened by creating (and using) them.
    fds_added: usize,
    /// Shared memory allocated for them, in bytes.
    shm: u64,
    /// Descriptors still open after dropping them all, over the count before.
    fds_left: usize,
}

/// Creates `N` primitives of `kind` and uses each once (so each slot's memory is touched).
fn make_many(kind: u8) -> Result<Made, String> {
    let limit = fd_limit();
    let fds = open_fds();
    let shm = shm_bytes();
    let made = match kind {
        0 => {
            let locks = (0..N)
                .map(|i| Lock::new().map_err(|e| format!("lock {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            for lock in &locks {
                drop(lock.try_lock().map_err(|e| e.to_string())?);
            }
            // Two of them, held from two threads in turn: waiting still works at this scale.
            let (a, b) = (locks[0].clone(), locks[N - 1].clone());
            let held = locks[0].try_lock().map_err(|e| e.to_string())?;
            let waiter = std::thread::spawn(move || {
                let _b = b.blocking_lock().map(|g| g.owner_died());
                a.blocking_lock_timeout(Duration::from_secs(30)).is_ok()
            });
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
            if !waiter.join().map_err(|_| "waiter panicked")? {
                return Err("a waiter was never woken".into());
            }
            Measure::take(locks.len(), fds, shm, || drop(locks))
        }
        1 => {
            let events = (0..N)
                .map(|i| Event::new().map_err(|e| format!("event {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            for event in &events {
                event.set();
            }
            if !events.iter().all(Event::is_set) {
                return Err("an event lost its flag".into());
            }
            Measure::take(events.len(), fds, shm, || drop(events))
        }
        2 => {
            let sems = (0..N)
                .map(|i| Semaphore::new(1).map_err(|e| format!("semaphore {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            // Idle (never acquired), each costs its slot alone.
            let idle = shm_bytes().saturating_sub(shm);
            if idle > (N * 64 + N.div_ceil(ARENA_SLOTS - 1) * 4096) as u64 {
                return Err(format!("{N} idle semaphores cost {idle} bytes"));
            }
            for (i, sem) in sems.iter().enumerate() {
                let permit = sem.try_acquire().map_err(|e| e.to_string())?;
                if i % 1000 == 0 && sem.try_acquire().is_ok() {
                    return Err("a semaphore of one permit gave two".into());
                }
                drop(permit);
            }
            // Each handle that acquired keeps a 16-byte holder entry while it lives.
            let used = shm_bytes().saturating_sub(shm);
            if used > (N * (64 + 16) + 2 * N.div_ceil(ARENA_SLOTS - 1) * 4096) as u64 {
                return Err(format!("{N} used semaphores cost {used} bytes"));
            }
            let made = Measure::take(sems.len(), fds, shm, || drop(sems));
            Made { shm: idle, ..made }
        }
        _ => return Err(format!("no kind {kind}")),
    };
    Ok(Made { limit, ..made })
}

/// Counts taken around one batch of primitives.
struct Measure;

impl Measure {
    fn take(made: usize, fds: usize, shm: u64, drop_all: impl FnOnce()) -> Made {
        let fds_added = open_fds().saturating_sub(fds);
        let shm_now = shm_bytes().saturating_sub(shm);
        drop_all();
        Made {
            limit: (None, None),
            made,
            fds_added,
            shm: shm_now,
            fds_left: open_fds().saturating_sub(fds),
        }
    }
}

async fn made_under_the_limit(kind: u8, what: &str) -> Made {
    let child = Builder::new()
        .open_files_limit(FD_LIMIT)
        .spawn(kind, make_many)
        .unwrap();
    let made = within(what, child).await.unwrap().unwrap();
    assert_eq!(made.limit, (Some(FD_LIMIT), Some(FD_LIMIT)), "{what}");
    assert_eq!(made.made, N, "{what}");
    let arenas = N.div_ceil(ARENA_SLOTS - 1);
    assert!(
        made.fds_added <= arenas * PER_ARENA + 4,
        "{what}: {N} cost {} descriptors, more than {arenas} arenas",
        made.fds_added
    );
    // 64 bytes a primitive, plus the arenas' header pages.
    assert!(
        made.shm <= (N * 64 + arenas * 4096) as u64,
        "{what}: {N} cost {} bytes of shared memory",
        made.shm
    );
    // Dropped, they give back every arena but the one new primitives come from.
    assert!(
        made.fds_left <= PER_ARENA,
        "{what}: {} descriptors left after dropping them all",
        made.fds_left
    );
    eprintln!("{what}: {made:?}");
    made
}

#[tokio::test]
async fn a_hundred_thousand_locks_under_a_1024_descriptor_limit() {
    made_under_the_limit(0, "locks").await;
}

#[tokio::test]
async fn a_hundred_thousand_events_under_a_1024_descriptor_limit() {
    made_under_the_limit(1, "events").await;
}

#[tokio::test]
async fn a_hundred_thousand_semaphores_under_a_1024_descriptor_limit() {
    made_under_the_limit(2, "semaphores").await;
}

// ---- handles of one arena sent to another process ----

#[derive(Serialize, Deserialize)]
enum Delivery {
    One(Lock),
    Batch(Vec<Lock>),
    /// Report what arrived so far.
    Count,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Received {
    limit: (Option<u64>, Option<u64>),
    locks: usize,
    /// Descriptors opened by receiving them, over the count before the first.
    fds_added: usize,
    /// How many of the locks received were held (by the sender) when tried.
    held: usize,
}

async fn receive_locks(mut end: Duplex<Received, Delivery>) {
    let fds = open_fds();
    let mut kept = Vec::new();
    while let Some(delivery) = end.recv().await.unwrap() {
        match delivery {
            Delivery::One(lock) => kept.push(lock),
            Delivery::Batch(locks) => kept.extend(locks),
            Delivery::Count => {
                let held = kept.iter().filter(|l| l.try_lock().is_err()).count();
                let report = Received {
                    limit: fd_limit(),
                    locks: kept.len(),
                    fds_added: open_fds().saturating_sub(fds),
                    held,
                };
                end.send(report).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn thousands_of_locks_received_one_by_one_and_in_a_batch_cost_one_arena() {
    const MANY: usize = 10_000;
    let (mut here, there) = pipe::duplex::<Delivery, Received>().unwrap();
    let child = Builder::new()
        .open_files_limit(FD_LIMIT)
        .spawn(there, receive_locks)
        .unwrap();
    let ones: Vec<Lock> = (0..MANY).map(|_| Lock::new().unwrap()).collect();
    let batch: Vec<Lock> = (0..MANY).map(|_| Lock::new().unwrap()).collect();
    // Every 1000th is held here, so the child can tell they are the same locks.
    let guards: Vec<_> = ones
        .iter()
        .chain(&batch)
        .step_by(1000)
        .map(|l| l.try_lock().unwrap())
        .collect();
    // The locks span at most three arenas (other tests of this binary create locks too).
    let most = 3 * PER_ARENA;

    for lock in &ones {
        here.send(Delivery::One(lock.clone())).await.unwrap();
    }
    here.send(Delivery::Count).await.unwrap();
    let got = within("one by one", here.recv()).await.unwrap().unwrap();
    assert_eq!(got.limit, (Some(FD_LIMIT), Some(FD_LIMIT)));
    assert_eq!(got.locks, MANY);
    assert_eq!(got.held, MANY / 1000);
    assert!(got.fds_added <= most, "one by one: {got:?}");

    here.send(Delivery::Batch(batch.clone())).await.unwrap();
    here.send(Delivery::Count).await.unwrap();
    let got = within("batch", here.recv()).await.unwrap().unwrap();
    assert_eq!(got.locks, 2 * MANY);
    assert_eq!(got.held, guards.len());
    assert!(got.fds_added <= most, "batch: {got:?}");
    eprintln!("received {} locks: {got:?}", 2 * MANY);

    drop(guards);
    drop(here);
    within("receiver", child).await.unwrap();
}

// ---- locks that share a wake-up eventfd ----

/// Adds 1 to each lock's counter `rounds` times, holding the lock across a yield so that the
/// others park meanwhile.
async fn add_to_each((locks, mem, rounds): (Vec<Lock>, SharedMemory, u64)) -> u64 {
    for _ in 0..rounds {
        for (i, lock) in locks.iter().enumerate() {
            let _guard = lock.lock().await.unwrap();
            let v = counter(&mem, i);
            tokio::task::yield_now().await;
            mem.write(i * 8, &(v + 1).to_ne_bytes());
        }
    }
    rounds
}

/// The blocking twin of [`add_to_each`].
fn add_to_each_blocking((locks, mem, rounds): (Vec<Lock>, SharedMemory, u64)) -> u64 {
    for _ in 0..rounds {
        for (i, lock) in locks.iter().enumerate() {
            let _guard = lock.blocking_lock().unwrap();
            let v = counter(&mem, i);
            std::thread::yield_now();
            mem.write(i * 8, &(v + 1).to_ne_bytes());
        }
    }
    rounds
}

fn counter(mem: &SharedMemory, i: usize) -> u64 {
    let mut buf = [0u8; 8];
    mem.read(i * 8, &mut buf);
    u64::from_ne_bytes(buf)
}

#[tokio::test]
async fn contention_on_locks_that_share_a_wake_up_eventfd() {
    // One more lock than there are lanes: at least two of them share one.
    let locks: Vec<Lock> = (0..=WAKE_LANES).map(|_| Lock::new().unwrap()).collect();
    let mem = SharedMemory::new(8 * locks.len()).unwrap();
    const ROUNDS: u64 = 60;
    let args = || (locks.clone(), mem.clone(), ROUNDS);
    let children = [
        spawn(args(), add_to_each),
        spawn(args(), add_to_each),
        spawn(args(), add_to_each_blocking),
    ];
    add_to_each(args()).await;
    for child in children {
        assert_eq!(within("contender", child).await.unwrap(), ROUNDS);
    }
    for (i, lock) in locks.iter().enumerate() {
        assert_eq!(counter(&mem, i), 4 * ROUNDS, "lock {i} lost an update");
        assert!(!lock.is_locked());
    }
}

// ---- a process killed while it holds slots ----

/// Takes the locks, holds the first, says so, and waits to be killed.
async fn hold_until_killed((mut end, hold): (Duplex<(), Vec<Lock>>, usize)) {
    let locks = end.recv().await.unwrap().unwrap();
    let guard = locks[hold].lock().await.unwrap();
    end.send(()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(guard);
}

/// Fills one arena with locks, hands them all to a child that is killed holding one, and
/// reports what is left of that arena here afterwards.
async fn fill_send_and_kill(_: ()) -> Result<(), String> {
    let before: BTreeSet<u64> = memfds().into_keys().collect();
    let locks: Vec<Lock> = (0..ARENA_SLOTS - 1)
        .map(|_| Lock::new().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let arena: Vec<u64> = memfds()
        .into_keys()
        .filter(|ino| !before.contains(ino))
        .collect();
    let [arena] = arena[..] else {
        return Err(format!("expected one new arena, found {arena:?}"));
    };
    // The next lock comes from a new arena: the first one is now reachable only through the
    // locks and the child's copies.
    let next = Lock::new().map_err(|e| e.to_string())?;
    let (mut here, there) = pipe::duplex::<Vec<Lock>, ()>().map_err(|e| e.to_string())?;
    let child = spawn((there, 7), hold_until_killed);
    here.send(locks.clone()).await.map_err(|e| e.to_string())?;
    within("holding", here.recv())
        .await
        .map_err(|e| e.to_string())?;
    child.kill().map_err(|e| e.to_string())?;
    let _ = within("killed child", child).await;

    let guard = locks[7]
        .lock_timeout(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    if !guard.owner_died() {
        return Err("the killed holder's lock did not report owner_died".into());
    }
    drop(guard);
    if !memfds().contains_key(&arena) {
        return Err("the arena closed while locks of it were alive".into());
    }
    drop(locks);
    // Every handle of the arena is gone here and in the killed child: its memfd is closed, so
    // the kernel frees it; slots the child held died with it.
    if memfds().contains_key(&arena) {
        return Err("the arena outlived every handle of it".into());
    }
    drop(next);
    Ok(())
}

#[tokio::test]
async fn an_arena_is_freed_once_a_killed_process_held_its_slots_and_the_rest_dropped_them() {
    let child = spawn((), fill_send_and_kill);
    within("coordinator", child).await.unwrap().unwrap();
}
