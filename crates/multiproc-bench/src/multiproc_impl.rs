//! The `multiproc` (async, current-thread runtimes on both sides) and `multiproc-blocking`
//! implementations of the workloads.

use std::io;
use std::time::Instant;

use futures::SinkExt;
use multiproc::pipe::{self, Duplex};
use multiproc::shm::SharedBytes;

use crate::Workload;
use crate::payload::Payload;

/// Round trips run before the clock starts, per `n` timed ones.
const WARMUP_DIVISOR: u64 = 10;

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs one trial of `w` with `n` operations; `blocking` selects the blocking API (only the
/// ping-pong has a blocking variant).
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    n: u64,
    blocking: bool,
) -> io::Result<f64> {
    match (w, blocking) {
        (Workload::Pingpong64, false) => rt.block_on(pingpong(n)),
        (Workload::Pingpong64, true) => pingpong_blocking(rt, n),
        (Workload::Stream64, _) => rt.block_on(stream(n, 64, true, Receive::Owned)),
        (Workload::Stream1M, _) => rt.block_on(stream(n, 1 << 20, false, Receive::Owned)),
        (Workload::SpawnJoin, _) => rt.block_on(spawn_join(n)),
        // The lock, event and queue workloads live in `sync_bench` and `queue_bench`.
        _ => Err(io::Error::other("not a pipe or spawn workload")),
    }
}

