use std::io::Write;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::receiver::{DIRECT_MIN, Waiting};
use super::*;
use crate::error::{RecvError, SendErrorKind};
use crate::transport::frame::{HEADER_LEN, Header};
use crate::wait::spin::{CpuContention, SpinOutcome};

/// A small deterministic generator, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn valid_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Header {
        len: payload.len() as u32,
        fds: 0,
        ..Header::default()
    }
    .encode()
    .to_vec();
    out.extend_from_slice(payload);
    out
}

/// A large payload for the fuzzing below: every other one is exactly one postcard byte
/// string (what a typed receive reads into a buffer of its own).
fn large_payload(rng: &mut XorShift, len: usize) -> Vec<u8> {
    let fill = rng.next() as u8;
    if rng.below(2) == 0 {
        return vec![fill; len];
    }
    // Lengths from 16 KiB to 2 MiB take a three-byte prefix.
    let string = serde_bytes::ByteBuf::from(vec![fill; len - 3]);
    let (bytes, _) = crate::message::encode(&string).unwrap();
    assert_eq!(bytes.len(), len);
    bytes
}

/// Feeds streams of random bytes, valid frames (some large enough to be read into a buffer
/// of their own), damaged frames and lying headers into a receiver that receives with the
/// typed and the bytes methods at random: it must never panic or hang, and must end with
/// end-of-stream.
#[test]
fn receiver_survives_arbitrary_byte_streams() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let (a, b) = socket_pair().unwrap();
        let (_, mut rx) = split(b).unwrap();
        rx.set_max_message_size(if round % 2 == 0 { 4096 } else { 1 << 20 });
        let mut stream = Vec::new();
        for _ in 0..rng.below(8) {
            match rng.below(7) {
                0 => stream.extend(valid_frame(&vec![
                    rng.next() as u8;
                    rng.below(100) as usize
                ])),
                1 => {
                    let len = rng.below(64) as usize;
                    stream.extend((0..len).map(|_| rng.next() as u8));
                }
                2 => {
                    let mut f = valid_frame(&[1, 2, 3, 4, 5]);
                    let cut = rng.below(f.len() as u64) as usize;
                    f.truncate(cut);
                    stream.extend(f);
                }
                3 => {
                    // A header announcing more descriptors than will ever come.
                    stream.extend(
                        Header {
                            len: 2,
                            fds: rng.below(10) as u32 + 1,
                            ..Header::default()
                        }
                        .encode(),
                    );
                    stream.extend([0, 0]);
                }
                4 => {
                    // Above `DIRECT_MIN`: the bytes methods read it into its own buffer, and
                    // so do the typed ones when it is one byte string (every other one is).
                    let len = DIRECT_MIN + 1 + rng.below(100_000) as usize;
                    stream.extend(valid_frame(&large_payload(&mut rng, len)));
                }
                5 => {
                    // The same, cut short.
                    let len = DIRECT_MIN + 1 + rng.below(100_000) as usize;
                    let mut f = valid_frame(&large_payload(&mut rng, len));
                    f.truncate(HEADER_LEN + rng.below(len as u64) as usize);
                    stream.extend(f);
                }
                _ => stream.extend(
                    Header {
                        len: 100_000,
                        fds: 0,
                        ..Header::default()
                    }
                    .encode(),
                ),
            }
        }
        let mut writer = std::os::unix::net::UnixStream::from(a.try_clone_owned().unwrap());
        drop(a);
        writer.set_nonblocking(false).unwrap();
        // Large frames do not fit in the socket: write from a thread while receiving.
        let writing = std::thread::spawn(move || {
            let _ = writer.write_all(&stream);
        });
        let mut outcomes = 0;
        loop {
            let deadline = Some(Instant::now() + Duration::from_secs(5));
            let got = match rng.below(3) {
                0 => rx.blocking_recv_with(deadline, |bytes, fds| (bytes.len(), fds.len())),
                1 => rx.blocking_recv_bytes(deadline, |payload, fds| {
                    (payload.into_vec().len(), fds.len())
                }),
                _ => rx.blocking_recv_typed(deadline, |payload, fds| {
                    let n = fds.len();
                    let decoded =
                        crate::message::decode_payload::<serde_bytes::ByteBuf>(payload, fds);
                    (decoded.map_or(0, |b| b.len()), n)
                }),
            };
            match got {
                Ok(TryRecv::Frame(_)) | Err(_) => outcomes += 1,
                Ok(TryRecv::Closed) => break,
                Ok(TryRecv::Empty) => {
                    panic!("round {round}: receiver waited on a closed socket")
                }
            }
            assert!(
                outcomes < 10_000,
                "round {round}: receiver does not make progress"
            );
        }
        assert!(rx.is_terminated());
        // A writer blocked on a full socket fails once the receiver is gone.
        drop(rx);
        writing.join().unwrap();
    }
}

