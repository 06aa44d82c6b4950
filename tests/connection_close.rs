//! How a connection ends and how it waits, across real processes: a peer that drops or closes
//! its end is end-of-stream (`Ok(None)`) over TCP; Python's `poll(0)` in a loop sees a message
//! even on a current-thread runtime; a send cancelled half-way is finished by the next receive
//! instead of leaving both sides waiting, and by the end's drop when no receive comes.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use multiproc::connection::{Address, Auth, Connection, Listener, connect};
use multiproc::spawn;
use multiproc_suite::{TEST_LIMIT, within};

fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mp-close-{tag}-{}-{n}.sock", std::process::id()))
}

/// In a child: connects, sends one message, then either drops its end at once, or closes it
/// and stays alive until the listener drops its own end (so the end seen is the close's).
async fn send_then_end((address, explicit_close): (Address, bool)) {
    let mut end = connect::<u32, u32>(address, Auth::none()).await.unwrap();
    end.send(7).await.unwrap();
    if explicit_close {
        end.close().await.unwrap();
        assert_eq!(end.recv().await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_tcp_peer_that_drops_or_closes_its_end_is_end_of_stream() {
    for explicit_close in [false, true] {
        let mut listener = Listener::<u32, u32>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
            .await
            .unwrap();
        let address = listener.local_address().clone();
        let child = spawn((address, explicit_close), send_then_end);
        let (mut end, _) = within("accept", listener.accept()).await.unwrap();
        assert_eq!(within("message", end.recv()).await.unwrap(), Some(7));
        assert_eq!(within("end", end.recv()).await.unwrap(), None);
        drop(end);
        within("child", child).await.unwrap();
    }
}

/// In a child: connects, waits for the listener's go, sends one message, then waits for the
/// listener to hang up.
async fn send_one(address: Address) {
    let mut end = connect::<u32, u32>(address, Auth::none()).await.unwrap();
    assert_eq!(end.recv().await.unwrap(), Some(0));
    end.send(5).await.unwrap();
    let _ = end.recv().await;
}

/// Python's `while not conn.poll(0): ...` without any other await, on the current-thread
/// runtime `#[tokio::test]` gives: it must see the message the child sent. A loop that never
/// saw it would spin forever, so it gives up (and fails) after the test limit.
async fn poll_zero_sees(end: &mut Connection<u32, u32>) {
    let start = Instant::now();
    let mut polls = 0u64;
    while !end.ready_timeout(Duration::ZERO).await.unwrap() {
        polls += 1;
        assert!(
            start.elapsed() < TEST_LIMIT,
            "poll(0) never saw the message after {polls} polls"
        );
    }
    assert_eq!(
        end.try_recv().unwrap(),
        5,
        "the message poll(0) saw is there"
    );
}

#[tokio::test]
async fn a_poll_zero_loop_sees_a_message_on_a_current_thread_runtime() {
    let tcp = Address::tcp("127.0.0.1:0");
    let unix = Address::path(unique_path("poll0"));
    for address in [tcp, unix] {
        let mut listener = Listener::<u32, u32>::bind(address, Auth::none())
            .await
            .unwrap();
        let child = spawn(listener.local_address().clone(), send_one);
        let (mut end, _) = within("accept", listener.accept()).await.unwrap();
        // The message arrives only after the loop began: no earlier await saw it come.
        end.send(0).await.unwrap();
        poll_zero_sees(&mut end).await;
        drop(end);
        within("child", child).await.unwrap();
    }
}

/// In a child: answers each message with its length, until the end of stream.
async fn answer_lengths(address: Address) {
    let mut end = connect::<usize, Vec<u8>>(address, Auth::none())
        .await
        .unwrap();
    while let Some(msg) = end.recv().await.unwrap() {
        end.send(msg.len()).await.unwrap();
    }
}

/// Starts sending `BIG` bytes on `end` and gives up after the first poll, as a timeout branch
/// of `select!` would. The message is larger than what the kernel's socket buffers take at
/// once, so that poll accepts it, writes part of it, and waits.
fn give_up_on_a_big_send(end: &mut Connection<Vec<u8>, usize>) {
    let send = std::pin::pin!(end.send(vec![3u8; BIG]));
    let waker = std::task::Waker::noop();
    let _ = send.poll(&mut Context::from_waker(waker));
}

const BIG: usize = 32 << 20;

#[tokio::test]
async fn a_send_cancelled_half_way_is_finished_by_the_next_receive() {
    let mut listener = Listener::<Vec<u8>, usize>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
        .await
        .unwrap();
    let child = spawn(listener.local_address().clone(), answer_lengths);
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    give_up_on_a_big_send(&mut end);
    // Waiting for the answer must write the rest of the request first.
    assert_eq!(
        within("answer to the cancelled send", end.recv())
            .await
            .unwrap(),
        Some(BIG)
    );
    drop(end);
    within("child", child).await.unwrap();
}

/// In a child: receives one message and returns its length.
async fn receive_one(address: Address) -> usize {
    let mut end = connect::<usize, Vec<u8>>(address, Auth::none())
        .await
        .unwrap();
    end.recv().await.unwrap().map_or(0, |msg| msg.len())
}

#[tokio::test]
async fn a_connection_dropped_after_a_cancelled_send_still_delivers_it() {
    let mut listener = Listener::<Vec<u8>, usize>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
        .await
        .unwrap();
    let child = spawn(listener.local_address().clone(), receive_one);
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    give_up_on_a_big_send(&mut end);
    // Dropped with most of the message unwritten: the message still arrives whole.
    drop(end);
    assert_eq!(within("child", child).await.unwrap(), BIG);
}
