//! `multiproc-bench`: one scenario matrix, many implementations, same payloads.
//!
//! For every workload it measures `multiproc`, Python's `multiprocessing` (`python-mp`, a
//! stdlib-only script run with `python3`), the raw OS floor (`raw-os`: blocking syscalls
//! between processes: a socketpair for the pipes, futexes for the locks, eventfds for the
//! events, a `SOCK_SEQPACKET` pair for the queues) and, where they do the same job, the Rust
//! peers (`peers`): `ipc-channel` 0.22 (pipes and single-consumer queues), `interprocess` 2.x
//! and tokio's `UnixStream`, both with `LengthDelimitedCodec` + postcard (`interprocess`,
//! `tokio-codec`), the hand-rolled tokio floor (`tokio-floor`: a length prefix and buffered
//! I/O) and `procspawn` 1.0 (`spawn_join`). Every peer's other end runs in a separate process
//! (this binary re-executed with a role in its environment). Trials are interleaved (trial `t`
//! of every implementation before trial `t + 1` of any) so that the ratios are measured side by
//! side under the same machine noise.
//!
//! Workload families, one module each: the pipes and spawning (`multiproc_impl`, `raw`, the
//! peers), locks, semaphores and events (`sync_bench`), queues with 1 to 16 producers and 1 to
//! 4 consumers (`queue_bench`), the pool, the Manager, file locks and named endpoints, the
//! machine's limits (`physical`: `memcpy` bandwidth, a cache line bounced between two
//! processes) and the scale rows (`scale`: descriptors and shared bytes per primitive, the
//! most primitives under a 1,024-descriptor limit). Each result is one JSON line on stdout:
//!
//! ```text
//! {"workload": "pipe_pingpong_64B", "impl": "multiproc", "value": 21.4, "unit": "us_per_roundtrip", "n": 20000, ...}
//! ```
//!
//! `value` is the median over the trials (`min`/`max` are given too, and `steal_pct`, the CPU
//! time the hypervisor took meanwhile: a noise gauge); a row a peer cannot run has
//! `"value": null` and `not_applicable` saying why. The summary on stderr gives, for each row,
//! how many times better multiproc is than each peer and floor (`report`). Options
//! (`options`): `--quick` (small `n`, 5 trials: the whole matrix in a few minutes),
//! `--only <workload>` and `--impl <impl>` (repeatable, or comma lists), `--pin` (everything,
//! children included, on CPU 0), `--trials <k>`. The ping-pong also has two diagnostic rows,
//! `multiproc-blocking` and `tokio-reactor`; the contended lock, the event ping-pong and the
//! queues have `multiproc-blocking` (the `blocking_*` twins), the queues `multiproc-sink`
//! (`Sink`/`Stream`), the 1 MiB stream `multiproc-bytes` (the untyped
//! `send_bytes`/`recv_bytes`), and both streams `multiproc-borrowed` (`feed_ref`/`send_ref` and
//! `recv_borrowed`: no copy per message). Results and their reading: `docs/BENCHMARKS.md`.
#![forbid(unsafe_code)]

// manager (issue 15)
mod file_lock_bench;
mod manager_bench;
// Named endpoints (issue 13).
mod conn_bench;
mod multiproc_impl;
mod options;
mod payload;
mod peers;
mod physical;
mod pool_bench;
// The robust pthread mutex peer of the lock rows (issue 18).
mod pthread_bench;
mod python;
mod queue_bench;
mod raw;
mod report;
mod scale;
// Spawn rows (issue 18): the fork floor and concurrent spawns.
mod spawn_bench;
mod sync_bench;

use std::io;
use std::process::ExitCode;

use options::{USAGE, parse_options, pin_to_cpu0};
use report::{CpuTimes, Limits, Series, json_line, summarize};
use scale::{Measure, Primitive};

/// Set in the environment of the `raw-os` spawn floor's child: exit at the top of `main`.
pub(crate) const EXIT_AT_ONCE_ENV: &str = "MULTIPROC_BENCH_EXIT_AT_ONCE";