/// Frames of every size, buffered or sent with `send_bytes`, arrive whole and in order,
/// whichever method receives them.
#[test]
fn bytes_and_buffered_frames_interleave_in_order() {
    let sizes = [0, 1, 100, DIRECT_MIN, DIRECT_MIN + 1, 300_000, 3 << 20];
    let messages: Vec<Vec<u8>> = (0..42)
        .map(|i| {
            let len = sizes[i % sizes.len()];
            (0..len).map(|j| (i * 31 + j) as u8).collect()
        })
        .collect();
    let expected = messages.clone();
    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, mut rx) = split(b).unwrap();
    let sending = std::thread::spawn(move || {
        for (i, m) in messages.iter().enumerate() {
            if i % 3 == 0 {
                // Left in the buffer now and then: `send_bytes` must write it first.
                tx.push(|buf| {
                    buf.extend_from_slice(m);
                    Ok(Vec::new())
                })
                .unwrap();
                if i % 2 == 0 {
                    assert!(tx.blocking_flush(None).unwrap());
                }
            } else {
                assert!(tx.blocking_send_bytes(m, None).unwrap());
            }
        }
        assert!(tx.blocking_flush(None).unwrap());
    });
    for (i, m) in expected.iter().enumerate() {
        let got = if i % 2 == 0 {
            rx.blocking_recv_bytes(None, |payload, _| payload.into_vec())
        } else {
            rx.blocking_recv_with(None, |bytes, _| bytes.to_vec())
        };
        match got.unwrap() {
            TryRecv::Frame(bytes) => assert!(bytes == *m, "message {i} differs"),
            other => panic!("message {i}: {other:?}"),
        }
    }
    sending.join().unwrap();
    match rx.blocking_recv_bytes(None, |payload, _| payload.into_vec()) {
        Ok(TryRecv::Closed) => {}
        other => panic!("expected end-of-stream, got {other:?}"),
    }
}

/// A `send_bytes` dropped part-way buffers the rest of its frame (one never polled sends
/// nothing); a `recv_bytes` dropped part-way is finished by the next receive, of any kind.
#[test]
fn cancelled_bytes_transfers_lose_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = socket_pair().unwrap();
        let (mut tx, _) = split(a).unwrap();
        let (_, mut rx) = split(b).unwrap();
        let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253) as u8).collect();

        drop(tx.send_bytes(&big));
        assert_eq!(tx.buffered(), 0, "a send never polled sent something");
        // The socket holds about 1 MiB: one poll writes part of the frame.
        assert!(futures::FutureExt::now_or_never(tx.send_bytes(&big)).is_none());
        let rest = tx.buffered();
        assert!(rest > 0 && rest < big.len(), "{rest} bytes buffered");

        // Reads what the socket holds, then waits for the rest, which never comes: cancel.
        let receiving =
            std::future::poll_fn(|cx| rx.poll_recv_bytes(cx, |payload, _| payload.into_vec()));
        let waited = tokio::time::timeout(Duration::from_millis(200), receiving).await;
        assert!(waited.is_err(), "received a frame that was not all sent");
        assert!(
            rx.direct.is_some(),
            "a large frame is read into its own buffer"
        );

        let flushing = std::thread::spawn(move || {
            assert!(tx.blocking_flush(None).unwrap());
            assert!(tx.blocking_send_bytes(b"after", None).unwrap());
        });
        let got = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |bytes, _| bytes.to_vec()))
            .await
            .unwrap()
            .unwrap();
        assert!(got == big, "the cancelled frames arrived damaged");
        let after =
            std::future::poll_fn(|cx| rx.poll_recv_bytes(cx, |payload, _| payload.into_vec()))
                .await
                .unwrap();
        assert_eq!(after.as_deref(), Some(&b"after"[..]));
        flushing.join().unwrap();
    });
}

/// `try_recv_buffered_with` hands out only frames already read, never touching the socket;
/// `blocking_wait` reports bytes in the socket (or its end) without reading them.
#[test]
fn buffered_receive_and_wait_do_not_read() {
    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, mut rx) = split(b).unwrap();
    let short = Some(Instant::now() + Duration::from_millis(20));
    assert!(
        !rx.blocking_wait(short).unwrap(),
        "an empty socket is not readable"
    );
    for i in 0..3u8 {
        tx.push(|buf| {
            buf.push(i);
            Ok(Vec::new())
        })
        .unwrap();
    }
    assert!(tx.blocking_flush(None).unwrap());
    // In the socket, not in the buffer: nothing to hand out without a read.
    assert!(
        rx.try_recv_buffered_with(|b, _| b.to_vec())
            .unwrap()
            .is_none()
    );
    assert!(rx.blocking_wait(None).unwrap());
    // One read takes all three frames; the other two come from the buffer.
    let first = rx.try_recv_with(|b, _| b.to_vec()).unwrap();
    assert!(
        matches!(first, TryRecv::Frame(ref b) if b == &[0]),
        "{first:?}"
    );
    assert!(
        !rx.blocking_wait(short).unwrap(),
        "the read took every byte"
    );
    for i in 1..3u8 {
        let got = rx.try_recv_buffered_with(|b, _| b.to_vec()).unwrap();
        assert_eq!(got, Some(vec![i]));
    }
    assert!(
        rx.try_recv_buffered_with(|b, _| b.to_vec())
            .unwrap()
            .is_none()
    );
    // The peer's end counts as readable.
    drop(tx);
    assert!(rx.blocking_wait(None).unwrap());
    assert!(matches!(
        rx.try_recv_with(|b, _| b.len()),
        Ok(TryRecv::Closed)
    ));
}

