//! `multiproc-bench`: one scenario matrix, three implementations, same payloads.
//!
//! For every workload it measures `multiproc`, Python's `multiprocessing` (`python-mp`, a
//! stdlib-only script run with `python3`) and the raw OS floor (`raw-os`: blocking syscalls
//! between processes: a socketpair for the pipes, futexes for the locks, eventfds for the
//! events, a `SOCK_SEQPACKET` pair for the queues), interleaved trial by trial so that the
//! ratios are measured side by side under the same machine noise. Each result is one JSON line
//! on stdout:
//!
//! ```text
//! {"workload": "pipe_pingpong_64B", "impl": "multiproc", "value": 21.4, "unit": "us_per_roundtrip", "n": 20000, ...}
//! ```
//!
//! `value` is the median over the trials (`min`/`max` are given too, and `steal_pct`, the CPU
//! time the hypervisor took meanwhile: a noise gauge). A summary with the ratios goes to stderr.
//! Options: `--quick` (the whole run well under a minute), `--only <workload>` and
//! `--impl <impl>` (repeatable, or comma lists), `--pin` (everything, children included, on
//! CPU 0), `--trials <k>`. The ping-pong also has two diagnostic rows, `multiproc-blocking` and
//! `tokio-reactor`; the contended lock, the event ping-pong and the queues have
//! `multiproc-blocking` (the `blocking_*` twins), the queues `multiproc-sink` (`Sink`/`Stream`),
//! and the 1 MiB stream `multiproc-bytes` (the untyped `send_bytes`/`recv_bytes`).
//! Results and their reading: `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

// manager (issue 15)
mod file_lock_bench;
mod manager_bench;
// Named endpoints (issue 13).
mod conn_bench;
mod multiproc_impl;
mod payload;
mod pool_bench;
mod python;
mod queue_bench;
mod raw;
mod sync_bench;

use std::fmt::Write as _;
use std::io;
use std::process::ExitCode;

/// Set in the environment of the `raw-os` spawn floor's child: exit at the top of `main`.
pub(crate) const EXIT_AT_ONCE_ENV: &str = "MULTIPROC_BENCH_EXIT_AT_ONCE";

/// One benchmarked scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// 64-byte payload to a child and back, one at a time.
    Pingpong64,
    /// One-way stream of 64-byte messages; the child counts them.
    Stream64,
    /// One-way stream of 1 MiB messages.
    Stream1M,
    /// Spawn a trivial child and join it, sequentially.
    SpawnJoin,
    /// Lock and unlock a free lock, in one process.
    LockUncontended,
    /// Two processes incrementing one shared counter under one lock.
    LockContended2p,
    /// Eight processes acquiring and releasing a semaphore of two permits.
    SemaphoreLimit,
    /// Two events bounced between two processes.
    EventPingpong,
    /// One producer process, one consumer process, 64-byte messages through a queue.
    Queue1p1c,
    /// Two producer processes, two consumer processes, one queue.
    Queue2p2c,
    /// `Pool(2).map` of `x * x` over `n` integers, default chunking.
    PoolMapSmall,
    /// The same with a chunk size of 1.
    PoolMapSmallChunk1,
    /// Sequential `apply` of `x * x` on a `Pool(2)`.
    PoolApplyRoundtrip,
    // manager (issue 15)
    /// Two processes setting and getting keys of one served dict.
    ManagerDict2p,
    // Issue 13, named resources: file locks.
    /// Lock and unlock a free `flock` file lock, in one process.
    FileLockUncontended,
    /// Two processes incrementing one shared counter under one `flock` file lock.
    FileLockContended2p,
    // Named endpoints (issue 13).
    /// Request/response round trips of 64 bytes over one keyed connection, Unix socket.
    ConnRoundtripUnix,
    /// The same over TCP loopback.
    ConnRoundtripTcp,
    /// Connections accepted per second (connect, key handshake, one reply), Unix socket.
    ConnAcceptUnix,
    /// The same over TCP loopback.
    ConnAcceptTcp,
}

