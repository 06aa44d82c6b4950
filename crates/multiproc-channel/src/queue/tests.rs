//! In-process tests of the queue engine and its typed layer. A handle sent through the message
//! encoding (`transfer`) owns fresh descriptors and its own mapping, exactly like a handle in
//! another process; the cross-process suite lives in the workspace's `tests/channel_queue.rs`.

use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

use crate::error::{GetError, PutErrorKind, TryGetError, TryPutError};
use crate::{JoinableQueue, Queue};

const WAIT: Duration = Duration::from_secs(10);

fn transfer<A: Serialize, B: DeserializeOwned>(value: &A) -> B {
    let (bytes, fds) = multiproc_core::message::encode(value).unwrap();
    multiproc_core::message::decode(&bytes, fds).unwrap()
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn fifo_across_handles() {
    let q: Queue<u32> = Queue::new().unwrap();
    let other: Queue<u32> = transfer(&q);
    for i in 0..1000 {
        q.put(i).await.unwrap();
    }
    assert_eq!(other.len(), 1000);
    assert!(!other.is_empty());
    for i in 0..1000 {
        assert_eq!(within(other.get()).await.unwrap(), i);
    }
    assert!(q.is_empty());
    assert_eq!(q.len(), 0);
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpmc_no_loss_no_duplicate_per_producer_order() {
    const P: u32 = 4;
    const N: u32 = 2000;
    let q: Queue<(u32, u32)> = Queue::bounded(64).unwrap();
    let mut producers = Vec::new();
    for p in 0..P {
        let q: Queue<(u32, u32)> = transfer(&q);
        producers.push(tokio::spawn(async move {
            for i in 0..N {
                q.put((p, i)).await.unwrap();
            }
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let q: Queue<(u32, u32)> = transfer(&q);
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(m) = q.get().await {
                got.push(m);
            }
            got
        }));
    }
    for p in producers {
        within(p).await.unwrap();
    }
    q.shutdown();
    let mut all = Vec::new();
    for c in consumers {
        let got = within(c).await.unwrap();
        // Each consumer sees each producer's messages in order.
        for p in 0..P {
            let seq: Vec<u32> = got.iter().filter(|m| m.0 == p).map(|m| m.1).collect();
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "producer {p} out of order"
            );
        }
        all.extend(got);
    }
    all.sort_unstable();
    let expected: Vec<(u32, u32)> = (0..P).flat_map(|p| (0..N).map(move |i| (p, i))).collect();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn bounded_full_and_backpressure() {
    let q: Queue<String> = Queue::bounded(2).unwrap();
    assert_eq!(q.capacity(), Some(2));
    q.try_put("a".into()).unwrap();
    q.put("b".into()).await.unwrap();
    assert!(q.is_full());
    match q.try_put("c".into()) {
        Err(TryPutError::Full(v)) => assert_eq!(v, "c"),
        other => panic!("expected Full, got {other:?}"),
    }
    let e = q
        .put_timeout("d".into(), Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(e.into_inner(), "d");
    assert_eq!(q.len(), 2);

    // A put blocked on a full queue completes once another handle takes a message.
    let other: Queue<String> = transfer(&q);
    let blocked = tokio::spawn({
        let q = q.clone();
        async move { q.put("e".into()).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(within(other.get()).await.unwrap(), "a");
    within(blocked).await.unwrap().unwrap();
    assert_eq!(within(other.get()).await.unwrap(), "b");
    assert_eq!(within(other.get()).await.unwrap(), "e");
    assert_eq!(q.len(), 0);
    assert!(!q.is_full());
}

#[tokio::test]
async fn get_timeout_on_empty() {
    let q: Queue<u8> = Queue::new().unwrap();
    let e = q.get_timeout(Duration::from_millis(20)).await.unwrap_err();
    assert!(e.is_timeout());
    q.put(3).await.unwrap();
    assert_eq!(q.get_timeout(WAIT).await.unwrap(), 3);
}

#[tokio::test]
async fn close_drains_then_ends_and_wakes_waiters() {
    let q: Queue<u32> = Queue::bounded(3).unwrap();
    let getter: Queue<u32> = transfer(&q);
    let waiting_get = tokio::spawn(async move { getter.get().await });
    tokio::task::yield_now().await;
    q.put(1).await.unwrap();
    assert_eq!(within(waiting_get).await.unwrap().unwrap(), 1);

    q.put(2).await.unwrap();
    q.put(3).await.unwrap();
    q.put(4).await.unwrap();
    let putter: Queue<u32> = transfer(&q);
    let waiting_put = tokio::spawn(async move { putter.put(5).await });
    tokio::task::yield_now().await;
    let other: Queue<u32> = transfer(&q);
    assert!(!other.is_shutdown());
    q.shutdown();
    q.shutdown();
    assert!(other.is_shutdown());
    let e = within(waiting_put).await.unwrap().unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), 5);
    assert!(q.put(6).await.unwrap_err().is_closed());
    assert!(matches!(q.try_put(7), Err(TryPutError::Closed(7))));
    for want in 2..=4 {
        assert_eq!(within(other.get()).await.unwrap(), want);
    }
    assert!(within(other.get()).await.unwrap_err().is_closed());
    assert!(matches!(q.try_get(), Err(TryGetError::Closed)));
    assert!(q.get_timeout(WAIT).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn close_wakes_blocked_getters_in_other_handles() {
    let q: Queue<u32> = Queue::new().unwrap();
    let mut getters = Vec::new();
    for _ in 0..3 {
        let g: Queue<u32> = transfer(&q);
        getters.push(tokio::spawn(async move { g.get().await }));
    }
    tokio::task::yield_now().await;
    q.shutdown();
    for g in getters {
        assert!(within(g).await.unwrap().unwrap_err().is_closed());
    }
}

#[tokio::test]
async fn cancelled_get_loses_nothing() {
    let q: Queue<u32> = Queue::new().unwrap();
    // Polled once (registers interest), then dropped.
    assert!(q.get().now_or_never().is_none());
    assert!(
        q.get_timeout(Duration::from_millis(10))
            .await
            .unwrap_err()
            .is_timeout()
    );
    q.put(1).await.unwrap();
    q.put(2).await.unwrap();
    assert_eq!(within(q.get()).await.unwrap(), 1);
    // A get that completes is a message taken; one dropped before completion took nothing.
    let mut s = tokio_test::task::spawn(q.get());
    assert!(matches!(s.poll(), std::task::Poll::Ready(Ok(2))));
    let mut pending = tokio_test::task::spawn(q.get());
    tokio_test::assert_pending!(pending.poll());
    let other: Queue<u32> = transfer(&q);
    other.put(3).await.unwrap();
    drop(pending);
    assert_eq!(within(other.get()).await.unwrap(), 3);
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn cancelled_put_is_all_or_nothing() {
    let q: Queue<u32> = Queue::bounded(1).unwrap();
    q.put(1).await.unwrap();
    let mut put = tokio_test::task::spawn(q.put(2));
    tokio_test::assert_pending!(put.poll());
    assert_eq!(q.len(), 1); // a put waiting for a slot holds none
    drop(put);
    assert_eq!(q.len(), 1);
    assert_eq!(within(q.get()).await.unwrap(), 1);
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    // The slot is free again.
    q.try_put(3).unwrap();
    assert!(q.try_put(4).unwrap_err().is_full());
    // A put whose slot came free, dropped before being polled again, leaves nothing behind.
    let mut put = tokio_test::task::spawn(q.put(5));
    tokio_test::assert_pending!(put.poll());
    assert_eq!(within(q.get()).await.unwrap(), 3);
    drop(put);
    assert_eq!(q.len(), 0);
    assert!(matches!(q.try_get(), Err(TryGetError::Empty)));
    // A completed put is enqueued whole.
    let mut put = tokio_test::task::spawn(q.put(6));
    tokio_test::assert_ready_ok!(put.poll());
    assert_eq!(q.try_get().unwrap(), 6);
}

#[tokio::test]
async fn large_messages_round_trip_and_limits_hold() {
    let q: Queue<serde_bytes::ByteBuf> =
        Queue::builder().max_message_size(32 << 20).build().unwrap();
    let other: Queue<serde_bytes::ByteBuf> = transfer(&q);
    let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..3 {
        q.put(serde_bytes::ByteBuf::from(big.clone()))
            .await
            .unwrap();
    }
    q.put(serde_bytes::ByteBuf::from(vec![1, 2, 3]))
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(within(other.get()).await.unwrap().as_slice() == big.as_slice());
    }
    assert_eq!(within(other.get()).await.unwrap().as_slice(), [1, 2, 3]);

    let small: Queue<Vec<u8>> = Queue::builder().max_message_size(100).build().unwrap();
    let e = small.put(vec![0; 200]).await.unwrap_err();
    assert!(
        matches!(e.kind(), PutErrorKind::TooLarge { limit: 100, .. }),
        "{e}"
    );
    assert_eq!(e.into_inner().len(), 200);
    assert_eq!(small.len(), 0);
    small.put(vec![1]).await.unwrap();
    assert_eq!(small.get().await.unwrap(), [1]);
}

struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Msg {
    Num(u32),
    #[serde(skip_deserializing)]
    Bad(#[serde(serialize_with = "refuse")] u32),
}

fn refuse<S: Serializer>(_: &u32, _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom(
        "this value refuses to be encoded",
    ))
}

#[tokio::test]
async fn unencodable_message_is_an_error_from_put() {
    let q: Queue<Msg> = Queue::bounded(1).unwrap();
    let e = q.put(Msg::Bad(1)).await.unwrap_err();
    assert!(matches!(e.kind(), PutErrorKind::Encode(_)), "{e}");
    assert_eq!(e.into_inner(), Msg::Bad(1));
    assert!(matches!(
        q.try_put(Msg::Bad(2)),
        Err(TryPutError::Failed(_))
    ));
    assert_eq!(q.len(), 0);
    q.try_put(Msg::Num(7)).unwrap();
    assert_eq!(q.get().await.unwrap(), Msg::Num(7));

    let q: Queue<Unencodable> = Queue::new().unwrap();
    assert!(q.put(Unencodable).await.is_err());
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn wrong_type_is_a_decode_error_and_the_queue_goes_on() {
    let q: Queue<(u8, u8)> = Queue::new().unwrap();
    let wrong: Queue<String> = transfer(&q);
    q.put((200, 1)).await.unwrap();
    q.put((3, 4)).await.unwrap();
    assert!(matches!(wrong.get().await, Err(GetError::Decode(_))));
    assert_eq!(q.get().await.unwrap(), (3, 4));
    assert_eq!(q.len(), 0);
}

#[tokio::test]
async fn handles_travel_inside_messages() {
    let outer: Queue<(String, Queue<u32>)> = Queue::new().unwrap();
    let inner: Queue<u32> = Queue::bounded(4).unwrap();
    outer.put(("inner".into(), inner.clone())).await.unwrap();
    let other_outer: Queue<(String, Queue<u32>)> = transfer(&outer);
    let (name, got) = within(other_outer.get()).await.unwrap();
    assert_eq!(name, "inner");
    assert_eq!(got.capacity(), Some(4));
    got.put(42).await.unwrap();
    assert_eq!(within(inner.get()).await.unwrap(), 42);
    // A handle in flight keeps its queue alive after every other handle is gone.
    let carrier: Queue<Queue<u8>> = Queue::new().unwrap();
    let carried: Queue<u8> = Queue::new().unwrap();
    carried.put(5).await.unwrap();
    carrier.put(carried).await.unwrap();
    let got = within(carrier.get()).await.unwrap();
    assert_eq!(within(got.get()).await.unwrap(), 5);
}

#[tokio::test]
async fn a_queue_is_not_a_joinable_queue_on_the_wire() {
    let q: Queue<u8> = Queue::new().unwrap();
    let (bytes, fds) = multiproc_core::message::encode(&q).unwrap();
    assert!(multiproc_core::message::decode::<JoinableQueue<u8>>(&bytes, fds).is_err());
    let j: JoinableQueue<u8> = JoinableQueue::new().unwrap();
    let (bytes, fds) = multiproc_core::message::encode(&j).unwrap();
    assert!(multiproc_core::message::decode::<Queue<u8>>(&bytes, fds).is_err());
}

#[tokio::test]
async fn stream_and_sink() {
    let q: Queue<u32> = Queue::bounded(4).unwrap();
    let consumer: Queue<u32> = transfer(&q);
    let reader = tokio::spawn(async move {
        consumer
            .stream()
            .filter_map(|m| async move { m.ok() })
            .map(|x| x * 2)
            .collect::<Vec<_>>()
            .await
    });
    let mut sink = q.sink();
    for i in 0..100 {
        within(sink.send(i)).await.unwrap();
    }
    let mut more = futures::stream::iter((100..200).map(Ok));
    within(sink.send_all(&mut more)).await.unwrap();
    within(sink.close()).await.unwrap();
    assert!(!q.is_shutdown());
    q.shutdown();
    let got = within(reader).await.unwrap();
    assert_eq!(got, (0..200).map(|x| x * 2).collect::<Vec<_>>());
    let mut sink = q.sink();
    assert!(sink.send(1).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn dropped_stream_loses_nothing() {
    let q: Queue<u32> = Queue::new().unwrap();
    let mut s = q.stream();
    assert!(s.next().now_or_never().is_none());
    drop(s);
    q.put(9).await.unwrap();
    let mut s = q.stream();
    assert_eq!(within(s.next()).await.unwrap().unwrap(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joinable_task_done_and_join() {
    let q: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    within(q.join()).await.unwrap();
    for i in 0..20 {
        q.put(i).await.unwrap();
    }
    assert_eq!(q.unfinished_tasks(), 20);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let w: JoinableQueue<u32> = transfer(&q);
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while let Ok(_item) = w.get().await {
                n += 1;
                w.task_done().unwrap();
            }
            n
        }));
    }
    within(q.join()).await.unwrap();
    assert_eq!(q.unfinished_tasks(), 0);
    assert!(q.task_done().is_err());
    q.shutdown();
    let mut total = 0;
    for w in workers {
        total += within(w).await.unwrap();
    }
    assert_eq!(total, 20);
}

#[tokio::test]
async fn joinable_accounting_on_failed_and_cancelled_puts() {
    let q: JoinableQueue<Msg> = JoinableQueue::bounded(1).unwrap();
    assert!(q.put(Msg::Bad(1)).await.is_err());
    assert_eq!(q.unfinished_tasks(), 0);
    q.put(Msg::Num(1)).await.unwrap();
    let mut put = tokio_test::task::spawn(q.put(Msg::Num(2)));
    tokio_test::assert_pending!(put.poll());
    drop(put);
    assert_eq!(q.unfinished_tasks(), 1);
    assert!(
        q.join_timeout(Duration::from_millis(10))
            .await
            .unwrap_err()
            .is_timeout()
    );
    let mut join = tokio_test::task::spawn(q.join());
    tokio_test::assert_pending!(join.poll());
    assert_eq!(q.get().await.unwrap(), Msg::Num(1));
    q.task_done().unwrap();
    within(join).await.unwrap();
    assert!(q.task_done().is_err());
    // A message the consumer never saw (wrong type) counts as done.
    let wrong: JoinableQueue<String> = transfer(&q);
    q.put(Msg::Num(300)).await.unwrap();
    assert!(wrong.get().await.is_err());
    assert_eq!(q.unfinished_tasks(), 0);
    // Puts through the sink count too.
    let mut sink = q.sink();
    sink.send(Msg::Num(5)).await.unwrap();
    assert_eq!(q.unfinished_tasks(), 1);
}

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>(_: &T) {}
    fn check<T: Send + Sync + Serialize + DeserializeOwned + 'static>() {
        let q: Queue<T> = Queue::new().unwrap();
        let j: JoinableQueue<T> = JoinableQueue::new().unwrap();
        is_send_sync(&q);
        is_send_sync(&j);
        is_send_sync(&q.stream());
        is_send_sync(&q.sink());
        is_send_sync(&Queue::<T>::builder());
        is_send_sync(&q.get());
        is_send_sync(&q.get_timeout(WAIT));
        is_send_sync(&j.join());
        is_send_sync(&j.join_timeout(WAIT));
    }
    fn check_put<T: Send + Sync + Serialize + DeserializeOwned + Default + 'static>() {
        let q: Queue<T> = Queue::new().unwrap();
        is_send_sync(&q.put(T::default()));
        is_send_sync(&q.put_timeout(T::default(), WAIT));
    }
    check::<String>();
    check_put::<String>();
}

#[test]
fn blocking_twins_work_without_a_runtime() {
    let q: Queue<u32> = Queue::bounded(1).unwrap();
    let other: Queue<u32> = transfer(&q);
    q.blocking_put(1).unwrap();
    let e = q
        .blocking_put_timeout(2, Duration::from_millis(20))
        .unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(e.into_inner(), 2);
    assert_eq!(q.len(), 1);
    let putter = std::thread::spawn(move || {
        // Blocks until the main thread takes the first message.
        other.blocking_put(3).unwrap();
        other
    });
    assert_eq!(q.blocking_get().unwrap(), 1);
    assert_eq!(q.blocking_get_timeout(WAIT).unwrap(), 3);
    let other = putter.join().unwrap();
    let getter = std::thread::spawn(move || other.blocking_get_timeout(WAIT).unwrap());
    q.blocking_put(4).unwrap();
    assert_eq!(getter.join().unwrap(), 4);
    assert!(
        q.blocking_get_timeout(Duration::from_millis(20))
            .unwrap_err()
            .is_timeout()
    );
    q.shutdown();
    assert!(q.blocking_get().unwrap_err().is_closed());
    assert!(q.blocking_put(5).unwrap_err().is_closed());

    let j: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    j.blocking_join().unwrap();
    j.blocking_put(1).unwrap();
    assert!(
        j.blocking_join_timeout(Duration::from_millis(20))
            .unwrap_err()
            .is_timeout()
    );
    let worker: JoinableQueue<u32> = transfer(&j);
    let t = std::thread::spawn(move || {
        worker.blocking_get().unwrap();
        worker.task_done().unwrap();
    });
    j.blocking_join_timeout(WAIT).unwrap();
    t.join().unwrap();
}

#[tokio::test]
async fn close_wakes_a_put_waiting_for_socket_room() {
    // An unbounded queue would take puts until memory runs out.
    let q: Queue<u64> = Queue::bounded(1 << 16).unwrap();
    let mut n = 0u64;
    loop {
        match q.try_put(n) {
            Ok(()) => n += 1,
            Err(TryPutError::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n > 100, "only {n} messages fit");
    assert_eq!(q.len(), n as usize);
    let putter: Queue<u64> = transfer(&q);
    let waiting = tokio::spawn(async move { putter.put(u64::MAX).await });
    tokio::task::yield_now().await;
    q.shutdown();
    let e = within(waiting).await.unwrap().unwrap_err();
    assert!(e.is_closed());
    assert_eq!(e.into_inner(), u64::MAX);
    assert_eq!(q.len(), n as usize);
    for i in 0..n {
        assert_eq!(q.try_get().unwrap(), i);
    }
    assert!(matches!(q.try_get(), Err(TryGetError::Closed)));
}

#[tokio::test]
async fn large_messages_carry_handles_too() {
    let q: Queue<(Vec<u8>, Queue<u8>)> = Queue::new().unwrap();
    let inner: Queue<u8> = Queue::new().unwrap();
    q.put((vec![9; 300 << 10], inner.clone())).await.unwrap();
    let other: Queue<(Vec<u8>, Queue<u8>)> = transfer(&q);
    let (bytes, got) = within(other.get()).await.unwrap();
    assert_eq!(bytes.len(), 300 << 10);
    got.put(1).await.unwrap();
    assert_eq!(inner.try_get().unwrap(), 1);
}
