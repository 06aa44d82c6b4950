//! `SharedBytes` across real processes: large payloads handed over as sealed memfds instead of
//! streamed, what a peer cannot do to them (write after sending, shrink), and bogus memfds or
//! sizes sent by a peer, which are clear errors and never a crash.

use std::os::fd::OwnedFd;

use multiproc::core::{SharedFd, message};
use multiproc::error::RecvError;
use multiproc::pipe::{self, Duplex, Sender};
use multiproc::shm::{SharedBytes, SharedBytesMut};
use multiproc::spawn;
use multiproc_suite::within;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Checks every message it gets against the pattern, answers with a buffer written in place.
async fn check_and_answer(mut end: Duplex<SharedBytes, SharedBytes>) -> usize {
    let mut seen = 0;
    while let Some(got) = end.recv().await.unwrap() {
        assert!(
            got[..] == pattern(seen as u8, got.len())[..],
            "message {seen} damaged"
        );
        let mut answer = SharedBytesMut::zeroed(got.len()).unwrap();
        answer.copy_from_slice(&got);
        answer.reverse();
        end.send(answer.freeze().unwrap()).await.unwrap();
        seen += 1;
    }
    seen
}

#[tokio::test]
async fn shared_bytes_travel_to_a_child_and_back() {
    let (mut here, there) = pipe::duplex::<SharedBytes, SharedBytes>().unwrap();
    let child = spawn(there, check_and_answer);
    for (i, len) in [4 << 20, 0, 1, 4097, 1 << 20].into_iter().enumerate() {
        let data = pattern(i as u8, len);
        here.send(SharedBytes::copy_from_slice(&data).unwrap())
            .await
            .unwrap();
        let back = within("answer", here.recv()).await.unwrap().unwrap();
        let mut expected = data;
        expected.reverse();
        assert!(back[..] == expected[..], "answer {i} damaged");
    }
    drop(here);
    assert_eq!(within("child", child).await.unwrap(), 5);
}

#[test]
fn frozen_bytes_cannot_be_written_or_resized_by_anyone() {
    let mut m = SharedBytesMut::zeroed(1 << 16).unwrap();
    m.fill(9);
    let frozen = m.freeze().unwrap();
    // What a sender keeps after sending: the descriptor (also reachable through /proc).
    let (_, mut fds) = message::encode(&frozen).unwrap();
    let fd = fds.pop().unwrap();
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert!(std::os::unix::fs::FileExt::write_at(&file, b"late", 0).is_err());
    assert!(file.set_len(0).is_err());
    assert!(file.set_len(1 << 20).is_err());
    assert!(frozen.iter().all(|&b| b == 9));
}

/// Reinterprets a sender of one type as a sender of another: what a peer built with a
/// different (or a hostile) idea of the message does.
fn retype<A, B>(tx: Sender<A>) -> Sender<B> {
    let (bytes, fds) = message::encode(&tx).unwrap();
    message::decode(&bytes, fds).unwrap()
}

/// A memfd of `size` bytes with `seal` applied.
fn memfd(size: u64, seal: bool) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    if seal {
        rustix::fs::fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .unwrap();
    }
    fd
}

/// A hostile peer: sends what a `SharedBytes` looks like on the wire, with the wrong things in
/// it, then one real `SharedBytes`.
fn forge(mut tx: Sender<(SharedFd, u64)>) {
    // Not sealed: its owner could write or shrink it under the receiver.
    tx.blocking_send((SharedFd::new(memfd(1 << 20, false)), 1 << 20))
        .unwrap();
    // Sealed, but far smaller than announced: reading would fault.
    tx.blocking_send((SharedFd::new(memfd(4096, true)), 1 << 30))
        .unwrap();
    // Not a memfd at all.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    tx.blocking_send((SharedFd::new(OwnedFd::from(a)), 1))
        .unwrap();
    let real = SharedBytes::copy_from_slice(b"the real one").unwrap();
    let mut tx: Sender<SharedBytes> = retype(tx);
    tx.blocking_send(real).unwrap();
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out += &format!(": {e}");
        source = e.source();
    }
    out
}

#[tokio::test]
async fn bogus_memfds_and_sizes_from_a_peer_are_clear_errors() {
    let (tx, mut rx) = pipe::simplex::<SharedBytes>().unwrap();
    let child = spawn(retype::<SharedBytes, (SharedFd, u64)>(tx), forge);
    for expected in [
        "not sealed against writing",
        "backed by a memfd of 4096 bytes",
        "not a memfd",
    ] {
        let err = within("forged", rx.recv()).await.unwrap_err();
        assert!(matches!(err, RecvError::Decode(_)), "{err}");
        assert!(!err.is_fatal(), "{err}");
        let text = chain(&err);
        assert!(text.contains(expected), "{text}");
    }
    let real = within("real", rx.recv()).await.unwrap().unwrap();
    assert_eq!(&real[..], b"the real one");
    within("child", child).await.unwrap();
    assert!(within("eof", rx.recv()).await.unwrap().is_none());
}

/// Sends a large `SharedBytes` and dies at once, without any cleanup.
fn send_then_die(mut tx: Sender<SharedBytes>) {
    let bytes = SharedBytes::copy_from_slice(&pattern(3, 2 << 20)).unwrap();
    tx.blocking_send(bytes).unwrap();
    std::process::abort();
}

#[tokio::test]
async fn bytes_sent_by_a_peer_that_then_crashed_stay_readable() {
    let (tx, mut rx) = pipe::simplex::<SharedBytes>().unwrap();
    let child = spawn(tx, send_then_die);
    assert!(within("child", child).await.unwrap_err().is_killed());
    let got = within("bytes", rx.recv()).await.unwrap().unwrap();
    assert!(got[..] == pattern(3, 2 << 20)[..]);
    assert!(within("eof", rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_cancelled_send_of_shared_bytes_still_delivers() {
    let (mut tx, mut rx) = pipe::simplex::<(Vec<u8>, SharedBytes)>().unwrap();
    // A large message in front, so the socket fills and the send must wait.
    let big = pattern(1, 4 << 20);
    let shared = SharedBytes::copy_from_slice(&pattern(2, 1 << 20)).unwrap();
    {
        let fut = tx.send((big.clone(), shared.clone()));
        tokio::pin!(fut);
        assert!(futures::poll!(fut.as_mut()).is_pending());
    }
    drop(tx);
    let (got_big, got_shared) = within("cancelled", rx.recv()).await.unwrap().unwrap();
    assert!(got_big == big);
    assert!(got_shared == shared);
    assert!(within("eof", rx.recv()).await.unwrap().is_none());
}