/// A sender and the receiver of its frames, over a ring pair or a bare socket pair.
fn one_way(with_ring: bool) -> (RawSender, RawReceiver) {
    if with_ring {
        let (a, b) = pair().unwrap();
        (split_end(a).unwrap().0, split_end(b).unwrap().1)
    } else {
        let (a, b) = socket_pair().unwrap();
        (split(a).unwrap().0, split(b).unwrap().1)
    }
}

fn send_frame(tx: &mut RawSender, payload: &[u8]) {
    tx.push(|buf| {
        buf.extend_from_slice(payload);
        Ok(Vec::new())
    })
    .unwrap();
    assert!(tx.blocking_flush(None).unwrap());
}

fn poll_once(rx: &mut RawReceiver) -> Poll<Result<Option<Vec<u8>>, RecvError>> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    rx.poll_recv_with(&mut cx, |bytes, _| bytes.to_vec())
}

/// Receives one frame on the runtime (the reactor runs while it waits), or panics.
async fn recv_frame(rx: &mut RawReceiver) -> Vec<u8> {
    let receiving = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |bytes, _| bytes.to_vec()));
    tokio::time::timeout(Duration::from_secs(10), receiving)
        .await
        .expect("no frame within 10 s")
        .unwrap()
        .expect("end-of-stream instead of a frame")
}

/// A receiver spins only while an answer to something its socket sent may be on the way:
/// not before anything was sent, not after the answer came; and a spin that finds nothing
/// counts as a failure for the policy.
#[test]
fn receivers_spin_only_when_an_answer_is_due() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (a, b) = socket_pair().unwrap();
        let (mut tx_a, mut rx_a) = split(a).unwrap();
        let (mut tx_b, _rx_b) = split(b).unwrap();

        // Nothing sent: park at once, the policy untouched.
        assert!(poll_once(&mut rx_a).is_pending());
        assert_eq!(rx_a.waiting, Waiting::Untimed);
        assert_eq!(rx_a.spin.misses(), 0);

        // A request goes out, but the wait in progress already chose to park.
        send_frame(&mut tx_a, b"request");
        assert!(poll_once(&mut rx_a).is_pending());
        assert_eq!(rx_a.spin.misses(), 0);

        // The answer ends that wait; a wait after the answer does not spin either.
        send_frame(&mut tx_b, b"answer");
        assert_eq!(recv_frame(&mut rx_a).await, b"answer");
        assert!(poll_once(&mut rx_a).is_pending());
        assert_eq!(rx_a.spin.misses(), 0);

        // A new request, then a wait: it spins, and nothing comes. (Unless other processes
        // keep this CPU busy: then a step is slow, or spinning is off for a while.)
        send_frame(&mut tx_b, b"notice");
        assert_eq!(recv_frame(&mut rx_a).await, b"notice");
        send_frame(&mut tx_a, b"request");
        let cooling = CpuContention::global().cooling(Instant::now());
        assert!(poll_once(&mut rx_a).is_pending());
        match rx_a.spin.last() {
            Some(SpinOutcome::Missed) => {
                assert_eq!(rx_a.waiting, Waiting::Untimed);
                assert_eq!(rx_a.spin.misses(), 1);
                assert!(!rx_a.spin.spins_next(), "a missed spin backs off");
            }
            Some(SpinOutcome::Contended) => assert_eq!(rx_a.waiting, Waiting::Untimed),
            None => assert!(cooling, "the wait neither spun nor found the CPU busy"),
            Some(SpinOutcome::Caught(_)) => panic!("caught data nobody sent"),
        }
        let misses = rx_a.spin.misses();
        // Being polled again in the same wait does not spin again.
        assert!(poll_once(&mut rx_a).is_pending());
        assert_eq!(rx_a.spin.misses(), misses);

        // The data that arrives while parked is delivered as usual.
        send_frame(&mut tx_b, b"late");
        assert_eq!(recv_frame(&mut rx_a).await, b"late");
    });
}

/// A blocking receive never spins past its deadline: with the deadline already gone it
/// returns at once, without counting a failed spin.
#[test]
fn blocking_spins_stop_at_the_deadline() {
    let (a, _b) = socket_pair().unwrap();
    let (mut tx, mut rx) = split(a).unwrap();
    send_frame(&mut tx, b"request");
    let got = rx
        .blocking_recv_with(Some(Instant::now()), |bytes, _| bytes.to_vec())
        .unwrap();
    assert!(matches!(got, TryRecv::Empty), "{got:?}");
    assert_eq!(rx.spin.misses(), 0);
}