impl Workload {
    const ALL: [Workload; 20] = [
        Workload::Pingpong64,
        Workload::Stream64,
        Workload::Stream1M,
        Workload::SpawnJoin,
        Workload::LockUncontended,
        Workload::LockContended2p,
        Workload::SemaphoreLimit,
        Workload::EventPingpong,
        Workload::Queue1p1c,
        Workload::Queue2p2c,
        Workload::PoolMapSmall,
        Workload::PoolMapSmallChunk1,
        Workload::PoolApplyRoundtrip,
        // manager (issue 15)
        Workload::ManagerDict2p,
        Workload::FileLockUncontended,
        Workload::FileLockContended2p,
        // Named endpoints.
        Workload::ConnRoundtripUnix,
        Workload::ConnRoundtripTcp,
        Workload::ConnAcceptUnix,
        Workload::ConnAcceptTcp,
    ];

    /// The name printed in the JSON `workload` field and accepted by `--only`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Pingpong64 => "pipe_pingpong_64B",
            Workload::Stream64 => "pipe_stream_64B",
            Workload::Stream1M => "pipe_stream_1MiB",
            Workload::SpawnJoin => "spawn_join",
            Workload::LockUncontended => "lock_uncontended",
            Workload::LockContended2p => "lock_contended_2p",
            Workload::SemaphoreLimit => "semaphore_limit",
            Workload::EventPingpong => "event_pingpong",
            Workload::Queue1p1c => "queue_1p1c_64B",
            Workload::Queue2p2c => "queue_2p2c_64B",
            Workload::PoolMapSmall => "pool_map_small",
            Workload::PoolMapSmallChunk1 => "pool_map_small_chunk1",
            Workload::PoolApplyRoundtrip => "pool_apply_roundtrip",
            // manager (issue 15)
            Workload::ManagerDict2p => "manager_dict_2p",
            Workload::FileLockUncontended => "file_lock_uncontended",
            Workload::FileLockContended2p => "file_lock_contended_2p",
            // Named endpoints.
            Workload::ConnRoundtripUnix => "conn_roundtrip_unix",
            Workload::ConnRoundtripTcp => "conn_roundtrip_tcp",
            Workload::ConnAcceptUnix => "conn_accept_unix",
            Workload::ConnAcceptTcp => "conn_accept_tcp",
        }
    }

    /// The unit of `value`.
    fn unit(self) -> &'static str {
        match self {
            Workload::Pingpong64 => "us_per_roundtrip",
            Workload::Stream64 => "msgs_per_s",
            Workload::Stream1M => "MiB_per_s",
            Workload::SpawnJoin => "ms_per_process",
            Workload::LockUncontended => "ns_per_op",
            Workload::LockContended2p | Workload::SemaphoreLimit => "ops_per_s",
            Workload::EventPingpong => "us_per_roundtrip",
            Workload::Queue1p1c | Workload::Queue2p2c => "msgs_per_s",
            Workload::PoolMapSmall | Workload::PoolMapSmallChunk1 => "items_per_s",
            Workload::PoolApplyRoundtrip => "us_per_task",
            // manager (issue 15)
            Workload::ManagerDict2p => "ops_per_s",
            Workload::FileLockUncontended => "ns_per_op",
            Workload::FileLockContended2p => "ops_per_s",
            // Named endpoints.
            Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp => "reqs_per_s",
            Workload::ConnAcceptUnix | Workload::ConnAcceptTcp => "conns_per_s",
        }
    }

    /// Whether a larger value is better (a throughput) or worse (a latency).
    fn higher_is_better(self) -> bool {
        matches!(
            self,
            Workload::Stream64
                | Workload::Stream1M
                | Workload::LockContended2p
                | Workload::SemaphoreLimit
                | Workload::Queue1p1c
                | Workload::Queue2p2c
                | Workload::PoolMapSmall
                | Workload::PoolMapSmallChunk1
                // manager (issue 15)
                | Workload::ManagerDict2p
                | Workload::FileLockContended2p
                // Named endpoints.
                | Workload::ConnRoundtripUnix
                | Workload::ConnRoundtripTcp
                | Workload::ConnAcceptUnix
                | Workload::ConnAcceptTcp
        )
    }

    /// Operations per trial: round trips, messages, processes, lock or semaphore operations
    /// (all processes together).
    pub(crate) fn n(self, quick: bool) -> u64 {
        match (self, quick) {
            (Workload::Pingpong64, false) => 5_000,
            (Workload::Pingpong64, true) => 2_000,
            (Workload::Stream64, false) => 100_000,
            (Workload::Stream64, true) => 30_000,
            (Workload::Stream1M, false) => 200,
            (Workload::Stream1M, true) => 100,
            (Workload::SpawnJoin, false) => 100,
            (Workload::SpawnJoin, true) => 40,
            (Workload::LockUncontended, false) => 2_000_000,
            (Workload::LockUncontended, true) => 500_000,
            (Workload::LockContended2p, false) => 1_000_000,
            (Workload::LockContended2p, true) => 300_000,
            (Workload::SemaphoreLimit, false) => 400_000,
            (Workload::SemaphoreLimit, true) => 80_000,
            (Workload::EventPingpong, false) => 5_000,
            (Workload::EventPingpong, true) => 1_000,
            (Workload::Queue1p1c | Workload::Queue2p2c, false) => 100_000,
            (Workload::Queue1p1c | Workload::Queue2p2c, true) => 20_000,
            (Workload::PoolMapSmall, _) => 500_000,
            // Python's pool manages ~10k chunk-size-1 tasks a second here: 500k would take a
            // minute per trial. The rate does not depend on n at this size.
            (Workload::PoolMapSmallChunk1, false) => 20_000,
            (Workload::PoolMapSmallChunk1, true) => 5_000,
            (Workload::PoolApplyRoundtrip, false) => 2_000,
            (Workload::PoolApplyRoundtrip, true) => 500,
            // manager (issue 15): Python's Manager dict manages some 10k operations a second.
            (Workload::ManagerDict2p, false) => 20_000,
            (Workload::ManagerDict2p, true) => 4_000,
            (Workload::FileLockUncontended, false) => 200_000,
            (Workload::FileLockUncontended, true) => 50_000,
            (Workload::FileLockContended2p, false) => 100_000,
            (Workload::FileLockContended2p, true) => 20_000,
            // Named endpoints.
            (Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp, false) => 20_000,
            (Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp, true) => 5_000,
            (Workload::ConnAcceptUnix | Workload::ConnAcceptTcp, false) => 2_000,
            (Workload::ConnAcceptUnix | Workload::ConnAcceptTcp, true) => 500,
        }
    }

    /// The implementations measured for this workload, in the order they run in each trial.
    fn impls(self) -> &'static [Impl] {
        match self {
            Workload::Pingpong64 => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBlocking,
                Impl::TokioReactor,
                Impl::PythonMp,
            ],
            Workload::Stream1M => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBytes,
                Impl::MultiprocShm,
                Impl::MultiprocShmFresh,
                Impl::PythonMp,
            ],
            Workload::LockContended2p | Workload::EventPingpong => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBlocking,
                Impl::PythonMp,
            ],
            Workload::Queue1p1c | Workload::Queue2p2c => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocSink,
                Impl::MultiprocBlocking,
                Impl::PythonMp,
            ],
            // The pool is compared with Python's; there is no syscall floor for a pool.
            Workload::PoolMapSmall
            | Workload::PoolMapSmallChunk1
            | Workload::PoolApplyRoundtrip => &[Impl::Multiproc, Impl::PythonMp],
            // manager (issue 15): no syscall floor for a served dict.
            Workload::ManagerDict2p => &[
                Impl::Multiproc,
                Impl::MultiprocBatch,
                Impl::MultiprocPipeline,
                Impl::PythonMp,
            ],
            // Issue 13: against Python's fcntl.flock; the syscall floor is its blocking twin.
            Workload::FileLockUncontended | Workload::FileLockContended2p => {
                &[Impl::Multiproc, Impl::MultiprocBlocking, Impl::PythonMp]
            }
            // Named endpoints: multiproc against Python's multiprocessing.connection.
            Workload::ConnRoundtripUnix
            | Workload::ConnRoundtripTcp
            | Workload::ConnAcceptUnix
            | Workload::ConnAcceptTcp => &[Impl::Multiproc, Impl::PythonMp],
            _ => &[Impl::RawOs, Impl::Multiproc, Impl::PythonMp],
        }
    }

    fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// Who runs the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    /// multiproc's async API on current-thread runtimes (the headline number).
    Multiproc,
    /// multiproc's blocking twins (`blocking_send` / `blocking_recv`, `blocking_lock`, ...),
    /// for diagnosis.
    MultiprocBlocking,
    /// Queues only: producers feed a `Queue::sink()`, consumers read a `Queue::stream()`.
    MultiprocSink,
    /// 1 MiB stream only: the pipe's untyped bytes API (`send_bytes` / `recv_bytes`, Python's
    /// `Connection.send_bytes` / `recv_bytes`) instead of typed messages.
    MultiprocBytes,
    /// 1 MiB stream only: one `SharedBytes` (a sealed memfd handed over, not streamed) made
    /// once and sent `n` times, as the typed row sends clones of one buffer; the receiver
    /// reads a byte of every page.
    MultiprocShm,
    /// 1 MiB stream only: a fresh `SharedBytes` per message (one copy into a new memfd).
    MultiprocShmFresh,
    /// Python's multiprocessing, fork start method.
    PythonMp,
    /// Blocking syscalls on a socketpair: the floor.
    RawOs,
    /// Unframed bytes, waiting in tokio's reactor (ping-pong only): what a wake-up costs.
    TokioReactor,
    // manager (issue 15)
    /// Manager only: the operations sent 100 per `Batch`.
    MultiprocBatch,
    /// Manager only: the operations sent on a `Pipeline`.
    MultiprocPipeline,
}

