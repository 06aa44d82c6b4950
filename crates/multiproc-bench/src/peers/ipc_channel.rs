//! The `ipc-channel` peer: servo's `ipc-channel` 0.22 (Unix sockets, postcard, descriptors
//! through `SCM_RIGHTS`), its typed blocking API.
//!
//! Each child is this binary re-executed as `ipc-channel/<task>` with the name of an
//! `IpcOneShotServer` of the parent. It connects and sends the sender of a control channel;
//! the parent sends it its [`Job`] (with the channel ends it needs), the child answers
//! `Ready` and waits for `Go` before its measured part, as multiproc's children wait at a
//! barrier.
//!
//! - Queues (`queue_<P>p<C>c_64B`): one `ipc::channel::<ByteBuf>()`; every producer process
//!   holds a clone of the `IpcSender`, the one consumer process holds the `IpcReceiver`.
//!   The protocol, the message layout, the consumer's checks and the parent's verification are
//!   `queue_bench`'s. An `IpcReceiver` cannot be cloned or shared by several processes
//!   (ipc-channel has no multi-consumer receiver; `IpcReceiverSet` waits on several receivers
//!   in one process), so the rows with several consumers are not applicable.
//! - Pipes: `pipe_pingpong_64B` (a channel each way, the child sends each message back),
//!   `pipe_stream_64B` and `pipe_stream_1MiB` (`n` messages one way, one `send` each, as
//!   ipc-channel has no batching; the child counts them, checks their length and sends the
//!   count back). The message is the multiproc rows' [`Payload`]: one shared buffer sent as a
//!   byte string, received into a fresh `ByteBuf`.

use std::io;
use std::time::Instant;

use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{PeerChild, WARMUP_DIVISOR, with_patience};
use crate::Workload;
use crate::payload::Payload;
use crate::queue_bench::{self, Report, Tally};
use crate::sync_bench::PATIENCE;

/// The role prefix of this peer's children.
pub(crate) const PEER: &str = "ipc-channel";

/// Why the several-consumer queue rows have no ipc-channel figure.
pub(crate) const NO_MPMC: &str = "ipc-channel has no multi-consumer receiver: an IpcReceiver \
     cannot be cloned or shared by several processes";

/// What the parent asks of a child.
#[derive(Serialize, Deserialize)]
enum Job {
    QueueProducer {
        queue: IpcSender<ByteBuf>,
        reports: IpcSender<QueueReport>,
        id: u64,
        count: u64,
        markers: u64,
    },
    QueueConsumer {
        queue: IpcReceiver<ByteBuf>,
        reports: IpcSender<QueueReport>,
        producers: u64,
        per_producer: u64,
    },
    Pingpong {
        from_parent: IpcReceiver<Payload>,
        to_parent: IpcSender<Payload>,
    },
    Stream {
        from_parent: IpcReceiver<Payload>,
        to_parent: IpcSender<u64>,
        n: u64,
        size: u64,
    },
    /// Start the measured part.
    Go,
}

