//! The `multiproc` side of the named-endpoint workloads (issue 13): a listener in this process,
//! a client in a child, keyed authentication (the Python default with an `authkey`).
//!
//! - `conn_roundtrip_*`: the child connects once and echoes; this process times `n` round
//!   trips of a 64-byte message (typed `Payload`, as the pipe ping-pong).
//! - `conn_accept_*`: the child connects `n` times in a row (connect, handshake, wait for one
//!   message, close) and times it; this process accepts and answers each.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use multiproc::connection::{Address, Auth, Connection, Listener, connect};

use crate::Workload;
use crate::payload::Payload;

const KEY: &[u8] = b"bench key";

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A fresh address of the workload's transport.
fn address(w: Workload) -> Address {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    match w {
        Workload::ConnRoundtripTcp | Workload::ConnAcceptTcp => Address::tcp("127.0.0.1:0"),
        _ => Address::path(std::env::temp_dir().join(format!(
            "mp-bench-conn-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))),
    }
}

/// Runs one trial; the value in `w.unit()`.
pub(crate) fn run(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp => rt.block_on(roundtrip(w, n)),
        Workload::ConnAcceptUnix | Workload::ConnAcceptTcp => rt.block_on(accept(w, n)),
        _ => Err(io::Error::other("not a connection workload")),
    }
}

/// Child of the round trips: connects and echoes until end-of-stream.
async fn echo_client(address: Address) -> u64 {
    let mut end = connect::<Payload, Payload>(address, Auth::key(KEY))
        .await
        .expect("connect");
    let mut echoed = 0;
    while let Ok(Some(msg)) = end.recv().await {
        if end.send(msg).await.is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

async fn round_trip(end: &mut Connection<Payload, Payload>, payload: &Payload) -> io::Result<()> {
    end.send(payload.clone()).await.map_err(other)?;
    match end.recv().await.map_err(other)? {
        Some(back) if back.as_slice().len() == payload.as_slice().len() => Ok(()),
        _ => Err(io::Error::other(
            "echo client answered wrongly or went away",
        )),
    }
}

/// Round trips per second over one connection.
async fn roundtrip(w: Workload, n: u64) -> io::Result<f64> {
    let mut listener = Listener::<Payload, Payload>::bind(address(w), Auth::key(KEY))
        .await
        .map_err(other)?;
    let child = multiproc::spawn(listener.local_address().clone(), echo_client);
    let (mut end, _) = listener.accept().await.map_err(other)?;
    let payload = Payload::zeros(64);
    for _ in 0..n / 10 + 1 {
        round_trip(&mut end, &payload).await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        round_trip(&mut end, &payload).await?;
    }
    let elapsed = t0.elapsed();
    drop(end);
    child.await.map_err(other)?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Child of the accept workload: `n` connections one after another; seconds taken.
async fn connect_many((address, n): (Address, u64)) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        let mut end = connect::<u8, u8>(address.clone(), Auth::key(KEY))
            .await
            .expect("connect");
        assert_eq!(end.recv().await.expect("reply"), Some(1));
    }
    t0.elapsed().as_secs_f64()
}

/// Connections accepted per second, as the connecting child timed them.
async fn accept(w: Workload, n: u64) -> io::Result<f64> {
    let mut listener = Listener::<u8, u8>::bind(address(w), Auth::key(KEY))
        .await
        .map_err(other)?;
    let child = multiproc::spawn((listener.local_address().clone(), n), connect_many);
    for _ in 0..n {
        let (mut end, _) = listener.accept().await.map_err(other)?;
        end.send(1).await.map_err(other)?;
    }
    let secs = child.await.map_err(other)?;
    Ok(n as f64 / secs)
}
