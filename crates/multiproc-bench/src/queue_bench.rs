//! The queue workloads (`queue_<P>p<C>c_64B`: `queue_1p1c_64B`, `queue_2p2c_64B`, and the
//! scaling rows with 2, 4, 8, 16 producers into one consumer and one producer into 2 or 4
//! consumers): producer and consumer processes around one queue, 64-byte messages, no loss and
//! no duplicate (checked). Every shape moves `n` messages in all (`n / P` per producer).
//!
//! Protocol, the same for every implementation: `P` producer and `C` consumer children and the
//! parent meet at a `Barrier` (the parent's clock starts). Producer `p` puts `n / P` messages of
//! 64 bytes (`p` and a sequence number in the first 16 bytes), then `C` end markers of 8 bytes.
//! A consumer stops after `P` end markers: as every producer's markers follow its messages in
//! the one FIFO, when all `P * C` markers are taken every message has been taken. Consumers keep
//! a bitmap of the sequence numbers seen per producer (a duplicate within a consumer, or a
//! message out of its producer's order, fails the trial) and put it on a report queue; the clock
//! stops at the last report, then the parent checks that the bitmaps are disjoint and complete.
//!
//! - `multiproc`: `Queue<ByteBuf>` (unbounded), `put().await` / `get().await`;
//! - `multiproc-sink`: producers `Queue::sink()` with `feed` and one final `flush`, consumers
//!   `Queue::stream()`;
//! - `multiproc-blocking`: `blocking_put` / `blocking_get`;
//! - `raw-os`: the system-call floor of a shared queue (and the transport `Queue` uses for large
//!   and descriptor-carrying messages; 64-byte messages go through its shared-memory ring, which
//!   needs no system call per message), a `SOCK_SEQPACKET` pair shared by every process
//!   (send buffer raised to 4 MiB like the queue's), driven with blocking `send(2)`/`recv(2)` of
//!   the bare 64 bytes: no encoding, no shared message count, no readiness polling.
//!
//! The `ipc-channel` peer (`peers::ipc_channel`) runs the same protocol with [`message`],
//! [`Tally`] and [`verify`] from here.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use multiproc::core::SharedFd;
use multiproc::{Barrier, JoinHandle, Queue};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::sync_bench::PATIENCE;
use crate::{Impl, Sample, Workload, other};

const MSG_LEN: usize = 64;
const MARKER_LEN: usize = 8;

/// Which API the children use.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Api {
    Await,
    SinkStream,
    Blocking,
    /// Blocking syscalls on the bare socket.
    Raw,
}

/// A producer's or consumer's end of the queue.
#[derive(Clone, Serialize, Deserialize)]
enum End {
    Mp(Queue<ByteBuf>),
    Raw(SharedFd),
}

#[derive(Serialize, Deserialize)]
struct ProducerArgs {
    end: End,
    api: Api,
    id: u64,
    count: u64,
    markers: u64,
    barrier: Barrier,
    reports: Queue<Report>,
}

#[derive(Serialize, Deserialize)]
struct ConsumerArgs {
    end: End,
    api: Api,
    producers: u64,
    per_producer: u64,
    barrier: Barrier,
    reports: Queue<Report>,
}

/// What a consumer took: per producer, a bitmap of sequence numbers.
#[derive(Serialize, Deserialize)]
pub(crate) struct Consumed {
    count: u64,
    seen: Vec<Vec<u64>>,
}

/// What a producer or consumer child reports when it is done.
#[derive(Serialize, Deserialize)]
pub(crate) enum Report {
    Producer(Result<u64, String>),
    Consumer(Result<Consumed, String>),
}

/// Runs one trial of a queue workload: messages per second.
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    imp: Impl,
    n: u64,
) -> io::Result<Sample> {
    let (producers, consumers) = w
        .queue_shape()
        .ok_or_else(|| io::Error::other("not a queue workload"))?;
    let api = match imp {
        Impl::Multiproc => Api::Await,
        Impl::MultiprocSink => Api::SinkStream,
        Impl::MultiprocBlocking => Api::Blocking,
        Impl::RawOs => Api::Raw,
        _ => return Err(io::Error::other(format!("no {} variant", imp.name()))),
    };
    rt.block_on(trial(api, producers, consumers, n))
        .map(Sample::from)
}

/// The message `seq` of producer `id`.
pub(crate) fn message(id: u64, seq: u64) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[..8].copy_from_slice(&id.to_le_bytes());
    m[8..16].copy_from_slice(&seq.to_le_bytes());
    m
}