#[derive(Serialize, Deserialize)]
enum QueueReport {
    Ready,
    Done(Report),
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Starts a child as `ipc-channel/<task>` and returns it with the sender of its control
/// channel.
fn start_child(task: &str) -> io::Result<(PeerChild, IpcSender<Job>)> {
    let (server, name) = IpcOneShotServer::<IpcSender<Job>>::new()?;
    let child = PeerChild::spawn(&format!("{PEER}/{task}"), &name)?;
    let (_, control) =
        with_patience("ipc-channel accept", move || server.accept())?.map_err(other)?;
    Ok((child, control))
}

/// A peer child: connect to the parent's one-shot server and do the job it sends.
pub(crate) fn child(_task: &str, server: &str) -> io::Result<()> {
    let (control, jobs) = ipc::channel::<Job>()?;
    IpcSender::<IpcSender<Job>>::connect(server.to_string())?
        .send(control)
        .map_err(other)?;
    let job = jobs.recv().map_err(other)?;
    match job {
        Job::QueueProducer {
            queue,
            reports,
            id,
            count,
            markers,
        } => {
            reports.send(QueueReport::Ready).map_err(other)?;
            wait_go(&jobs)?;
            let r = produce(&queue, id, count, markers);
            reports
                .send(QueueReport::Done(Report::Producer(r)))
                .map_err(other)
        }
        Job::QueueConsumer {
            queue,
            reports,
            producers,
            per_producer,
        } => {
            let mut tally = Tally::new(producers, per_producer);
            reports.send(QueueReport::Ready).map_err(other)?;
            wait_go(&jobs)?;
            let r = consume(&queue, &mut tally).map(|()| tally.done());
            reports
                .send(QueueReport::Done(Report::Consumer(r)))
                .map_err(other)
        }
        Job::Pingpong {
            from_parent,
            to_parent,
        } => {
            // Until the parent drops its sender.
            while let Ok(msg) = from_parent.recv() {
                to_parent.send(msg).map_err(other)?;
            }
            Ok(())
        }
        Job::Stream {
            from_parent,
            to_parent,
            n,
            size,
        } => {
            to_parent.send(0).map_err(other)?;
            let mut count = 0;
            while count < n {
                let msg = from_parent.recv().map_err(other)?;
                if msg.as_slice().len() as u64 != size {
                    let len = msg.as_slice().len();
                    return Err(io::Error::other(format!("message of {len} bytes")));
                }
                count += 1;
            }
            to_parent.send(count).map_err(other)
        }
        Job::Go => Err(io::Error::other("go before a job")),
    }
}

fn wait_go(jobs: &IpcReceiver<Job>) -> io::Result<()> {
    match jobs.try_recv_timeout(PATIENCE).map_err(other)? {
        Job::Go => Ok(()),
        _ => Err(io::Error::other("expected go")),
    }
}

/// A producer: `count` messages, then `markers` end markers (`queue_bench`'s layout).
fn produce(queue: &IpcSender<ByteBuf>, id: u64, count: u64, markers: u64) -> Result<u64, String> {
    for seq in 0..count {
        // A fresh buffer per message, as the multiproc producers have.
        let m = ByteBuf::from(queue_bench::message(id, seq).to_vec());
        queue.send(m).map_err(|e| e.to_string())?;
    }
    for _ in 0..markers {
        let m = ByteBuf::from(queue_bench::marker(id).to_vec());
        queue.send(m).map_err(|e| e.to_string())?;
    }
    Ok(count)
}

/// The consumer: takes messages until every producer's end marker has come.
fn consume(queue: &IpcReceiver<ByteBuf>, tally: &mut Tally) -> Result<(), String> {
    loop {
        let m = queue.recv().map_err(|e| e.to_string())?;
        if !tally.take(&m)? {
            return Ok(());
        }
    }
}

/// One trial of a queue workload with `producers` producer processes and one consumer:
/// messages per second from `Go` to the last report.
pub(crate) fn queue(producers: u64, consumers: u64, n: u64) -> io::Result<f64> {
    if consumers != 1 {
        return Err(io::Error::other(NO_MPMC));
    }
    let per = n / producers;
    let (queue_tx, queue_rx) = ipc::channel::<ByteBuf>()?;
    let (reports_tx, reports) = ipc::channel::<QueueReport>()?;
    let mut children = Vec::new();
    for id in 0..producers {
        let (child, control) = start_child("queue")?;
        control
            .send(Job::QueueProducer {
                queue: queue_tx.clone(),
                reports: reports_tx.clone(),
                id,
                count: per,
                markers: 1,
            })
            .map_err(other)?;
        children.push((child, control));
    }
    drop(queue_tx);
    let (child, control) = start_child("queue")?;
    control
        .send(Job::QueueConsumer {
            queue: queue_rx,
            reports: reports_tx,
            producers,
            per_producer: per,
        })
        .map_err(other)?;
    children.push((child, control));
    let recv_report = || reports.try_recv_timeout(PATIENCE).map_err(other);
    for _ in 0..children.len() {
        if !matches!(recv_report()?, QueueReport::Ready) {
            return Err(io::Error::other("a queue child reported before go"));
        }
    }
    let t0 = Instant::now();
    for (_, control) in &children {
        control.send(Job::Go).map_err(other)?;
    }
    let mut consumed = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..children.len() {
        match recv_report()? {
            QueueReport::Done(Report::Producer(Ok(_))) => {}
            QueueReport::Done(Report::Consumer(Ok(c))) => consumed.push(c),
            QueueReport::Done(Report::Producer(Err(e)) | Report::Consumer(Err(e))) => {
                failures.push(e)
            }
            QueueReport::Ready => return Err(io::Error::other("a queue child was ready twice")),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for (child, _) in children {
        child.join()?;
    }
    if !failures.is_empty() {
        return Err(io::Error::other(format!(
            "queue children failed: {failures:?}"
        )));
    }
    queue_bench::verify(&consumed, producers, per)?;
    Ok((producers * per) as f64 / secs)
}

/// One trial of a pipe workload: `pipe_pingpong_64B` in microseconds per round trip, the
/// streams in messages or MiB per second.
pub(crate) fn pipe(w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::Pingpong64 => pingpong(n),
        Workload::Stream64 => stream(n, 64).map(|secs| n as f64 / secs),
        Workload::Stream1M => stream(n, 1 << 20).map(|secs| n as f64 / secs),
        _ => Err(io::Error::other("not a pipe workload")),
    }
}

fn pingpong(n: u64) -> io::Result<f64> {
    let (to_child, from_parent) = ipc::channel::<Payload>()?;
    let (to_parent, from_child) = ipc::channel::<Payload>()?;
    let (child, control) = start_child("pingpong")?;
    control
        .send(Job::Pingpong {
            from_parent,
            to_parent,
        })
        .map_err(other)?;
    let payload = Payload::zeros(64);
    let once = || -> io::Result<()> {
        to_child.send(payload.clone()).map_err(other)?;
        let back = from_child.try_recv_timeout(PATIENCE).map_err(other)?;
        if back.as_slice().len() == payload.as_slice().len() {
            Ok(())
        } else {
            Err(io::Error::other("echo child answered wrongly"))
        }
    };
    for _ in 0..n / WARMUP_DIVISOR + 1 {
        once()?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        once()?;
    }
    let elapsed = t0.elapsed();
    drop(to_child);
    child.join()?;
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}

/// `n` messages of `size` bytes one way; seconds from the first send to the child's count.
fn stream(n: u64, size: usize) -> io::Result<f64> {
    let (to_child, from_parent) = ipc::channel::<Payload>()?;
    let (to_parent, from_child) = ipc::channel::<u64>()?;
    let (child, control) = start_child("stream")?;
    control
        .send(Job::Stream {
            from_parent,
            to_parent,
            n,
            size: size as u64,
        })
        .map_err(other)?;
    if from_child.try_recv_timeout(PATIENCE).map_err(other)? != 0 {
        return Err(io::Error::other("stream child did not start"));
    }
    // One shared buffer sent `n` times (a reference-count increment per message), as the
    // multiproc rows send it.
    let payload = Payload::zeros(size);
    let t0 = Instant::now();
    for _ in 0..n {
        to_child.send(payload.clone()).map_err(other)?;
    }
    let counted = from_child.try_recv_timeout(PATIENCE).map_err(other)?;
    let secs = t0.elapsed().as_secs_f64();
    if counted != n {
        return Err(io::Error::other(format!(
            "stream child counted {counted} of {n}"
        )));
    }
    child.join()?;
    Ok(secs)
}