/// The queue workloads, as a pattern.
macro_rules! queue_workloads {
    () => {
        Workload::Queue1p1c
            | Workload::Queue2p2c
            | Workload::Queue2p1c
            | Workload::Queue4p1c
            | Workload::Queue8p1c
            | Workload::Queue16p1c
            | Workload::Queue1p2c
            | Workload::Queue1p4c
    };
}

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
    /// Queue scaling: `P` producer processes into one consumer process.
    Queue2p1c,
    Queue4p1c,
    Queue8p1c,
    Queue16p1c,
    /// Queue scaling: one producer process into `C` consumer processes.
    Queue1p2c,
    Queue1p4c,
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
    /// The machine's limit: `memcpy` bandwidth of a large buffer.
    MemcpyBandwidth,
    /// The machine's limit: one cache line bounced between two spinning processes.
    CachelineRoundtrip,
    /// What one primitive costs, or how many fit under a 1,024-descriptor limit (`scale`).
    Scale(scale::Primitive, scale::Measure),
    // Spawn rows (issue 18).
    /// Start 1 trivial child, then join it, in rounds (`spawn_bench`).
    SpawnConcurrent1,
    /// Start 8 trivial children at once, then join them all.
    SpawnConcurrent8,
    /// Start 64 trivial children at once, then join them all.
    SpawnConcurrent64,
}

