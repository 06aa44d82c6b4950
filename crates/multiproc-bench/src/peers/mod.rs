//! The Rust peers: other ways to do what multiproc does, measured on the same workloads.
//!
//! Every peer's other end runs in a real separate process: this benchmark binary re-executed
//! (`/proc/self/exe`) with [`ROLE_ENV`] naming what the child does and [`ROLE_ARG_ENV`] how to
//! reach the parent (a socket name, an ipc-channel one-shot server name). `main` hands such a
//! process to [`child_main`] before anything else, so the child runs only the peer's own code:
//! no multiproc primitive is on a peer's measured path. (The `raw-os` floor and the multiproc
//! rows start their children with `multiproc::spawn` instead; the start-up is never timed.)
//!
//! - [`ipc_channel`]: servo's `ipc-channel` 0.22, typed `IpcSender`/`IpcReceiver` (pipes and
//!   queues);
//! - [`interprocess`]: `interprocess` 2.x local sockets with tokio, `LengthDelimitedCodec` +
//!   postcard (through [`framed`]);
//! - [`tokio_codec`]: tokio's `UnixStream` with the same codec (through [`framed`]);
//! - [`tokio_floor`]: tokio's `UnixStream`, a hand-rolled 4-byte length prefix and buffered
//!   I/O, no codec crate: the hand-rolled tokio floor;
//! - [`procspawn`]: `procspawn` 1.0's `spawn` + `join` (spawning only).

pub(crate) mod framed;
pub(crate) mod interprocess;
pub(crate) mod ipc_channel;
pub(crate) mod procspawn;
pub(crate) mod tokio_codec;
pub(crate) mod tokio_floor;

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::sync_bench::PATIENCE;

/// Names what a re-executed peer child does: `<peer>/<task>`.
pub(crate) const ROLE_ENV: &str = "MULTIPROC_BENCH_ROLE";
/// How the peer child reaches its parent (the role decides the format).
pub(crate) const ROLE_ARG_ENV: &str = "MULTIPROC_BENCH_ROLE_ARG";

/// Round trips run before the clock starts, per `n` timed ones (as the multiproc rows do).
pub(crate) const WARMUP_DIVISOR: u64 = 10;

/// In a re-executed peer child: runs the role and returns the exit code. `None` in the
/// benchmark process itself.
pub(crate) fn child_main() -> Option<ExitCode> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let arg = std::env::var(ROLE_ARG_ENV).unwrap_or_default();
    // A peer child never outlives the benchmark (a failed trial must not leave it blocked).
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let (peer, task) = role.split_once('/').unwrap_or((role.as_str(), ""));
    let result = match peer {
        ipc_channel::PEER => ipc_channel::child(task, &arg),
        tokio_floor::PEER => tokio_floor::child(task, &arg),
        tokio_codec::PEER => tokio_codec::child(task, &arg),
        interprocess::PEER => interprocess::child(task, &arg),
        crate::scale::PEER => crate::scale::child(task, &arg),
        _ => Err(io::Error::other(format!("unknown role {role:?}"))),
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multiproc-bench {role} child: {e}");
            ExitCode::FAILURE
        }
    })
}

/// A re-executed peer child; killed and reaped if dropped before [`PeerChild::join`].
pub(crate) struct PeerChild {
    child: Option<Child>,
    role: String,
}

impl PeerChild {
    /// Starts this binary again as `role` with `arg` (stdout discarded, stderr inherited).
    pub(crate) fn spawn(role: &str, arg: &str) -> io::Result<PeerChild> {
        Self::spawn_with(role, arg, |_| {})
    }

