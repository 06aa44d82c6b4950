//! Instructions per message of each side of the 64-byte stream, for callgrind (the bench
//! itself cannot run under valgrind, which lacks `pidfd_open`).
//!
//! One process, one thread: each round feeds a batch of 64-byte messages and flushes, then
//! receives the batch, with one of four codes:
//! - `owned`: `multiproc`'s row (`feed` of a clone of one shared buffer; `recv` of an owned
//!   byte string, checked by length);
//! - `borrowed`: `multiproc-borrowed` (`feed_ref` of one value; `recv_borrowed` as `&[u8]`);
//! - `many`: `multiproc-batch` (`feed_ref` of one value; `recv_many_borrowed` decoding `&[u8]`);
//! - `floor`: `tokio-floor` (4-byte length and bytes into a 64 KiB `BufWriter`; `read_exact`
//!   into one reused buffer, over a `UnixStream` pair).
//!
//! Each side runs its batch through `side`, an `#[inline(never)]` function generic over the
//! batch, so its inclusive cost per instance divided by the number of
//! messages is that side's instructions per message:
//!
//! ```sh
//! cargo build --release -p multiproc-bench --example stream_ir
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     target/release/examples/stream_ir borrowed 200
//! callgrind_annotate --inclusive=yes cg.out | grep stream_ir
//! ```
//!
//! The cross-process costs (waking, spinning, cache lines moving between CPUs) are not here:
//! this counts the code each message runs through.
#![forbid(unsafe_code)]

use std::io;
use std::sync::Arc;

use futures::SinkExt;
use multiproc::pipe::{Duplex, Receiver, Sender};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Messages per round: about 77 KB of frames, which a socket holds whole.
const BATCH: usize = 1000;
const SIZE: usize = 64;

/// The bench's payload: one shared buffer cloned per message, received as a `ByteBuf`.
#[derive(Clone)]
enum Payload {
    Shared(Arc<[u8]>),
    Received(ByteBuf),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Shared(b) => b.len(),
            Payload::Received(b) => b.len(),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Payload::Shared(b) => serializer.serialize_bytes(b),
            Payload::Received(b) => serializer.serialize_bytes(b),
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ByteBuf::deserialize(deserializer).map(Payload::Received)
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

async fn owned_send(tx: &mut Sender<Payload>, payload: &Payload) -> io::Result<()> {
    for _ in 0..BATCH {
        tx.feed(payload.clone()).await.map_err(other)?;
    }
    SinkExt::flush(tx).await.map_err(other)
}

async fn owned_recv(rx: &mut Receiver<Payload>) -> io::Result<()> {
    for _ in 0..BATCH {
        match rx.recv().await.map_err(other)? {
            Some(msg) if msg.len() == SIZE => {}
            _ => return Err(io::Error::other("wrong message")),
        }
    }
    Ok(())
}

async fn borrowed_send(tx: &mut Sender<Payload>, payload: &Payload) -> io::Result<()> {
    for _ in 0..BATCH {
        tx.feed_ref(payload).await.map_err(other)?;
    }
    tx.flush().await.map_err(other)
}

async fn borrowed_recv(rx: &mut Receiver<Payload>) -> io::Result<()> {
    for _ in 0..BATCH {
        match rx.recv_borrowed::<&[u8]>().await.map_err(other)? {
            Some(bytes) if bytes.len() == SIZE => {}
            _ => return Err(io::Error::other("wrong message")),
        }
    }
    Ok(())
}

async fn many_recv(rx: &mut Receiver<Payload>) -> io::Result<()> {
    let (mut count, mut wrong) = (0, 0);
    while count < BATCH {
        let got = rx
            .recv_many_borrowed(BATCH, |msg| match msg.decode::<&[u8]>() {
                Ok(bytes) if bytes.len() == SIZE => count += 1,
                _ => wrong += 1,
            })
            .await
            .map_err(other)?;
        if got == 0 || wrong > 0 {
            return Err(io::Error::other("wrong message"));
        }
    }
    Ok(())
}

async fn floor_send(w: &mut BufWriter<OwnedWriteHalf>, payload: &[u8]) -> io::Result<()> {
    for _ in 0..BATCH {
        w.write_all(&(payload.len() as u32).to_le_bytes()).await?;
        w.write_all(payload).await?;
    }
    w.flush().await
}

async fn floor_recv(r: &mut BufReader<OwnedReadHalf>, frame: &mut Vec<u8>) -> io::Result<()> {
    for _ in 0..BATCH {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await?;
        frame.resize(u32::from_le_bytes(len) as usize, 0);
        r.read_exact(frame).await?;
        if frame.len() != SIZE {
            return Err(io::Error::other("wrong message"));
        }
    }
    Ok(())
}

/// Runs one side's batch on `rt`: the function callgrind attributes the side's cost to.
#[inline(never)]
fn side(
    rt: &tokio::runtime::Runtime,
    batch: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    rt.block_on(batch)
}

fn run(rt: &tokio::runtime::Runtime, kind: &str, rounds: usize) -> io::Result<()> {
    let _entered = rt.enter();
    match kind {
        "owned" | "borrowed" | "many" => {
            // A bare socket pair, without the shared ring `pipe::simplex` sets up: the ring
            // asks the vDSO for the CPU, which valgrind cannot provide. A batch goes through
            // the socket either way; the ring would add a tag per frame on each side.
            let (a, b) = std::os::unix::net::UnixStream::pair()?;
            let (mut tx, _) = Duplex::<Payload, Payload>::from_socket(a.into())?.split();
            let (_, mut rx) = Duplex::<Payload, Payload>::from_socket(b.into())?.split();
            let payload = Payload::Shared(vec![0u8; SIZE].into());
            for _ in 0..rounds {
                if kind == "owned" {
                    side(rt, owned_send(&mut tx, &payload))?;
                    side(rt, owned_recv(&mut rx))?;
                } else if kind == "many" {
                    side(rt, borrowed_send(&mut tx, &payload))?;
                    side(rt, many_recv(&mut rx))?;
                } else {
                    side(rt, borrowed_send(&mut tx, &payload))?;
                    side(rt, borrowed_recv(&mut rx))?;
                }
            }
        }
        "floor" => {
            let (a, b) = UnixStream::pair()?;
            let (_, wa) = a.into_split();
            let (rb, _) = b.into_split();
            let mut w = BufWriter::with_capacity(64 << 10, wa);
            let mut r = BufReader::with_capacity(64 << 10, rb);
            let (payload, mut frame) = (vec![0u8; SIZE], Vec::new());
            for _ in 0..rounds {
                side(rt, floor_send(&mut w, &payload))?;
                side(rt, floor_recv(&mut r, &mut frame))?;
            }
        }
        _ => return Err(io::Error::other("kind: owned, borrowed, many or floor")),
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "borrowed".into());
    let rounds = args.next().and_then(|r| r.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    run(&rt, &kind, rounds)?;
    println!("{kind}: {} messages", rounds * BATCH);
    Ok(())
}
