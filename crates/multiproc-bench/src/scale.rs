//! The scale rows: what one primitive costs and how many fit under the usual descriptor limit,
//! multiproc against Python's `multiprocessing` (`python/bench_scale.py`).
//!
//! For each primitive (`Lock`, `Event`, `Semaphore(1)`, `Queue` of `u64`, and a duplex `Pipe`
//! counted as one pair of ends; Python's `Lock()`, `Event()`, `Semaphore(1)`, `Queue()`,
//! `Pipe()`), three rows, each measured in a fresh process (this binary re-executed as
//! `scale/<measure>`, or `python3`) with nothing else of the library created before:
//!
//! - `scale_<primitive>_fds` (fds_per_primitive): entries of `/proc/self/fd` before and after
//!   creating [`K`] of them, divided by the number created. The soft descriptor limit is
//!   raised to the hard one first; should creation fail earlier, the count created is the
//!   divisor.
//! - `scale_<primitive>_shm_bytes` (bytes_per_primitive): the same for the sizes of the
//!   shared mappings in `/proc/self/smaps` (those whose permissions end in `s`: memfd regions,
//!   Python's `sem_open` pages): address space mapped, touched or not.
//! - `scale_<primitive>_shm_resident` (bytes_per_primitive): the same for the resident part of
//!   those mappings (`Rss`): the shared memory the primitives actually occupy.
//! - `scale_<primitive>_max_1024fds` (primitives): with the soft *and* hard `RLIMIT_NOFILE`
//!   set to 1,024 at the start of the process (so a library that raises its soft limit to the
//!   hard one cannot escape the measurement), primitives are created and kept until creation
//!   fails or [`MAX`] exist ([`MAX_QUICK`] with `--quick`: Python takes a minute or two to
//!   create 65,000 locks on a loaded machine); the row reports the count (`capped` when it
//!   reached the cap, i.e. ">= 100000") and the error that stopped it.
//!
//! Counts do not depend on the machine's load; one trial is run.

use std::io::{self, Read};
use std::process::Stdio;

use crate::peers::{PeerChild, child_runtime, with_patience};
use crate::python::Python;
use crate::{Impl, Sample, other};

/// The role prefix of the measuring children.
pub(crate) const PEER: &str = "scale";
/// How many primitives the per-primitive rows create.
pub(crate) const K: u64 = 1_000;
/// Where the `max_1024fds` rows stop counting.
pub(crate) const MAX: u64 = 100_000;
/// The same with `--quick`.
pub(crate) const MAX_QUICK: u64 = 10_000;
/// The descriptor limit (soft and hard) of the `max_1024fds` rows.
const LIMIT: u64 = 1_024;

/// The Python side, `crates/multiproc-bench/python/bench_scale.py`.
const SCRIPT: &str = include_str!("../python/bench_scale.py");

/// The primitives measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Primitive {
    Lock,
    Event,
    Semaphore,
    Queue,
    Pipe,
}

/// What a scale row reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Measure {
    /// Descriptors per primitive.
    Fds,
    /// Bytes of shared mappings per primitive.
    ShmBytes,
    /// Resident bytes of shared mappings per primitive.
    ShmResident,
    /// Primitives creatable under a 1,024-descriptor limit.
    Max1024,
}

impl Primitive {
    fn name(self) -> &'static str {
        match self {
            Primitive::Lock => "lock",
            Primitive::Event => "event",
            Primitive::Semaphore => "semaphore",
            Primitive::Queue => "queue",
            Primitive::Pipe => "pipe",
        }
    }

    fn parse(name: &str) -> io::Result<Primitive> {
        [
            Primitive::Lock,
            Primitive::Event,
            Primitive::Semaphore,
            Primitive::Queue,
            Primitive::Pipe,
        ]
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| io::Error::other(format!("no primitive {name:?}")))
    }
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Fds => "fds",
            Measure::ShmBytes => "shm_bytes",
            Measure::ShmResident => "shm_resident",
            Measure::Max1024 => "max",
        }
    }

    pub(crate) fn unit(self) -> &'static str {
        match self {
            Measure::Fds => "fds_per_primitive",
            Measure::ShmBytes | Measure::ShmResident => "bytes_per_primitive",
            Measure::Max1024 => "primitives",
        }
    }

    /// Fewer descriptors and bytes are better; more primitives are.
    pub(crate) fn higher_is_better(self) -> bool {
        self == Measure::Max1024
    }
}