    /// [`PeerChild::spawn`], with a chance to adjust the command (extra environment).
    pub(crate) fn spawn_with(
        role: &str,
        arg: &str,
        adjust: impl FnOnce(&mut Command),
    ) -> io::Result<PeerChild> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.env(ROLE_ENV, role)
            .env(ROLE_ARG_ENV, arg)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        adjust(&mut cmd);
        let child = cmd.spawn()?;
        Ok(PeerChild {
            child: Some(child),
            role: role.to_string(),
        })
    }

    /// The child's standard output, if [`PeerChild::spawn_with`] asked for a pipe.
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Waits (at most [`PATIENCE`]) for the child to exit, and wants a success.
    pub(crate) fn join(mut self) -> io::Result<()> {
        let mut child = self.child.take().expect("joined once");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "{} child failed: {status}",
                        self.role
                    )))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!("{} child hung", self.role)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PeerChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A name unique to this process and call, for sockets the children connect to.
pub(crate) fn unique_name(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "multiproc-bench-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `f` on a thread and waits for it at most [`PATIENCE`]: for the blocking calls of a
/// peer that have no timeout of their own (an accept). On timeout the thread is left behind.
pub(crate) fn with_patience<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .map_err(|_| io::Error::other(format!("{what}: no answer in {PATIENCE:?}")))
}

/// A listening tokio `UnixListener` on the abstract socket address `name` (nothing in the
/// filesystem to clean up).
pub(crate) fn unix_listen(name: &str) -> io::Result<tokio::net::UnixListener> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// The one connection a peer child makes to [`unix_listen`]`(name)`.
pub(crate) async fn unix_accept(listener: &tokio::net::UnixListener) -> io::Result<UnixStream> {
    match tokio::time::timeout(PATIENCE, listener.accept()).await {
        Ok(accepted) => Ok(accepted?.0),
        Err(_) => Err(io::Error::other("the peer child never connected")),
    }
}

/// Connects to the parent's [`unix_listen`]`(name)` (in a peer child, inside its runtime).
pub(crate) fn unix_connect(name: &str) -> io::Result<UnixStream> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// A current-thread tokio runtime for a peer child (as multiproc's children have).
pub(crate) fn child_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Parses `key=value` pairs separated by `,` (the role argument of the socket peers).
pub(crate) fn arg_field<'a>(arg: &'a str, key: &str) -> io::Result<&'a str> {
    arg.split(',')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| io::Error::other(format!("role argument {arg:?} lacks {key}")))
}

/// [`arg_field`] as a number.
pub(crate) fn arg_u64(arg: &str, key: &str) -> io::Result<u64> {
    let v = arg_field(arg, key)?;
    v.parse()
        .map_err(|_| io::Error::other(format!("{key}={v:?} is not a number")))
}

/// Starts `<peer>/<task>` with `name=<socket>,n=<n>,size=<size>` and accepts its connection
/// on a fresh abstract Unix socket (the tokio socket peers).
pub(crate) async fn start_unix_child(
    peer: &str,
    task: &str,
    n: u64,
    size: usize,
) -> io::Result<(PeerChild, UnixStream)> {
    let name = unique_name(peer);
    let listener = unix_listen(&name)?;
    let child = PeerChild::spawn(
        &format!("{peer}/{task}"),
        &format!("name={name},n={n},size={size}"),
    )?;
    let stream = unix_accept(&listener).await?;
    Ok((child, stream))
}

/// Runs `round` `n / WARMUP_DIVISOR + 1` times untimed, then `n` times timed: microseconds
/// per timed round (the ping-pong of the async peers).
pub(crate) async fn time_rounds(
    n: u64,
    mut round: impl AsyncFnMut() -> io::Result<()>,
) -> io::Result<f64> {
    for _ in 0..n / WARMUP_DIVISOR + 1 {
        round().await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        round().await?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::{arg_field, arg_u64};

    #[test]
    fn role_arguments_are_found_by_key() {
        let arg = "name=multiproc-bench-x-1-2,n=5000,size=1048576";
        assert_eq!(arg_field(arg, "name").unwrap(), "multiproc-bench-x-1-2");
        assert_eq!(arg_u64(arg, "n").unwrap(), 5000);
        assert_eq!(arg_u64(arg, "size").unwrap(), 1 << 20);
        assert!(arg_field(arg, "nam").is_err());
        assert!(arg_u64("n=lots", "n").is_err());
    }
}