/// The end marker of producer `id` (each producer puts one per consumer after its messages).
pub(crate) fn marker(id: u64) -> [u8; MARKER_LEN] {
    id.to_le_bytes()
}

/// A consumer's bookkeeping.
pub(crate) struct Tally {
    producers: u64,
    per_producer: u64,
    seen: Vec<Vec<u64>>,
    last: Vec<Option<u64>>,
    count: u64,
    ends: u64,
}

impl Tally {
    pub(crate) fn new(producers: u64, per_producer: u64) -> Self {
        let words = per_producer.div_ceil(64) as usize;
        Tally {
            producers,
            per_producer,
            seen: vec![vec![0; words]; producers as usize],
            last: vec![None; producers as usize],
            count: 0,
            ends: 0,
        }
    }

    /// Books one message; `Ok(false)` once this consumer has had all its end markers.
    pub(crate) fn take(&mut self, msg: &[u8]) -> Result<bool, String> {
        let word = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().expect("8 bytes"));
        match msg.len() {
            MARKER_LEN => {
                self.ends += 1;
                Ok(self.ends < self.producers)
            }
            MSG_LEN => {
                let (id, seq) = (word(0), word(8));
                if id >= self.producers || seq >= self.per_producer {
                    return Err(format!("corrupt message: producer {id}, seq {seq}"));
                }
                let (p, s) = (id as usize, seq as usize);
                if self.seen[p][s / 64] & (1 << (s % 64)) != 0 {
                    return Err(format!("duplicate: producer {id}, seq {seq}"));
                }
                self.seen[p][s / 64] |= 1 << (s % 64);
                if self.last[p].is_some_and(|l| l >= seq) {
                    return Err(format!(
                        "out of order: producer {id}, seq {seq} after {:?}",
                        self.last[p]
                    ));
                }
                self.last[p] = Some(seq);
                self.count += 1;
                Ok(true)
            }
            len => Err(format!("message of {len} bytes")),
        }
    }

    pub(crate) fn done(self) -> Consumed {
        Consumed {
            count: self.count,
            seen: self.seen,
        }
    }
}

fn raw_send(fd: &SharedFd, bytes: &[u8]) -> io::Result<()> {
    loop {
        match rustix::net::send(fd, bytes, SendFlags::empty()) {
            Ok(k) if k == bytes.len() => return Ok(()),
            Ok(k) => return Err(io::Error::other(format!("short packet send: {k} bytes"))),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn raw_recv(fd: &SharedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::empty()) {
            Ok((_, len)) if len > buf.len() => {
                return Err(io::Error::other(format!("packet of {len} bytes")));
            }
            Ok((k, _)) => return Ok(k),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

async fn producer(a: ProducerArgs) {
    let r = producer_body(&a).await;
    let _ = a.reports.put(Report::Producer(r)).await;
}

async fn producer_body(a: &ProducerArgs) -> Result<u64, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    a.barrier.wait_timeout(PATIENCE).await.map_err(|e| s(&e))?;
    // A fresh buffer per message, as a user putting owned messages would have.
    let msgs = (0..a.count).map(|seq| message(a.id, seq).to_vec());
    let all = msgs.chain((0..a.markers).map(|_| marker(a.id).to_vec()));
    match (&a.end, a.api) {
        (End::Mp(q), Api::Await) => {
            for m in all {
                q.put(ByteBuf::from(m)).await.map_err(|e| s(&e))?;
            }
        }
        (End::Mp(q), Api::SinkStream) => {
            let mut sink = q.sink();
            for m in all {
                sink.feed(ByteBuf::from(m)).await.map_err(|e| s(&e))?;
            }
            sink.flush().await.map_err(|e| s(&e))?;
        }
        (End::Mp(q), Api::Blocking) => {
            for m in all {
                q.blocking_put(ByteBuf::from(m)).map_err(|e| s(&e))?;
            }
        }
        (End::Raw(fd), Api::Raw) => {
            for seq in 0..a.count {
                raw_send(fd, &message(a.id, seq)).map_err(|e| s(&e))?;
            }
            for _ in 0..a.markers {
                raw_send(fd, &marker(a.id)).map_err(|e| s(&e))?;
            }
        }
        _ => return Err("queue end and API do not match".into()),
    }
    Ok(a.count)
}

async fn consumer(a: ConsumerArgs) {
    let r = consumer_body(&a).await;
    let _ = a.reports.put(Report::Consumer(r)).await;
}

async fn consumer_body(a: &ConsumerArgs) -> Result<Consumed, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut tally = Tally::new(a.producers, a.per_producer);
    a.barrier.wait_timeout(PATIENCE).await.map_err(|e| s(&e))?;
    match (&a.end, a.api) {
        (End::Mp(q), Api::Await) => while tally.take(&q.get().await.map_err(|e| s(&e))?)? {},
        (End::Mp(q), Api::SinkStream) => {
            let mut stream = q.stream();
            loop {
                match stream.next().await {
                    Some(m) => {
                        if !tally.take(&m.map_err(|e| s(&e))?)? {
                            break;
                        }
                    }
                    None => return Err("queue stream ended".into()),
                }
            }
        }
        (End::Mp(q), Api::Blocking) => while tally.take(&q.blocking_get().map_err(|e| s(&e))?)? {},
        (End::Raw(fd), Api::Raw) => {
            let mut buf = [0u8; 2 * MSG_LEN];
            loop {
                let k = raw_recv(fd, &mut buf).map_err(|e| s(&e))?;
                if k == 0 {
                    return Err("queue socket closed".into());
                }
                if !tally.take(&buf[..k])? {
                    break;
                }
            }
        }
        _ => return Err("queue end and API do not match".into()),
    }
    Ok(tally.done())
}

/// A blocking `SOCK_SEQPACKET` pair `(send end, receive end)`, send buffer raised like the
/// queue's.
fn raw_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (tx, rx) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&tx, 4 << 20);
    Ok((tx, rx))
}

