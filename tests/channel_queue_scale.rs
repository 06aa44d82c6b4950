//! Many queues in a process under a 1,024-descriptor limit (soft and hard), used across
//! processes.
//!
//! A queue costs two descriptors of its own (its memfd and its socket) plus its share of the
//! wait arena that thousands of primitives share (`1 + WAKE_LANES` descriptors per arena). A
//! child spawned with `open_files_limit(1024)` receives `RECEIVED` queues from its parent as a
//! spawn argument, answers on each of them, and creates `CREATED` queues of its own and uses
//! each: `RECEIVED + CREATED` queues at once, which at the five descriptors a queue used to
//! take would need more than twice the limit.
//!
//! The child only receives descriptors, never sends them: descriptors in flight count against
//! the sending user's `RLIMIT_NOFILE`, for all of that user's processes at once, so a child
//! under a low limit that sent some could fail because of other tests running meanwhile.

use std::collections::HashSet;
use std::time::Duration;

use multiproc::{Builder, Queue};
use multiproc_core::wait::arena::WAKE_LANES;
use multiproc_suite::within;
use serde::{Deserialize, Serialize};

/// The limit the child runs under, soft and hard.
const FD_LIMIT: u64 = 1024;
/// Queues the parent makes and sends to the child.
const RECEIVED: usize = 200;
/// Queues the child makes itself.
const CREATED: usize = 230;
/// What the queues would have cost at five descriptors each.
const OLD_COST: usize = 5 * (RECEIVED + CREATED);
const _: () = assert!(OLD_COST as u64 > 2 * FD_LIMIT);

/// Descriptors of one arena: its memfd and its wake-up eventfds.
const PER_ARENA: usize = 1 + WAKE_LANES;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What the child saw.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    limit: (Option<u64>, Option<u64>),
    /// Descriptors the received queues cost it (given back when it dropped them).
    received_cost: usize,
    /// Queues it created, and what they cost it.
    created: usize,
    created_cost: usize,
    /// Descriptors open with every queue alive and used.
    at_peak: usize,
}

/// The child: takes the message waiting on each received queue and answers on it with twice
/// the value, then creates its own queues and passes a message through each.
async fn use_many(queues: Vec<Queue<u64>>) -> Result<Report, String> {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let mut report = Report {
        limit: (l.current, l.maximum),
        received_cost: 0,
        created: 0,
        created_cost: 0,
        at_peak: 0,
    };
    for q in &queues {
        let v = tokio::time::timeout(Duration::from_secs(60), q.get())
            .await
            .map_err(|_| "a received queue's message never came")?
            .map_err(|e| e.to_string())?;
        q.put(2 * v).await.map_err(|e| e.to_string())?;
    }
    let before = open_fds();
    let mut own = Vec::new();
    for i in 0..CREATED {
        let q: Queue<u64> = Queue::new().map_err(|e| format!("queue {i}: {e}"))?;
        own.push(q);
    }
    report.created = own.len();
    report.created_cost = open_fds() - before;
    // Each used, with the received ones still alive: small messages, a large one (the log)
    // and one through the socket (a message that carries a handle of another queue).
    for (i, q) in own.iter().enumerate() {
        q.put(i as u64).await.map_err(|e| e.to_string())?;
        if q.try_get().map_err(|e| e.to_string())? != i as u64 {
            return Err(format!("queue {i} gave back another value"));
        }
    }
    let big: Queue<Vec<u8>> = Queue::new().map_err(|e| e.to_string())?;
    big.put(vec![7; 1 << 20]).await.map_err(|e| e.to_string())?;
    if big.try_get().map_err(|e| e.to_string())? != vec![7; 1 << 20] {
        return Err("a large message came back changed".into());
    }
    let carrier: Queue<Queue<u64>> = Queue::new().map_err(|e| e.to_string())?;
    carrier
        .put(own[0].clone())
        .await
        .map_err(|e| e.to_string())?;
    let back = carrier.try_get().map_err(|e| e.to_string())?;
    back.put(99).await.map_err(|e| e.to_string())?;
    if own[0].try_get().map_err(|e| e.to_string())? != 99 {
        return Err("a queue sent through a queue is not the same queue".into());
    }
    report.at_peak = open_fds();
    // What the received ones cost: what dropping them gives back.
    drop(queues);
    report.received_cost = report.at_peak - open_fds();
    drop((own, big, carrier, back));
    Ok(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_under_a_1024_descriptor_limit_uses_hundreds_of_queues() {
    let queues: Vec<Queue<u64>> = (0..RECEIVED).map(|_| Queue::new().unwrap()).collect();
    for (i, q) in queues.iter().enumerate() {
        q.put(i as u64).await.unwrap();
    }
    let child = Builder::new()
        .open_files_limit(FD_LIMIT)
        .spawn(queues.clone(), use_many)
        .unwrap();
    let report = within("the child", child).await.unwrap().unwrap();
    eprintln!("{report:?}");
    // The answers, once the child took every message (each queue is both ways: taken earlier,
    // this process could get back its own message).
    let mut answers = HashSet::new();
    for (i, q) in queues.iter().enumerate() {
        let v = within("an answer from the child", q.get()).await.unwrap();
        assert_eq!(v, 2 * i as u64);
        answers.insert(i);
        assert!(q.is_empty(), "one message, one answer");
    }
    assert_eq!(answers.len(), RECEIVED);
    assert_eq!(report.limit, (Some(FD_LIMIT), Some(FD_LIMIT)));
    assert_eq!(report.created, CREATED);
    // Two descriptors a queue, plus at most one arena's (the child's own queues' waits live in
    // an arena it creates).
    assert!(
        report.created_cost <= 2 * CREATED + PER_ARENA,
        "{CREATED} queues cost {} descriptors",
        report.created_cost
    );
    assert!(
        report.received_cost <= 2 * RECEIVED + PER_ARENA,
        "{RECEIVED} received queues cost {} descriptors",
        report.received_cost
    );
    assert!(report.at_peak < FD_LIMIT as usize);
    assert!(
        report.at_peak > 2 * (RECEIVED + CREATED),
        "the queues were all alive at once"
    );
}
