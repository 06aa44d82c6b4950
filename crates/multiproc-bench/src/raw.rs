//! The `raw-os` floor: blocking `read(2)`/`write(2)` on a socketpair between two processes, and
//! `fork`+`exec`+`wait` of this executable for `spawn_join`.
//!
//! The peer process is started with `multiproc::spawn` (the start-up is not timed) and gets
//! its end of a *blocking* `AF_UNIX` `SOCK_STREAM` socketpair as a spawn argument; the measured
//! loops on both sides are plain blocking syscalls with no framing, serialization or readiness
//! polling.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::Instant;

use multiproc::core::SharedFd;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::net::UnixStream;

use crate::{EXIT_AT_ONCE_ENV, Workload};

/// A blocking `AF_UNIX` stream socketpair (close-on-exec, as every multiproc descriptor).
fn blocking_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on end-of-stream before the first byte.
fn read_exact(fd: impl AsFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&fd, &mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Writes all of `buf`.
fn write_all(fd: impl AsFd, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::write(&fd, &buf[done..]) {
            Ok(k) => done += k,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs one trial of `w` with `n` operations.
pub(crate) fn run(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    match w {
        Workload::Pingpong64 => pingpong(rt, n),
        Workload::Stream64 => stream(rt, n, 64).map(|secs| n as f64 / secs),
        Workload::Stream1M => {
            stream(rt, n, 1 << 20).map(|secs| n as f64 /* MiB */ / secs)
        }
        Workload::SpawnJoin => spawn_join(n),
        // The lock, event and queue workloads live in `sync_bench` and `queue_bench`.
        _ => Err(io::Error::other("not a pipe or spawn workload")),
    }
}

/// Ping-pong peer: reads `size` bytes, writes them back, until end-of-stream.
fn echo((fd, size): (SharedFd, usize)) -> u64 {
    let mut buf = vec![0u8; size];
    let mut echoed = 0;
    while let Ok(true) = read_exact(&fd, &mut buf) {
        if write_all(&fd, &buf).is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

fn pingpong(rt: &tokio::runtime::Runtime, n: u64) -> io::Result<f64> {
    let (here, there) = blocking_pair()?;
    let child = {
        let _runtime = rt.enter();
        multiproc::spawn((SharedFd::new(there), 64usize), echo)
    };
    let out = [0u8; 64];
    let mut back = [0u8; 64];
    let mut once = || -> io::Result<()> {
        write_all(&here, &out)?;
        if read_exact(&here, &mut back)? {
            Ok(())
        } else {
            Err(io::Error::other("raw echo peer went away"))
        }
    };
    for _ in 0..n / 10 + 1 {
        once()?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        once()?;
    }
    let elapsed = t0.elapsed();
    drop(here);
    rt.block_on(child).map_err(other)?;
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}

/// A non-blocking socket registered with the current tokio runtime (tokio's `UnixStream`, whose
/// `try_read` is one `read(2)`: no `unsafe` registration of a raw descriptor is needed).
fn reactor_socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

/// Reads exactly `buf.len()` bytes: `read(2)`, and wait for readiness in the reactor on
/// `EAGAIN`. `Ok(false)` on end-of-stream before the first byte.
async fn reactor_read_exact(socket: &UnixStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        socket.readable().await?;
        match socket.try_read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes all of `buf` with non-blocking `write(2)`; 64-byte messages never find the socket
/// full, so this never waits (it would spin if it did).
fn nonblocking_write_all(fd: impl AsFd, buf: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::write(&fd, &buf[done..]) {
            Ok(k) => done += k,
            Err(Errno::INTR | Errno::AGAIN) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Ping-pong peer of `tokio-reactor`.
async fn reactor_echo((fd, size): (SharedFd, usize)) -> u64 {
    let Ok(socket) = fd.try_clone_owned().and_then(reactor_socket) else {
        return 0;
    };
    drop(fd);
    let mut buf = vec![0u8; size];
    let mut echoed = 0;
    while let Ok(true) = reactor_read_exact(&socket, &mut buf).await {
        if nonblocking_write_all(&socket, &buf).is_err() {
            break;
        }
        echoed += 1;
    }
    echoed
}

/// `pipe_pingpong_64B` for `tokio-reactor`: unframed 64-byte messages, `write(2)` straight
/// away and `read(2)` after waiting in tokio's reactor (an `AsyncFd` registered for read
/// readiness only), current-thread runtimes on both sides. Not a floor but a yardstick: what a
/// tokio wake-up per message costs by itself, without multiproc's framing and serialization.
pub(crate) fn reactor_pingpong(rt: &tokio::runtime::Runtime, n: u64) -> io::Result<f64> {
    let (here, there) = blocking_pair()?;
    rt.block_on(async move {
        let child = multiproc::spawn((SharedFd::new(there), 64usize), reactor_echo);
        let here = reactor_socket(here)?;
        let out = [0u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..n / 10 + 1 {
            nonblocking_write_all(&here, &out)?;
            reactor_read_exact(&here, &mut back).await?;
        }
        let t0 = Instant::now();
        for _ in 0..n {
            nonblocking_write_all(&here, &out)?;
            reactor_read_exact(&here, &mut back).await?;
        }
        let elapsed = t0.elapsed();
        drop(here);
        child.await.map_err(other)?;
        Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
    })
}

/// Stream peer: writes one ready byte, reads `total` bytes in 1 MiB chunks, writes the byte
/// count back (8 bytes, little-endian).
fn sink((fd, total): (SharedFd, u64)) -> u64 {
    if write_all(&fd, &[1]).is_err() {
        return 0;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < total {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(k) => got += k as u64,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    let _ = write_all(&fd, &got.to_le_bytes());
    got
}

/// `n` messages of `size` bytes, one `write(2)` each (a 1 MiB write loops inside `write_all`
/// as the socket buffer fills); seconds from the first write to the peer's count arriving.
fn stream(rt: &tokio::runtime::Runtime, n: u64, size: usize) -> io::Result<f64> {
    let total = n * size as u64;
    let (here, there) = blocking_pair()?;
    let child = {
        let _runtime = rt.enter();
        multiproc::spawn((SharedFd::new(there), total), sink)
    };
    let mut ready = [0u8; 1];
    if !read_exact(&here, &mut ready)? {
        return Err(io::Error::other("raw stream peer did not start"));
    }
    let msg = vec![0u8; size];
    let t0 = Instant::now();
    for _ in 0..n {
        write_all(&here, &msg)?;
    }
    let mut count = [0u8; 8];
    if !read_exact(&here, &mut count)? {
        return Err(io::Error::other("raw stream peer went away"));
    }
    let secs = t0.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(count);
    if got != total {
        return Err(io::Error::other(format!(
            "raw stream peer got {got} of {total} bytes"
        )));
    }
    drop(here);
    rt.block_on(child).map_err(other)?;
    Ok(secs)
}

/// One spawn-of-self: `fork`+`exec` of this executable, which exits at the top of `main`, and
/// `wait`.
fn spawn_self() -> io::Result<()> {
    let status = Command::new("/proc/self/exe")
        .env(EXIT_AT_ONCE_ENV, "1")
        .spawn()?
        .wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("spawn-of-self child: {status}")))
    }
}

fn spawn_join(n: u64) -> io::Result<f64> {
    for _ in 0..2 {
        spawn_self()?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        spawn_self()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / n as f64)
}
