//! `Event` across real processes: one `set` wakes every waiter in every process, timeouts,
//! set-then-clear, cancellation.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestEvent.test_event`).

use std::time::{Duration, Instant};

use futures::poll;
use multiproc::{Event, Semaphore, spawn};
use multiproc_suite::within;

async fn wait_for_event((event, ready): (Event, Semaphore)) -> bool {
    ready.release().unwrap();
    event.wait_timeout(Duration::from_secs(60)).await.unwrap()
}

#[tokio::test]
async fn one_set_wakes_waiters_in_four_processes() {
    let event = Event::new().unwrap();
    let ready = Semaphore::new(0).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn((event.clone(), ready.clone()), wait_for_event))
        .collect();
    for _ in 0..4 {
        within("child ready", ready.acquire())
            .await
            .unwrap()
            .forget();
    }
    event.set();
    for child in children {
        assert!(within("child", child).await.unwrap());
    }
}

#[tokio::test]
async fn python_event_semantics() {
    let event = Event::new().unwrap();
    assert!(!event.is_set());
    let start = Instant::now();
    assert!(!event.wait_timeout(Duration::from_millis(50)).await.unwrap());
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(!event.wait_timeout(Duration::ZERO).await.unwrap());
    event.set();
    event.set();
    assert!(event.is_set());
    within("set event", event.wait()).await.unwrap();
    assert!(event.wait_timeout(Duration::ZERO).await.unwrap());
    event.clear();
    assert!(!event.is_set());
    assert!(
        !event
            .blocking_wait_timeout(Duration::from_millis(10))
            .unwrap()
    );
}

#[tokio::test]
async fn waiter_sees_a_set_even_if_cleared_at_once() {
    let event = Event::new().unwrap();
    let ready = Semaphore::new(0).unwrap();
    let child = spawn((event.clone(), ready.clone()), wait_for_event);
    within("child ready", ready.acquire())
        .await
        .unwrap()
        .forget();
    // Give the child time to park; correctness does not depend on it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    event.set();
    event.clear();
    assert!(within("child", child).await.unwrap());
}

#[tokio::test]
async fn timed_waiter_reports_false_untimed_reports_true() {
    let event = Event::new().unwrap();
    let timed = spawn(event.clone(), |event: Event| async move {
        let start = Instant::now();
        let set = event
            .wait_timeout(Duration::from_millis(100))
            .await
            .unwrap();
        (set, start.elapsed() >= Duration::from_millis(100))
    });
    let untimed = spawn(event.clone(), |event: Event| event.blocking_wait().is_ok());
    assert_eq!(within("timed", timed).await.unwrap(), (false, true));
    event.set();
    assert!(within("untimed", untimed).await.unwrap());
}

#[tokio::test]
async fn cancelled_wait_loses_no_wake_up() {
    let event = Event::new().unwrap();
    let mut cancelled = Box::pin(event.wait());
    assert!(poll!(&mut cancelled).is_pending());
    let ready = Semaphore::new(0).unwrap();
    let child = spawn((event.clone(), ready.clone()), wait_for_event);
    within("child ready", ready.acquire())
        .await
        .unwrap()
        .forget();
    let other = event.clone();
    let local = tokio::spawn(async move { other.wait().await.is_ok() });
    drop(cancelled);
    event.set();
    assert!(within("child", child).await.unwrap());
    assert!(within("local waiter", local).await.unwrap());
}

/// Answers `rounds` pings: waits for `ping` (blocking, or async on even rounds), clears it,
/// sets `pong`.
async fn answer_pings((ping, pong, rounds): (Event, Event, u32)) -> u32 {
    for round in 0..rounds {
        if round % 2 == 0 {
            ping.wait().await.unwrap();
        } else {
            ping.blocking_wait().unwrap();
        }
        ping.clear();
        pong.set();
    }
    rounds
}

#[tokio::test]
async fn reused_registrations_keep_waking_over_many_round_trips() {
    const ROUNDS: u32 = 2000;
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn((ping.clone(), pong.clone(), ROUNDS), answer_pings);
    for round in 0..ROUNDS {
        ping.set();
        if round % 3 == 0 {
            // A timed wait shares the registration of untimed ones.
            assert!(
                pong.wait_timeout(multiproc_suite::TEST_LIMIT)
                    .await
                    .unwrap()
            );
        } else {
            within("pong", pong.wait()).await.unwrap();
        }
        pong.clear();
    }
    assert_eq!(within("child", child).await.unwrap(), ROUNDS);
}
