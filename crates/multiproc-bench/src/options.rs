//! The command line: `--quick`, `--pin`, `--only`, `--impl`, `--trials`.

use std::io;

use crate::{Impl, Workload};

/// Command-line options.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) pin: bool,
    pub(crate) only: Vec<Workload>,
    pub(crate) impls: Vec<Impl>,
    pub(crate) trials: Option<usize>,
}

pub(crate) const USAGE: &str = "\
usage: multiproc-bench [--quick] [--pin] [--only <workload>,...]... [--impl <impl>,...]... [--trials <k>]

  --quick        smaller n and 5 trials: the whole run takes well under a minute
  --pin          run everything (this process, its children, python) on CPU 0
  --only <w>     run only these workloads (repeatable or comma-separated):
                 pipe_pingpong_64B, pipe_stream_64B, pipe_stream_1MiB, spawn_join,
                 lock_uncontended, lock_contended_2p, semaphore_limit, event_pingpong,
                 queue_1p1c_64B, queue_2p2c_64B, queue_2p1c_64B, queue_4p1c_64B,
                 queue_8p1c_64B, queue_16p1c_64B, queue_1p2c_64B, queue_1p4c_64B,
                 pool_map_small, pool_map_small_chunk1,
                 pool_apply_roundtrip, conn_roundtrip_unix, conn_roundtrip_tcp,
                 conn_accept_unix, conn_accept_tcp, file_lock_uncontended,
                 file_lock_contended_2p, manager_dict_2p, spawn_concurrent_1,
                 spawn_concurrent_8, spawn_concurrent_64, memcpy_bandwidth,
                 cacheline_roundtrip, scale_<p>_fds, scale_<p>_shm_bytes,
                 scale_<p>_shm_resident, scale_<p>_max_1024fds for <p> = lock, event, semaphore, queue, pipe
  --impl <i>     run only these implementations (repeatable or comma-separated):
                 multiproc, multiproc-blocking, multiproc-sink, tokio-reactor, python-mp,
                 raw-os, multiproc-bytes, multiproc-borrowed, multiproc-shm, multiproc-shm-fresh, multiproc-batch, multiproc-pipeline, ipc-channel,
                 tokio-floor, tokio-codec, interprocess, procspawn,
                 machine, fork-exit-wait, pthread-robust
  --trials <k>   trials per implementation (default 9, quick 5); the median is reported

Prints one JSON line per (workload, impl) on stdout and a ratio summary on stderr.";

pub(crate) fn parse_options() -> Result<Options, String> {
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
pub(crate) fn pin_to_cpu0() -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}
