//! The `python-mp` implementation: `python/bench_mp.py` (stdlib only), run with `python3`.
//!
//! The script is compiled into the binary and run with `python3 -c`, one trial per call so that
//! its trials interleave with the other implementations'. It prints the same JSON line as this
//! binary; only `value` is read back.

use std::io;
use std::process::{Command, Stdio};

use crate::{Sample, Workload};

/// The script, as it is in `crates/multiproc-bench/python/bench_mp.py`.
const SCRIPT: &str = include_str!("../python/bench_mp.py");
// manager (issue 15)
/// The manager's script, `crates/multiproc-bench/python/bench_manager.py`.
const MANAGER_SCRIPT: &str = include_str!("../python/bench_manager.py");
// Spawn rows (issue 18).
/// The concurrent-spawn script, `crates/multiproc-bench/python/bench_spawn.py`.
const SPAWN_SCRIPT: &str = include_str!("../python/bench_spawn.py");

/// A working `python3` with `multiprocessing`.
pub(crate) struct Python {
    program: String,
}

impl Python {
    /// Finds `python3` (or `$MULTIPROC_BENCH_PYTHON`); `None` when it is absent or broken.
    /// The interpreter inherits this process's CPU affinity, so `--pin` applies to it too.
    pub(crate) fn find() -> Option<Python> {
        let program =
            std::env::var("MULTIPROC_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let ok = Command::new(&program)
            .args(["-c", "import multiprocessing"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Python { program })
    }

    /// Runs one trial of `w` with `n` operations and returns its value (and peak, if any).
    pub(crate) fn run(&self, w: Workload, n: u64) -> io::Result<Sample> {
        let text = self.run_script(
            script(w),
            &["--only", w.name(), "--trials", "1"],
            &[("--n", n)],
        )?;
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"workload\": \"{}\"", w.name())));
        let value = line.and_then(|l| json_field(l, "value"));
        let peak = line.and_then(|l| json_field(l, "peak")).map(|p| p as u64);
        match value {
            Some(value) => Ok(Sample { value, peak }),
            None => Err(io::Error::other(format!(
                "no result in python output: {text:?}"
            ))),
        }
    }
}

impl Python {
    /// Runs `script` with `args` and the numeric options `numbers`; its standard output.
    pub(crate) fn run_script(
        &self,
        script: &str,
        args: &[&str],
        numbers: &[(&str, u64)],
    ) -> io::Result<String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(["-c", script]).args(args);
        for (option, value) in numbers {
            cmd.arg(option).arg(value.to_string());
        }
        let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "python3 {args:?} failed: {}",
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

// manager (issue 15)
/// The script that measures `w`.
fn script(w: Workload) -> &'static str {
    match w {
        Workload::ManagerDict2p => MANAGER_SCRIPT,
        // Spawn rows (issue 18).
        Workload::SpawnConcurrent1 | Workload::SpawnConcurrent8 | Workload::SpawnConcurrent64 => {
            SPAWN_SCRIPT
        }
        _ => SCRIPT,
    }
}

/// The number after `"<key>":` in one of our JSON lines.
fn json_field(line: &str, key: &str) -> Option<f64> {
    let tag = format!("\"{key}\":");
    let rest = &line[line.find(&tag)? + tag.len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}
