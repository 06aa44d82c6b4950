//! The hand-rolled tokio floor (`tokio-floor`): what a careful programmer writes by hand on
//! tokio without a codec crate, the yardstick of the 64-byte stream goal.
//!
//! tokio's `UnixStream` (a Unix stream socket from the parent's abstract address), split into
//! halves, each behind tokio's buffered I/O with 64 KiB buffers. A frame is a 4-byte
//! little-endian length and the bytes; no serialization (the payload is the bytes). The
//! receiver reads each frame into one reused buffer (no allocation per message) and checks its
//! length; the sender writes frames into its `BufWriter` and flushes only when it has nothing
//! more queued: once after the whole 64-byte stream (the buffer also goes out whenever it
//! fills), after each ping, and, in the echo child, when its reader holds no further frame. A
//! frame larger than the write buffer skips it: the buffer is flushed and the length and the
//! bytes go out in one `writev(2)` (no copy of the 1 MiB payload in user space); the reader
//! reads such a frame straight into its buffer after the bytes already buffered.
//!
//! Workloads: `pipe_pingpong_64B` (the child echoes each frame), `pipe_stream_64B` and
//! `pipe_stream_1MiB` (the child counts and checks `n` frames and answers with the count).
//! Both processes run current-thread runtimes.

use std::io::{self, IoSlice};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::{
    PeerChild, WARMUP_DIVISOR, arg_field, arg_u64, child_runtime, unique_name, unix_accept,
    unix_connect, unix_listen,
};
use crate::Workload;

/// The role prefix of this peer's children.
pub(crate) const PEER: &str = "tokio-floor";

/// The buffers of both halves.
const BUF_CAPACITY: usize = 64 << 10;
/// The largest frame a reader accepts (a corrupt length is an error, not an allocation).
const MAX_FRAME: usize = 64 << 20;

/// One end: a buffered reader and writer over the two halves of the socket.
struct End {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// The last frame read.
    frame: Vec<u8>,
}

impl End {
    fn new(stream: UnixStream) -> End {
        let (r, w) = stream.into_split();
        End {
            reader: BufReader::with_capacity(BUF_CAPACITY, r),
            writer: BufWriter::with_capacity(BUF_CAPACITY, w),
            frame: Vec::new(),
        }
    }

    /// Queues one frame (written out when the buffer fills or on [`End::flush`]).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::other("frame too large"))?
            .to_le_bytes();
        if self.writer.buffer().len() + len.len() + bytes.len() <= BUF_CAPACITY {
            self.writer.write_all(&len).await?;
            return self.writer.write_all(bytes).await;
        }
        // Larger than what is left of the buffer: empty it, then the length and the bytes in
        // one vectored write (a large payload is never copied into the buffer).
        self.writer.flush().await?;
        let socket = self.writer.get_mut();
        let (mut head, mut body) = (&len[..], bytes);
        while !head.is_empty() || !body.is_empty() {
            let k = socket
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if k == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = k.min(head.len());
            head = &head[from_head..];
            body = &body[k - from_head..];
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.writer.flush().await
    }

    /// Reads the next frame into [`End::frame`]; `Ok(false)` at a clean end of stream.
    async fn recv(&mut self) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::other(format!("frame of {len} bytes")));
        }
        self.frame.resize(len, 0);
        self.reader.read_exact(&mut self.frame).await?;
        Ok(true)
    }

    /// Whether a frame (or part of one) already waits in the read buffer.
    fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A peer child: `pingpong` or `stream`; `arg` is `name=<socket>,n=<n>,size=<bytes>`.
pub(crate) fn child(task: &str, arg: &str) -> io::Result<()> {
    let rt = child_runtime()?;
    rt.block_on(async {
        let mut end = End::new(unix_connect(arg_field(arg, "name")?)?);
        match task {
            "pingpong" => {
                while end.recv().await? {
                    let frame = std::mem::take(&mut end.frame);
                    end.send(&frame).await?;
                    end.frame = frame;
                    if !end.has_buffered() {
                        end.flush().await?;
                    }
                }
                Ok(())
            }
            "stream" => {
                let (n, size) = (arg_u64(arg, "n")?, arg_u64(arg, "size")?);
                end.send(&0u64.to_le_bytes()).await?;
                end.flush().await?;
                let mut count = 0u64;
                while count < n {
                    if !end.recv().await? {
                        return Err(io::Error::other("stream ended early"));
                    }
                    if end.frame.len() as u64 != size {
                        let len = end.frame.len();
                        return Err(io::Error::other(format!("frame of {len} bytes")));
                    }
                    count += 1;
                }
                end.send(&count.to_le_bytes()).await?;
                end.flush().await
            }
            _ => Err(io::Error::other(format!("no task {task:?}"))),
        }
    })
}

/// One trial of a pipe workload: microseconds per round trip, or messages (64 B) or MiB
/// (1 MiB) per second.
pub(crate) fn pipe(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::Pingpong64 => rt.block_on(pingpong(n)),
        Workload::Stream64 => rt.block_on(stream(n, 64)).map(|secs| n as f64 / secs),
        Workload::Stream1M => rt.block_on(stream(n, 1 << 20)).map(|secs| n as f64 / secs),
        _ => Err(io::Error::other("not a pipe workload")),
    }
}

/// Starts the child for `task` and accepts its connection.
async fn start(task: &str, n: u64, size: usize) -> io::Result<(PeerChild, End)> {
    let name = unique_name(PEER);
    let listener = unix_listen(&name)?;
    let child = PeerChild::spawn(
        &format!("{PEER}/{task}"),
        &format!("name={name},n={n},size={size}"),
    )?;
    let stream = unix_accept(&listener).await?;
    Ok((child, End::new(stream)))
}

async fn pingpong(n: u64) -> io::Result<f64> {
    let (child, mut end) = start("pingpong", n, 64).await?;
    let payload = [0u8; 64];
    let mut once = async || -> io::Result<()> {
        end.send(&payload).await?;
        end.flush().await?;
        if !end.recv().await? || end.frame.len() != payload.len() {
            return Err(io::Error::other("echo child answered wrongly or went away"));
        }
        Ok(())
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

/// `n` frames of `size` bytes one way; seconds from the first write to the child's count.
async fn stream(n: u64, size: usize) -> io::Result<f64> {
    let (child, mut end) = start("stream", n, size).await?;
    if !end.recv().await? || end.frame != 0u64.to_le_bytes() {
        return Err(io::Error::other("stream child did not start"));
    }
    let payload = vec![0u8; size];
    let t0 = Instant::now();
    for _ in 0..n {
        end.send(&payload).await?;
    }
    end.flush().await?;
    if !end.recv().await? {
        return Err(io::Error::other("stream child went away"));
    }
    let secs = t0.elapsed().as_secs_f64();
    let counted = <[u8; 8]>::try_from(end.frame.as_slice())
        .map(u64::from_le_bytes)
        .map_err(other)?;
    if counted != n {
        return Err(io::Error::other(format!(
            "stream child counted {counted} of {n}"
        )));
    }
    drop(end);
    child.join()?;
    Ok(secs)
}