async fn trial(api: Api, producers: u64, consumers: u64, n: u64) -> io::Result<f64> {
    let per = n / producers;
    let barrier = Barrier::new((producers + consumers + 1) as usize).map_err(other)?;
    let reports: Queue<Report> = Queue::new()?;
    let (tx, rx) = if api == Api::Raw {
        let (tx, rx) = raw_pair()?;
        (End::Raw(SharedFd::new(tx)), End::Raw(SharedFd::new(rx)))
    } else {
        let q: Queue<ByteBuf> = Queue::new()?;
        (End::Mp(q.clone()), End::Mp(q))
    };
    let mut children: Vec<JoinHandle<()>> = Vec::new();
    for id in 0..producers {
        let args = ProducerArgs {
            end: tx.clone(),
            api,
            id,
            count: per,
            markers: consumers,
            barrier: barrier.clone(),
            reports: reports.clone(),
        };
        children.push(multiproc::spawn(args, producer));
    }
    for _ in 0..consumers {
        let args = ConsumerArgs {
            end: rx.clone(),
            api,
            producers,
            per_producer: per,
            barrier: barrier.clone(),
            reports: reports.clone(),
        };
        children.push(multiproc::spawn(args, consumer));
    }
    drop((tx, rx));

    barrier.wait_timeout(PATIENCE).await.map_err(other)?;
    let t0 = Instant::now();
    let mut consumed = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..producers + consumers {
        match reports.get_timeout(PATIENCE).await.map_err(other)? {
            Report::Producer(Ok(_)) => {}
            Report::Consumer(Ok(c)) => consumed.push(c),
            Report::Producer(Err(e)) | Report::Consumer(Err(e)) => failures.push(e),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for child in children {
        child.await.map_err(other)?;
    }
    if !failures.is_empty() {
        return Err(io::Error::other(format!(
            "queue children failed: {failures:?}"
        )));
    }
    verify(&consumed, producers, per)?;
    Ok((producers * per) as f64 / secs)
}

/// Every message of every producer taken exactly once, across consumers.
pub(crate) fn verify(consumed: &[Consumed], producers: u64, per: u64) -> io::Result<()> {
    let total: u64 = consumed.iter().map(|c| c.count).sum();
    if total != producers * per {
        return Err(io::Error::other(format!(
            "consumers took {total} messages, expected {}",
            producers * per
        )));
    }
    for p in 0..producers as usize {
        let mut all = vec![0u64; per.div_ceil(64) as usize];
        for c in consumed {
            for (a, b) in all.iter_mut().zip(&c.seen[p]) {
                if *a & *b != 0 {
                    return Err(io::Error::other(format!(
                        "producer {p}: a message was taken by two consumers"
                    )));
                }
                *a |= *b;
            }
        }
        let got: u64 = all.iter().map(|w| u64::from(w.count_ones())).sum();
        if got != per {
            return Err(io::Error::other(format!(
                "producer {p}: {got} of {per} messages arrived"
            )));
        }
    }
    Ok(())
}