impl Workload {
    const ALL: [Workload; 51] = [
        // The machine's limits first: the summary compares later rows with them.
        Workload::MemcpyBandwidth,
        Workload::CachelineRoundtrip,
        Workload::Pingpong64,
        Workload::Stream64,
        Workload::Stream1M,
        Workload::SpawnJoin,
        // Spawn rows (issue 18).
        Workload::SpawnConcurrent1,
        Workload::SpawnConcurrent8,
        Workload::SpawnConcurrent64,
        Workload::LockUncontended,
        Workload::LockContended2p,
        Workload::SemaphoreLimit,
        Workload::EventPingpong,
        Workload::Queue1p1c,
        Workload::Queue2p2c,
        Workload::Queue2p1c,
        Workload::Queue4p1c,
        Workload::Queue8p1c,
        Workload::Queue16p1c,
        Workload::Queue1p2c,
        Workload::Queue1p4c,
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
        Workload::Scale(Primitive::Lock, Measure::Fds),
        Workload::Scale(Primitive::Lock, Measure::ShmBytes),
        Workload::Scale(Primitive::Lock, Measure::ShmResident),
        Workload::Scale(Primitive::Lock, Measure::Max1024),
        Workload::Scale(Primitive::Event, Measure::Fds),
        Workload::Scale(Primitive::Event, Measure::ShmBytes),
        Workload::Scale(Primitive::Event, Measure::ShmResident),
        Workload::Scale(Primitive::Event, Measure::Max1024),
        Workload::Scale(Primitive::Semaphore, Measure::Fds),
        Workload::Scale(Primitive::Semaphore, Measure::ShmBytes),
        Workload::Scale(Primitive::Semaphore, Measure::ShmResident),
        Workload::Scale(Primitive::Semaphore, Measure::Max1024),
        Workload::Scale(Primitive::Queue, Measure::Fds),
        Workload::Scale(Primitive::Queue, Measure::ShmBytes),
        Workload::Scale(Primitive::Queue, Measure::ShmResident),
        Workload::Scale(Primitive::Queue, Measure::Max1024),
        Workload::Scale(Primitive::Pipe, Measure::Fds),
        Workload::Scale(Primitive::Pipe, Measure::ShmBytes),
        Workload::Scale(Primitive::Pipe, Measure::ShmResident),
        Workload::Scale(Primitive::Pipe, Measure::Max1024),
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
            Workload::Queue2p1c => "queue_2p1c_64B",
            Workload::Queue4p1c => "queue_4p1c_64B",
            Workload::Queue8p1c => "queue_8p1c_64B",
            Workload::Queue16p1c => "queue_16p1c_64B",
            Workload::Queue1p2c => "queue_1p2c_64B",
            Workload::Queue1p4c => "queue_1p4c_64B",
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
            Workload::MemcpyBandwidth => "memcpy_bandwidth",
            Workload::CachelineRoundtrip => "cacheline_roundtrip",
            Workload::Scale(p, m) => scale::workload_name(p, m),
            // Spawn rows (issue 18).
            Workload::SpawnConcurrent1 => "spawn_concurrent_1",
            Workload::SpawnConcurrent8 => "spawn_concurrent_8",
            Workload::SpawnConcurrent64 => "spawn_concurrent_64",
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
            queue_workloads!() => "msgs_per_s",
            Workload::PoolMapSmall | Workload::PoolMapSmallChunk1 => "items_per_s",
            Workload::PoolApplyRoundtrip => "us_per_task",
            // manager (issue 15)
            Workload::ManagerDict2p => "ops_per_s",
            Workload::FileLockUncontended => "ns_per_op",
            Workload::FileLockContended2p => "ops_per_s",
            // Named endpoints.
            Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp => "reqs_per_s",
            Workload::ConnAcceptUnix | Workload::ConnAcceptTcp => "conns_per_s",
            Workload::MemcpyBandwidth => "GB_per_s",
            Workload::CachelineRoundtrip => "ns_per_roundtrip",
            Workload::Scale(_, m) => m.unit(),
            // Spawn rows (issue 18).
            Workload::SpawnConcurrent1
            | Workload::SpawnConcurrent8
            | Workload::SpawnConcurrent64 => "procs_per_s",
        }
    }

    /// Whether a larger value is better (a throughput) or worse (a latency).
    fn higher_is_better(self) -> bool {
        if let Workload::Scale(_, m) = self {
            return m.higher_is_better();
        }
        matches!(
            self,
            Workload::Stream64
                | Workload::Stream1M
                | Workload::LockContended2p
                | Workload::SemaphoreLimit
                | queue_workloads!()
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
                | Workload::MemcpyBandwidth
                // Spawn rows (issue 18).
                | Workload::SpawnConcurrent1
                | Workload::SpawnConcurrent8
                | Workload::SpawnConcurrent64
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
            // Every queue shape moves the same number of messages in all.
            (queue_workloads!(), quick) => {
                if quick {
                    20_000
                } else {
                    100_000
                }
            }
            (Workload::PoolMapSmall, _) => 500_000,
            // Python's pool manages ~10k chunk-size-1 tasks a second here: 500k would take a
            // minute per trial. The rate does not depend on n at this size.
            (Workload::PoolMapSmallChunk1, false) => 20_000,
            (Workload::PoolMapSmallChunk1, true) => 5_000,
            (Workload::PoolApplyRoundtrip, false) => 2_000,
            (Workload::PoolApplyRoundtrip, true) => 500,
            // manager (issue 15): Python's Manager dict manages some 10k operations a second.
            // 4,000 operations made a batched or pipelined trial last 2-3 ms, less than the
            // warm-up it includes (first requests, maps growing): it measured the warm-up
            // (batches 56-73x Python at 4,000, 118-175x at 20,000 in the same hour). Python
            // takes about a second per trial at 20,000.
            (Workload::ManagerDict2p, _) => 20_000,
            (Workload::FileLockUncontended, false) => 200_000,
            (Workload::FileLockUncontended, true) => 50_000,
            (Workload::FileLockContended2p, false) => 100_000,
            (Workload::FileLockContended2p, true) => 20_000,
            // Named endpoints.
            (Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp, false) => 20_000,
            (Workload::ConnRoundtripUnix | Workload::ConnRoundtripTcp, true) => 5_000,
            (Workload::ConnAcceptUnix | Workload::ConnAcceptTcp, false) => 2_000,
            (Workload::ConnAcceptUnix | Workload::ConnAcceptTcp, true) => 500,
            // Copies of 64 MiB.
            (Workload::MemcpyBandwidth, false) => 32,
            (Workload::MemcpyBandwidth, true) => 8,
            (Workload::CachelineRoundtrip, false) => 1_000_000,
            (Workload::CachelineRoundtrip, true) => 100_000,
            (Workload::Scale(_, Measure::Max1024), false) => scale::MAX,
            (Workload::Scale(_, Measure::Max1024), true) => scale::MAX_QUICK,
            (Workload::Scale(..), _) => scale::K,
            // Spawn rows (issue 18).
            (
                Workload::SpawnConcurrent1
                | Workload::SpawnConcurrent8
                | Workload::SpawnConcurrent64,
                quick,
            ) => spawn_bench::n(self, quick),
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
                Impl::TokioFloor,
                Impl::TokioCodec,
                Impl::Interprocess,
                Impl::IpcChannel,
                Impl::PythonMp,
            ],
            // Spawn rows (issue 18): against fork + exit + wait and the re-exec floor.
            Workload::SpawnJoin => &[
                Impl::ForkExitWait,
                Impl::RawOs,
                Impl::Multiproc,
                Impl::Procspawn,
                Impl::PythonMp,
            ],
            Workload::SpawnConcurrent1
            | Workload::SpawnConcurrent8
            | Workload::SpawnConcurrent64 => &[
                Impl::ForkExitWait,
                Impl::RawOs,
                Impl::Multiproc,
                Impl::PythonMp,
            ],
            Workload::Stream64 => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBorrowed,
                Impl::MultiprocBatch,
                Impl::TokioFloor,
                Impl::TokioCodec,
                Impl::Interprocess,
                Impl::IpcChannel,
                Impl::PythonMp,
            ],
            Workload::Stream1M => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBorrowed,
                Impl::MultiprocBytes,
                Impl::MultiprocShm,
                Impl::MultiprocShmFresh,
                Impl::TokioFloor,
                Impl::TokioCodec,
                Impl::Interprocess,
                Impl::IpcChannel,
                Impl::PythonMp,
            ],
            Workload::LockUncontended => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::PthreadRobust,
                Impl::PythonMp,
            ],
            Workload::LockContended2p => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::MultiprocBlocking,
                Impl::PthreadRobust,
                Impl::PythonMp,
            ],
            Workload::EventPingpong => &[
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
                Impl::IpcChannel,
                Impl::PythonMp,
            ],
            // The scaling rows: the headline API against the floor and the peers.
            w if w.queue_shape().is_some() => &[
                Impl::RawOs,
                Impl::Multiproc,
                Impl::IpcChannel,
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
            // Reference rows: what the machine allows.
            Workload::MemcpyBandwidth | Workload::CachelineRoundtrip => &[Impl::Machine],
            Workload::Scale(..) => &[Impl::Multiproc, Impl::PythonMp],
            _ => &[Impl::RawOs, Impl::Multiproc, Impl::PythonMp],
        }
    }

    fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The queue workloads' (producer processes, consumer processes).
    pub(crate) fn queue_shape(self) -> Option<(u64, u64)> {
        Some(match self {
            Workload::Queue1p1c => (1, 1),
            Workload::Queue2p2c => (2, 2),
            Workload::Queue2p1c => (2, 1),
            Workload::Queue4p1c => (4, 1),
            Workload::Queue8p1c => (8, 1),
            Workload::Queue16p1c => (16, 1),
            Workload::Queue1p2c => (1, 2),
            Workload::Queue1p4c => (1, 4),
            _ => return None,
        })
    }

    /// Why `imp` cannot run this workload, for the rows a peer has no way to do.
    fn not_applicable(self, imp: Impl) -> Option<&'static str> {
        match (imp, self.queue_shape()) {
            (Impl::IpcChannel, Some((_, consumers))) if consumers > 1 => {
                Some(peers::ipc_channel::NO_MPMC)
            }
            _ => None,
        }
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
    /// Streams only: the sender feeds one value by reference (`feed_ref` / `send_ref`), the
    /// receiver decodes each message borrowed from the receive buffer (`recv_borrowed` as
    /// `&[u8]`): no clone, allocation or copy per message on either side.
    MultiprocBorrowed,
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
    /// servo's `ipc-channel` 0.22, typed blocking API (`peers::ipc_channel`).
    IpcChannel,
    /// The hand-rolled tokio floor: length prefix and buffered I/O (`peers::tokio_floor`).
    TokioFloor,
    /// tokio's `UnixStream` + `LengthDelimitedCodec` + postcard (`peers::tokio_codec`).
    TokioCodec,
    /// `interprocess` 2.x local sockets on tokio + `LengthDelimitedCodec` + postcard
    /// (`peers::interprocess`).
    Interprocess,
    /// `procspawn` 1.0 (`peers::procspawn`), spawning only.
    Procspawn,
    /// The machine's limits (`physical`): no library at all.
    Machine,
    // Spawn rows (issue 18).
    /// Spawn rows only: `fork`, the child `_exit`s at once, the parent waits.
    ForkExitWait,
    /// Locks only: glibc's robust process-shared `pthread_mutex_t` in shared memory (issue 18).
    PthreadRobust,
}