/// Answers and end-of-stream reach a receiver that spins for them, blocking or async.
#[test]
fn spinning_receivers_get_answers_and_end_of_stream() {
    let (a, b) = socket_pair().unwrap();
    let (mut tx_a, mut rx_a) = split(a).unwrap();
    let (mut tx_b, mut rx_b) = split(b).unwrap();
    let echo = std::thread::spawn(move || {
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for i in 0..=200 {
            match rx_b.blocking_recv_with(deadline, |bytes, _| bytes.to_vec()) {
                Ok(TryRecv::Frame(bytes)) if i < 200 => send_frame(&mut tx_b, &bytes),
                // The last request is not answered: closing both directions is.
                Ok(TryRecv::Frame(_)) => {}
                other => panic!("echo: {other:?}"),
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..200u32 {
            send_frame(&mut tx_a, &i.to_le_bytes());
            let got = if i % 2 == 0 {
                let deadline = Some(Instant::now() + Duration::from_secs(10));
                match rx_a.blocking_recv_with(deadline, |bytes, _| bytes.to_vec()) {
                    Ok(TryRecv::Frame(bytes)) => bytes,
                    other => panic!("answer {i}: {other:?}"),
                }
            } else {
                recv_frame(&mut rx_a).await
            };
            assert_eq!(got, i.to_le_bytes());
        }
        // A last request that is never answered: the peer closes instead.
        send_frame(&mut tx_a, b"unanswered");
        let receiving =
            std::future::poll_fn(|cx| rx_a.poll_recv_with(cx, |bytes, _| bytes.to_vec()));
        let end = tokio::time::timeout(Duration::from_secs(10), receiving)
            .await
            .expect("end-of-stream never came");
        assert!(matches!(end, Ok(None)), "{end:?}");
    });
    echo.join().unwrap();
}

#[test]
fn frames_round_trip_in_one_batch() {
    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, mut rx) = split(b).unwrap();
    for i in 0..1000u32 {
        tx.push(|buf| {
            buf.extend_from_slice(&i.to_le_bytes()[..(i % 5) as usize]);
            Ok(Vec::new())
        })
        .unwrap();
    }
    assert!(tx.blocking_flush(None).unwrap());
    for i in 0..1000u32 {
        let got = rx
            .blocking_recv_with(None, |bytes, _| bytes.to_vec())
            .unwrap();
        match got {
            TryRecv::Frame(bytes) => assert_eq!(bytes, &i.to_le_bytes()[..(i % 5) as usize]),
            other => panic!("frame {i}: {other:?}"),
        }
    }
}

/// Counts the allocations made on each thread, so a test can see what its own thread
/// allocated while other tests run beside it.
mod counting {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) struct Counting;

    // SAFETY: every call is forwarded to the system allocator unchanged; counting touches only
    // a const-initialised thread-local `Cell` without a destructor, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: forwarded with the caller's layout, whose contract the caller keeps.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` (every allocation goes there) with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            // SAFETY: as in `dealloc`, and the caller keeps `realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    /// Allocations made on this thread so far.
    pub(super) fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

#[global_allocator]
static COUNTING: counting::Counting = counting::Counting;

/// A stream of small messages without handles costs no allocation per message once the
/// buffers are warm: the send buffer and the receive buffer are reused, many frames go out in
/// one `sendmsg` and come in with one `recvmsg`, and the descriptor context is a few flags.
#[test]
fn small_messages_allocate_nothing_per_message() {
    type Msg = (u32, [u64; 7]);
    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, mut rx) = split(b).unwrap();
    let mut round = |base: u32| {
        for i in 0..500u32 {
            let msg: Msg = (base + i, [u64::from(i); 7]);
            tx.push(|buf| crate::message::encode_into(&msg, buf))
                .unwrap();
        }
        assert!(tx.blocking_flush(None).unwrap());
        for i in 0..500u32 {
            let got = rx
                .blocking_recv_with(None, crate::message::decode::<Msg>)
                .unwrap();
            let TryRecv::Frame(Ok((n, words))) = got else {
                panic!("message {i} missing");
            };
            assert_eq!((n, words[6]), (base + i, u64::from(i)));
        }
    };
    round(0); // warms the buffers up
    let before = counting::allocations();
    for r in 1..=20 {
        round(r * 1000);
    }
    let per_round = (counting::allocations() - before) / 20;
    assert_eq!(per_round, 0, "allocations per round of 500 messages");
}

