//! Pipes without a copy per message: sends by reference (`send_ref`, `feed_ref`,
//! `blocking_send_ref`) and receives that decode borrowing from the receive buffer
//! (`recv_borrowed` and its twins), across real processes, with handles, cancellation and bad
//! input.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::Duration;

use multiproc::core::{SharedFd, message};
use multiproc::error::{RecvError, TryRecvError};
use multiproc::pipe::{self, Duplex, Sender};
use multiproc::spawn;
use multiproc_suite::within;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The sizes of the stream tests: empty, small, around the receive buffer's 64 KiB chunk, and
/// frames much larger than it (read into a buffer of their own).
const SIZES: [usize; 9] = [0, 1, 64, 4095, 65_535, 65_536, 70_000, 300_000, 3 << 20];

/// Byte `i` of message `seq`: every message differs, so a stale or shifted buffer shows.
fn pattern(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seq * 13) as u8).collect()
}

/// Child: receives `(seq, len)` pairs' messages borrowed, checks each against its pattern and
/// answers with how many matched, then with `u64::MAX` at end-of-stream.
async fn borrowed_checker(mut end: Duplex<u64, ByteBuf>) -> u64 {
    let mut matched = 0u64;
    let mut seq = 0usize;
    loop {
        let got: Option<&[u8]> = end.recv_borrowed().await.unwrap();
        let Some(bytes) = got else { break };
        let len = SIZES[seq % SIZES.len()];
        if bytes == pattern(seq, len).as_slice() {
            matched += 1;
        }
        seq += 1;
    }
    matched
}

#[tokio::test]
async fn pipe_refs_round_trip_to_a_borrowing_child_in_every_size() {
    let (mut here, there) = pipe::duplex::<ByteBuf, u64>().unwrap();
    let child = spawn(there, borrowed_checker);
    // One value reused for every message, filled anew each time.
    let mut msg = ByteBuf::new();
    let mut seq = 0;
    for round in 0..3 {
        for &len in &SIZES {
            msg.clear();
            msg.extend_from_slice(&pattern(seq, len));
            match round {
                0 => within("send_ref", here.send_ref(&msg)).await.unwrap(),
                1 => within("feed_ref", here.feed_ref(&msg)).await.unwrap(),
                _ => here.blocking_send_ref(&msg).unwrap(),
            }
            seq += 1;
        }
        within("flush", here.flush()).await.unwrap();
    }
    drop(here);
    assert_eq!(within("child", child).await.unwrap(), seq as u64);
}

/// An owned message and its borrowed twin, with the same encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u32,
    name: String,
    data: ByteBuf,
}

#[derive(Debug, PartialEq, Deserialize)]
struct RecordView<'a> {
    id: u32,
    name: &'a str,
    #[serde(with = "serde_bytes")]
    data: &'a [u8],
}

fn record(id: u32, len: usize) -> Record {
    Record {
        id,
        name: format!("record {id}"),
        data: ByteBuf::from(pattern(id as usize, len)),
    }
}

fn matches_view(view: &RecordView<'_>, want: &Record) -> bool {
    view.id == want.id && view.name == want.name && view.data == want.data.as_slice()
}