impl Impl {
    const ALL: [Impl; 20] = [
        Impl::Multiproc,
        Impl::MultiprocBlocking,
        Impl::MultiprocSink,
        Impl::MultiprocBytes,
        Impl::MultiprocBorrowed,
        Impl::MultiprocShm,
        Impl::MultiprocShmFresh,
        Impl::PythonMp,
        Impl::RawOs,
        Impl::TokioReactor,
        // manager (issue 15)
        Impl::MultiprocBatch,
        Impl::MultiprocPipeline,
        Impl::IpcChannel,
        Impl::TokioFloor,
        Impl::TokioCodec,
        Impl::Interprocess,
        Impl::Procspawn,
        Impl::Machine,
        // Spawn rows (issue 18).
        Impl::ForkExitWait,
        Impl::PthreadRobust,
    ];

    fn parse(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// multiproc itself or one of its variants (the rest are peers and floors).
    fn is_multiproc(self) -> bool {
        self.name().starts_with("multiproc")
    }

    fn name(self) -> &'static str {
        match self {
            Impl::Multiproc => "multiproc",
            Impl::MultiprocBlocking => "multiproc-blocking",
            Impl::MultiprocSink => "multiproc-sink",
            Impl::MultiprocBytes => "multiproc-bytes",
            Impl::MultiprocBorrowed => "multiproc-borrowed",
            Impl::MultiprocShm => "multiproc-shm",
            Impl::MultiprocShmFresh => "multiproc-shm-fresh",
            Impl::PythonMp => "python-mp",
            Impl::RawOs => "raw-os",
            Impl::TokioReactor => "tokio-reactor",
            // manager (issue 15)
            Impl::MultiprocBatch => "multiproc-batch",
            Impl::MultiprocPipeline => "multiproc-pipeline",
            Impl::IpcChannel => "ipc-channel",
            Impl::TokioFloor => "tokio-floor",
            Impl::TokioCodec => "tokio-codec",
            Impl::Interprocess => "interprocess",
            Impl::Procspawn => "procspawn",
            Impl::Machine => "machine",
            // Spawn rows (issue 18).
            Impl::ForkExitWait => "fork-exit-wait",
            Impl::PthreadRobust => "pthread-robust",
        }
    }
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

/// Runs one trial of `imp` on `w`, returning the value in `w.unit()`.
fn run_trial(
    rt: &tokio::runtime::Runtime,
    python: Option<&python::Python>,
    w: Workload,
    imp: Impl,
    n: u64,
) -> io::Result<Sample> {
    match (imp, w) {
        (Impl::PthreadRobust, _) => pthread_bench::run(rt, w, n),
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
        (Impl::IpcChannel, w) if w.queue_shape().is_some() => {
            let (producers, consumers) = w.queue_shape().unwrap_or((1, 1));
            peers::ipc_channel::queue(producers, consumers, n).map(Sample::from)
        }
        (_, w) if w.queue_shape().is_some() => queue_bench::run(rt, w, imp, n),
        // manager (issue 15)
        (_, Workload::ManagerDict2p) => manager_bench::run(rt, imp, n),
        // Spawn rows (issue 18).
        (Impl::ForkExitWait, _) => spawn_bench::run(rt, w, imp, n).map(Sample::from),
        (
            _,
            Workload::SpawnConcurrent1 | Workload::SpawnConcurrent8 | Workload::SpawnConcurrent64,
        ) => spawn_bench::run(rt, w, imp, n).map(Sample::from),
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
        (Impl::MultiprocBorrowed, _) => multiproc_impl::run_borrowed(rt, w, n).map(Sample::from),
        (Impl::MultiprocShm, _) => multiproc_impl::run_shm(rt, w, n, false).map(Sample::from),
        (Impl::MultiprocShmFresh, _) => multiproc_impl::run_shm(rt, w, n, true).map(Sample::from),
        (Impl::IpcChannel, _) => peers::ipc_channel::pipe(w, n).map(Sample::from),
        (Impl::TokioFloor, _) => peers::tokio_floor::pipe(rt, w, n).map(Sample::from),
        (Impl::TokioCodec, _) => peers::tokio_codec::pipe(rt, w, n).map(Sample::from),
        (Impl::Interprocess, _) => peers::interprocess::pipe(rt, w, n).map(Sample::from),
        (Impl::Procspawn, Workload::SpawnJoin) => peers::procspawn::spawn_join(n).map(Sample::from),
        (Impl::Procspawn, _) => Err(io::Error::other("procspawn only runs spawn_join")),
        (Impl::Machine, Workload::MemcpyBandwidth) => {
            physical::memcpy_bandwidth(n).map(Sample::from)
        }
        (Impl::Machine, Workload::CachelineRoundtrip) => {
            physical::cacheline_roundtrip(rt, n).map(Sample::from)
        }
        (Impl::Machine, _) => Err(io::Error::other("not a reference row")),
        (Impl::MultiprocSink, _) => Err(io::Error::other("no multiproc-sink variant")),
        (Impl::MultiprocBatch, Workload::Stream64) => {
            multiproc_impl::run_many(rt, n).map(Sample::from)
        }
        // manager (issue 15)
        (Impl::MultiprocBatch | Impl::MultiprocPipeline, _) => Err(io::Error::other(
            "batch and pipeline rows are the manager's and the 64 B stream's only",
        )),
    }
}

fn main() -> ExitCode {
    // procspawn's children are this binary too: its setup line comes first.
    procspawn::init();
    if std::env::var_os(EXIT_AT_ONCE_ENV).is_some() {
        // The raw-os spawn floor's child: exec'd, then straight out.
        return ExitCode::SUCCESS;
    }
    if let Some(code) = peers::child_main() {
        // A peer's other end: this binary re-executed with a role.
        return code;
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
    let mut limits = Limits::default();
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
                not_applicable: w.not_applicable(imp),
                scale: None,
            })
            .collect();
        let start = CpuTimes::now();
        // Counts do not vary from trial to trial.
        let trials = if matches!(w, Workload::Scale(..)) {
            1
        } else {
            trials
        };
        // Interleave: trial t of every implementation runs before trial t+1 of any.
        for _ in 0..trials {
            for s in &mut series {
                if s.error.is_some() || s.not_applicable.is_some() {
                    continue;
                }
                let result = match w {
                    Workload::Scale(p, m) => {
                        scale::run(p, m, s.imp, python.as_ref(), n).map(|(sample, found)| {
                            s.scale = Some(found);
                            sample
                        })
                    }
                    _ => run_trial(&rt, python.as_ref(), w, s.imp, n),
                };
                match result {
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
        summarize(w, &series, steal, &mut limits);
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