/// A stream of small byte strings pushed by reference and received lent, decoded borrowing
/// from the receive buffer, costs no allocation per message at all once the buffers are warm
/// (the owned decode would allocate each message's bytes).
#[test]
fn lent_byte_strings_allocate_nothing_per_message() {
    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, mut rx) = split(b).unwrap();
    let payload = serde_bytes::ByteBuf::from(vec![7u8; 64]);
    let mut round = |seq: u8| {
        let mut payload = payload.clone();
        payload[0] = seq;
        for _ in 0..500 {
            tx.push_message(&payload).unwrap();
        }
        assert!(tx.blocking_flush(None).unwrap());
        for i in 0..500 {
            let TryRecv::Frame(fds) = rx.blocking_recv_lent(None).unwrap() else {
                panic!("message {i} missing");
            };
            let got: &[u8] = crate::message::decode_borrowed(rx.lent(), fds).unwrap();
            assert!(got == &payload[..], "message {i} of round {seq}");
        }
    };
    round(0); // warms the buffers up
    let before = counting::allocations();
    for r in 1..=20 {
        round(r);
    }
    // The round's own copy of the payload is one allocation.
    let per_round = (counting::allocations() - before) / 20;
    assert_eq!(per_round, 1, "allocations per round of 500 messages");
}

/// Awaits a receive that must deliver a frame within 10 s.
async fn received<T>(
    receive: impl std::future::Future<Output = Result<Option<T>, RecvError>>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), receive)
        .await
        .expect("a frame within 10 s")
        .unwrap()
        .unwrap()
}

/// What the typed-receive test sends, in this order.
enum Sent {
    Big(Vec<u8>),
    Small(u32),
    WithFd(u32),
}

/// Large byte strings taken by the typed receives arrive in a buffer of their own, whole and in
/// order with small frames and frames carrying descriptors (over a bare socket and over a pair
/// with a ring); one whose typed receive is cancelled part-way is finished by the next receive
/// of any kind, its length prefix included.
#[test]
fn typed_receives_take_large_byte_strings_whole_and_in_order() {
    use serde_bytes::ByteBuf;

    use crate::message::{self, decode_payload};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for with_ring in [false, true] {
        let (mut tx, mut rx) = one_way(with_ring);
        let plan: Vec<Sent> = (0..24u32)
            .map(|i| match i % 4 {
                0 | 2 => Sent::Big(
                    (0..(DIRECT_MIN + 1 + i as usize * 40_000))
                        .map(|j| (j as u32 ^ i) as u8)
                        .collect(),
                ),
                1 => Sent::Small(i),
                _ => Sent::WithFd(i),
            })
            .collect();
        let to_send: Vec<_> = plan
            .iter()
            .map(|s| match s {
                Sent::Big(b) => message::encode(&ByteBuf::from(b.clone())).unwrap().0,
                Sent::Small(i) | Sent::WithFd(i) => message::encode(i).unwrap().0,
            })
            .collect();
        let with_fd: Vec<bool> = plan.iter().map(|s| matches!(s, Sent::WithFd(_))).collect();
        let sending = std::thread::spawn(move || {
            for (bytes, fd) in to_send.iter().zip(with_fd) {
                tx.push(|buf| {
                    buf.extend_from_slice(bytes);
                    Ok(if fd {
                        vec![std::fs::File::open("/dev/null").unwrap().into()]
                    } else {
                        Vec::new()
                    })
                })
                .unwrap();
                assert!(tx.blocking_flush(None).unwrap());
                // Paced, so that receives find large frames half-arrived.
                std::thread::sleep(Duration::from_millis(2));
            }
            tx
        });
        rt.block_on(async {
            for (i, sent) in plan.iter().enumerate() {
                let Sent::Big(big) = sent else {
                    let got = std::future::poll_fn(|cx| {
                        rx.poll_recv_typed(cx, |p, fds| {
                            (decode_payload::<u32>(p, Vec::new()), fds.len())
                        })
                    })
                    .await
                    .unwrap()
                    .unwrap();
                    let (n, fds) = (got.0.unwrap(), got.1);
                    match sent {
                        Sent::Small(want) => assert_eq!((n, fds), (*want, 0), "message {i}"),
                        Sent::WithFd(want) => assert_eq!((n, fds), (*want, 1), "message {i}"),
                        Sent::Big(_) => unreachable!(),
                    }
                    continue;
                };
                // Every other large one: a typed receive cancelled as soon as it waits, then
                // finished by a receive of another kind.
                let got = match i % 8 {
                    0 => {
                        let typed = std::future::poll_fn(|cx| {
                            rx.poll_recv_typed(cx, decode_payload::<ByteBuf>)
                        });
                        received(typed).await.unwrap().into_vec()
                    }
                    _ => {
                        let mut typed = Box::pin(std::future::poll_fn(|cx| {
                            rx.poll_recv_typed(cx, decode_payload::<ByteBuf>)
                        }));
                        let early = futures::poll!(typed.as_mut());
                        drop(typed);
                        match early {
                            Poll::Ready(r) => r.unwrap().unwrap().unwrap().into_vec(),
                            Poll::Pending if i % 8 == 2 => {
                                let raw = std::future::poll_fn(|cx| {
                                    rx.poll_recv_with(cx, |bytes, _| bytes.to_vec())
                                });
                                let frame = received(raw).await;
                                message::decode::<ByteBuf>(&frame, Vec::new())
                                    .unwrap()
                                    .into_vec()
                            }
                            Poll::Pending => {
                                let bytes = std::future::poll_fn(|cx| {
                                    rx.poll_recv_bytes(cx, |p, fds| {
                                        message::decode_bytes(p, fds).unwrap()
                                    })
                                });
                                let frame = received(bytes).await;
                                message::decode::<ByteBuf>(&frame, Vec::new())
                                    .unwrap()
                                    .into_vec()
                            }
                        }
                    }
                };
                assert!(got == *big, "large message {i} differs");
            }
        });
        let tx = sending.join().unwrap();
        drop(tx);
        let end = rx.blocking_recv_typed(Some(Instant::now() + Duration::from_secs(10)), |_, _| ());
        assert!(matches!(end, Ok(TryRecv::Closed)), "{end:?}");
    }
}

