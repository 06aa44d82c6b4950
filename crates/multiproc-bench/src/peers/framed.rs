//! The pipe workloads over any tokio byte stream with tokio-util's `LengthDelimitedCodec` and
//! postcard: the code the `tokio-codec` and `interprocess` peers share (only the way they
//! connect differs).
//!
//! This is the idiomatic typed path on tokio: `Framed<S, LengthDelimitedCodec>` (4-byte
//! big-endian length, the codec's default, 8 MiB frame limit raised to 64 MiB), each message
//! encoded with `postcard::to_allocvec` into a fresh `Vec` that becomes the frame's `Bytes`,
//! and decoded with `postcard::from_bytes` into the multiproc rows' [`Payload`] (a fresh
//! `ByteBuf`). The 64-byte stream batches with `SinkExt::feed` and one `flush`, as the
//! multiproc row does; the ping-pong and the 1 MiB stream `send` each message.
//!
//! Workloads: `pipe_pingpong_64B` (the child decodes each message and sends it back),
//! `pipe_stream_64B` and `pipe_stream_1MiB` (the child decodes `n` messages, checks their
//! length and answers with the count, a postcard `u64`).

use std::io;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{PeerChild, WARMUP_DIVISOR};
use crate::Workload;
use crate::payload::Payload;

/// The largest frame the codec accepts (its default, 8 MiB, would do; this leaves room).
const MAX_FRAME: usize = 64 << 20;

/// A framed, typed end over the byte stream `S`.
pub(crate) struct End<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> End<S> {
    pub(crate) fn new(stream: S) -> End<S> {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME)
            .new_codec();
        End {
            framed: Framed::new(stream, codec),
        }
    }

    fn encode<T: Serialize>(msg: &T) -> io::Result<Bytes> {
        postcard::to_allocvec(msg).map(Bytes::from).map_err(other)
    }

    /// Encodes and sends one message (written out at once).
    async fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.framed.send(Self::encode(msg)?).await
    }

    /// Encodes and queues one message (written out when the codec's buffer fills or on
    /// [`End::flush`]).
    async fn feed<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.framed.feed(Self::encode(msg)?).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        SinkExt::<Bytes>::flush(&mut self.framed).await
    }

    /// The next message; `None` at the end of the stream.
    async fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<T>> {
        match self.framed.next().await {
            Some(frame) => postcard::from_bytes(&frame?).map(Some).map_err(other),
            None => Ok(None),
        }
    }
}

/// A peer child's part: `pingpong` (echo until the parent closes) or `stream` (`n` messages of
/// `size` bytes counted and checked, then the count).
pub(crate) async fn child<S: AsyncRead + AsyncWrite + Unpin>(
    task: &str,
    stream: S,
    n: u64,
    size: u64,
) -> io::Result<()> {
    let mut end = End::new(stream);
    match task {
        "pingpong" => {
            while let Some(msg) = end.recv::<Payload>().await? {
                end.send(&msg).await?;
            }
            Ok(())
        }
        "stream" => {
            end.send(&0u64).await?;
            let mut count = 0u64;
            while count < n {
                let Some(msg) = end.recv::<Payload>().await? else {
                    return Err(io::Error::other("stream ended early"));
                };
                if msg.as_slice().len() as u64 != size {
                    let len = msg.as_slice().len();
                    return Err(io::Error::other(format!("message of {len} bytes")));
                }
                count += 1;
            }
            end.send(&count).await
        }
        _ => Err(io::Error::other(format!("no task {task:?}"))),
    }
}

/// The child's task for `w` and the message size.
pub(crate) fn task(w: Workload) -> io::Result<(&'static str, usize)> {
    match w {
        Workload::Pingpong64 => Ok(("pingpong", 64)),
        Workload::Stream64 => Ok(("stream", 64)),
        Workload::Stream1M => Ok(("stream", 1 << 20)),
        _ => Err(io::Error::other("not a pipe workload")),
    }
}

/// The parent's part of one trial of `w` with a connected `child`: microseconds per round
/// trip, or messages (64 B) or MiB (1 MiB) per second.
pub(crate) async fn parent<S: AsyncRead + AsyncWrite + Unpin>(
    w: Workload,
    child: PeerChild,
    stream: S,
    n: u64,
) -> io::Result<f64> {
    let (_, size) = task(w)?;
    match w {
        Workload::Pingpong64 => pingpong(child, stream, n).await,
        _ => stream_to(child, stream, n, size, size == 64)
            .await
            .map(|secs| n as f64 / secs),
    }
}

/// `pipe_pingpong_64B` against a connected `child`: microseconds per round trip.
async fn pingpong<S: AsyncRead + AsyncWrite + Unpin>(
    child: PeerChild,
    stream: S,
    n: u64,
) -> io::Result<f64> {
    let mut end = End::new(stream);
    let payload = Payload::zeros(64);
    let mut once = async || -> io::Result<()> {
        end.send(&payload).await?;
        match end.recv::<Payload>().await? {
            Some(back) if back.as_slice().len() == payload.as_slice().len() => Ok(()),
            _ => Err(io::Error::other("echo child answered wrongly or went away")),
        }
    };
    for _ in 0..n / WARMUP_DIVISOR + 1 {
        once().await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        once().await?;
    }
    let elapsed = t0.elapsed();
    drop(end);
    child.join()?;
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}

/// `n` messages of `size` bytes one way to a connected `child`, batched (`feed`, one `flush`)
/// or not (`send` each); seconds from the first message to the child's count.
async fn stream_to<S: AsyncRead + AsyncWrite + Unpin>(
    child: PeerChild,
    stream: S,
    n: u64,
    size: usize,
    batched: bool,
) -> io::Result<f64> {
    let mut end = End::new(stream);
    if end.recv::<u64>().await? != Some(0) {
        return Err(io::Error::other("stream child did not start"));
    }
    let payload = Payload::zeros(size);
    let t0 = Instant::now();
    for _ in 0..n {
        if batched {
            end.feed(&payload).await?;
        } else {
            end.send(&payload).await?;
        }
    }
    end.flush().await?;
    let counted = end.recv::<u64>().await?;
    let secs = t0.elapsed().as_secs_f64();
    if counted != Some(n) {
        return Err(io::Error::other(format!(
            "stream child counted {counted:?} of {n}"
        )));
    }
    drop(end);
    child.join()?;
    Ok(secs)
}
