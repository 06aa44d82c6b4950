//! Bad input from a peer of a named endpoint: oversized and corrupt frames on every transport
//! give clear errors, never a panic or a hang, and the listener keeps serving.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use multiproc::connection::{Address, Auth, Listener, connect, python};
use multiproc::error::RecvError;
use multiproc_core::transport::channel::{ChannelEnd, OFFER_LEN, offer_ring};
use multiproc_suite::within;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mp-fault-{tag}-{}-{n}.sock", std::process::id()))
}

/// A multiproc frame header over a Unix socket: magic, length, descriptor count.
fn mpf1_header(len: u32) -> Vec<u8> {
    let mut h = b"MPF1".to_vec();
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// Checks that the listener serves a well-behaved client after the bad one.
async fn still_serves(listener: &mut Listener<u32, u32>) {
    let mut good = connect::<u32, u32>(listener.local_address().clone(), Auth::none())
        .await
        .unwrap();
    let (mut end, _) = within("accept the good client", listener.accept())
        .await
        .unwrap();
    good.send(11).await.unwrap();
    assert_eq!(within("good recv", end.recv()).await.unwrap(), Some(11));
    end.send(12).await.unwrap();
    assert_eq!(within("good reply", good.recv()).await.unwrap(), Some(12));
}

/// A raw client of a native Unix listener: it makes the shared-ring offer a multiproc client
/// makes, then writes whatever the test wants straight to the socket. The channel end (socket
/// and ring) stays alive beside it.
async fn raw_unix_client(path: &std::path::Path) -> (std::os::unix::net::UnixStream, ChannelEnd) {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let end = offer_ring(stream).await.unwrap();
    let raw = std::os::unix::net::UnixStream::from(end.shared_fd().try_clone_owned().unwrap());
    raw.set_nonblocking(false).unwrap();
    (raw, end)
}

#[tokio::test]
async fn oversized_and_corrupt_frames_over_a_unix_socket() {
    let path = unique_path("unix");
    let mut listener = Listener::<u32, u32>::bind(&*path, Auth::none())
        .await
        .unwrap();

    // Announces 1 GiB against a 1 MiB limit: skipped with a clear error, the end goes on.
    let (mut bad, ring) = raw_unix_client(&path).await;
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    end.set_max_message_size(1 << 20);
    bad.write_all(&mpf1_header(1 << 30)).unwrap();
    let err = within("oversized", end.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::TooLarge { len, limit } if len == 1 << 30 && limit == 1 << 20)
    );
    assert!(!err.is_fatal());
    drop((bad, ring));
    // Gone in the middle of the skipped frame.
    let err = within("truncated", end.recv()).await.unwrap_err();
    assert!(matches!(err, RecvError::Truncated { .. }), "{err}");

    // Bytes that are not frames at all, after a good offer.
    let (mut bad, _ring) = raw_unix_client(&path).await;
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let err = within("corrupt", end.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Corrupt { .. }) && err.is_fatal(),
        "{err}"
    );
    assert_eq!(
        end.recv().await.unwrap(),
        None,
        "a corrupt stream ends the connection"
    );

    still_serves(&mut listener).await;
}

