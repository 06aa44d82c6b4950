//! The distributed queues on a real `nats-server` (started per test on a free port), with
//! consumers in real child processes: FIFO, bounds across handles, at-least-once redelivery
//! when a consumer is SIGKILLed or paused past the ack timeout, join, shutdown, Stream/Sink,
//! a server restart mid-run, and wrong credentials.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use multiproc_nats::error::{GetTimeoutError, TryGetError};
use multiproc_nats::server::NatsServer;
use multiproc_nats::{JoinableQueue, Nats, QueueBackend};
mod support;
use support::within;

/// Short enough that redelivery tests take a few seconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

async fn connect(server: &NatsServer) -> Nats {
    within(
        "connect",
        Nats::builder().url(server.url()).namespace("t").connect(),
    )
    .await
    .expect("connect")
}

async fn jobs(nats: &Nats) -> JoinableQueue<u64> {
    within(
        "open jobs",
        nats.queue_builder("jobs")
            .ack_timeout(ACK_TIMEOUT)
            .build_joinable::<u64>(),
    )
    .await
    .expect("open jobs")
}

#[tokio::test]
async fn items_come_out_in_order_once() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within("open", nats.queue::<String>("fifo")).await.unwrap();
    for i in 0..20 {
        within("put", q.put(format!("item {i}"))).await.unwrap();
    }
    assert_eq!(within("len", q.len()).await.unwrap(), 20);
    // A second handle on the same name sees the same items.
    let other = within("open again", nats.queue::<String>("fifo"))
        .await
        .unwrap();
    for i in 0..20 {
        assert_eq!(
            within("get", other.get()).await.unwrap(),
            format!("item {i}")
        );
    }
    assert!(matches!(
        within("try_get", q.try_get()).await,
        Err(TryGetError::Empty)
    ));
    let err = within("get_timeout", q.get_timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(matches!(err, GetTimeoutError::Timeout), "{err:?}");
}

#[tokio::test]
async fn a_bounded_queue_is_full_across_handles() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let a = within(
        "open",
        nats.queue_builder("small").capacity(2).build::<u32>(),
    )
    .await
    .unwrap();
    let b = within("open", nats.queue::<u32>("small")).await.unwrap();
    within("put", a.put(1)).await.unwrap();
    within("put", b.put(2)).await.unwrap();
    let full = within("try_put", b.try_put(3)).await.unwrap_err();
    assert!(full.is_full(), "{full:?}");
    assert_eq!(full.into_inner(), 3);
    let timed_out = within("put_timeout", a.put_timeout(3, Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout());
    // A blocked put completes once a getter makes room.
    let putter = {
        let a = a.clone();
        tokio::spawn(async move { a.put(3).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !putter.is_finished(),
        "a put into a full queue returned early"
    );
    assert_eq!(within("get", b.get()).await.unwrap(), 1);
    within("blocked put", putter).await.unwrap().unwrap();
    assert_eq!(within("get", a.get()).await.unwrap(), 2);
    assert_eq!(within("get", a.get()).await.unwrap(), 3);
}

/// In a child: takes one task, reports its value on `taken`, then never finishes it.
async fn take_and_hang((url, reported): (String, String)) -> u32 {
    let nats = Nats::builder()
        .url(url)
        .namespace("t")
        .connect()
        .await
        .unwrap();
    let jobs = jobs(&nats).await;
    let taken = nats.queue::<u64>(&reported).await.unwrap();
    let task = jobs.get().await.unwrap();
    taken.put(*task).await.unwrap();
    std::future::pending::<()>().await;
    let _ = task;
    0
}

#[tokio::test]
async fn a_task_of_a_killed_consumer_is_delivered_again() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let jobs = jobs(&nats).await;
    let taken = within("open", nats.queue::<u64>("taken")).await.unwrap();
    within("put", jobs.put(42)).await.unwrap();
    let child = multiproc_process::spawn((server.url(), "taken".to_string()), take_and_hang);
    assert_eq!(within("child took it", taken.get()).await.unwrap(), 42);
    // Not done: still stored.
    assert_eq!(
        within("unfinished", jobs.unfinished_tasks()).await.unwrap(),
        1
    );
    child.kill().unwrap();
    let task = within("redelivery", jobs.get()).await.unwrap();
    assert_eq!(*task, 42);
    assert!(task.delivery() >= 2, "delivery {}", task.delivery());
    within("task_done", task.task_done()).await.unwrap();
    within("join", jobs.join()).await.unwrap();
}

#[tokio::test]
async fn a_task_of_a_paused_consumer_goes_to_another_after_the_ack_timeout() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let jobs = jobs(&nats).await;
    let taken = within("open", nats.queue::<u64>("taken")).await.unwrap();
    within("put", jobs.put(7)).await.unwrap();
    let child = multiproc_process::spawn((server.url(), "taken".to_string()), take_and_hang);
    assert_eq!(within("child took it", taken.get()).await.unwrap(), 7);
    child
        .signal(rustix::process::Signal::STOP.as_raw())
        .unwrap();
    let started = std::time::Instant::now();
    let task = within("redelivery", jobs.get()).await.unwrap();
    assert!(started.elapsed() >= ACK_TIMEOUT / 2);
    assert_eq!(*task, 7);
    within("task_done", task.task_done()).await.unwrap();
    child
        .signal(rustix::process::Signal::CONT.as_raw())
        .unwrap();
    child.kill().unwrap();
    within("join", jobs.join()).await.unwrap();
}