/// A typed receive cancelled with half of a large byte string read keeps it in a buffer of its
/// own, without its length prefix; the next receive finishes it whatever its kind: typed (the
/// bytes become the value), raw (`poll_recv_with` sees the whole frame, prefix and all) or
/// bytes.
#[test]
fn a_cancelled_typed_receive_is_finished_by_any_receive() {
    use serde_bytes::ByteBuf;

    use crate::message::{self, decode_payload};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for finish in 0..3 {
            let (a, b) = socket_pair().unwrap();
            let mut writer = std::os::unix::net::UnixStream::from(a.try_clone_owned().unwrap());
            drop(a);
            let (_, mut rx) = split(b).unwrap();
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let (encoded, _) = message::encode(&ByteBuf::from(big.clone())).unwrap();
            let frame = valid_frame(&encoded);
            let (first, rest) = frame.split_at(HEADER_LEN + 50_000);
            writer.write_all(first).unwrap();

            // Reads what arrived, then waits for the rest, which does not come yet: cancel.
            let typed =
                std::future::poll_fn(|cx| rx.poll_recv_typed(cx, decode_payload::<ByteBuf>));
            let waited = tokio::time::timeout(Duration::from_millis(200), typed).await;
            assert!(waited.is_err(), "received a frame that was not all sent");
            let direct = rx.direct.as_ref().expect("read into a buffer of its own");
            assert_eq!((direct.prefix, direct.len), (3, big.len()));

            writer.write_all(rest).unwrap();
            let within = Duration::from_secs(10);
            let got = match finish {
                0 => {
                    let typed = std::future::poll_fn(|cx| {
                        rx.poll_recv_typed(cx, decode_payload::<ByteBuf>)
                    });
                    received(typed).await.unwrap().into_vec()
                }
                1 => {
                    let raw = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |b, _| b.to_vec()));
                    let whole = received(raw).await;
                    assert!(whole == encoded, "the raw frame is the whole encoding");
                    big.clone()
                }
                _ => {
                    let bytes = std::future::poll_fn(|cx| {
                        rx.poll_recv_bytes(cx, |p, fds| message::decode_bytes(p, fds).unwrap())
                    });
                    let whole = received(bytes).await;
                    assert!(whole == encoded, "the bytes are the whole encoding");
                    big.clone()
                }
            };
            assert!(got == big, "finished by receive kind {finish}: differs");
            drop(writer);
            let end = std::future::poll_fn(|cx| rx.poll_recv_typed(cx, |_, _| ()));
            assert!(matches!(
                tokio::time::timeout(within, end).await.unwrap(),
                Ok(None)
            ));
        }
    });
}

/// `push_message` puts the same bytes on the wire as `push` of the encoding, whether the value
/// is written from its own bytes (a large byte string with nothing buffered: part of it at
/// once, the rest with the flush) or encoded into the buffer; with a ring, records pushed
/// before it (not flushed, so not published yet) still come first.
#[test]
fn pushed_messages_are_their_encoding_on_the_wire_and_in_order() {
    use serde_bytes::ByteBuf;

    use crate::message;

    for with_ring in [false, true] {
        let (mut tx, mut rx) = one_way(with_ring);
        let big = |n: usize, seed: u8| -> ByteBuf {
            ByteBuf::from((0..n).map(|i| (i as u8) ^ seed).collect::<Vec<u8>>())
        };
        let expected: Vec<Vec<u8>> = vec![
            message::encode(&7u32).unwrap().0,
            message::encode(&big(3 << 20, 1)).unwrap().0,
            message::encode(&"x".repeat(100_000)).unwrap().0,
            message::encode(&big(sender::WRITE_THROUGH_MIN - 1, 2))
                .unwrap()
                .0,
            message::encode(&big(sender::WRITE_THROUGH_MIN, 3))
                .unwrap()
                .0,
            message::encode(&vec![5u8; 200_000]).unwrap().0,
        ];
        let receiving = std::thread::spawn(move || {
            let mut got = Vec::new();
            let deadline = Some(Instant::now() + Duration::from_secs(20));
            while let TryRecv::Frame(frame) = rx
                .blocking_recv_with(deadline, |bytes, _| bytes.to_vec())
                .unwrap()
            {
                got.push(frame);
            }
            got
        });
        // A small one first: into the ring (with one), unpublished until something goes out.
        tx.push_message(&7u32).unwrap();
        // 3 MiB: more than the socket holds, so part of it is left for the flush.
        tx.push_message(&big(3 << 20, 1)).unwrap();
        assert!(tx.buffered() > 0, "a 3 MiB frame went out whole");
        assert!(tx.blocking_flush(None).unwrap());
        tx.push_message("x".repeat(100_000).as_str()).unwrap();
        assert!(tx.blocking_flush(None).unwrap());
        tx.push_message(&big(sender::WRITE_THROUGH_MIN - 1, 2))
            .unwrap();
        tx.push_message(&big(sender::WRITE_THROUGH_MIN, 3)).unwrap();
        tx.push_message(&vec![5u8; 200_000]).unwrap();
        assert!(tx.blocking_flush(None).unwrap());
        drop(tx);
        let got = receiving.join().unwrap();
        assert_eq!(got.len(), expected.len(), "ring: {with_ring}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(g == e, "message {i} differs (ring: {with_ring})");
        }
    }
}

