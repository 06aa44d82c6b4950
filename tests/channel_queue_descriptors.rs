//! What a `Queue` costs in descriptors, counted in `/proc/self/fd`: a queue at rest holds two
//! of its own (its memfd: header, ring and log; and the one socket of its out-of-band lane),
//! its clones hold none of their own, waiting on it costs nothing per queue, and a queue sent to
//! another process costs that process the same.
//!
//! Shared by every queue (and lock, event, ...) of a process, and not counted per queue: the
//! wait arena its waits live in, `1 + WAKE_LANES` descriptors (its memfd and its wake-up
//! eventfds) per 16,383 primitives, mapped once per process, and each lane's cached waiter
//! registrations (at most one for async waits and one for blocking waits per lane).
//!
//! One test, as the tests of one binary share the descriptor table.

use std::time::Duration;

use multiproc::{Queue, spawn};
use multiproc_core::wait::arena::WAKE_LANES;
use multiproc_suite::within;

/// The most descriptors a queue at rest may hold: its memfd (header, ring and the log's
/// counters mapped, the log's data past them) and its socket.
const PER_QUEUE: usize = 2;
/// The most descriptors waiting may add for every queue of a process at once: a cached
/// registration of each of the arena's wake-up lanes, async and blocking.
const WAIT_REGISTRATIONS: usize = 2 * WAKE_LANES;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// What the descriptors of this process are, kind by kind (for failure messages).
fn kinds() -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let target = std::fs::read_link(entry.unwrap().path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = target
            .split([':', ' '])
            .next()
            .unwrap_or_default()
            .to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

#[test]
fn a_queue_holds_few_descriptors_here_and_in_the_process_it_is_sent_to() {
    a_queue_at_rest_holds_few_descriptors_and_its_clones_none();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(a_queue_sent_to_another_process_costs_it_as_few());
}

fn warm_up() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let q: Queue<u64> = Queue::new().unwrap();
    rt.block_on(async {
        q.put(1).await.unwrap();
        assert_eq!(q.get().await.unwrap(), 1);
    });
}

fn a_queue_at_rest_holds_few_descriptors_and_its_clones_none() {
    // Whatever the process makes once, at its first queue and runtime, is not the queues'.
    warm_up();
    let kinds_before = kinds();
    let before = open_descriptors();
    let queues: Vec<Queue<u64>> = (0..100).map(|_| Queue::new().unwrap()).collect();
    let bounded: Vec<Queue<u64>> = (0..100).map(|_| Queue::bounded(16).unwrap()).collect();
    let created = open_descriptors() - before;
    assert!(
        created <= 200 * PER_QUEUE,
        "200 queues hold {created} descriptors, more than {PER_QUEUE} each: {:?}",
        kinds()
    );
    let clones: Vec<Queue<u64>> = queues.iter().chain(&bounded).cloned().collect();
    assert_eq!(
        open_descriptors() - before,
        created,
        "a clone shares its queue's descriptors"
    );
    // Used without waiting (a put and a get each), they hold no more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let with_runtime = open_descriptors();
    rt.block_on(async {
        for (i, q) in clones.iter().enumerate() {
            q.put(i as u64).await.unwrap();
            assert_eq!(q.get().await.unwrap(), i as u64);
        }
    });
    assert_eq!(
        open_descriptors(),
        with_runtime,
        "puts and gets open nothing"
    );
    drop((queues, bounded, clones));
    drop(rt);
    assert!(
        open_descriptors() <= before,
        "dropped queues leave descriptors behind: {:?}, before {kinds_before:?}",
        kinds()
    );
    waiting_on_each_queue_costs_nothing_per_queue();
}

fn waiting_on_each_queue_costs_nothing_per_queue() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clones: Vec<Queue<u64>> = (0..200).map(|_| Queue::new().unwrap()).collect();
    let with_runtime = open_descriptors();
    // Each of them waited on (a get that parks, then times out), async and blocking: the
    // registrations are the arena lanes', shared by all of them.
    rt.block_on(async {
        for q in &clones {
            assert!(q.get_timeout(Duration::from_millis(2)).await.is_err());
        }
    });
    for q in &clones {
        assert!(q.blocking_get_timeout(Duration::from_millis(2)).is_err());
    }
    let waited = open_descriptors() - with_runtime;
    assert!(
        waited <= WAIT_REGISTRATIONS,
        "waiting on 200 queues kept {waited} descriptors, more than the {WAIT_REGISTRATIONS} \
         registrations of the arena's lanes: {:?}",
        kinds()
    );
}

/// Counts the descriptors the 20 queues waiting on `carrier` cost this process when taken off
/// it, and answers on the last of them.
async fn count_received(carrier: Queue<Queue<u64>>) -> usize {
    let before = open_descriptors();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(carrier.try_get().unwrap());
    }
    let cost = open_descriptors() - before;
    got.last().unwrap().put(cost as u64).await.unwrap();
    cost
}

async fn a_queue_sent_to_another_process_costs_it_as_few() {
    let carrier: Queue<Queue<u64>> = Queue::new().unwrap();
    let sent: Vec<Queue<u64>> = (0..20).map(|_| Queue::new().unwrap()).collect();
    // All on the carrier before the child starts, so that it takes them without waiting (a
    // wait would cache a registration, a descriptor of the carrier's).
    for q in &sent {
        carrier.put(q.clone()).await.unwrap();
    }
    let child = spawn(carrier.clone(), count_received);
    let answered = within("the child's count", sent[19].get()).await.unwrap();
    let cost = within("the child", child).await.unwrap();
    assert_eq!(answered, cost as u64);
    assert!(
        cost <= 20 * PER_QUEUE,
        "20 received queues hold {cost} descriptors in the child"
    );
}