/// Child of the ping-pong: sends every message straight back until end-of-stream.
async fn echo(mut end: Duplex<Payload, Payload>) -> u64 {
    let mut echoed = 0;
    while let Ok(Some(msg)) = end.recv().await {
        if end.send(msg).await.is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

/// One ping-pong round trip on the async API.
async fn round_trip(here: &mut Duplex<Payload, Payload>, payload: &Payload) -> io::Result<()> {
    here.send(payload.clone()).await.map_err(other)?;
    match here.recv().await.map_err(other)? {
        Some(back) if back.as_slice().len() == payload.as_slice().len() => Ok(()),
        _ => Err(io::Error::other("echo child answered wrongly or went away")),
    }
}

/// `pipe_pingpong_64B`: microseconds per round trip, both sides on the async API.
async fn pingpong(n: u64) -> io::Result<f64> {
    let (mut here, there) = pipe::duplex::<Payload, Payload>()?;
    let child = multiproc::spawn(there, echo);
    let payload = Payload::zeros(64);
    for _ in 0..n / WARMUP_DIVISOR + 1 {
        round_trip(&mut here, &payload).await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        round_trip(&mut here, &payload).await?;
    }
    let elapsed = t0.elapsed();
    drop(here);
    child.await.map_err(other)?;
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}

/// Child of the blocking ping-pong: the same echo with `blocking_recv` / `blocking_send`.
fn echo_blocking(mut end: Duplex<Payload, Payload>) -> u64 {
    let mut echoed = 0;
    while let Ok(Some(msg)) = end.blocking_recv() {
        if end.blocking_send(msg).is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

/// One ping-pong round trip on the blocking API.
fn round_trip_blocking(here: &mut Duplex<Payload, Payload>, payload: &Payload) -> io::Result<()> {
    here.blocking_send(payload.clone()).map_err(other)?;
    match here.blocking_recv().map_err(other)? {
        Some(back) if back.as_slice().len() == payload.as_slice().len() => Ok(()),
        _ => Err(io::Error::other("echo child answered wrongly or went away")),
    }
}

/// `pipe_pingpong_64B` with the blocking twins on both sides (no reactor involved).
fn pingpong_blocking(rt: &tokio::runtime::Runtime, n: u64) -> io::Result<f64> {
    let (mut here, there) = pipe::duplex::<Payload, Payload>()?;
    let child = {
        let _runtime = rt.enter();
        multiproc::spawn(there, echo_blocking)
    };
    let payload = Payload::zeros(64);
    for _ in 0..n / WARMUP_DIVISOR + 1 {
        round_trip_blocking(&mut here, &payload)?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        round_trip_blocking(&mut here, &payload)?;
    }
    let elapsed = t0.elapsed();
    drop(here);
    rt.block_on(child).map_err(other)?;
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}

/// Child of the streams: says it is ready, receives `n` messages, answers with the count.
async fn sink((mut end, n): (Duplex<u64, Payload>, u64)) -> u64 {
    if end.send(0).await.is_err() {
        return 0;
    }
    let mut count = 0u64;
    let mut bytes = 0u64;
    while count < n {
        match end.recv().await {
            Ok(Some(msg)) => {
                count += 1;
                bytes += msg.as_slice().len() as u64;
            }
            _ => break,
        }
    }
    let _ = end.send(count).await;
    bytes
}

/// How the child of a stream receives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// `recv` of owned messages.
    Owned,
    /// `recv_borrowed` as `&[u8]`, one message per call.
    Borrowed,
    /// `recv_many_borrowed`: every message that has arrived, per call.
    Many,
}

/// `pipe_stream_*`: `n` messages of `size` bytes one way, timed from the first send until the
/// child's count is back. Messages per second for 64 B (batched with `feed` + one `flush`), MiB
/// per second for 1 MiB (one `send` each, as a user would).
///
/// `receive` picks the child ([`Receive`]). With a borrowing one (`multiproc-borrowed`,
/// `multiproc-batch`), as a user who cares about copies writes it, the sender feeds its one
/// value by reference (`feed_ref` / `send_ref`), and the child decodes each message as a
/// `&[u8]` borrowed from its receive buffer ([`sink_borrowed`], [`sink_many`]).
async fn stream(n: u64, size: usize, batched: bool, receive: Receive) -> io::Result<f64> {
    let (mut here, there) = pipe::duplex::<Payload, u64>()?;
    let child = match receive {
        Receive::Owned => multiproc::spawn((there, n), sink),
        Receive::Borrowed => multiproc::spawn((there, n, size as u64), sink_borrowed),
        Receive::Many => multiproc::spawn((there, n, size as u64), sink_many),
    };
    let borrowed = receive != Receive::Owned;
    if here.recv().await.map_err(other)? != Some(0) {
        return Err(io::Error::other("stream child did not start"));
    }
    let payload = Payload::zeros(size);
    let t0 = Instant::now();
    for _ in 0..n {
        match (batched, borrowed) {
            (true, false) => here.feed(payload.clone()).await.map_err(other)?,
            (true, true) => here.feed_ref(&payload).await.map_err(other)?,
            (false, false) => here.send(payload.clone()).await.map_err(other)?,
            (false, true) => here.send_ref(&payload).await.map_err(other)?,
        }
    }
    if batched {
        SinkExt::flush(&mut here).await.map_err(other)?;
    }
    let counted = here.recv().await.map_err(other)?;
    let elapsed = t0.elapsed().as_secs_f64();
    if counted != Some(n) {
        return Err(io::Error::other(format!(
            "stream child counted {counted:?} of {n}"
        )));
    }
    drop(here);
    child.await.map_err(other)?;
    Ok(if batched {
        n as f64 / elapsed
    } else {
        (n as f64 * size as f64 / (1 << 20) as f64) / elapsed
    })
}

/// Runs one trial of a stream with sends by reference and borrowed receives
/// (`multiproc-borrowed`).
pub(crate) fn run_borrowed(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::Stream64 => rt.block_on(stream(n, 64, true, Receive::Borrowed)),
        Workload::Stream1M => rt.block_on(stream(n, 1 << 20, false, Receive::Borrowed)),
        _ => Err(io::Error::other(
            "multiproc-borrowed only runs the pipe streams",
        )),
    }
}

/// Child of the borrowed streams: says it is ready, receives `n` messages borrowed from the
/// receive buffer, checks each one's length (as the floor does), answers with the count.
async fn sink_borrowed((mut end, n, size): (Duplex<u64, Payload>, u64, u64)) -> u64 {
    if end.send(0).await.is_err() {
        return 0;
    }
    let mut count = 0u64;
    while count < n {
        match end.recv_borrowed::<&[u8]>().await {
            Ok(Some(bytes)) if bytes.len() as u64 == size => count += 1,
            _ => break,
        }
    }
    let _ = end.send(count).await;
    count
}

/// Messages a batch receive of the stream takes at most per call.
const MANY: usize = 1024;

/// Runs one trial of the 64 B stream with sends by reference and batch receives
/// (`multiproc-batch`): the child drains what has arrived with `recv_many_borrowed`.
pub(crate) fn run_many(rt: &tokio::runtime::Runtime, n: u64) -> io::Result<f64> {
    rt.block_on(stream(n, 64, true, Receive::Many))
}

/// Child of the batch-received stream: says it is ready, takes messages `MANY` at a time,
/// decoding each as a `&[u8]` and checking its length, answers with the count.
async fn sink_many((mut end, n, size): (Duplex<u64, Payload>, u64, u64)) -> u64 {
    if end.send(0).await.is_err() {
        return 0;
    }
    let (mut count, mut wrong) = (0u64, 0u64);
    while count < n {
        let got = end
            .recv_many_borrowed(MANY, |msg| match msg.decode::<&[u8]>() {
                Ok(bytes) if bytes.len() as u64 == size => count += 1,
                _ => wrong += 1,
            })
            .await;
        if !matches!(got, Ok(1..)) || wrong > 0 {
            break;
        }
    }
    let _ = end.send(count).await;
    count
}

/// Runs one trial of `w` with the untyped bytes API (`multiproc-bytes`; the 1 MiB stream only).
pub(crate) fn run_bytes(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::Stream1M => rt.block_on(stream_bytes(n, 1 << 20)),
        _ => Err(io::Error::other(
            "multiproc-bytes only runs pipe_stream_1MiB",
        )),
    }
}

/// Child of the bytes stream: says it is ready, receives `n` messages with `recv_bytes`,
/// answers with the count.
async fn sink_bytes((mut end, n): (Duplex<u64, Payload>, u64)) -> u64 {
    if end.send(0).await.is_err() {
        return 0;
    }
    let mut count = 0u64;
    let mut bytes = 0u64;
    while count < n {
        match end.recv_bytes().await {
            Ok(Some(msg)) => {
                count += 1;
                bytes += msg.len() as u64;
            }
            _ => break,
        }
    }
    let _ = end.send(count).await;
    bytes
}

/// `pipe_stream_1MiB` with `send_bytes` of one reused buffer and `recv_bytes` into a fresh
/// `Vec` per message, the same protocol and clock as [`stream`]; MiB per second.
async fn stream_bytes(n: u64, size: usize) -> io::Result<f64> {
    let (mut here, there) = pipe::duplex::<Payload, u64>()?;
    let child = multiproc::spawn((there, n), sink_bytes);
    if here.recv().await.map_err(other)? != Some(0) {
        return Err(io::Error::other("stream child did not start"));
    }
    let payload = vec![0u8; size];
    let t0 = Instant::now();
    for _ in 0..n {
        here.send_bytes(&payload).await.map_err(other)?;
    }
    let counted = here.recv().await.map_err(other)?;
    let elapsed = t0.elapsed().as_secs_f64();
    if counted != Some(n) {
        return Err(io::Error::other(format!(
            "stream child counted {counted:?} of {n}"
        )));
    }
    drop(here);
    child.await.map_err(other)?;
    Ok((n as f64 * size as f64 / (1 << 20) as f64) / elapsed)
}

/// Runs one trial of `w` with `SharedBytes` messages (`multiproc-shm`, or with `fresh`
/// `multiproc-shm-fresh`; the 1 MiB stream only).
pub(crate) fn run_shm(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    n: u64,
    fresh: bool,
) -> io::Result<f64> {
    match w {
        Workload::Stream1M => rt.block_on(stream_shm(n, 1 << 20, fresh)),
        _ => Err(io::Error::other("multiproc-shm only runs pipe_stream_1MiB")),
    }
}

/// Child of the shared-memory stream: says it is ready, receives `n` `SharedBytes`, reads one
/// byte of every page (so every page is really mapped), answers with the count.
async fn sink_shm((mut end, n): (Duplex<u64, SharedBytes>, u64)) -> u64 {
    if end.send(0).await.is_err() {
        return 0;
    }
    let mut count = 0u64;
    let mut sum = 0u64;
    while count < n {
        match end.recv().await {
            Ok(Some(msg)) => {
                count += 1;
                sum += msg.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>();
            }
            _ => break,
        }
    }
    let _ = end.send(count).await;
    sum
}

/// `pipe_stream_1MiB` with `SharedBytes` handed over as descriptors, the same protocol and
/// clock as [`stream`]; MiB per second. The sender makes one `SharedBytes` and sends clones of
/// it (as the typed row sends clones of one buffer), or with `fresh` copies the payload into a
/// new one per message (`SharedBytes::copy_from_slice`).
async fn stream_shm(n: u64, size: usize, fresh: bool) -> io::Result<f64> {
    let (mut here, there) = pipe::duplex::<SharedBytes, u64>()?;
    let child = multiproc::spawn((there, n), sink_shm);
    if here.recv().await.map_err(other)? != Some(0) {
        return Err(io::Error::other("stream child did not start"));
    }
    let payload = vec![1u8; size];
    let t0 = Instant::now();
    let once = SharedBytes::copy_from_slice(&payload)?;
    for _ in 0..n {
        let msg = if fresh {
            SharedBytes::copy_from_slice(&payload)?
        } else {
            once.clone()
        };
        here.send(msg).await.map_err(other)?;
    }
    let counted = here.recv().await.map_err(other)?;
    let elapsed = t0.elapsed().as_secs_f64();
    if counted != Some(n) {
        return Err(io::Error::other(format!(
            "stream child counted {counted:?} of {n}"
        )));
    }
    drop(here);
    let pages = child.await.map_err(other)?;
    if pages != n * size.div_ceil(4096) as u64 {
        return Err(io::Error::other("shared bytes arrived damaged"));
    }
    Ok((n as f64 * size as f64 / (1 << 20) as f64) / elapsed)
}

/// The trivial child of `spawn_join`.
fn noop(_: ()) {}

/// `spawn_join`: milliseconds per sequential spawn + join of a trivial child.
async fn spawn_join(n: u64) -> io::Result<f64> {
    for _ in 0..2 {
        multiproc::spawn((), noop).await.map_err(other)?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        multiproc::spawn((), noop).await.map_err(other)?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / n as f64)
}
