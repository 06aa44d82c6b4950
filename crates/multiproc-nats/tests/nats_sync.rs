//! The distributed Lock, Semaphore and Event on a real `nats-server`, with holders in real
//! child processes: exclusion and growing fencing tokens, a holder that stops renewing
//! (SIGSTOP: its lease expires, the next holder is told the owner died, the paused holder's
//! token is older and its lease-lost future fires), a SIGKILLed holder, semaphore permits,
//! an event waited on in another process, and a barrier of three processes over rounds.

use std::time::Duration;

use multiproc_nats::Nats;
use multiproc_nats::server::NatsServer;
mod support;
use support::within;

/// Short enough that expiry tests take a few seconds.
const LEASE: Duration = Duration::from_secs(2);

async fn connect(url: String) -> Nats {
    within("connect", Nats::builder().url(url).namespace("s").connect())
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_lock_excludes_and_its_token_grows() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let lock = within("open", nats.lock_with_lease("l", LEASE))
        .await
        .unwrap();
    let other = within("open", nats.lock_with_lease("l", LEASE))
        .await
        .unwrap();
    let guard = within("lock", lock.lock()).await.unwrap();
    assert!(!guard.owner_died());
    let first = guard.fencing_token();
    // Held well past its lease: renewal keeps it.
    let err = within("lock_timeout", other.lock_timeout(LEASE * 3))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!guard.is_lease_lost());
    within("unlock", guard.unlock()).await.unwrap();
    let second = within("lock", other.lock()).await.unwrap();
    assert!(!second.owner_died());
    assert!(second.fencing_token() > first);
    drop(second); // released in the background
    let third = within(
        "lock after drop",
        lock.lock_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(
        !third.owner_died(),
        "a dropped guard is a release, not a death"
    );
}

/// In a child: takes the lock, reports its token, then reports whether (and when) its lease
/// was lost and whether unlocking says so.
async fn hold_and_report((url, name): (String, String)) -> u32 {
    let nats = connect(url).await;
    let lock = nats.lock_with_lease(&name, LEASE).await.unwrap();
    let report = nats.queue::<(String, u64)>("report").await.unwrap();
    let guard = lock.lock().await.unwrap();
    report
        .put(("token".into(), guard.fencing_token()))
        .await
        .unwrap();
    // Paused here by the parent; after SIGCONT the lease is found lost.
    tokio::time::timeout(Duration::from_secs(60), guard.lease_lost())
        .await
        .expect("lease lost fires");
    let unlock_says_lost = guard.unlock().await.is_err_and(|e| e.is_lease_lost());
    report
        .put(("lost".into(), u64::from(unlock_says_lost)))
        .await
        .unwrap();
    0
}

#[tokio::test]
async fn a_paused_holder_loses_its_lease_to_the_next_waiter() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let report = within("open", nats.queue::<(String, u64)>("report"))
        .await
        .unwrap();
    let child = multiproc_process::spawn((server.url(), "paused".to_string()), hold_and_report);
    let (what, stale) = within("child token", report.get()).await.unwrap();
    assert_eq!(what, "token");
    child
        .signal(rustix::process::Signal::STOP.as_raw())
        .unwrap();
    let lock = within("open", nats.lock_with_lease("paused", LEASE))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let guard = within("take over", lock.lock()).await.unwrap();
    assert!(
        started.elapsed() >= LEASE / 2,
        "taken before the lease could expire"
    );
    assert!(guard.owner_died());
    assert!(
        guard.fencing_token() > stale,
        "the stale token must be older"
    );
    child
        .signal(rustix::process::Signal::CONT.as_raw())
        .unwrap();
    let (what, unlock_says_lost) = within("child noticed", report.get()).await.unwrap();
    assert_eq!(what, "lost");
    assert_eq!(
        unlock_says_lost, 1,
        "the stale holder's unlock must say the lease was lost"
    );
    assert!(!guard.is_lease_lost());
    within("unlock", guard.unlock()).await.unwrap();
    let _ = child.kill();
}