#[tokio::test]
async fn pipe_borrowed_views_interleave_with_owned_receives_in_order() {
    let (mut tx, mut rx) = pipe::simplex::<Record>().unwrap();
    let sent: Vec<Record> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &len)| record(i as u32, len))
        .collect();
    let sending = tokio::spawn(async move {
        for r in &sent {
            tx.send_ref(r).await.unwrap();
        }
        sent
    });
    let mut got = Vec::new();
    for (i, &len) in SIZES.iter().enumerate() {
        let want = record(i as u32, len);
        if i % 2 == 0 {
            let view: RecordView<'_> = within("borrowed", rx.recv_borrowed())
                .await
                .unwrap()
                .unwrap();
            assert!(matches_view(&view, &want), "message {i} borrowed wrongly");
        } else {
            got.push(within("owned", rx.recv()).await.unwrap().unwrap());
            assert!(got.last() == Some(&want), "message {i} received wrongly");
        }
    }
    let sent = within("sender", sending).await.unwrap();
    assert_eq!(sent.len(), SIZES.len());
    assert_eq!(
        within("eof", rx.recv_borrowed::<RecordView<'_>>())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn pipe_try_and_blocking_borrowed_receives() {
    let (mut tx, mut rx) = pipe::simplex::<String>().unwrap();
    assert!(matches!(
        rx.try_recv_borrowed::<&str>(),
        Err(TryRecvError::Empty)
    ));
    let text = "no copy".to_string();
    tx.send_ref(&text).await.unwrap();
    tx.send_ref(&text).await.unwrap();
    assert_eq!(rx.try_recv_borrowed::<&str>().unwrap(), "no copy");
    let mut rx = tokio::task::spawn_blocking(move || {
        assert_eq!(
            rx.blocking_recv_borrowed::<&str>().unwrap(),
            Some("no copy")
        );
        rx
    });
    let mut rx = within("blocking receive", &mut rx).await.unwrap();
    drop(tx);
    assert!(matches!(
        rx.try_recv_borrowed::<&str>(),
        Err(TryRecvError::Closed)
    ));
    assert_eq!(rx.blocking_recv_borrowed::<&str>().unwrap(), None);
}

#[derive(Debug, Serialize, Deserialize)]
enum Mail {
    Text(String),
    Attachment(SharedFd),
}

#[derive(Debug, PartialEq, Deserialize)]
enum MailView<'a> {
    Text(&'a str),
    Attachment(u32),
}

fn memfd() -> SharedFd {
    let fd: OwnedFd =
        rustix::fs::memfd_create("borrowed-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    SharedFd::new(fd)
}

#[tokio::test]
async fn pipe_borrowed_receive_refuses_a_handle_and_goes_on() {
    let (tx, mut rx) = pipe::simplex::<Mail>().unwrap();
    // A child sends text, a message carrying a descriptor (by reference), then more text.
    let child = spawn(tx, |mut tx: Sender<Mail>| {
        tx.blocking_send(Mail::Text("before".into())).unwrap();
        let attachment = Mail::Attachment(memfd());
        tx.blocking_send_ref(&attachment).unwrap();
        tx.blocking_send(Mail::Text("after".into())).unwrap();
        // The handle sent by reference is still usable here.
        let Mail::Attachment(fd) = &attachment else {
            unreachable!()
        };
        rustix::fs::fstat(fd).is_ok()
    });
    assert_eq!(
        within("before", rx.recv_borrowed()).await.unwrap(),
        Some(MailView::Text("before"))
    );
    let err = within("handle", rx.recv_borrowed::<MailView<'_>>())
        .await
        .unwrap_err();
    let RecvError::Decode(decode) = &err else {
        panic!("not a decode error: {err}")
    };
    assert!(decode.carries_descriptors(), "{err}");
    assert!(!err.is_fatal());
    assert!(err.to_string().contains("borrowed"), "{err}");
    assert_eq!(
        within("after", rx.recv_borrowed()).await.unwrap(),
        Some(MailView::Text("after"))
    );
    assert!(within("child", child).await.unwrap());
    assert_eq!(
        within("eof", rx.recv_borrowed::<MailView<'_>>())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn pipe_borrowed_handle_without_descriptors_is_an_error_not_a_claim() {
    // A `SharedFd` decoded from a message that carries no descriptor: out of range.
    let (mut tx, mut rx) = pipe::simplex::<u32>().unwrap();
    tx.send(0).await.unwrap();
    tx.send(9).await.unwrap();
    let err = within("handle", rx.recv_borrowed::<SharedFd>())
        .await
        .unwrap_err();
    let RecvError::Decode(decode) = &err else {
        panic!("not a decode error: {err}")
    };
    assert!(decode.descriptor_error().is_some(), "{err}");
    assert_eq!(
        within("next", rx.recv_borrowed()).await.unwrap(),
        Some(9u32)
    );
}

#[tokio::test]
async fn pipe_cancelled_borrowed_receive_loses_nothing() {
    let (mut tx, mut rx) = pipe::simplex::<ByteBuf>().unwrap();
    // Nothing there: polled once, then dropped.
    {
        let fut = rx.recv_borrowed::<&[u8]>();
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
    }
    tx.send_ref(&ByteBuf::from(pattern(1, 64))).await.unwrap();
    let got: Option<&[u8]> = within("after cancel", rx.recv_borrowed()).await.unwrap();
    assert_eq!(got, Some(&pattern(1, 64)[..]));

    // Half a large frame there: the receive gives up, the rest comes, nothing is lost.
    let mut raw = raw_socket(&tx);
    let big = pattern(2, 1 << 20);
    let (encoded, _) = message::encode(&ByteBuf::from(big.clone())).unwrap();
    raw.write_all(&header(encoded.len())).unwrap();
    raw.write_all(&encoded[..encoded.len() / 2]).unwrap();
    let waited =
        tokio::time::timeout(Duration::from_millis(200), rx.recv_borrowed::<&[u8]>()).await;
    assert!(waited.is_err(), "received half a message");
    raw.write_all(&encoded[encoded.len() / 2..]).unwrap();
    tx.send_ref(&ByteBuf::from(pattern(3, 10))).await.unwrap();
    let got: Option<&[u8]> = within("large", rx.recv_borrowed()).await.unwrap();
    assert!(got == Some(&big[..]), "the large message arrived damaged");
    let got: Option<&[u8]> = within("small", rx.recv_borrowed()).await.unwrap();
    assert_eq!(got, Some(&pattern(3, 10)[..]));
}

/// The raw socket behind a sender, for writing bytes that are not multiproc frames.
fn raw_socket<T>(tx: &Sender<T>) -> std::os::unix::net::UnixStream {
    let (_, mut fds) = message::encode(tx).unwrap();
    let s = std::os::unix::net::UnixStream::from(fds.remove(0));
    s.set_nonblocking(false).unwrap();
    s
}

/// A plain frame header for a payload of `len` bytes without descriptors.
fn header(len: usize) -> Vec<u8> {
    let mut header = Vec::from(*b"MPF1");
    header.extend_from_slice(&(len as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header
}

#[tokio::test]
async fn pipe_borrowed_receive_reports_bad_payloads_and_goes_on() {
    let (tx, mut rx) = pipe::simplex::<String>().unwrap();
    rx.set_max_message_size(100_000);
    let mut raw = raw_socket(&tx);
    let bad: [&[u8]; 5] = [
        &[0x80],                // a varint cut short
        &[0xff; 11],            // a varint too long
        &[200, b'a', b'b'],     // a length past the end of the frame
        &[2, 0xff, 0xfe],       // not UTF-8
        &[1, b'a', b'b', b'c'], // trailing bytes
    ];
    for payload in bad {
        raw.write_all(&header(payload.len())).unwrap();
        raw.write_all(payload).unwrap();
    }
    // Over the size limit: skipped whole.
    raw.write_all(&header(200_000)).unwrap();
    raw.write_all(&vec![1u8; 200_000]).unwrap();
    raw.write_all(&header(3)).unwrap();
    raw.write_all(&[2, b'o', b'k']).unwrap();
    for payload in bad {
        let err = within("bad", rx.recv_borrowed::<&str>()).await.unwrap_err();
        assert!(matches!(err, RecvError::Decode(_)), "{payload:?}: {err}");
        assert!(!err.is_fatal(), "{payload:?}: {err}");
    }
    let err = within("too large", rx.recv_borrowed::<&str>())
        .await
        .unwrap_err();
    assert!(matches!(err, RecvError::TooLarge { .. }), "{err}");
    assert_eq!(
        within("ok", rx.recv_borrowed::<&str>()).await.unwrap(),
        Some("ok")
    );
    // A corrupt stream ends it.
    raw.write_all(b"this is not a multiproc frame at all")
        .unwrap();
    let err = within("corrupt", rx.recv_borrowed::<&str>())
        .await
        .unwrap_err();
    assert!(matches!(err, RecvError::Corrupt { .. }), "{err}");
    assert!(err.is_fatal());
    assert_eq!(
        within("eof after error", rx.recv_borrowed::<&str>())
            .await
            .unwrap(),
        None
    );
    drop((tx, raw));
}

/// Child: sends `n` messages in every size of [`SIZES`] in turn (fed, so small ones batch in
/// the shared ring and large ones go through the socket), then closes.
fn feed_sizes((mut tx, n): (Sender<ByteBuf>, usize)) -> usize {
    let mut msg = ByteBuf::new();
    for seq in 0..n {
        msg.clear();
        msg.extend_from_slice(&pattern(seq, SIZES[seq % SIZES.len()]));
        tx.blocking_send_ref(&msg).unwrap();
    }
    n
}

#[tokio::test]
async fn pipe_batch_receives_take_every_message_in_order() {
    let (tx, mut rx) = pipe::simplex::<ByteBuf>().unwrap();
    // Ten rounds of the sizes: many small messages between the large ones.
    let n = 10 * SIZES.len();
    let child = spawn((tx, n), feed_sizes);
    let (mut seq, mut calls, mut most) = (0usize, 0usize, 0usize);
    loop {
        let got = within(
            "batch",
            rx.recv_many_borrowed(32, |msg| {
                let bytes: &[u8] = msg.decode().unwrap();
                assert!(
                    bytes == pattern(seq, SIZES[seq % SIZES.len()]).as_slice(),
                    "message {seq} differs"
                );
                seq += 1;
            }),
        )
        .await
        .unwrap();
        assert!(got <= 32, "a batch over its limit: {got}");
        if got == 0 {
            break;
        }
        calls += 1;
        most = most.max(got);
    }
    assert_eq!(seq, n, "messages received");
    assert_eq!(within("child", child).await.unwrap(), n);
    assert!(calls <= n, "{calls} calls for {n} messages");
    assert!(most >= 1);
    // End-of-stream stays so, and a zero limit takes nothing.
    assert_eq!(
        rx.recv_many_borrowed(8, |_| unreachable!()).await.unwrap(),
        0
    );
    assert_eq!(
        rx.recv_many_borrowed(0, |_| unreachable!()).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn pipe_batch_receive_takes_what_has_arrived_in_one_call() {
    let (mut tx, mut rx) = pipe::simplex::<u32>().unwrap();
    for i in 0..100 {
        tx.feed_ref(&i).await.unwrap();
    }
    tx.flush().await.unwrap();
    let mut got = Vec::new();
    let n = within(
        "batch",
        rx.recv_many_borrowed(1000, |msg| got.push(msg.decode::<u32>().unwrap())),
    )
    .await
    .unwrap();
    assert_eq!(n, 100, "every message already there, in one call");
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    // The limit holds.
    for i in 0..10 {
        tx.send(i).await.unwrap();
    }
    let mut got = Vec::new();
    let n = rx
        .recv_many_borrowed(4, |msg| got.push(msg.decode::<u32>().unwrap()))
        .await
        .unwrap();
    assert_eq!((n, got), (4, vec![0, 1, 2, 3]));
}

#[tokio::test]
async fn pipe_cancelled_batch_receive_loses_nothing() {
    let (mut tx, mut rx) = pipe::simplex::<u32>().unwrap();
    {
        let fut = rx.recv_many_borrowed(16, |_| panic!("nothing was there"));
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
    }
    tx.send(1).await.unwrap();
    tx.send(2).await.unwrap();
    let mut got = Vec::new();
    let mut seen = 0;
    while seen < 2 {
        seen += within(
            "after cancel",
            rx.recv_many_borrowed(16, |msg| got.push(msg.decode::<u32>().unwrap())),
        )
        .await
        .unwrap();
    }
    assert_eq!(got, [1, 2]);
}

#[tokio::test]
async fn pipe_batch_receive_hands_out_what_came_before_an_error_and_goes_on() {
    let (tx, mut rx) = pipe::simplex::<String>().unwrap();
    rx.set_max_message_size(1000);
    let mut raw = raw_socket(&tx);
    // Two good messages, one over the limit, a handle (a decode error for `f`), one more.
    let mut bytes = Vec::new();
    for text in ["one", "two"] {
        let (encoded, _) = message::encode(&text.to_string()).unwrap();
        bytes.extend_from_slice(&header(encoded.len()));
        bytes.extend_from_slice(&encoded);
    }
    bytes.extend_from_slice(&header(5000));
    bytes.extend_from_slice(&[0; 5000]);
    let (encoded, _) = message::encode(&"three".to_string()).unwrap();
    bytes.extend_from_slice(&header(encoded.len()));
    bytes.extend_from_slice(&encoded);
    raw.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    // Everything before the oversized message is handed out; the error follows it.
    let mut result = take_texts(&mut rx, &mut got).await;
    while got.len() < 2 && matches!(result, Ok(1..)) {
        result = take_texts(&mut rx, &mut got).await;
    }
    assert_eq!(got, ["one", "two"]);
    let err = match result {
        Err(e) => e,
        Ok(_) => take_texts(&mut rx, &mut got).await.unwrap_err(),
    };
    assert!(
        matches!(err, RecvError::TooLarge { len: 5000, .. }),
        "{err}"
    );
    assert!(!err.is_fatal());
    assert_eq!(take_texts(&mut rx, &mut got).await.unwrap(), 1);
    assert_eq!(got, ["one", "two", "three"]);

    // A message carrying a handle is `f`'s decode error; the batch goes on past it.
    let (mut tx, mut rx) = pipe::simplex::<Mail>().unwrap();
    tx.send(Mail::Text("a".into())).await.unwrap();
    tx.send(Mail::Attachment(memfd())).await.unwrap();
    tx.send(Mail::Text("b".into())).await.unwrap();
    let (mut texts, mut refused) = (Vec::new(), 0);
    while texts.len() + refused < 3 {
        within(
            "handles",
            rx.recv_many_borrowed(16, |msg| match msg.decode::<MailView<'_>>() {
                Ok(MailView::Text(t)) => texts.push(t.to_owned()),
                Ok(other) => panic!("{other:?}"),
                Err(RecvError::Decode(e)) if e.carries_descriptors() => refused += 1,
                Err(e) => panic!("{e}"),
            }),
        )
        .await
        .unwrap();
    }
    assert_eq!((texts, refused), (vec!["a".to_owned(), "b".to_owned()], 1));
}

/// One batch receive of strings, each copied into `got`.
async fn take_texts(
    rx: &mut pipe::Receiver<String>,
    got: &mut Vec<String>,
) -> Result<usize, RecvError> {
    within(
        "batch",
        rx.recv_many_borrowed(16, |msg| got.push(msg.decode::<&str>().unwrap().to_owned())),
    )
    .await
}
