//! Typed pipes across real processes: round trips, handles through pipes, large messages,
//! many descriptors, end-of-stream and every kind of bad input.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;

use futures::{SinkExt, StreamExt, TryStreamExt};
use multiproc::core::{SharedFd, message};
use multiproc::error::{RecvError, SendErrorKind};
use multiproc::pipe::{self, Duplex, Receiver, Sender};
use multiproc::spawn;
use multiproc_suite::{blocked_until, within, within_blocking};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Command {
    Add(i64, i64),
    Echo(String),
    Nothing,
    Stop,
}

async fn calculator(mut end: Duplex<i64, Command>) -> usize {
    let mut handled = 0;
    while let Some(cmd) = end.recv().await.unwrap() {
        handled += 1;
        match cmd {
            Command::Add(a, b) => end.send(a + b).await.unwrap(),
            Command::Echo(s) => end.send(s.len() as i64).await.unwrap(),
            Command::Nothing => end.send(0).await.unwrap(),
            Command::Stop => break,
        }
    }
    handled
}

#[tokio::test]
async fn typed_round_trips_with_a_child() {
    let (mut here, there) = pipe::duplex::<Command, i64>().unwrap();
    let child = spawn(there, calculator);
    here.send(Command::Add(40, 2)).await.unwrap();
    assert_eq!(within("add", here.recv()).await.unwrap(), Some(42));
    here.send(Command::Echo(String::new())).await.unwrap();
    assert_eq!(within("empty echo", here.recv()).await.unwrap(), Some(0));
    here.send(Command::Nothing).await.unwrap();
    assert_eq!(within("nothing", here.recv()).await.unwrap(), Some(0));
    here.send(Command::Stop).await.unwrap();
    assert_eq!(within("child", child).await.unwrap(), 4);
    // The child is gone: end-of-stream, not a hang.
    assert_eq!(within("eof", here.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn empty_messages_are_real_messages() {
    let (mut tx, mut rx) = pipe::simplex::<()>().unwrap();
    let child = spawn(tx_take(&mut tx), |mut tx: Sender<()>| {
        for _ in 0..3 {
            tx.blocking_send(()).unwrap();
        }
    });
    drop(tx);
    let got: Vec<()> = within("units", (&mut rx).try_collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    within("child", child).await.unwrap();
}

/// Moves a sender out by duplicating it (the original stays usable here).
fn tx_take<T>(tx: &mut Sender<T>) -> Sender<T> {
    let (bytes, fds) = message::encode(tx).unwrap();
    message::decode(&bytes, fds).unwrap()
}

#[tokio::test]
async fn peer_close_gives_end_of_stream_after_pending_messages() {
    let (tx, mut rx) = pipe::simplex::<u32>().unwrap();
    let child = spawn(tx, |mut tx: Sender<u32>| {
        for i in 0..3 {
            tx.blocking_send(i).unwrap();
        }
    });
    within("child", child).await.unwrap();
    for i in 0..3 {
        assert_eq!(within("pending", rx.recv()).await.unwrap(), Some(i));
    }
    assert_eq!(within("eof", rx.recv()).await.unwrap(), None);
    assert_eq!(
        within("sticky eof", rx.recv()).await.unwrap(),
        None,
        "end-of-stream is sticky"
    );
}

#[tokio::test]
async fn sending_to_a_closed_pipe_fails_and_returns_the_message() {
    let (mut tx, rx) = pipe::simplex::<String>().unwrap();
    drop(rx);
    let err = tx.send("lost?".to_string()).await.unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert_eq!(err.into_inner(), "lost?");
}

#[tokio::test]
async fn a_pipe_end_sent_through_a_pipe_works_in_a_third_process() {
    async fn producer(mut ctl: Receiver<Sender<String>>) {
        let mut tx = ctl.recv().await.unwrap().unwrap();
        for word in ["one", "two", "three"] {
            tx.send(word.to_string()).await.unwrap();
        }
    }
    async fn consumer(mut ctl: Receiver<Receiver<String>>) -> Vec<String> {
        let rx = ctl.recv().await.unwrap().unwrap();
        rx.try_collect().await.unwrap()
    }
    let (mut to_producer, producer_ctl) = pipe::simplex::<Sender<String>>().unwrap();
    let (mut to_consumer, consumer_ctl) = pipe::simplex::<Receiver<String>>().unwrap();
    let p = spawn(producer_ctl, producer);
    let c = spawn(consumer_ctl, consumer);
    let (tx, rx) = pipe::simplex::<String>().unwrap();
    to_producer.send(tx).await.unwrap();
    to_consumer.send(rx).await.unwrap();
    // Our copies were moved into the messages and are gone: the consumer sees end-of-stream
    // when the producer exits.
    within("producer", p).await.unwrap();
    assert_eq!(
        within("consumer", c).await.unwrap(),
        ["one", "two", "three"]
    );
}

#[tokio::test]
async fn a_handle_passed_to_a_child_survives_the_parent_dropping_its_copy() {
    let (tx, mut rx) = pipe::simplex::<String>().unwrap();
    let child = spawn(tx, |mut tx: Sender<String>| {
        std::thread::sleep(Duration::from_millis(100));
        tx.blocking_send("still here".into()).unwrap();
    });
    // `tx` was moved into spawn and dropped here already.
    assert_eq!(
        within("late message", rx.recv()).await.unwrap().as_deref(),
        Some("still here")
    );
    within("child", child).await.unwrap();
}

#[tokio::test]
async fn sixteen_mib_messages_round_trip() {
    let (mut here, there) = pipe::duplex::<serde_bytes::ByteBuf, serde_bytes::ByteBuf>().unwrap();
    let child = spawn(
        there,
        |mut end: Duplex<serde_bytes::ByteBuf, serde_bytes::ByteBuf>| {
            let mut msg = end.blocking_recv().unwrap().unwrap();
            msg.reverse();
            end.blocking_send(msg).unwrap();
        },
    );
    let payload: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut expected = payload.clone();
    expected.reverse();
    here.send(serde_bytes::ByteBuf::from(payload))
        .await
        .unwrap();
    let back = within("16 MiB echo", here.recv()).await.unwrap().unwrap();
    assert_eq!(back.len(), 16 << 20);
    assert!(back.as_slice() == expected.as_slice());
    within("child", child).await.unwrap();
}

#[tokio::test]
async fn three_hundred_descriptors_in_one_message() {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..300 {
        let (tx, rx) = pipe::simplex::<u32>().unwrap();
        senders.push(tx);
        receivers.push(rx);
    }
    let child = spawn(senders, |senders: Vec<Sender<u32>>| {
        let n = senders.len();
        for (i, mut tx) in senders.into_iter().enumerate() {
            tx.blocking_send(i as u32).unwrap();
        }
        n
    });
    assert_eq!(within("child", child).await.unwrap(), 300);
    for (i, rx) in receivers.iter_mut().enumerate() {
        assert_eq!(
            within("per-pipe message", rx.recv()).await.unwrap(),
            Some(i as u32)
        );
        assert_eq!(within("per-pipe eof", rx.recv()).await.unwrap(), None);
    }
}

#[tokio::test]
async fn many_descriptors_interleaved_with_plain_messages_keep_order() {
    let (mut tx, mut rx) = pipe::simplex::<(u32, Vec<SharedFd>)>().unwrap();
    let files: Vec<SharedFd> = (0..5)
        .map(|_| SharedFd::new(OwnedFd::from(tempfile())))
        .collect();
    for i in 0..50u32 {
        let fds = files
            .iter()
            .take((i % 6) as usize)
            .cloned()
            .collect::<Vec<_>>();
        tx.feed((i, fds)).await.unwrap();
    }
    tx.flush().await.unwrap();
    for i in 0..50u32 {
        let (n, fds) = within("interleaved", rx.recv()).await.unwrap().unwrap();
        assert_eq!(n, i);
        assert_eq!(fds.len(), (i % 6) as usize);
    }
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "multiproc-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// Reinterprets a sender of one type as a sender of another: what a peer built with a
/// different message type does.
fn retype<A, B>(tx: Sender<A>) -> Sender<B> {
    let (bytes, fds) = message::encode(&tx).unwrap();
    message::decode(&bytes, fds).unwrap()
}

#[tokio::test]
async fn wrong_type_is_a_decode_error_and_the_pipe_stays_usable() {
    let (tx, mut rx) = pipe::simplex::<u64>().unwrap();
    let child = spawn(retype::<u64, String>(tx), |mut tx: Sender<String>| {
        tx.blocking_send("definitely not a number".repeat(3))
            .unwrap();
    });
    let err = within("wrong type", rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err}");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("u64"), "{err}");
    within("child", child).await.unwrap();
    assert_eq!(
        within("eof after bad message", rx.recv()).await.unwrap(),
        None
    );
}

/// The raw socket behind a sender, for writing bytes that are not multiproc frames.
fn raw_socket<T>(tx: &Sender<T>) -> std::os::unix::net::UnixStream {
    // The end travels as its socket, then its shared ring's region.
    let (_, mut fds) = message::encode(tx).unwrap();
    let s = std::os::unix::net::UnixStream::from(fds.remove(0));
    s.set_nonblocking(false).unwrap();
    s
}

#[tokio::test]
async fn corrupt_frame_is_reported_and_ends_the_stream() {
    let (tx, mut rx) = pipe::simplex::<u32>().unwrap();
    let mut raw = raw_socket(&tx);
    raw.write_all(b"this is not a multiproc frame at all")
        .unwrap();
    let err = within("corrupt", rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Corrupt { .. }), "{err}");
    assert!(err.is_fatal());
    assert!(err.to_string().contains("magic"), "{err}");
    assert_eq!(within("eof after error", rx.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn writer_killed_mid_message_gives_an_error_not_a_misparse() {
    let (tx, mut rx) = pipe::simplex::<serde_bytes::ByteBuf>().unwrap();
    // The child writes the header and part of a 1 MiB message, then dies.
    let child = spawn(
        SharedFd::new(OwnedFd::from(raw_socket(&tx))),
        |fd: SharedFd| -> () {
            let mut s = std::os::unix::net::UnixStream::from(fd.try_clone_owned().unwrap());
            s.set_nonblocking(false).unwrap();
            let mut header = Vec::from(*b"MPF1");
            header.extend_from_slice(&(1u32 << 20).to_le_bytes());
            header.extend_from_slice(&0u32.to_le_bytes());
            s.write_all(&header).unwrap();
            s.write_all(&[7u8; 1000]).unwrap();
            std::process::abort();
        },
    );
    drop(tx);
    assert!(within("child", child).await.unwrap_err().is_killed());
    let err = within("truncated", rx.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Truncated { .. }), "{err}");
    assert_eq!(within("eof after error", rx.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn oversize_message_fails_the_sender_and_keeps_the_stream_in_sync() {
    let (mut tx, mut rx) = pipe::simplex::<Vec<u8>>().unwrap();
    tx.set_max_message_size(1024);
    let err = tx.send(vec![1; 4096]).await.unwrap_err();
    assert!(
        matches!(err.kind(), SendErrorKind::TooLarge { limit: 1024, .. }),
        "{err}"
    );
    assert_eq!(err.into_inner().len(), 4096, "the message comes back");
    tx.send(vec![2; 10]).await.unwrap();
    assert_eq!(within("next", rx.recv()).await.unwrap(), Some(vec![2; 10]));
}

#[tokio::test]
async fn oversize_incoming_message_is_skipped_with_an_error() {
    let (mut tx, mut rx) = pipe::simplex::<Vec<u8>>().unwrap();
    rx.set_max_message_size(1024);
    let child = spawn(tx_take(&mut tx), |mut tx: Sender<Vec<u8>>| {
        tx.blocking_send(vec![9; 100_000]).unwrap();
        tx.blocking_send(vec![1, 2, 3]).unwrap();
    });
    drop(tx);
    let err = within("oversize", rx.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::TooLarge { limit: 1024, .. }),
        "{err}"
    );
    assert!(!err.is_fatal());
    assert_eq!(
        within("after skip", rx.recv()).await.unwrap(),
        Some(vec![1, 2, 3])
    );
    assert_eq!(within("eof", rx.recv()).await.unwrap(), None);
    within("child", child).await.unwrap();
}

#[tokio::test]
async fn try_recv_and_recv_timeout() {
    use multiproc::error::{RecvTimeoutError, TryRecvError};
    let (mut tx, mut rx) = pipe::simplex::<u8>().unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let start = std::time::Instant::now();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(100)).await,
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(matches!(
        rx.recv_timeout(Duration::ZERO).await,
        Err(RecvTimeoutError::Timeout)
    ));
    tx.send(5).await.unwrap();
    assert_eq!(rx.recv_timeout(Duration::ZERO).await.unwrap(), Some(5));
    tx.send(6).await.unwrap();
    assert_eq!(rx.try_recv().unwrap(), 6);
    drop(tx);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Closed)));
}

#[tokio::test]
async fn blocking_twins_work_without_a_runtime() {
    let (mut a, mut b) = pipe::duplex::<String, String>().unwrap();
    let t = std::thread::spawn(move || {
        let got = b.blocking_recv().unwrap().unwrap();
        b.blocking_send(got.to_uppercase()).unwrap();
        b.blocking_recv_timeout(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout()
    });
    a.blocking_send("ping".into()).unwrap();
    assert_eq!(a.blocking_recv().unwrap().as_deref(), Some("PING"));
    assert!(t.join().unwrap());
}

fn send_later((mut tx, value): (Sender<u32>, u32)) {
    tx.blocking_send(value).unwrap();
}

/// A huge timeout (`Duration::MAX`) waits forever, never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_timeout_waits_until_a_message_comes() {
    let (tx, rx) = pipe::simplex::<u32>().unwrap();
    // Room to send, then a message waiting: at once.
    let (mut tx, mut rx) = within_blocking("blocking send and recv", move || {
        let (mut tx, mut rx) = (tx, rx);
        assert!(tx.blocking_send_timeout(1, Duration::MAX).unwrap());
        assert_eq!(rx.blocking_recv_timeout(Duration::MAX).unwrap(), Some(1));
        (tx, rx)
    })
    .await;
    within("send", tx.send(2)).await.unwrap();
    let got = within("recv_timeout(MAX)", rx.recv_timeout(Duration::MAX)).await;
    assert_eq!(got.unwrap(), Some(2));
    // Nothing sent: the receive waits until a child sends.
    let (got, sent) = blocked_until(
        "blocking_recv_timeout(MAX) on an empty pipe",
        move || rx.blocking_recv_timeout(Duration::MAX).unwrap(),
        || spawn((tx, 3), send_later),
    )
    .await;
    sent.unwrap();
    assert_eq!(got, Some(3));
}

#[tokio::test]
async fn cancelled_recv_loses_nothing() {
    let (mut tx, mut rx) = pipe::simplex::<u32>().unwrap();
    // Poll a recv once and drop it, many times, while messages arrive.
    for i in 0..100u32 {
        {
            let fut = rx.recv();
            tokio::pin!(fut);
            assert!(futures::poll!(fut.as_mut()).is_pending());
        }
        tx.send(i).await.unwrap();
        // Taken at once, so the next cancelled wait starts on an empty pipe (a message
        // already in the shared ring would make its first poll ready).
        assert_eq!(
            within("after a cancelled wait", rx.recv()).await.unwrap(),
            Some(i)
        );
    }
    drop(tx);
    let rest: Vec<u32> = within("drain", rx.try_collect()).await.unwrap();
    assert_eq!(rest, Vec::<u32>::new());
}

#[tokio::test]
async fn cancelled_send_still_delivers() {
    let (mut tx, mut rx) = pipe::simplex::<Vec<u8>>().unwrap();
    // Fill the socket so the next send must wait, then cancel that send.
    let big = vec![3u8; 1 << 20];
    {
        let fut = tx.send(big.clone());
        tokio::pin!(fut);
        let _ = futures::poll!(fut.as_mut());
    }
    drop(tx); // the unwritten rest is delivered in the background
    let got = within("cancelled send", rx.recv()).await.unwrap().unwrap();
    assert_eq!(got, big);
    assert_eq!(within("eof", rx.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn stream_and_sink_compose() {
    let (tx, rx) = pipe::simplex::<u64>().unwrap();
    let child = spawn(tx, |tx: Sender<u64>| async move {
        let mut tx = tx;
        let mut items = futures::stream::iter((0..10_000u64).map(Ok));
        tx.send_all(&mut items).await.unwrap();
    });
    let sum: u64 = within(
        "stream",
        rx.map(|r| r.unwrap()).fold(0, |a, b| async move { a + b }),
    )
    .await;
    assert_eq!(sum, (0..10_000u64).sum());
    within("child", child).await.unwrap();
}

/// A byte pattern that tells messages and offsets apart.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((seed * 31 + i) % 251) as u8).collect()
}

/// Sizes around the receive buffer, where large messages switch to a buffer of their own.
const BYTES_SIZES: [usize; 8] = [0, 1, 100, 65_536, 65_537, 300_000, 1 << 20, 16 << 20];

/// Child: for each typed length, receives that many bytes, reverses them and sends both back.
async fn reverse_bytes(mut end: Duplex<u64, u64>) -> usize {
    let mut handled = 0;
    while let Some(len) = end.recv().await.unwrap() {
        let mut bytes = end.recv_bytes().await.unwrap().unwrap();
        assert_eq!(bytes.len() as u64, len);
        bytes.reverse();
        end.send(len).await.unwrap();
        end.send_bytes(&bytes).await.unwrap();
        handled += 1;
    }
    handled
}

#[tokio::test]
async fn bytes_messages_round_trip_with_a_child_between_typed_ones() {
    let (mut here, there) = pipe::duplex::<u64, u64>().unwrap();
    let child = spawn(there, reverse_bytes);
    for (i, len) in BYTES_SIZES.into_iter().enumerate() {
        let payload = pattern(i, len);
        here.send(len as u64).await.unwrap();
        within("send_bytes", here.send_bytes(&payload))
            .await
            .unwrap();
        assert_eq!(
            within("typed length", here.recv()).await.unwrap(),
            Some(len as u64)
        );
        let back = within("bytes back", here.recv_bytes())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back.len(), len);
        assert!(back.iter().rev().eq(payload.iter()), "message {i} damaged");
    }
    drop(here);
    assert_eq!(within("child", child).await.unwrap(), BYTES_SIZES.len());
}

#[tokio::test]
async fn bytes_blocking_twins_work_in_a_sync_child() {
    let (mut here, there) = pipe::duplex::<(), ()>().unwrap();
    let child = spawn(there, |mut end: Duplex<(), ()>| {
        let mut count = 0;
        while let Some(mut bytes) = end.blocking_recv_bytes().unwrap() {
            bytes.reverse();
            end.blocking_send_bytes(&bytes).unwrap();
            count += 1;
        }
        count
    });
    for (i, len) in [0, 7, 200_000, 3 << 20].into_iter().enumerate() {
        let payload = pattern(i, len);
        here.send_bytes(&payload).await.unwrap();
        let back = within("echo", here.recv_bytes()).await.unwrap().unwrap();
        assert!(back.iter().rev().eq(payload.iter()), "message {i} damaged");
    }
    drop(here);
    assert_eq!(within("child", child).await.unwrap(), 4);
}

#[tokio::test]
async fn recv_bytes_of_typed_messages() {
    let (mut tx, mut rx) = pipe::simplex::<(u32, Option<Sender<u32>>)>().unwrap();
    // Without handles: its postcard encoding.
    tx.send((7, None)).await.unwrap();
    let (expected, _) = message::encode(&(7u32, None::<Sender<u32>>)).unwrap();
    assert_eq!(
        within("typed as bytes", rx.recv_bytes()).await.unwrap(),
        Some(expected)
    );
    // With a handle: not plain bytes; skipped, and the pipe goes on.
    let (other, mut other_rx) = pipe::simplex::<u32>().unwrap();
    tx.send((8, Some(other))).await.unwrap();
    tx.send_bytes(b"next").await.unwrap();
    let err = within("handle as bytes", rx.recv_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err}");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("carries handles"), "{err}");
    assert_eq!(
        within("after", rx.recv_bytes()).await.unwrap().as_deref(),
        Some(&b"next"[..])
    );
    // The handle's descriptor was closed: its pipe sees end-of-stream.
    assert_eq!(
        within("closed handle", other_rx.recv()).await.unwrap(),
        None
    );
    // Bytes received as a typed message are a decode error, and the pipe goes on.
    tx.send_bytes(&[0xff; 3]).await.unwrap();
    tx.send((9, None)).await.unwrap();
    assert!(matches!(
        within("bytes as typed", rx.recv()).await.unwrap_err(),
        RecvError::Decode(_)
    ));
    assert_eq!(
        within("typed after", rx.recv()).await.unwrap().map(|m| m.0),
        Some(9)
    );
}

#[tokio::test]
async fn oversize_bytes_fail_the_sender_and_are_skipped_by_the_receiver() {
    let (mut tx, mut rx) = pipe::simplex::<()>().unwrap();
    tx.set_max_message_size(1024);
    let err = tx.send_bytes(&[1; 4096]).await.unwrap_err();
    assert!(
        matches!(err.kind(), SendErrorKind::TooLarge { limit: 1024, .. }),
        "{err}"
    );
    tx.set_max_message_size(1 << 20);
    rx.set_max_message_size(1000);
    tx.send_bytes(&[2; 200_000]).await.unwrap();
    tx.send_bytes(&[3; 10]).await.unwrap();
    drop(tx);
    let err = within("oversize", rx.recv_bytes()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert!(!err.is_fatal());
    assert_eq!(
        within("after skip", rx.recv_bytes()).await.unwrap(),
        Some(vec![3; 10])
    );
    assert_eq!(within("eof", rx.recv_bytes()).await.unwrap(), None);
}

#[tokio::test]
async fn writer_killed_mid_bytes_message_gives_truncated() {
    let (tx, mut rx) = pipe::simplex::<()>().unwrap();
    let mut raw = raw_socket(&tx);
    drop(tx);
    let mut header = Vec::from(*b"MPF1");
    header.extend_from_slice(&(1u32 << 20).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    raw.write_all(&header).unwrap();
    raw.write_all(&[7u8; 200_000]).unwrap();
    drop(raw);
    let err = within("truncated", rx.recv_bytes()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RecvError::Truncated {
                received: 200_012,
                expected: 1_048_588
            }
        ),
        "{err}"
    );
    assert!(err.is_fatal());
    assert_eq!(
        within("eof after error", rx.recv_bytes()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn cancelled_send_bytes_still_delivers_whole() {
    let (mut tx, mut rx) = pipe::simplex::<()>().unwrap();
    let big = pattern(5, 4 << 20);
    // More than the socket holds: the first poll writes part, and the future is dropped.
    {
        let fut = tx.send_bytes(&big);
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
    }
    let sending = tokio::spawn(async move {
        tx.send_bytes(b"next").await.unwrap();
    });
    let got = within("cancelled", rx.recv_bytes()).await.unwrap().unwrap();
    assert!(got == big, "the cancelled message arrived damaged");
    assert_eq!(
        within("next", rx.recv_bytes()).await.unwrap().as_deref(),
        Some(&b"next"[..])
    );
    within("sender", sending).await.unwrap();
    assert_eq!(within("eof", rx.recv_bytes()).await.unwrap(), None);
}

#[tokio::test]
async fn cancelled_recv_bytes_is_finished_by_a_typed_recv() {
    let (tx, mut rx) = pipe::simplex::<serde_bytes::ByteBuf>().unwrap();
    let mut raw = raw_socket(&tx);
    let (encoded, _) = message::encode(&serde_bytes::ByteBuf::from(pattern(3, 1 << 20))).unwrap();
    let mut header = Vec::from(*b"MPF1");
    header.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    // Half the message, then a receive that gives up waiting for the rest.
    raw.write_all(&header).unwrap();
    raw.write_all(&encoded[..encoded.len() / 2]).unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(200), rx.recv_bytes()).await;
    assert!(waited.is_err(), "received half a message");
    raw.write_all(&encoded[encoded.len() / 2..]).unwrap();
    let got = within("typed recv", rx.recv()).await.unwrap().unwrap();
    assert!(got.as_slice() == pattern(3, 1 << 20).as_slice());
    drop((tx, raw));
    assert_eq!(within("eof", rx.recv()).await.unwrap(), None);
}