impl Impl {
    const ALL: [Impl; 11] = [
        Impl::Multiproc,
        Impl::MultiprocBlocking,
        Impl::MultiprocSink,
        Impl::MultiprocBytes,
        Impl::MultiprocShm,
        Impl::MultiprocShmFresh,
        Impl::PythonMp,
        Impl::RawOs,
        Impl::TokioReactor,
        // manager (issue 15)
        Impl::MultiprocBatch,
        Impl::MultiprocPipeline,
    ];

    fn parse(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Multiproc => "multiproc",
            Impl::MultiprocBlocking => "multiproc-blocking",
            Impl::MultiprocSink => "multiproc-sink",
            Impl::MultiprocBytes => "multiproc-bytes",
            Impl::MultiprocShm => "multiproc-shm",
            Impl::MultiprocShmFresh => "multiproc-shm-fresh",
            Impl::PythonMp => "python-mp",
            Impl::RawOs => "raw-os",
            Impl::TokioReactor => "tokio-reactor",
            // manager (issue 15)
            Impl::MultiprocBatch => "multiproc-batch",
            Impl::MultiprocPipeline => "multiproc-pipeline",
        }
    }
}

/// Aggregate CPU time counters from the first line of `/proc/stat` (in clock ticks).
#[derive(Clone, Copy)]
struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice], guests are
        // already counted in user and nice.
        let total = fields.iter().take(8).sum();
        Some(CpuTimes {
            total,
            steal: *fields.get(7)?,
        })
    }

    /// Percentage of CPU time the hypervisor gave to others since `earlier`: a noise gauge.
    fn steal_pct_since(self, earlier: CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

/// Command-line options.
#[derive(Debug)]
struct Options {
    quick: bool,
    pin: bool,
    only: Vec<Workload>,
    impls: Vec<Impl>,
    trials: Option<usize>,
}

const USAGE: &str = "\
usage: multiproc-bench [--quick] [--pin] [--only <workload>,...]... [--impl <impl>,...]... [--trials <k>]

  --quick        smaller n and 5 trials: the whole run takes well under a minute
  --pin          run everything (this process, its children, python) on CPU 0
  --only <w>     run only these workloads (repeatable or comma-separated):
                 pipe_pingpong_64B, pipe_stream_64B, pipe_stream_1MiB, spawn_join,
                 lock_uncontended, lock_contended_2p, semaphore_limit, event_pingpong,
                 queue_1p1c_64B, queue_2p2c_64B, pool_map_small, pool_map_small_chunk1,
                 pool_apply_roundtrip, conn_roundtrip_unix, conn_roundtrip_tcp,
                 conn_accept_unix, conn_accept_tcp, file_lock_uncontended,
                 file_lock_contended_2p, manager_dict_2p
  --impl <i>     run only these implementations (repeatable or comma-separated):
                 multiproc, multiproc-blocking, multiproc-sink, tokio-reactor, python-mp,
                 raw-os, multiproc-bytes, multiproc-batch, multiproc-pipeline
  --trials <k>   trials per implementation (default 9, quick 5); the median is reported

Prints one JSON line per (workload, impl) on stdout and a ratio summary on stderr.";

fn parse_options() -> Result<Options, String> {
    let mut opts = Options {
        quick: false,
        pin: false,
        only: Vec::new(),
        impls: Vec::new(),
        trials: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{what} needs a value"))
        };
        match flag.as_str() {
            "--quick" => opts.quick = true,
            "--pin" => opts.pin = true,
            "--only" => {
                for name in value("--only")?.split(',').filter(|s| !s.is_empty()) {
                    let w = Workload::parse(name)
                        .ok_or_else(|| format!("unknown workload {name:?}"))?;
                    if !opts.only.contains(&w) {
                        opts.only.push(w);
                    }
                }
            }
            "--impl" => {
                for name in value("--impl")?.split(',').filter(|s| !s.is_empty()) {
                    let imp = Impl::parse(name).ok_or_else(|| format!("unknown impl {name:?}"))?;
                    if !opts.impls.contains(&imp) {
                        opts.impls.push(imp);
                    }
                }
            }
            "--trials" => {
                let v = value("--trials")?;
                let k: usize = v
                    .parse()
                    .ok()
                    .filter(|k| *k > 0)
                    .ok_or_else(|| format!("--trials wants a positive number, not {v:?}"))?;
                opts.trials = Some(k);
            }
            "-h" | "--help" => return Err(String::new()),
            // `cargo bench` passes this to harness-less bench targets; harmless here.
            "--bench" => {}
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(opts)
}

/// Restricts this thread (and so every thread and process started from it) to CPU 0.
fn pin_to_cpu0() -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// The trial values of one implementation for one workload.
struct Series {
    imp: Impl,
    values: Vec<f64>,
    /// `semaphore_limit`: the peak number of concurrent holders seen in each trial.
    peaks: Vec<u64>,
    error: Option<String>,
}

/// The result of one trial.
pub(crate) struct Sample {
    /// In the workload's unit.
    pub(crate) value: f64,
    /// `semaphore_limit` only: the most permit holders seen at once.
    pub(crate) peak: Option<u64>,
}

impl From<f64> for Sample {
    fn from(value: f64) -> Self {
        Sample { value, peak: None }
    }
}

/// An `io::Error` with `e`'s message.
pub(crate) fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Series {
    fn median(&self) -> Option<f64> {
        median(&self.values)
    }
}

/// Formats a number for JSON: enough significant digits, never NaN or infinite.
fn json_number(x: f64) -> String {
    if !x.is_finite() {
        return "null".into();
    }
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Escapes a string for a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_line(w: Workload, s: &Series, n: u64, pinned: bool, steal: Option<f64>) -> Option<String> {
    let value = s.median()?;
    let min = s.values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut line = format!(
        "{{\"workload\": {}, \"impl\": {}, \"value\": {}, \"unit\": {}, \"n\": {n}, \
         \"trials\": {}, \"min\": {}, \"max\": {}, \"pinned\": {pinned}",
        json_string(w.name()),
        json_string(s.imp.name()),
        json_number(value),
        json_string(w.unit()),
        s.values.len(),
        json_number(min),
        json_number(max),
    );
    if s.imp == Impl::PythonMp {
        let api = match w {
            Workload::SpawnJoin => "get_context('fork').Process(target=noop).start(); join()",
            Workload::LockUncontended => "with Lock(): pass",
            Workload::LockContended2p => "with Lock(): Value('q', lock=False).value += 1",
            Workload::SemaphoreLimit => {
                "Semaphore(2).acquire()/release(); holders counted under a second Lock"
            }
            Workload::EventPingpong => "Event set/wait/clear",
            Workload::Queue1p1c | Workload::Queue2p2c => "Queue().put/get of bytes (pickled)",
            Workload::PoolMapSmall => "Pool(2).map(square, range(n))",
            Workload::PoolMapSmallChunk1 => "Pool(2).map(square, range(n), chunksize=1)",
            Workload::PoolApplyRoundtrip => "Pool(2).apply(square, (i,)), sequentially",
            // manager (issue 15)
            Workload::ManagerDict2p => "Manager().dict(): d[k] = i; d[k], from two processes",
            Workload::FileLockUncontended => "fcntl.flock(f, LOCK_EX); fcntl.flock(f, LOCK_UN)",
            Workload::FileLockContended2p => {
                "fcntl.flock LOCK_EX/LOCK_UN around Value('q', lock=False).value += 1"
            }
            // Named endpoints.
            Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp => {
                "connection.Listener/Client(authkey) Connection.send/recv of bytes (pickled)"
            }
            Workload::ConnAcceptUnix | Workload::ConnAcceptTcp => {
                "Client(address, authkey) + recv(); Listener.accept() + send()"
            }
            _ => "Pipe() Connection.send/recv of bytes (pickled), fork",
        };
        let _ = write!(line, ", \"api\": {}", json_string(api));
    }
    if !s.peaks.is_empty() {
        let max = s.peaks.iter().max().copied().unwrap_or(0);
        let min = s.peaks.iter().min().copied().unwrap_or(0);
        let _ = write!(line, ", \"peak\": {max}, \"peak_min\": {min}");
    }
    if let Some(steal) = steal {
        let _ = write!(line, ", \"steal_pct\": {steal:.1}");
    }
    let note = match (s.imp, w) {
        (Impl::RawOs, Workload::Stream64) => Some("one write(2) per message"),
        (Impl::MultiprocBytes, _) => Some("untyped send_bytes/recv_bytes, not typed messages"),
        (Impl::MultiprocShm, _) => Some(
            "one SharedBytes (sealed memfd) sent n times: the handover alone; receiver reads a byte per page",
        ),
        (Impl::MultiprocShmFresh, _) => Some(
            "SharedBytes::copy_from_slice per message (one copy into a new sealed memfd); receiver reads a byte per page",
        ),
        (Impl::RawOs, Workload::LockUncontended | Workload::LockContended2p) => {
            Some("futex mutex in shared memory: CAS to lock, fetch_sub to unlock")
        }
        (Impl::RawOs, Workload::SemaphoreLimit) => Some("futex counting semaphore"),
        (Impl::RawOs, Workload::EventPingpong) => Some("blocking eventfd read/write"),
        (Impl::RawOs, Workload::Queue1p1c | Workload::Queue2p2c) => {
            Some("blocking send/recv on a shared SOCK_SEQPACKET pair")
        }
        _ => None,
    };
    if let Some(note) = note {
        let _ = write!(line, ", \"note\": {}", json_string(note));
    }
    line.push('}');
    Some(line)
}

/// Runs one trial of `imp` on `w`, returning the value in `w.unit()`.
fn run_trial(
    rt: &tokio::runtime::Runtime,
    python: Option<&python::Python>,
    w: Workload,
    imp: Impl,
    n: u64,
) -> io::Result<Sample> {
    match (imp, w) {
        (Impl::PythonMp, _) => match python {
            Some(py) => py.run(w, n),
            None => Err(io::Error::other("python3 not available")),
        },
        (
            _,
            Workload::LockUncontended
            | Workload::LockContended2p
            | Workload::SemaphoreLimit
            | Workload::EventPingpong,
        ) => sync_bench::run(rt, w, imp, n),
        (_, Workload::Queue1p1c | Workload::Queue2p2c) => queue_bench::run(rt, w, imp, n),
        // manager (issue 15)
        (_, Workload::ManagerDict2p) => manager_bench::run(rt, imp, n),
        (_, Workload::FileLockUncontended | Workload::FileLockContended2p) => {
            file_lock_bench::run(rt, w, imp, n)
        }
        (
            Impl::Multiproc,
            Workload::PoolMapSmall | Workload::PoolMapSmallChunk1 | Workload::PoolApplyRoundtrip,
        ) => pool_bench::run(rt, w, n).map(Sample::from),
        // Named endpoints.
        (
            Impl::Multiproc,
            Workload::ConnRoundtripUnix
            | Workload::ConnRoundtripTcp
            | Workload::ConnAcceptUnix
            | Workload::ConnAcceptTcp,
        ) => conn_bench::run(rt, w, n).map(Sample::from),
        (Impl::Multiproc, _) => multiproc_impl::run(rt, w, n, false).map(Sample::from),
        (Impl::MultiprocBlocking, _) => multiproc_impl::run(rt, w, n, true).map(Sample::from),
        (Impl::RawOs, _) => raw::run(rt, w, n).map(Sample::from),
        (Impl::TokioReactor, _) => raw::reactor_pingpong(rt, n).map(Sample::from),
        (Impl::MultiprocBytes, _) => multiproc_impl::run_bytes(rt, w, n).map(Sample::from),
        (Impl::MultiprocShm, _) => multiproc_impl::run_shm(rt, w, n, false).map(Sample::from),
        (Impl::MultiprocShmFresh, _) => multiproc_impl::run_shm(rt, w, n, true).map(Sample::from),
        (Impl::MultiprocSink, _) => Err(io::Error::other("no multiproc-sink variant")),
        // manager (issue 15)
        (Impl::MultiprocBatch | Impl::MultiprocPipeline, _) => Err(io::Error::other(
            "batch and pipeline rows are the manager's only",
        )),
    }
}

/// The median of `values` (`None` when empty).
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median over trials of `num[t] / den[t]`: trial `t` of both ran back to back, so the ratio is
/// paired and machine noise that drifts between trials mostly cancels.
fn paired_ratio(num: Option<&Series>, den: Option<&Series>) -> String {
    let (Some(num), Some(den)) = (num, den) else {
        return "-".into();
    };
    let ratios: Vec<f64> = num
        .values
        .iter()
        .zip(&den.values)
        .filter(|(_, d)| **d != 0.0)
        .map(|(n, d)| n / d)
        .collect();
    median(&ratios).map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

fn summarize(w: Workload, all: &[Series], steal: Option<f64>) {
    let get = |imp: Impl| all.iter().find(|s| s.imp == imp);
    let (mp, raw, py) = (get(Impl::Multiproc), get(Impl::RawOs), get(Impl::PythonMp));
    // "speedup vs python": how many times better multiproc is, whatever the unit's direction.
    let vs_python = |s: Option<&Series>| {
        if w.higher_is_better() {
            paired_ratio(s, py)
        } else {
            paired_ratio(py, s)
        }
    };
    let speedup = vs_python(mp);
    let steal = steal.map_or_else(|| "?".into(), |s| format!("{s:.1}%"));
    eprintln!(
        "# {:<18} multiproc/raw-os = {:>6}   multiproc speedup vs python-mp = {:>6}x   \
         (medians of per-trial ratios; CPU steal {steal})",
        w.name(),
        paired_ratio(mp, raw),
        speedup
    );
    // manager (issue 15)
    for imp in [Impl::MultiprocBatch, Impl::MultiprocPipeline] {
        if let Some(s) = get(imp) {
            eprintln!(
                "# {:<18} {} speedup vs python-mp = {:>6}x",
                w.name(),
                imp.name(),
                vs_python(Some(s))
            );
        }
    }
    for imp in [Impl::MultiprocShm, Impl::MultiprocShmFresh] {
        if let Some(shm) = get(imp) {
            eprintln!(
                "# {:<18} {}/raw-os = {:>6}",
                w.name(),
                imp.name(),
                paired_ratio(Some(shm), raw),
            );
        }
    }
    if let Some(bytes) = get(Impl::MultiprocBytes) {
        eprintln!(
            "# {:<18} multiproc-bytes/raw-os = {:>6}   multiproc-bytes speedup vs python-mp = {:>6}x",
            w.name(),
            paired_ratio(Some(bytes), raw),
            vs_python(Some(bytes))
        );
    }
}

fn main() -> ExitCode {
    if std::env::var_os(EXIT_AT_ONCE_ENV).is_some() {
        // The raw-os spawn floor's child: exec'd, then straight out.
        return ExitCode::SUCCESS;
    }
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("multiproc-bench: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if opts.pin
        && let Err(e) = pin_to_cpu0()
    {
        eprintln!("multiproc-bench: cannot pin to CPU 0: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multiproc-bench: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let python = if opts.impls.is_empty() || opts.impls.contains(&Impl::PythonMp) {
        python::Python::find()
    } else {
        None
    };
    if python.is_none() && (opts.impls.is_empty() || opts.impls.contains(&Impl::PythonMp)) {
        eprintln!("# python3 not found: python-mp rows are skipped");
    }
    let workloads: Vec<Workload> = if opts.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        opts.only.clone()
    };
    let trials = opts.trials.unwrap_or(if opts.quick { 5 } else { 9 });
    let mut failed = false;
    for w in workloads {
        let n = w.n(opts.quick);
        let mut series: Vec<Series> = w
            .impls()
            .iter()
            .filter(|imp| **imp != Impl::PythonMp || python.is_some())
            .filter(|imp| opts.impls.is_empty() || opts.impls.contains(imp))
            .map(|&imp| Series {
                imp,
                values: Vec::new(),
                peaks: Vec::new(),
                error: None,
            })
            .collect();
        let start = CpuTimes::now();
        // Interleave: trial t of every implementation runs before trial t+1 of any.
        for _ in 0..trials {
            for s in &mut series {
                if s.error.is_some() {
                    continue;
                }
                match run_trial(&rt, python.as_ref(), w, s.imp, n) {
                    Ok(sample) => {
                        s.values.push(sample.value);
                        s.peaks.extend(sample.peak);
                    }
                    Err(e) => {
                        eprintln!("# {} {}: failed: {e}", w.name(), s.imp.name());
                        s.error = Some(e.to_string());
                        failed = true;
                    }
                }
            }
        }
        let steal = CpuTimes::now()
            .zip(start)
            .and_then(|(end, start)| end.steal_pct_since(start));
        for s in &series {
            if let Some(line) = json_line(w, s, n, opts.pin, steal) {
                println!("{line}");
            }
        }
        summarize(w, &series, steal);
        for s in &series {
            if w == Workload::SemaphoreLimit && s.peaks.iter().all(|p| *p < 2) {
                eprintln!(
                    "# {} {}: the peak never reached 2 holders (peaks {:?})",
                    w.name(),
                    s.imp.name(),
                    s.peaks
                );
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