/// The workload name of a scale row.
pub(crate) fn workload_name(p: Primitive, m: Measure) -> &'static str {
    use {Measure::*, Primitive::*};
    match (p, m) {
        (Lock, Fds) => "scale_lock_fds",
        (Lock, ShmBytes) => "scale_lock_shm_bytes",
        (Lock, ShmResident) => "scale_lock_shm_resident",
        (Lock, Max1024) => "scale_lock_max_1024fds",
        (Event, Fds) => "scale_event_fds",
        (Event, ShmBytes) => "scale_event_shm_bytes",
        (Event, ShmResident) => "scale_event_shm_resident",
        (Event, Max1024) => "scale_event_max_1024fds",
        (Semaphore, Fds) => "scale_semaphore_fds",
        (Semaphore, ShmBytes) => "scale_semaphore_shm_bytes",
        (Semaphore, ShmResident) => "scale_semaphore_shm_resident",
        (Semaphore, Max1024) => "scale_semaphore_max_1024fds",
        (Queue, Fds) => "scale_queue_fds",
        (Queue, ShmBytes) => "scale_queue_shm_bytes",
        (Queue, ShmResident) => "scale_queue_shm_resident",
        (Queue, Max1024) => "scale_queue_max_1024fds",
        (Pipe, Fds) => "scale_pipe_fds",
        (Pipe, ShmBytes) => "scale_pipe_shm_bytes",
        (Pipe, ShmResident) => "scale_pipe_shm_resident",
        (Pipe, Max1024) => "scale_pipe_max_1024fds",
    }
}

/// What one measuring process found.
pub(crate) struct Found {
    pub(crate) value: f64,
    /// `Max1024`: the count reached [`MAX`].
    pub(crate) capped: bool,
    /// `Max1024`: the error that stopped creation, if one did.
    pub(crate) stopped_by: Option<String>,
}

/// One scale row for `imp` (multiproc or Python); `cap` is where `Max1024` stops counting.
pub(crate) fn run(
    p: Primitive,
    m: Measure,
    imp: Impl,
    python: Option<&Python>,
    cap: u64,
) -> io::Result<(Sample, Found)> {
    let line = match imp {
        Impl::Multiproc => {
            let mut child = PeerChild::spawn_with(
                &format!("{PEER}/{}", m.name()),
                &format!("{},{cap}", p.name()),
                |cmd| {
                    cmd.stdout(Stdio::piped());
                },
            )?;
            let mut stdout = child
                .take_stdout()
                .ok_or_else(|| io::Error::other("no stdout"))?;
            let out = with_patience("scale child", move || {
                let mut s = String::new();
                stdout.read_to_string(&mut s).map(|_| s)
            })??;
            child.join()?;
            out
        }
        Impl::PythonMp => {
            let py = python.ok_or_else(|| io::Error::other("python3 not available"))?;
            py.run_script(
                SCRIPT,
                &["--primitive", p.name(), "--measure", m.name()],
                &[("--k", K), ("--max", cap), ("--limit", LIMIT)],
            )?
        }
        _ => return Err(io::Error::other("scale rows compare multiproc and Python")),
    };
    let found = parse(&line)?;
    Ok((Sample::from(found.value), found))
}

/// Reads `value=<v> capped=<0|1> stopped=<text>` (the last field to the end of the line).
fn parse(out: &str) -> io::Result<Found> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("value="))
        .ok_or_else(|| io::Error::other(format!("no result in {out:?}")))?;
    let field = |key: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let value = field("value")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad result {line:?}")))?;
    let stopped_by = line
        .split_once(" stopped=")
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty());
    Ok(Found {
        value,
        capped: field("capped") == Some("1"),
        stopped_by,
    })
}