/// A large byte string over the limit is refused before anything is written; one pushed to a
/// closed peer fails, at the latest with the flush; one behind buffered frames is buffered.
#[test]
fn pushed_byte_strings_respect_the_limit_and_a_closed_peer() {
    use serde_bytes::ByteBuf;

    let (a, b) = socket_pair().unwrap();
    let (mut tx, _) = split(a).unwrap();
    let (_, rx) = split(b).unwrap();
    tx.set_max_message_size(100_000);
    let err = tx
        .push_message(&ByteBuf::from(vec![0u8; 100_000]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SendErrorKind::TooLarge {
                len: 100_003,
                limit: 100_000
            }
        ),
        "{err:?}"
    );
    assert_eq!(tx.buffered(), 0);
    tx.push_message(&1u8).unwrap();
    tx.push_message(&ByteBuf::from(vec![0u8; 70_000])).unwrap();
    assert_eq!(
        tx.buffered(),
        HEADER_LEN + 1 + HEADER_LEN + 3 + 70_000,
        "buffered behind"
    );
    assert!(tx.blocking_flush(None).unwrap(), "the socket holds both");
    // Now written through, into a socket whose peer is gone.
    drop(rx);
    let failed = tx
        .push_message(&ByteBuf::from(vec![0u8; 70_000]))
        .and_then(|()| tx.blocking_flush(None).map(|_| ()));
    assert!(matches!(failed, Err(SendErrorKind::Closed)), "{failed:?}");
}

/// Ring records and batched socket frames mixed at random keep the sender's order, while the
/// receiver looks at the ring's head only with nothing buffered or after a read: lone frames
/// go into the ring, batches through the socket (some of them large, some with descriptors).
/// Received one at a time, and in batches (`poll_recv_lent_many`, whose fast path takes runs
/// of buffered frames without looking at the ring per frame).
#[test]
fn ring_records_and_socket_batches_keep_one_order() {
    const COUNT: u32 = 20_000;
    for batches in [false, true] {
        let (a, b) = pair().unwrap();
        let (mut tx, _) = split_end(a).unwrap();
        let (_, mut rx) = split_end(b).unwrap();
        let sending = std::thread::spawn(move || {
            let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
            let mut next = 0u32;
            while next < COUNT {
                // A batch of 1 (alone: the ring) to 300 frames, flushed at its end.
                let most = if rng.below(3) == 0 { 1 } else { 300 };
                let batch = 1 + rng.below(most) as u32;
                for _ in 0..batch.min(COUNT - next) {
                    let large = rng.below(500) == 0;
                    let with_fd = rng.below(700) == 0;
                    tx.push(|buf| {
                        buf.extend_from_slice(&next.to_le_bytes());
                        buf.push(u8::from(with_fd));
                        if large {
                            buf.resize(buf.len() + 9000, 0xab);
                        }
                        Ok(if with_fd {
                            vec![std::fs::File::open("/dev/null").unwrap().into()]
                        } else {
                            Vec::new()
                        })
                    })
                    .unwrap();
                    next += 1;
                }
                assert!(tx.blocking_flush(None).unwrap());
                if rng.below(50) == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            tx
        });
        if batches {
            receive_in_order_in_batches(&mut rx, COUNT);
        } else {
            receive_in_order(&mut rx, COUNT);
        }
        drop(sending.join().unwrap());
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        assert!(matches!(
            rx.blocking_recv_with(deadline, |_, _| ()),
            Ok(TryRecv::Closed)
        ));
    }
}

/// Receives frames numbered `0..count` one at a time, checking their order.
fn receive_in_order(rx: &mut RawReceiver, count: u32) {
    let deadline = Some(Instant::now() + Duration::from_secs(60));
    for want in 0..count {
        if want % 97 == 0 {
            // Let batches pile up in the socket: one read then brings several, with ring
            // records due between them.
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = rx
            .blocking_recv_with(deadline, |bytes, _| {
                u32::from_le_bytes(bytes[..4].try_into().unwrap())
            })
            .unwrap();
        match got {
            TryRecv::Frame(n) => assert_eq!(n, want, "out of order"),
            other => panic!("message {want}: {other:?}"),
        }
    }
}

/// Receives frames numbered `0..count` in batches of up to 500, checking their order and
/// that each frame came with the descriptors it says it carries (its fifth byte).
fn receive_in_order_in_batches(rx: &mut RawReceiver, count: u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut want = 0u32;
        let mut calls = 0u32;
        while want < count {
            calls += 1;
            if calls.is_multiple_of(13) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let receiving = std::future::poll_fn(|cx| {
                rx.poll_recv_lent_many(cx, 500, |bytes, fds| {
                    let n = u32::from_le_bytes(bytes[..4].try_into().unwrap());
                    assert_eq!(n, want, "out of order");
                    assert_eq!(fds.len(), usize::from(bytes[4]), "descriptors of frame {n}");
                    want += 1;
                })
            });
            let got = tokio::time::timeout(Duration::from_secs(60), receiving)
                .await
                .expect("no frames within 60 s")
                .unwrap();
            assert!(got > 0, "end-of-stream after {want} frames");
        }
    });
}

