//! `Queue` across real child processes (spawned with `multiproc::spawn`).
//!
//! The behaviours follow CPython's `_test_multiprocessing.py` `_TestQueue` (put/get across
//! processes, `Full`/`Empty` and timeouts, `qsize`, and Python 3.13's `shutdown`) plus what
//! Python gets wrong: an unencodable message is an error from `put`, a producer may exit before
//! its large message is read, and a killed consumer does not break the queue.

use std::collections::HashSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use multiproc::error::{GetError, PutErrorKind, TryGetError};
use multiproc::{Queue, spawn};
use multiproc_suite::{blocked_until, eventually, within, within_blocking};
use serde::{Deserialize, Serialize, Serializer};
use serde_bytes::ByteBuf;

type Item = (u32, u32);

async fn produce((queue, producer, n): (Queue<Item>, u32, u32)) {
    for i in 0..n {
        queue.put((producer, i)).await.unwrap();
    }
}

async fn consume_all(queue: Queue<Item>) -> Vec<Item> {
    let mut got = Vec::new();
    loop {
        match queue.get().await {
            Ok(m) => got.push(m),
            Err(GetError::Closed) => return got,
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

fn assert_ordered_per_producer(got: &[Item]) {
    let mut last = std::collections::HashMap::new();
    for &(p, i) in got {
        if let Some(prev) = last.insert(p, i) {
            assert!(prev < i, "producer {p}: {i} arrived after {prev}");
        }
    }
}

#[tokio::test]
async fn each_producers_messages_arrive_in_order() {
    let queue: Queue<Item> = Queue::new().unwrap();
    let a = spawn((queue.clone(), 0, 500), produce);
    let b = spawn((queue.clone(), 1, 500), produce);
    let mut got = Vec::new();
    for _ in 0..1000 {
        got.push(within("get", queue.get()).await.unwrap());
    }
    within("producer a", a).await.unwrap();
    within("producer b", b).await.unwrap();
    assert_ordered_per_producer(&got);
    assert_eq!(got.iter().filter(|m| m.0 == 0).count(), 500);
    assert!(queue.is_empty());
    assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_producers_four_consumers_no_loss_no_duplicate() {
    const PER_PRODUCER: u32 = 10_000;
    let queue: Queue<Item> = Queue::bounded(1000).unwrap();
    let consumers: Vec<_> = (0..4).map(|_| spawn(queue.clone(), consume_all)).collect();
    let producers: Vec<_> = (0..4)
        .map(|p| spawn((queue.clone(), p, PER_PRODUCER), produce))
        .collect();
    for p in producers {
        within("producer", p).await.unwrap();
    }
    queue.shutdown();
    let mut all = Vec::new();
    for c in consumers {
        let got = within("consumer", c).await.unwrap();
        assert_ordered_per_producer(&got);
        all.extend(got);
    }
    assert_eq!(all.len(), 4 * PER_PRODUCER as usize);
    let distinct: HashSet<Item> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "a message was delivered twice");
    assert_eq!(queue.len(), 0);
}

#[tokio::test]
async fn bounded_queue_makes_a_producer_wait() {
    let queue: Queue<Item> = Queue::bounded(4).unwrap();
    let mut producer = spawn((queue.clone(), 7, 20), produce);
    assert!(within("queue fills", eventually(|| queue.is_full())).await);
    assert_eq!(queue.len(), 4);
    // 20 messages cannot fit in 4 slots: the producer must still be waiting.
    assert!(producer.is_alive());
    for i in 0..20 {
        assert_eq!(within("get", queue.get()).await.unwrap(), (7, i));
    }
    within("producer", producer.join()).await.unwrap();
    assert_eq!(queue.len(), 0);
}

async fn try_ops_in_child(queue: Queue<u32>) -> (bool, u32, bool, bool) {
    let full = queue.try_put(99).unwrap_err();
    let timed_out = queue
        .put_timeout(98, Duration::from_millis(20))
        .await
        .unwrap_err();
    let first = queue.get().await.unwrap();
    let empty = matches!(queue.try_get(), Err(TryGetError::Empty));
    let get_timeout = queue
        .get_timeout(Duration::from_millis(20))
        .await
        .unwrap_err()
        .is_timeout();
    (
        full.is_full() && full.into_inner() == 99 && timed_out.into_inner() == 98,
        first,
        empty,
        get_timeout,
    )
}

#[tokio::test]
async fn full_empty_and_timeouts_in_a_child() {
    let queue: Queue<u32> = Queue::bounded(1).unwrap();
    queue.put(5).await.unwrap();
    let (full_ok, first, empty, get_timeout) =
        within("child", spawn(queue.clone(), try_ops_in_child))
            .await
            .unwrap();
    assert!(full_ok);
    assert_eq!(first, 5);
    assert!(empty);
    assert!(get_timeout);
    // The failed and timed-out puts left no trace.
    assert_eq!(queue.len(), 0);
    queue.try_put(6).unwrap();
    assert_eq!(queue.try_get().unwrap(), 6);
}

fn get_one(queue: Queue<u32>) -> u32 {
    queue.blocking_get().unwrap()
}

fn put_one((queue, value): (Queue<u32>, u32)) {
    queue.blocking_put(value).unwrap();
}

/// A huge timeout (`Duration::MAX`) waits forever, never panics: it returns as soon as the
/// operation can complete, made possible here by a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_timeout_waits_until_the_operation_can_complete() {
    let queue: Queue<u32> = Queue::bounded(1).unwrap();
    // Room, then a message: at once.
    let q = queue.clone();
    let got = within_blocking("blocking put and get with room and a message", move || {
        q.blocking_put_timeout(1, Duration::MAX).unwrap();
        q.blocking_get_timeout(Duration::MAX).unwrap()
    })
    .await;
    assert_eq!(got, 1);
    within(
        "put_timeout(MAX) with room",
        queue.put_timeout(2, Duration::MAX),
    )
    .await
    .unwrap();
    let got = within(
        "get_timeout(MAX) with a message",
        queue.get_timeout(Duration::MAX),
    )
    .await;
    assert_eq!(got.unwrap(), 2);

    // Full: the put waits until a child takes a message.
    queue.blocking_put(3).unwrap();
    let q = queue.clone();
    let (put, took) = blocked_until(
        "blocking_put_timeout(MAX) on a full queue",
        move || q.blocking_put_timeout(4, Duration::MAX).is_ok(),
        || spawn(queue.clone(), get_one),
    )
    .await;
    assert!(put);
    assert_eq!(took.unwrap(), 3);
    assert_eq!(queue.try_get().unwrap(), 4);

    // Empty: the get waits until a child puts.
    let q = queue.clone();
    let (got, put) = blocked_until(
        "blocking_get_timeout(MAX) on an empty queue",
        move || q.blocking_get_timeout(Duration::MAX).unwrap(),
        || spawn((queue.clone(), 5), put_one),
    )
    .await;
    put.unwrap();
    assert_eq!(got, 5);
}

async fn get_until_closed(queue: Queue<u32>) -> (Vec<u32>, bool) {
    let mut got = Vec::new();
    loop {
        match queue.get().await {
            Ok(v) => got.push(v),
            Err(e) => return (got, e.is_closed()),
        }
    }
}

async fn put_blocked_until_closed(queue: Queue<u32>) -> bool {
    queue.put(2).await.unwrap_err().is_closed()
}

#[tokio::test]
async fn shutdown_drains_then_ends_and_wakes_blocked_children() {
    // Blocked getters wake with end-of-queue.
    let empty: Queue<u32> = Queue::new().unwrap();
    let getters: Vec<_> = (0..2)
        .map(|_| spawn(empty.clone(), get_until_closed))
        .collect();
    // A blocked putter wakes with a closed error.
    let full: Queue<u32> = Queue::bounded(1).unwrap();
    full.put(1).await.unwrap();
    let putter = spawn(full.clone(), put_blocked_until_closed);
    empty.shutdown();
    full.shutdown();
    for g in getters {
        assert_eq!(within("getter", g).await.unwrap(), (vec![], true));
    }
    assert!(within("putter", putter).await.unwrap());
    assert_eq!(full.try_get().unwrap(), 1);

    // Consumers drain what was put before the close.
    let queue: Queue<u32> = Queue::new().unwrap();
    for i in 0..100 {
        queue.put(i).await.unwrap();
    }
    queue.shutdown();
    assert!(queue.put(100).await.unwrap_err().is_closed());
    let (got, closed) = within("drainer", spawn(queue.clone(), get_until_closed))
        .await
        .unwrap();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    assert!(closed);
}

fn put_three_and_exit((queue, first): (Queue<u32>, u32)) {
    for i in first..first + 3 {
        queue.blocking_put(i).unwrap();
    }
    // Python's `queue.close()` here ("this process puts no more") is dropping the handle.
}

fn shut_down(queue: Queue<u32>) -> bool {
    queue.shutdown();
    queue.is_shutdown()
}

/// A producer that is done drops its handle and nobody else notices; `shutdown`, from any
/// process, ends the queue for all: puts fail, gets drain, then fail.
#[tokio::test]
async fn a_done_producer_affects_nobody_and_shutdown_ends_the_queue_for_all() {
    let queue: Queue<u32> = Queue::new().unwrap();
    within(
        "first producer",
        spawn((queue.clone(), 0), put_three_and_exit),
    )
    .await
    .unwrap();
    assert!(!queue.is_shutdown());
    within(
        "second producer",
        spawn((queue.clone(), 3), put_three_and_exit),
    )
    .await
    .unwrap();
    queue.put(6).await.unwrap();
    assert!(
        within("shutdown in a child", spawn(queue.clone(), shut_down))
            .await
            .unwrap()
    );
    assert!(queue.is_shutdown());
    assert!(queue.put(7).await.unwrap_err().is_closed());
    let (got, ended) = within("drainer", spawn(queue.clone(), get_until_closed))
        .await
        .unwrap();
    assert_eq!(got, (0..7).collect::<Vec<_>>());
    assert!(ended);
}

async fn cancelled_get_then_put(queue: Queue<u32>) {
    // A get abandoned by a timeout and one dropped after one poll take nothing.
    assert!(
        queue
            .get_timeout(Duration::from_millis(20))
            .await
            .unwrap_err()
            .is_timeout()
    );
    let pending = tokio::select! {
        biased;
        r = queue.get() => Some(r),
        () = std::future::ready(()) => None,
    };
    assert!(pending.is_none());
    queue.put(41).await.unwrap();
}

async fn cancelled_put(queue: Queue<u32>) -> usize {
    // The queue is full: this put waits, then is cancelled by the timeout.
    assert!(
        queue
            .put_timeout(7, Duration::from_millis(20))
            .await
            .unwrap_err()
            .is_timeout()
    );
    let dropped = tokio::select! {
        biased;
        r = queue.put(8) => Some(r),
        () = std::future::ready(()) => None,
    };
    assert!(dropped.is_none());
    queue.len()
}

#[tokio::test]
async fn cancelled_gets_and_puts_in_a_child_lose_and_add_nothing() {
    let queue: Queue<u32> = Queue::bounded(1).unwrap();
    within("child get", spawn(queue.clone(), cancelled_get_then_put))
        .await
        .unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(within("get", queue.get()).await.unwrap(), 41);

    queue.put(1).await.unwrap();
    assert_eq!(
        within("child put", spawn(queue.clone(), cancelled_put))
            .await
            .unwrap(),
        1
    );
    assert_eq!(queue.try_get().unwrap(), 1);
    assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
    assert_eq!(queue.len(), 0);
}

const BIG: usize = 16 << 20;

fn big_payload(seed: u8) -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn put_big_and_exit((queue, seed): (Queue<ByteBuf>, u8)) {
    // A sync child: the blocking twin needs no runtime.
    queue
        .blocking_put(ByteBuf::from(big_payload(seed)))
        .unwrap();
}

#[tokio::test]
async fn producer_exits_right_after_putting_16_mib() {
    let queue: Queue<ByteBuf> = Queue::new().unwrap();
    // Join the producers before reading anything: in Python this deadlocks.
    within("producer 1", spawn((queue.clone(), 1u8), put_big_and_exit))
        .await
        .unwrap();
    within("producer 2", spawn((queue.clone(), 2u8), put_big_and_exit))
        .await
        .unwrap();
    let first = within("get", queue.get()).await.unwrap();
    let second = within("get", queue.get()).await.unwrap();
    assert!(first.as_slice() == big_payload(1).as_slice());
    assert!(second.as_slice() == big_payload(2).as_slice());

    // And the other way: the parent puts 16 MiB, a child reads it.
    queue.put(ByteBuf::from(big_payload(3))).await.unwrap();
    let ok = within(
        "child reader",
        spawn(queue.clone(), |q: Queue<ByteBuf>| async move {
            q.get().await.unwrap().as_slice() == big_payload(3).as_slice()
        }),
    )
    .await
    .unwrap();
    assert!(ok);
}

#[derive(Serialize, Deserialize)]
struct Request {
    n: u32,
    reply: Queue<u32>,
}

async fn serve(requests: Queue<Request>) -> u32 {
    let mut served = 0;
    while let Ok(req) = requests.get().await {
        req.reply.put(req.n * 2).await.unwrap();
        served += 1;
    }
    served
}

#[tokio::test]
async fn queues_travel_inside_messages() {
    let requests: Queue<Request> = Queue::new().unwrap();
    let server = spawn(requests.clone(), serve);
    for n in 0..10 {
        let reply: Queue<u32> = Queue::bounded(1).unwrap();
        requests
            .put(Request {
                n,
                reply: reply.clone(),
            })
            .await
            .unwrap();
        assert_eq!(within("reply", reply.get()).await.unwrap(), n * 2);
    }
    requests.shutdown();
    assert_eq!(within("server", server).await.unwrap(), 10);
}

async fn slow_consumer((queue, progress): (Queue<Item>, Queue<u32>)) {
    let mut n = 0;
    loop {
        let _ = queue.get().await.unwrap();
        n += 1;
        progress.put(n).await.unwrap();
    }
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_does_not_break_the_queue() {
    let queue: Queue<Item> = Queue::new().unwrap();
    let progress: Queue<u32> = Queue::new().unwrap();
    for i in 0..2000 {
        queue.put((0, i)).await.unwrap();
    }
    let mut victim = spawn((queue.clone(), progress.clone()), slow_consumer);
    // The survivor starts once the victim consumes: started together, it could drain the
    // queue before the victim took anything, and the victim would never report progress.
    within("victim progress", progress.get()).await.unwrap();
    let survivor = spawn(queue.clone(), consume_all);
    // Kill the victim while it is consuming.
    victim.kill().unwrap();
    assert!(
        within("victim", victim.join())
            .await
            .unwrap_err()
            .is_killed()
    );
    // The queue keeps working for everyone else.
    for i in 0..500 {
        queue.put((1, i)).await.unwrap();
    }
    queue.shutdown();
    let got = within("survivor", survivor).await.unwrap();
    assert_ordered_per_producer(&got);
    let after_kill: Vec<u32> = got.iter().filter(|m| m.0 == 1).map(|m| m.1).collect();
    assert_eq!(after_kill, (0..500).collect::<Vec<_>>());
    let mut victim_count = 0;
    while let Ok(n) = progress.try_get() {
        victim_count = n;
    }
    let before_kill = got.iter().filter(|m| m.0 == 0).count();
    // The victim may have died holding one message it had taken but not reported.
    assert!(before_kill + victim_count as usize <= 2000);
    assert!(
        before_kill + victim_count as usize >= 1999,
        "{before_kill} + {victim_count}"
    );
}

async fn flood(queue: Queue<Item>) {
    for i in 0.. {
        queue.put((9, i)).await.unwrap();
    }
}

#[tokio::test]
async fn a_producer_killed_mid_put_leaves_only_whole_messages() {
    let queue: Queue<Item> = Queue::bounded(64).unwrap();
    let mut producer = spawn(queue.clone(), flood);
    assert!(within("queue fills", eventually(|| queue.is_full())).await);
    producer.kill().unwrap();
    let _ = within("producer", producer.join()).await;
    queue.shutdown();
    let mut next = 0;
    loop {
        match within("drain", queue.get()).await {
            Ok((9, i)) => {
                assert_eq!(i, next);
                next += 1;
            }
            Ok(other) => panic!("unexpected message {other:?}"),
            Err(GetError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(next >= 64);
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Message {
    Text(String),
    #[serde(skip_deserializing)]
    Broken(#[serde(serialize_with = "refuse")] ()),
}

fn refuse<S: Serializer>(_: &(), _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom("refuses to be encoded"))
}

async fn put_broken_then_good(queue: Queue<Message>) -> bool {
    let err = queue.put(Message::Broken(())).await.unwrap_err();
    let was_encode = matches!(err.kind(), PutErrorKind::Encode(_));
    queue.put(Message::Text("good".into())).await.unwrap();
    was_encode
}

#[tokio::test]
async fn an_unencodable_message_is_an_error_from_put_in_the_child() {
    let queue: Queue<Message> = Queue::bounded(1).unwrap();
    assert!(
        within("child", spawn(queue.clone(), put_broken_then_good))
            .await
            .unwrap()
    );
    assert_eq!(
        within("get", queue.get()).await.unwrap(),
        Message::Text("good".into())
    );
    assert_eq!(queue.len(), 0);
}

async fn stream_sum(queue: Queue<u64>) -> u64 {
    queue
        .stream()
        .filter_map(|m| async move { m.ok() })
        .fold(0, |a, b| async move { a + b })
        .await
}

#[tokio::test]
async fn sink_in_parent_stream_in_child() {
    let queue: Queue<u64> = Queue::bounded(8).unwrap();
    let consumer = spawn(queue.clone(), stream_sum);
    let mut sink = queue.sink();
    let mut items = futures::stream::iter((1..=1000u64).map(Ok));
    within("send_all", sink.send_all(&mut items)).await.unwrap();
    within("flush", sink.close()).await.unwrap();
    queue.shutdown();
    assert_eq!(within("consumer", consumer).await.unwrap(), 500_500);
}

/// A message for any of the queue's lanes, by `seq % 4`: small (a ring slot), medium (the
/// socket), large (a memfd), or small with a descriptor (the socket).
#[derive(Serialize, Deserialize, Debug)]
struct Mixed {
    producer: u32,
    seq: u32,
    body: ByteBuf,
    handle: Option<Queue<u32>>,
}

fn mixed(producer: u32, seq: u32, side: &Queue<u32>) -> Mixed {
    let len = [8, 1000, 100_000, 8][seq as usize % 4];
    Mixed {
        producer,
        seq,
        body: ByteBuf::from(vec![seq as u8; len]),
        handle: (seq % 4 == 3).then(|| side.clone()),
    }
}

/// Checks the body matches its sequence number and that a handle inside works.
fn check_mixed(m: &Mixed) {
    let len = [8, 1000, 100_000, 8][m.seq as usize % 4];
    assert_eq!(m.body.len(), len, "message {} of {}", m.seq, m.producer);
    assert!(m.body.iter().all(|&b| b == m.seq as u8));
    assert_eq!(m.handle.is_some(), m.seq % 4 == 3);
    if let Some(side) = &m.handle {
        side.try_put(m.seq).unwrap();
    }
}

async fn produce_mixed((queue, side, producer, n): (Queue<Mixed>, Queue<u32>, u32, u32)) {
    for seq in 0..n {
        queue.put(mixed(producer, seq, &side)).await.unwrap();
    }
}

async fn consume_mixed(queue: Queue<Mixed>) -> Vec<Item> {
    let mut got = Vec::new();
    loop {
        match queue.get().await {
            Ok(m) => {
                check_mixed(&m);
                got.push((m.producer, m.seq));
            }
            Err(GetError::Closed) => return got,
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_large_and_handle_messages_keep_each_producers_order() {
    let queue: Queue<Mixed> = Queue::new().unwrap();
    let side: Queue<u32> = Queue::new().unwrap();
    let producers: Vec<_> = (0..3)
        .map(|p| spawn((queue.clone(), side.clone(), p, 200), produce_mixed))
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| spawn(queue.clone(), consume_mixed))
        .collect();
    for p in producers {
        within("producer", p).await.unwrap();
    }
    queue.shutdown();
    let mut all = HashSet::new();
    for c in consumers {
        let got = within("consumer", c).await.unwrap();
        assert_ordered_per_producer(&got);
        for m in got {
            assert!(all.insert(m), "{m:?} delivered twice");
        }
    }
    assert_eq!(all.len(), 600);
    // Every message with a handle put its number through it.
    assert_eq!(side.len(), 150);
}

async fn flood_mixed((queue, side): (Queue<Mixed>, Queue<u32>)) {
    for seq in 0.. {
        queue.put(mixed(9, seq, &side)).await.unwrap();
    }
}

#[tokio::test]
async fn a_producer_killed_while_streaming_leaves_a_working_queue() {
    let queue: Queue<Mixed> = Queue::bounded(16).unwrap();
    let side: Queue<u32> = Queue::bounded(1 << 16).unwrap();
    let mut producer = spawn((queue.clone(), side.clone()), flood_mixed);
    // Consume while it produces, so the kill lands in the middle of puts, not in a wait.
    let mut next = 0;
    while next < 300 {
        let m = within("get", queue.get()).await.unwrap();
        assert_eq!(m.seq, next);
        check_mixed(&m);
        next += 1;
    }
    producer.kill().unwrap();
    let _ = within("producer", producer.join()).await;
    // What it finished putting comes out whole and in order; then the queue is empty, not stuck.
    loop {
        match within("drain", queue.get_timeout(Duration::from_millis(500))).await {
            Ok(m) => {
                assert_eq!(m.seq, next);
                check_mixed(&m);
                next += 1;
            }
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                break;
            }
        }
    }
    queue.put(mixed(1, 2, &side)).await.unwrap();
    queue.put(mixed(1, 3, &side)).await.unwrap();
    assert_eq!(within("get", queue.get()).await.unwrap().seq, 2);
    assert_eq!(within("get", queue.get()).await.unwrap().seq, 3);
}

// ---- Unbounded means unbounded; capacities are checked (issue 11, items 9 and 14) ----

const MILLION: u32 = 1_000_000;

fn put_a_million(queue: Queue<u32>) {
    for i in 0..MILLION {
        // Never full: an unbounded queue takes puts until memory runs out.
        queue.try_put(i).unwrap();
    }
}

#[tokio::test]
async fn an_unbounded_queue_takes_a_million_items_from_a_producer_that_exits() {
    let queue: Queue<u32> = Queue::new().unwrap();
    // Python's "fill the queue, then start the consumers": the producer exits first.
    within("producer", spawn(queue.clone(), put_a_million))
        .await
        .unwrap();
    assert_eq!(queue.len(), MILLION as usize);
    for i in 0..MILLION {
        assert_eq!(queue.try_get().unwrap(), i);
    }
    assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
}

const MIB: usize = 1 << 20;
const MIB_ITEMS: u32 = 1000;

fn mib_item(i: u32) -> Vec<u8> {
    let mut item = vec![i as u8; MIB];
    item[..4].copy_from_slice(&i.to_le_bytes());
    item
}

fn put_a_gib(queue: Queue<ByteBuf>) {
    for i in 0..MIB_ITEMS {
        queue.try_put(ByteBuf::from(mib_item(i))).unwrap();
    }
}

async fn read_a_gib(queue: Queue<ByteBuf>) -> u32 {
    for i in 0..MIB_ITEMS {
        let item = queue.get().await.unwrap();
        assert!(item.as_slice() == mib_item(i).as_slice(), "item {i}");
    }
    assert!(matches!(queue.try_get(), Err(TryGetError::Empty)));
    MIB_ITEMS
}

#[tokio::test]
async fn an_unbounded_queue_holds_a_gib_of_1_mib_items_after_its_producer_exits() {
    let queue: Queue<ByteBuf> = Queue::new().unwrap();
    within("producer", spawn(queue.clone(), put_a_gib))
        .await
        .unwrap();
    assert_eq!(queue.len(), MIB_ITEMS as usize);
    // Read back by another process than the one that made the queue.
    let read = within("reader", spawn(queue.clone(), read_a_gib))
        .await
        .unwrap();
    assert_eq!(read, MIB_ITEMS);
}

#[tokio::test]
async fn try_put_on_an_unbounded_queue_never_reports_full() {
    // Sizes for each lane: a ring slot, the socket (then the log once the socket buffer is
    // full), and the log.
    let queue: Queue<ByteBuf> = Queue::new().unwrap();
    let sizes = [8, 2000, 100_000];
    let n = 30_000u32;
    let item = |i: u32| ByteBuf::from(vec![i as u8; sizes[i as usize % 3]]);
    for i in 0..n {
        if let Err(e) = queue.try_put(item(i)) {
            panic!("item {i}: {e}");
        }
    }
    for i in 0..n {
        assert!(
            within("get", queue.get()).await.unwrap() == item(i),
            "item {i}"
        );
    }
}

#[test]
fn a_capacity_of_zero_or_above_the_limit_is_an_error() {
    use multiproc::JoinableQueue;
    for bad in [0, 65_537, usize::MAX] {
        let errors = [
            Queue::<u32>::bounded(bad).unwrap_err(),
            Queue::<u32>::builder().capacity(bad).build().unwrap_err(),
            JoinableQueue::<u32>::bounded(bad).unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}: {e}");
            assert!(e.to_string().contains("capacity"), "{e}");
        }
    }
    assert_eq!(
        Queue::<u32>::bounded(65_536).unwrap().capacity(),
        Some(65_536)
    );
}

// ---- Packets that are not the queue's (issue 11, item 12) ----

/// A message that travels through the queue's socket (too large for a ring slot).
#[derive(Serialize, Deserialize, Debug)]
struct Sealed {
    producer: u32,
    seq: u32,
    body: ByteBuf,
}

async fn produce_sealed((queue, producer, n): (Queue<Sealed>, u32, u32)) {
    for seq in 0..n {
        let body = ByteBuf::from(vec![seq as u8; 300]);
        queue
            .put(Sealed {
                producer,
                seq,
                body,
            })
            .await
            .unwrap();
        // Paced, so that forged packets land between real ones for a couple of seconds.
        if seq % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The real messages a consumer got, and how many corrupt packets it was told about.
async fn consume_sealed(queue: Queue<Sealed>) -> (Vec<Item>, u32) {
    let (mut got, mut reported) = (Vec::new(), 0);
    loop {
        match queue.get().await {
            Ok(m) => {
                assert!(m.body.len() == 300 && m.body.iter().all(|&b| b == m.seq as u8));
                got.push((m.producer, m.seq));
            }
            Err(GetError::Corrupt { .. }) => reported += 1,
            Err(GetError::Closed) => return (got, reported),
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

/// Writes packets into the queue's socket that look like its own (right tag, plausible
/// positions, a valid message inside) but were not put, until `stop`; returns how many.
fn forge_packets(queue: &Queue<Sealed>, stop: &std::sync::atomic::AtomicBool) -> u32 {
    use std::sync::atomic::Ordering;
    // The queue's descriptors, as any holder of a handle has them: the first is the send end
    // of its socket.
    let (_, mut fds) = multiproc::core::message::encode(queue).unwrap();
    let socket = std::os::unix::net::UnixDatagram::from(fds.remove(0));
    socket.set_nonblocking(true).unwrap();
    let fake = Sealed {
        producer: 0,
        seq: 7,
        body: ByteBuf::from(vec![7; 300]),
    };
    let (payload, _) = multiproc::core::message::encode(&fake).unwrap();
    let (mut sent, mut seed) = (0u32, 0x9e37_79b9_7f4a_7c15u64);
    while !stop.load(Ordering::SeqCst) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Positions near the real ones (about 3 x 1500 messages), so that some match.
        let position = (seed % 5000).to_le_bytes();
        let packet: Vec<u8> = match sent % 5 {
            // A ticket without a valid seal, then an inline message of the right type.
            0 => [
                &[0xA3][..],
                &position,
                &seed.to_le_bytes(),
                &[0xA1],
                &payload,
            ]
            .concat(),
            // The ticket format of old: position then the message.
            1 => [&[0xA3][..], &position, &[0xA1], &payload].concat(),
            // No ticket at all.
            2 => [&[0xA1][..], &payload].concat(),
            // Garbage.
            3 => seed.to_le_bytes().to_vec(),
            // Nothing: an empty packet must not read as the end of the queue.
            _ => Vec::new(),
        };
        if socket.send(&packet).is_ok() {
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_packets_on_the_socket_cost_no_real_message() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const PER_PRODUCER: u32 = 1500;
    let queue: Queue<Sealed> = Queue::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let forger = std::thread::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        move || forge_packets(&queue, &stop)
    });
    let consumers: Vec<_> = (0..2)
        .map(|_| spawn(queue.clone(), consume_sealed))
        .collect();
    let producers: Vec<_> = (0..3)
        .map(|p| spawn((queue.clone(), p, PER_PRODUCER), produce_sealed))
        .collect();
    for p in producers {
        within("producer", p).await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let forged = forger.join().unwrap();
    queue.shutdown();
    let (mut all, mut reported) = (HashSet::new(), 0);
    for c in consumers {
        let (got, told) = within("consumer", c).await.unwrap();
        assert_ordered_per_producer(&got);
        for m in got {
            assert!(all.insert(m), "{m:?} delivered twice");
        }
        reported += told;
    }
    eprintln!("{forged} forged packets, {reported} reported");
    assert_eq!(all.len(), 3 * PER_PRODUCER as usize, "real messages lost");
    assert!(forged > 0);
    // Forged packets still in the socket when it closed are never read; the others were
    // reported, each once.
    assert!(
        reported <= forged,
        "{reported} reports for {forged} forgeries"
    );
    assert!(reported > 0, "no forged packet was read ({forged} sent)");
}