#[tokio::test]
async fn a_killed_holders_lock_goes_to_the_next_waiter() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let report = within("open", nats.queue::<(String, u64)>("report"))
        .await
        .unwrap();
    let child = multiproc_process::spawn((server.url(), "killed".to_string()), hold_and_report);
    let (_, dead_token) = within("child token", report.get()).await.unwrap();
    child.kill().unwrap();
    let lock = within("open", nats.lock_with_lease("killed", LEASE))
        .await
        .unwrap();
    let guard = within("take over", lock.lock()).await.unwrap();
    assert!(guard.owner_died());
    assert!(guard.fencing_token() > dead_token);
}

#[tokio::test]
async fn a_semaphore_hands_out_its_permits_and_no_more() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let sem = within("open", nats.semaphore_with_lease("pair", 2, LEASE))
        .await
        .unwrap();
    let a = within("a", sem.acquire()).await.unwrap();
    let b = within("b", sem.acquire()).await.unwrap();
    assert_ne!(a.fencing_token(), b.fencing_token());
    let err = within("c", sem.acquire_timeout(LEASE * 2))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    within("release", a.release()).await.unwrap();
    let c = within("c again", sem.acquire_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(!c.owner_died());
    drop((b, c));
}

/// In a child: waits for the event, then reports.
async fn wait_for_event(url: String) -> bool {
    let nats = connect(url).await;
    let event = nats.event("go").await.unwrap();
    let report = nats.queue::<(String, u64)>("report").await.unwrap();
    report.put(("waiting".into(), 0)).await.unwrap();
    event.wait_timeout(Duration::from_secs(60)).await.unwrap()
}

#[tokio::test]
async fn an_event_wakes_a_waiter_in_another_process() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let event = within("open", nats.event("go")).await.unwrap();
    assert!(!within("is_set", event.is_set()).await.unwrap());
    assert!(
        !within(
            "wait_timeout",
            event.wait_timeout(Duration::from_millis(200))
        )
        .await
        .unwrap()
    );
    let report = within("open", nats.queue::<(String, u64)>("report"))
        .await
        .unwrap();
    let child = multiproc_process::spawn(server.url(), wait_for_event);
    within("child waits", report.get()).await.unwrap();
    within("set", event.set()).await.unwrap();
    assert!(within("child woke", child).await.unwrap());
    assert!(within("is_set", event.is_set()).await.unwrap());
    within("clear", event.clear()).await.unwrap();
    assert!(!within("is_set", event.is_set()).await.unwrap());
}

/// In a child: waits at the three-party barrier `b` for `rounds` rounds; its indices.
async fn meet((url, rounds): (String, usize)) -> Vec<usize> {
    let nats = connect(url).await;
    let barrier = nats.barrier("b", 3).await.unwrap();
    let mut indices = Vec::new();
    for _ in 0..rounds {
        indices.push(barrier.wait().await.unwrap());
    }
    indices
}

#[tokio::test]
async fn a_barrier_releases_three_processes_round_after_round() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(server.url()).await;
    let barrier = within("open", nats.barrier("b", 3)).await.unwrap();
    assert_eq!(barrier.parties(), 3);
    // Alone, a wait gives up and takes its arrival back...
    assert_eq!(
        within("alone", barrier.wait_timeout(Duration::from_millis(300)))
            .await
            .unwrap(),
        None
    );
    // ...so three rounds with two children need this process in each: none goes through
    // before all three have arrived.
    let rounds = 3;
    let a = multiproc_process::spawn((server.url(), rounds), meet);
    let b = multiproc_process::spawn((server.url(), rounds), meet);
    let mut mine = Vec::new();
    for _ in 0..rounds {
        mine.push(within("wait", barrier.wait()).await.unwrap());
    }
    let (a, b) = (within("a", a).await.unwrap(), within("b", b).await.unwrap());
    for round in 0..rounds {
        let mut indices = [mine[round], a[round], b[round]];
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2], "round {round}");
    }
    // A barrier of one never waits.
    let one = within("open", nats.barrier("one", 1)).await.unwrap();
    assert_eq!(within("one", one.wait()).await.unwrap(), 0);
}
