//! What the benchmark reports: one JSON line per (workload, implementation) on stdout, and a
//! summary on stderr with, for each row, how many times better multiproc is than each peer
//! and floor (medians of per-trial ratios), the scale rows' counts, and the ping-pong and the
//! 1 MiB stream against the machine's limits measured in the same run.

use std::fmt::Write as _;

use crate::scale::{self, Measure};
use crate::{Impl, Workload};

/// Aggregate CPU time counters from the first line of `/proc/stat` (in clock ticks).
#[derive(Clone, Copy)]
pub(crate) struct CpuTimes {
    total: u64,
    steal: u64,
}

impl CpuTimes {
    pub(crate) fn now() -> Option<CpuTimes> {
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
    pub(crate) fn steal_pct_since(self, earlier: CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| 100.0 * steal as f64 / total as f64)
    }
}

/// The trial values of one implementation for one workload.
pub(crate) struct Series {
    pub(crate) imp: Impl,
    pub(crate) values: Vec<f64>,
    /// `semaphore_limit`: the peak number of concurrent holders seen in each trial.
    pub(crate) peaks: Vec<u64>,
    pub(crate) error: Option<String>,
    /// Why this implementation cannot run the workload (a row without figures).
    pub(crate) not_applicable: Option<&'static str>,
    /// The scale rows: what the last trial found besides its value.
    pub(crate) scale: Option<scale::Found>,
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

pub(crate) fn json_line(
    w: Workload,
    s: &Series,
    n: u64,
    pinned: bool,
    steal: Option<f64>,
) -> Option<String> {
    if let Some(why) = s.not_applicable {
        return Some(format!(
            "{{\"workload\": {}, \"impl\": {}, \"value\": null, \"unit\": {}, \"n\": {n}, \
             \"pinned\": {pinned}, \"not_applicable\": {}}}",
            json_string(w.name()),
            json_string(s.imp.name()),
            json_string(w.unit()),
            json_string(why),
        ));
    }
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
            w if w.queue_shape().is_some() => "Queue().put/get of bytes (pickled)",
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
            // Spawn rows (issue 18).
            Workload::SpawnConcurrent1
            | Workload::SpawnConcurrent8
            | Workload::SpawnConcurrent64 => {
                "k x get_context('fork').Process(target=noop).start(), then join() each"
            }
            Workload::Scale(..) => {
                "Lock(), Event(), Semaphore(1), Queue() or Pipe() created in a loop (bench_scale.py)"
            }
            _ => "Pipe() Connection.send/recv of bytes (pickled), fork",
        };
        let _ = write!(line, ", \"api\": {}", json_string(api));
    }
    if let Some(found) = &s.scale {
        if w.unit() == Measure::Max1024.unit() {
            let _ = write!(line, ", \"capped\": {}", found.capped);
        }
        if let Some(e) = &found.stopped_by {
            let _ = write!(line, ", \"stopped_by\": {}", json_string(e));
        }
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
        (Impl::MultiprocBorrowed, _) => {
            Some("feed_ref/send_ref of one value, recv_borrowed as &[u8]: no copy per message")
        }
        (Impl::MultiprocBatch, Workload::Stream64) => {
            Some("feed_ref of one value, recv_many_borrowed (up to 1024 a call) decoding &[u8]")
        }
        (Impl::MultiprocShm, _) => Some(
            "one SharedBytes (sealed memfd) sent n times: the handover alone; receiver reads a byte per page",
        ),
        (Impl::MultiprocShmFresh, _) => Some(
            "SharedBytes::copy_from_slice per message (one copy into a new sealed memfd); receiver reads a byte per page",
        ),
        (Impl::RawOs, Workload::LockUncontended | Workload::LockContended2p) => {
            Some("futex mutex in shared memory: CAS to lock, fetch_sub to unlock")
        }
        (Impl::PthreadRobust, _) => Some("robust process-shared pthread_mutex_t in shared memory"),
        (Impl::RawOs, Workload::SemaphoreLimit) => Some("futex counting semaphore"),
        (Impl::RawOs, Workload::EventPingpong) => Some("blocking eventfd read/write"),
        // Spawn rows (issue 18).
        (Impl::ForkExitWait, _) => Some("fork(); the child _exit(0)s at once; waitpid"),
        (
            Impl::RawOs,
            Workload::SpawnJoin
            | Workload::SpawnConcurrent1
            | Workload::SpawnConcurrent8
            | Workload::SpawnConcurrent64,
        ) => Some("fork + exec of this executable, which exits at the top of main; wait"),
        (Impl::Machine, Workload::MemcpyBandwidth) => {
            Some("one process, memcpy of a 64 MiB buffer into another")
        }
        (Impl::Machine, Workload::CachelineRoundtrip) if pinned => Some(
            "both processes on CPU 0: a waiter yields the CPU, so a round trip is two context switches",
        ),
        (Impl::Machine, Workload::CachelineRoundtrip) => Some(
            "a shared counter bounced between two spinning processes placed on two different CPUs",
        ),
        (Impl::RawOs, w) if w.queue_shape().is_some() => {
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

/// The machine's limits measured so far in this run (the reference rows run first).
#[derive(Default)]
pub(crate) struct Limits {
    memcpy_gb_per_s: Option<f64>,
    cacheline_ns: Option<f64>,
}

pub(crate) fn summarize(w: Workload, all: &[Series], steal: Option<f64>, limits: &mut Limits) {
    let get = |imp: Impl| all.iter().find(|s| s.imp == imp);
    if let Some(machine) = get(Impl::Machine) {
        let value = machine.median();
        match w {
            Workload::MemcpyBandwidth => limits.memcpy_gb_per_s = value,
            Workload::CachelineRoundtrip => limits.cacheline_ns = value,
            _ => {}
        }
        eprintln!(
            "# {:<18} the machine's limit: {} {} (a reference row)",
            w.name(),
            value.map_or_else(|| "-".into(), json_number),
            w.unit()
        );
        return;
    }
    let (mp, raw, py) = (get(Impl::Multiproc), get(Impl::RawOs), get(Impl::PythonMp));
    // "speedup vs python": how many times better multiproc is, whatever the unit's direction.
    let vs_python = |s: Option<&Series>| {
        if w.higher_is_better() {
            paired_ratio(s, py)
        } else {
            paired_ratio(py, s)
        }
    };
    if let Workload::Scale(..) = w {
        let mut values = String::new();
        for s in all {
            let value = match (s.median(), &s.scale) {
                (_, Some(found)) if found.capped => format!(">= {}", json_number(found.value)),
                (Some(v), _) => json_number(v),
                (None, _) => "-".into(),
            };
            let _ = write!(values, "  {} {value}", s.imp.name());
        }
        eprintln!("# {:<18}{values} ({})", w.name(), w.unit());
        return;
    }
    let steal = steal.map_or_else(|| "?".into(), |s| format!("{s:.1}%"));
    // multiproc against every peer and floor of the row, each "how many times better"
    // (above 1: multiproc is faster), whatever the unit's direction.
    let mut versus = String::new();
    for s in all.iter().filter(|s| !s.imp.is_multiproc()) {
        let ratio = match s.not_applicable {
            Some(_) => "n/a".to_string(),
            None if w.higher_is_better() => paired_ratio(mp, Some(s)) + "x",
            None => paired_ratio(Some(s), mp) + "x",
        };
        let _ = write!(versus, "  {} {ratio}", s.imp.name());
    }
    eprintln!(
        "# {:<18} multiproc vs{versus}   (>1: multiproc better; medians of per-trial ratios; \
         CPU steal {steal})",
        w.name(),
    );
    // Against the machine's limits, where this run measured them.
    let mp_median = mp.and_then(Series::median);
    match (w, mp_median, limits.cacheline_ns, limits.memcpy_gb_per_s) {
        (Workload::Pingpong64, Some(us), Some(ns), _) => eprintln!(
            "# {:<18} multiproc takes {:.1}x the cache-line round trip ({} ns)",
            w.name(),
            us * 1e3 / ns,
            json_number(ns)
        ),
        (Workload::Stream1M, Some(mib), _, Some(gb)) => eprintln!(
            "# {:<18} multiproc moves {:.2}x the memcpy bandwidth ({} GB/s)",
            w.name(),
            mib * (1u64 << 20) as f64 / 1e9 / gb,
            json_number(gb)
        ),
        _ => {}
    }
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
    for imp in [Impl::MultiprocBorrowed, Impl::MultiprocBatch] {
        if let Some(s) = get(imp).filter(|_| get(Impl::TokioFloor).is_some()) {
            eprintln!(
                "# {:<18} {}/tokio-floor = {:>6}   {}/raw-os = {:>6}",
                w.name(),
                imp.name(),
                paired_ratio(Some(s), get(Impl::TokioFloor)),
                imp.name(),
                paired_ratio(Some(s), raw),
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
