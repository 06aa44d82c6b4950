//! The TCP end's spin before it parks, across real processes: round trips of every size come
//! back whole whether the answer is caught by the spin or wakes a parked receive, a late
//! answer (long after the spin gave up) still arrives, a peer that closes while an answer is
//! due is end-of-stream, and a receiver waiting on a silent peer burns no core.

use std::time::Duration;

use multiproc::connection::{Address, Auth, Listener, connect};
use multiproc::spawn;
use multiproc_suite::within;
use serde::{Deserialize, Serialize};

const KEY: &[u8] = b"spin test key";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Ask {
    /// Send these bytes straight back.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Send them back after this many milliseconds.
    Late(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Close the connection without answering.
    Close,
}

/// In a child: answers every question over TCP until told to close.
async fn answerer(address: Address) -> u64 {
    let mut end = connect::<Vec<u8>, Ask>(address, Auth::key(KEY))
        .await
        .expect("connect");
    let mut answered = 0;
    while let Ok(Some(ask)) = end.recv().await {
        let bytes = match ask {
            Ask::Echo(bytes) => bytes,
            Ask::Late(millis, bytes) => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                bytes
            }
            Ask::Close => break,
        };
        end.send(bytes).await.expect("answer");
        answered += 1;
    }
    answered
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed) as u8).collect()
}

#[tokio::test]
async fn tcp_round_trips_come_back_whole_caught_or_parked() {
    let mut listener = Listener::<Ask, Vec<u8>>::bind(Address::tcp("127.0.0.1:0"), Auth::key(KEY))
        .await
        .unwrap();
    let child = spawn(listener.local_address().clone(), answerer);
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    let mut asked = 0u64;
    // Small answers (caught by the spin when the machine is quiet) and large ones (that arrive
    // in pieces while the receive spins or parks).
    for i in 0..1_000usize {
        let len = match i % 100 {
            99 => 100_000,
            n if n % 10 == 9 => 70_000,
            n => n * 7,
        };
        let bytes = pattern(len, i);
        end.send(Ask::Echo(bytes.clone())).await.unwrap();
        assert_eq!(within("echo", end.recv()).await.unwrap(), Some(bytes));
        asked += 1;
    }
    // Answers long after any spin gave up: the parked receive wakes for them.
    for i in 0..3 {
        let bytes = pattern(64, i);
        end.send(Ask::Late(150, bytes.clone())).await.unwrap();
        assert_eq!(
            within("late answer", end.recv()).await.unwrap(),
            Some(bytes)
        );
        asked += 1;
    }
    // The peer closes while an answer is due: end of stream, not a hang or an error.
    end.send(Ask::Close).await.unwrap();
    assert_eq!(within("end of stream", end.recv()).await.unwrap(), None);
    assert_eq!(within("child", child).await.unwrap(), asked);
}

/// CPU time this process has used, from `/proc/self/stat` (user + system, in clock ticks).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// In a child: asks over TCP, waits for answers that never come (three waits of 500 ms), and
/// returns the CPU ticks it used meanwhile.
async fn wait_on_silence(address: Address) -> u64 {
    let mut end = connect::<Ask, Vec<u8>>(address, Auth::key(KEY))
        .await
        .expect("connect");
    let before = cpu_ticks();
    for i in 0..3 {
        end.send(Ask::Echo(pattern(64, i))).await.expect("ask");
        assert!(end.recv_timeout(Duration::from_millis(500)).await.is_err());
    }
    cpu_ticks() - before
}

#[tokio::test]
async fn a_receiver_waiting_on_a_silent_peer_burns_no_core() {
    let mut listener = Listener::<Vec<u8>, Ask>::bind(Address::tcp("127.0.0.1:0"), Auth::key(KEY))
        .await
        .unwrap();
    let child = spawn(listener.local_address().clone(), wait_on_silence);
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    for _ in 0..3 {
        assert!(within("question", end.recv()).await.unwrap().is_some());
    }
    let ticks = within("child", child).await.unwrap();
    // 1.5 s of waiting: a receiver that kept spinning would use about as much CPU. Clock ticks
    // are 10 ms (USER_HZ 100); allow a third of the wait for a loaded machine's bookkeeping.
    assert!(ticks < 50, "{ticks} ticks of CPU while waiting 1.5 s");
}