/// A message published in the ring to a parked receiver is followed by a wake frame. If the
/// receiver takes the message and closes before that frame is written, the send still
/// succeeded; only a later send fails. A record the receiver did not take, or a buffered
/// frame with a payload behind the wake, is still reported lost.
#[test]
fn a_wake_up_nobody_needs_any_more_is_no_failure() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (payload_behind, taken) in [(false, true), (true, true), (false, false)] {
            let (mut tx, mut rx) = one_way(true);
            assert!(poll_once(&mut rx).is_pending(), "nothing sent yet: parks");
            tx.push(|buf| {
                buf.extend_from_slice(b"last words");
                Ok(Vec::new())
            })
            .unwrap();
            // What a flush does first: the lone frame into the ring, the wake-up queued.
            tx.prepare_write().unwrap();
            assert!(tx.wake_queued(), "the parked receiver is owed a wake-up");
            if payload_behind {
                tx.push(|buf| {
                    buf.extend_from_slice(b"never read");
                    Ok(Vec::new())
                })
                .unwrap();
            }
            // The receiver finds the record without the wake-up (or not), and closes.
            if taken {
                match poll_once(&mut rx) {
                    Poll::Ready(Ok(Some(bytes))) => assert_eq!(bytes, b"last words"),
                    other => panic!("the ring's record: {other:?}"),
                }
            }
            drop(rx);
            let flushed = tx.blocking_flush(None);
            if payload_behind || !taken {
                assert!(
                    matches!(flushed, Err(SendErrorKind::Closed)),
                    "a message was lost: {flushed:?}"
                );
            } else {
                assert!(matches!(flushed, Ok(true)), "{flushed:?}");
                assert!(!tx.wake_queued());
            }
            let later = tx.push(|buf| {
                buf.extend_from_slice(b"after");
                Ok(Vec::new())
            });
            assert!(matches!(later, Err(SendErrorKind::Closed)), "{later:?}");
        }
    });
}

/// Where a frame goes is decided when it is written: one frame flushed alone goes into the
/// shared ring, a batch flushed together goes through the socket, each of its frames counted as
/// the ring owner's (so a record after them waits for them); the receiver gets all of them in
/// the order they were pushed.
#[test]
fn a_lone_frame_takes_the_ring_and_a_batch_the_socket() {
    let (mut tx, mut rx) = one_way(true);
    let news = |rx: &RawReceiver| rx.ring.as_ref().expect("a ring pair").news();
    send_frame(&mut tx, b"alone");
    assert_eq!(news(&rx), (true, false), "one record, no socket frame");
    for part in [&b"batch 1"[..], b"batch 2", b"batch 3"] {
        tx.push(|buf| {
            buf.extend_from_slice(part);
            Ok(Vec::new())
        })
        .unwrap();
    }
    assert_eq!(news(&rx), (true, false), "nothing counted before the write");
    assert!(tx.blocking_flush(None).unwrap());
    assert_eq!(news(&rx), (true, true), "the batch went through the socket");
    send_frame(&mut tx, b"alone again");
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    for want in [
        &b"alone"[..],
        b"batch 1",
        b"batch 2",
        b"batch 3",
        b"alone again",
    ] {
        match rx.blocking_recv_with(deadline, |bytes, _| bytes.to_vec()) {
            Ok(TryRecv::Frame(got)) => assert_eq!(got, want),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(want)),
        }
    }
    assert_eq!(
        news(&rx),
        (false, false),
        "every record and frame delivered"
    );
}