/// Sends `bytes` with `fds` beside them, as a client's first bytes.
fn send_offer(stream: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

/// A memfd of `len` bytes, sealed against shrinking or not.
fn memfd(len: u64, sealed: bool) -> OwnedFd {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create("fake-ring", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    if sealed {
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
    }
    fd
}

#[tokio::test]
async fn a_unix_client_whose_first_bytes_are_not_a_good_ring_offer_is_refused() {
    let path = unique_path("offer");
    let mut listener = Listener::<u32, u32>::bind(&*path, Auth::none())
        .await
        .unwrap();
    let header = |len: u64| {
        let mut offer = b"MPRING01".to_vec();
        offer.extend_from_slice(&len.to_le_bytes());
        assert_eq!(offer.len(), OFFER_LEN);
        offer
    };
    let good_len = 4096 + 2 * (32 << 10);
    let unsealed = memfd(good_len, false);
    let small = memfd(4096, true);
    let right = memfd(good_len, true);
    let other = memfd(16, true);
    let cases: Vec<(&str, Vec<u8>, Vec<BorrowedFd<'_>>, &str)> = vec![
        (
            "not an offer",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![],
            "magic",
        ),
        ("no descriptor", header(good_len), vec![], "descriptors"),
        (
            "two descriptors",
            header(good_len),
            vec![right.as_fd(), other.as_fd()],
            "descriptors",
        ),
        (
            "a wrong length",
            header(12),
            vec![right.as_fd()],
            "region of 12 bytes",
        ),
        (
            "an unsealed memfd",
            header(good_len),
            vec![unsealed.as_fd()],
            "sealed",
        ),
        (
            "a region too small",
            header(good_len),
            vec![small.as_fd()],
            "backed by a file",
        ),
    ];
    for (what, bytes, fds, says) in cases {
        let bad = std::os::unix::net::UnixStream::connect(&path).unwrap();
        send_offer(&bad, &bytes, &fds);
        let err = within(what, listener.accept()).await.unwrap_err();
        assert!(err.is_handshake(), "{what}: {err}");
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(chain.contains(says), "{what}: {chain}");
        drop(bad);
    }
    // A client that closes mid-offer.
    let mut bad = std::os::unix::net::UnixStream::connect(&path).unwrap();
    bad.write_all(b"MPRING").unwrap();
    drop(bad);
    let err = within("half an offer", listener.accept())
        .await
        .unwrap_err();
    assert!(err.is_handshake(), "{err}");

    still_serves(&mut listener).await;
}

#[tokio::test]
async fn oversized_and_corrupt_frames_over_tcp() {
    let mut listener = Listener::<u32, u32>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
        .await
        .unwrap();
    let Address::Tcp(host_port) = listener.local_address().clone() else {
        unreachable!()
    };

    let mut bad = std::net::TcpStream::connect(&host_port).unwrap();
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    end.set_max_message_size(16);
    // 100 bytes against a 16-byte limit, then a good frame: the big one is skipped.
    bad.write_all(&100u32.to_be_bytes()).unwrap();
    bad.write_all(&[0xee; 100]).unwrap();
    bad.write_all(&1u32.to_be_bytes()).unwrap();
    bad.write_all(&[7]).unwrap(); // postcard of 7u32
    let err = within("oversized", end.recv()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RecvError::TooLarge {
                len: 100,
                limit: 16
            }
        ),
        "{err}"
    );
    assert_eq!(within("after the skip", end.recv()).await.unwrap(), Some(7));
    // A frame that does not decode as the type: skipped, the stream goes on.
    bad.write_all(&3u32.to_be_bytes()).unwrap();
    bad.write_all(&[0xff, 0xff, 0xff]).unwrap();
    let err = within("decode", end.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Decode(_)) && !err.is_fatal(),
        "{err}"
    );
    // A negative length is not Python's framing: fatal.
    bad.write_all(&(-5i32).to_be_bytes()).unwrap();
    let err = within("corrupt", end.recv()).await.unwrap_err();
    assert!(
        matches!(err, RecvError::Corrupt { .. }) && err.is_fatal(),
        "{err}"
    );
    assert_eq!(end.recv().await.unwrap(), None);

    still_serves(&mut listener).await;
}

#[tokio::test]
async fn a_handshake_with_an_oversized_answer_fails_and_the_listener_goes_on() {
    let path = unique_path("handshake");
    let mut listener = Listener::<u32, u32>::bind(&*path, Auth::key(b"k"))
        .await
        .unwrap();
    let mut bad = std::os::unix::net::UnixStream::connect(&path).unwrap();
    // Python's framing: a 1 MiB "answer" to the challenge (Python reads at most 256 bytes).
    bad.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    let err = within("accept", listener.accept()).await.unwrap_err();
    assert!(
        err.is_handshake() && !err.is_auth() && !err.is_fatal(),
        "{err}"
    );
    drop(bad);
    let mut good = connect::<u32, u32>(&*path, Auth::key(b"k")).await.unwrap();
    let (mut end, _) = within("accept good", listener.accept()).await.unwrap();
    good.send(1).await.unwrap();
    assert_eq!(within("recv", end.recv()).await.unwrap(), Some(1));
}

#[tokio::test]
async fn python_protocol_connections_grade_bad_frames_the_same_way() {
    let mut listener = python::Listener::bind(Address::tcp("127.0.0.1:0"), Auth::none())
        .await
        .unwrap();
    let Address::Tcp(host_port) = listener.local_address().clone() else {
        unreachable!()
    };
    let mut bad = std::net::TcpStream::connect(&host_port).unwrap();
    let (mut conn, _) = within("accept", listener.accept()).await.unwrap();
    conn.set_max_message_size(8);
    // Python's extended header: -1, then a 64-bit length (8 GiB).
    bad.write_all(&(-1i32).to_be_bytes()).unwrap();
    bad.write_all(&(8u64 << 30).to_be_bytes()).unwrap();
    let err = within("oversized", conn.recv_bytes()).await.unwrap_err();
    assert!(matches!(err, RecvError::TooLarge { limit: 8, .. }), "{err}");
    drop(bad);
    assert!(within("truncated", conn.recv_bytes()).await.is_err());
}

#[tokio::test]
async fn a_receive_cancelled_mid_frame_over_tcp_loses_nothing() {
    let mut listener = Listener::<u32, u32>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
        .await
        .unwrap();
    let Address::Tcp(host_port) = listener.local_address().clone() else {
        unreachable!()
    };
    let mut raw = std::net::TcpStream::connect(&host_port).unwrap();
    raw.set_nodelay(true).unwrap();
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    // Half a frame: the header and one byte of a two-byte payload (postcard of 300u32).
    raw.write_all(&[0, 0, 0, 2, 0xac]).unwrap();
    let cut = tokio::time::timeout(std::time::Duration::from_millis(50), end.recv()).await;
    assert!(cut.is_err(), "the frame is not whole yet");
    raw.write_all(&[0x02]).unwrap();
    assert_eq!(within("the rest", end.recv()).await.unwrap(), Some(300));
}