/// The descriptors open in this process.
fn open_fds() -> io::Result<u64> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// Bytes of this process's shared mappings: `(mapped, resident)`.
fn shared_mapping_bytes() -> io::Result<(u64, u64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let (mut mapped, mut resident) = (0, 0);
    let mut shared = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), Some(second)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: `start-end perms offset dev inode [path]`.
            shared = second.ends_with('s');
            if shared {
                let start = u64::from_str_radix(start, 16).map_err(other)?;
                let end = u64::from_str_radix(end, 16).map_err(other)?;
                mapped += end - start;
            }
        } else if shared && first == "Rss:" {
            resident += second.parse::<u64>().map_err(other)? * 1024;
        }
    }
    Ok((mapped, resident))
}

/// A created primitive, kept alive until the measurement is done.
type Kept = Box<dyn std::any::Any>;

fn create(p: Primitive) -> Result<Kept, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match p {
        Primitive::Lock => Box::new(multiproc::Lock::new().map_err(|e| s(&e))?),
        Primitive::Event => Box::new(multiproc::Event::new().map_err(|e| s(&e))?),
        Primitive::Semaphore => Box::new(multiproc::Semaphore::new(1).map_err(|e| s(&e))?),
        Primitive::Queue => Box::new(multiproc::Queue::<u64>::new().map_err(|e| s(&e))?),
        Primitive::Pipe => Box::new(multiproc::pipe::duplex::<u64, u64>().map_err(|e| s(&e))?),
    })
}

/// Creates up to `max` primitives; the ones created, and the error that stopped it.
fn create_many(p: Primitive, max: u64) -> (Vec<Kept>, Option<String>) {
    let mut kept = Vec::new();
    while (kept.len() as u64) < max {
        match create(p) {
            Ok(k) => kept.push(k),
            Err(e) => return (kept, Some(e)),
        }
    }
    (kept, None)
}

/// A measuring child (`scale/<measure>`, the primitive as argument): prints its result line.
pub(crate) fn child(measure: &str, arg: &str) -> io::Result<()> {
    let (primitive, cap) = arg
        .split_once(',')
        .ok_or_else(|| io::Error::other(format!("bad argument {arg:?}")))?;
    let p = Primitive::parse(primitive)?;
    let cap: u64 = cap.parse().map_err(other)?;
    let rt = child_runtime()?;
    let _runtime = rt.enter();
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let line = match measure {
        "max" => {
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(LIMIT),
                    maximum: Some(LIMIT),
                },
            )?;
            let (kept, stopped) = create_many(p, cap);
            let count = kept.len() as u64;
            drop(kept);
            format!(
                "value={count} capped={} stopped={}",
                u8::from(count >= cap),
                stopped.unwrap_or_default().replace('\n', " ")
            )
        }
        "fds" | "shm_bytes" | "shm_resident" => {
            let hard = getrlimit(Resource::Nofile).maximum;
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: hard,
                    maximum: hard,
                },
            )?;
            let measure_now = || match measure {
                "fds" => open_fds(),
                "shm_bytes" => shared_mapping_bytes().map(|(mapped, _)| mapped),
                _ => shared_mapping_bytes().map(|(_, resident)| resident),
            };
            let before = measure_now()?;
            let (kept, stopped) = create_many(p, K);
            let after = measure_now()?;
            let count = kept.len() as u64;
            drop(kept);
            if count == 0 {
                return Err(io::Error::other(format!(
                    "no {primitive} could be created: {stopped:?}"
                )));
            }
            let per = after.saturating_sub(before) as f64 / count as f64;
            format!("value={per} capped=0 stopped=")
        }
        _ => return Err(io::Error::other(format!("no measure {measure:?}"))),
    };
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_result_line_parses_with_its_error_text() {
        let found = parse("noise\nvalue=506 capped=0 stopped=too many open files (os error 24)\n")
            .expect("parses");
        assert_eq!(found.value, 506.0);
        assert!(!found.capped);
        assert_eq!(
            found.stopped_by.as_deref(),
            Some("too many open files (os error 24)")
        );
    }

    #[test]
    fn a_capped_line_has_no_error() {
        let found = parse("value=100000 capped=1 stopped=").expect("parses");
        assert!(found.capped);
        assert_eq!(found.stopped_by, None);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("value=many capped=0 stopped=").is_err());
    }
}