/// In a child: finishes `n` tasks, doubling each into `results`.
async fn double_n((url, n): (String, usize)) -> usize {
    let nats = Nats::builder()
        .url(url)
        .namespace("t")
        .connect()
        .await
        .unwrap();
    let jobs = jobs(&nats).await;
    let results = nats.queue::<u64>("results").await.unwrap();
    for _ in 0..n {
        let task = jobs.get().await.unwrap();
        results.put(*task * 2).await.unwrap();
        task.task_done().await.unwrap();
    }
    n
}

#[tokio::test]
async fn join_waits_for_every_task_of_every_consumer() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let jobs = jobs(&nats).await;
    for i in 0..10 {
        within("put", jobs.put(i)).await.unwrap();
    }
    let a = multiproc_process::spawn((server.url(), 5usize), double_n);
    let b = multiproc_process::spawn((server.url(), 5usize), double_n);
    within("join", jobs.join()).await.unwrap();
    assert_eq!(within("a", a).await.unwrap(), 5);
    assert_eq!(within("b", b).await.unwrap(), 5);
    let results = within("open", nats.queue::<u64>("results")).await.unwrap();
    let mut got: Vec<u64> = Vec::new();
    for _ in 0..10 {
        got.push(within("result", results.get()).await.unwrap());
    }
    got.sort();
    assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
    // A task dropped without task_done goes back at once.
    within("put", jobs.put(99)).await.unwrap();
    drop(within("get", jobs.get()).await.unwrap());
    let again = within("get again", jobs.get_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(*again, 99);
    within("done", again.task_done()).await.unwrap();
    within("join", jobs.join_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
}

#[tokio::test]
async fn shutdown_refuses_puts_and_drains_gets() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within("open", nats.queue::<u8>("closing")).await.unwrap();
    within("put", q.put(1)).await.unwrap();
    within("shutdown", q.shutdown()).await.unwrap();
    let other = within("open", nats.queue::<u8>("closing")).await.unwrap();
    let err = within("put", other.put(2)).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    assert_eq!(within("get", other.get()).await.unwrap(), 1);
    assert!(within("get", other.get()).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn sink_and_stream_move_every_item() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within("open", nats.queue::<u32>("streamed")).await.unwrap();
    let mut sink = q.sink();
    within(
        "send_all",
        sink.send_all(&mut futures::stream::iter((0..50).map(Ok))),
    )
    .await
    .unwrap();
    within("shutdown", q.shutdown()).await.unwrap();
    let got: Vec<u32> = within("collect", q.stream().map(Result::unwrap).collect()).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_across_a_server_restart() {
    let mut server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within("open", nats.queue::<u32>("durable")).await.unwrap();
    for i in 0..100 {
        within("put", q.put(i)).await.unwrap();
    }
    server.restart().expect("restart");
    // The client reconnects by itself; puts during the reconnection may fail, and a failed put
    // may or may not be stored, so only the acknowledged ones are counted on.
    let mut acknowledged: Vec<u32> = (0..100).collect();
    for i in 100..200 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match q.put(i).await {
                Ok(()) => {
                    acknowledged.push(i);
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("put {i} during reconnection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("put {i}: {e:?}"),
            }
        }
    }
    let mut got = Vec::new();
    while let Ok(v) = within("drain", q.get_timeout(Duration::from_secs(2))).await {
        got.push(v);
    }
    got.sort();
    got.dedup();
    for i in &acknowledged {
        assert!(got.binary_search(i).is_ok(), "acknowledged item {i} lost");
    }
}

#[tokio::test]
async fn a_wrong_credential_is_refused() {
    let server = NatsServer::builder()
        .user_and_password("alice", "s3cret")
        .start()
        .expect("nats-server");
    let err = within(
        "wrong password",
        Nats::builder()
            .url(server.url())
            .user_and_password("alice", "wrong")
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let nats = within(
        "right password",
        Nats::builder()
            .url(server.url())
            .user_and_password("alice", "s3cret")
            .connect(),
    )
    .await
    .expect("connect with the right password");
    let q = within("open", nats.queue::<u8>("authed")).await.unwrap();
    within("put", q.put(5)).await.unwrap();
    assert_eq!(within("get", q.get()).await.unwrap(), 5);

    let server = NatsServer::builder()
        .token("t0ken")
        .start()
        .expect("nats-server");
    let err = within(
        "wrong token",
        Nats::builder().url(server.url()).token("nope").connect(),
    )
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
}

/// Written once for any backend.
async fn double_all<Q: QueueBackend<u64>>(input: Q, output: Q, n: usize) {
    for _ in 0..n {
        let x = input.get().await.unwrap();
        output.put(x * 2).await.unwrap();
    }
}

#[tokio::test]
async fn the_same_code_runs_on_a_local_or_a_nats_queue() {
    let (a, b) = (
        multiproc_channel::Queue::<u64>::new().unwrap(),
        multiproc_channel::Queue::<u64>::new().unwrap(),
    );
    for i in 0..3 {
        a.put(i).await.unwrap();
    }
    within("local", double_all(a, b.clone(), 3)).await;
    for i in 0..3 {
        assert_eq!(within("local get", b.get()).await.unwrap(), i * 2);
    }

    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let (a, b) = (
        within("open", nats.queue::<u64>("in")).await.unwrap(),
        within("open", nats.queue::<u64>("out")).await.unwrap(),
    );
    for i in 0..3 {
        within("put", a.put(i)).await.unwrap();
    }
    within("nats", double_all(a, b.clone(), 3)).await;
    for i in 0..3 {
        assert_eq!(within("nats get", b.get()).await.unwrap(), i * 2);
    }
}

#[tokio::test]
async fn a_dropped_get_loses_no_item() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within(
        "open",
        nats.queue_builder("cancel")
            .ack_timeout(ACK_TIMEOUT)
            .build::<u32>(),
    )
    .await
    .unwrap();
    // A get that is waiting when it is dropped...
    assert!(
        tokio::time::timeout(Duration::from_millis(200), q.get())
            .await
            .is_err()
    );
    // ...may have left a pull request on the server; an item it catches comes back after the
    // ack timeout, never lost.
    within("put", q.put(11)).await.unwrap();
    assert_eq!(within("get", q.get()).await.unwrap(), 11);
}

#[tokio::test]
async fn a_foreign_message_is_an_error_and_is_dropped() {
    let server = NatsServer::start().expect("nats-server");
    let nats = connect(&server).await;
    let q = within("open", nats.queue::<(u64, String)>("strict"))
        .await
        .unwrap();
    // Something else publishes bytes that are not a `(u64, String)` onto the queue's subject.
    within(
        "raw publish",
        nats.client().publish("t.q.strict", vec![0xff; 40].into()),
    )
    .await
    .unwrap();
    within("flush", nats.client().flush()).await.unwrap();
    within("put", q.put((1, "real".into()))).await.unwrap();
    let err = within("get", q.get()).await.unwrap_err();
    assert!(
        matches!(err, multiproc_nats::error::GetError::Decode { .. }),
        "{err:?}"
    );
    // Dropped, not delivered again: the real item is next.
    assert_eq!(within("get", q.get()).await.unwrap(), (1, "real".into()));
}
