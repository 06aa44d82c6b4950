//! The machine's limits (`impl: "machine"`), reference rows no implementation can beat:
//!
//! - `memcpy_bandwidth` (GB_per_s, 10^9 bytes): one process copies a 64 MiB buffer into another
//!   (`copy_from_slice`, i.e. `memcpy`) `n` times, after one untimed copy that faults every
//!   page in. Buffers far larger than the caches, so this is memory bandwidth: the ceiling of
//!   any copy a large message makes.
//! - `cacheline_roundtrip` (ns_per_roundtrip): two processes bounce one 8-byte counter in a
//!   shared page (`multiproc::SharedMemory`, the child started with `multiproc::spawn`,
//!   untimed): the parent stores an odd value and spins until the child has stored the next
//!   even one, `n` times (after `n / 10` warm-up rounds). Unpinned, the benchmark places the
//!   parent on the first CPU it may use and the child on the second, so the row is what a
//!   cache line costs to travel between two CPUs and back: the floor of any cross-process
//!   hand-off (a ping-pong, a lock passing between processes). With `--pin` both run on CPU 0:
//!   a waiter yields the CPU (`sched_yield`) at once instead of spinning, and the row is the
//!   cost of two context switches, the floor of a hand-off on one CPU.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use multiproc::SharedMemory;
use rustix::thread::CpuSet;

use crate::other;
use crate::sync_bench::PATIENCE;

/// The size of each `memcpy_bandwidth` buffer.
const COPY_LEN: usize = 64 << 20;
/// The counter value that tells the cache-line child to stop.
const STOP: u64 = u64::MAX;
/// Spins on the shared word before each yield when the two sides have CPUs of their own.
const SPINS: u32 = 1 << 20;

/// `memcpy_bandwidth`: GB per second over `n` copies of [`COPY_LEN`] bytes.
pub(crate) fn memcpy_bandwidth(n: u64) -> io::Result<f64> {
    let src: Vec<u8> = (0..COPY_LEN).map(|i| i as u8).collect();
    let mut dst = vec![0u8; COPY_LEN];
    dst.copy_from_slice(&src);
    let t0 = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let secs = t0.elapsed().as_secs_f64();
    if dst[COPY_LEN - 1] != src[COPY_LEN - 1] {
        return Err(io::Error::other("the copy did not copy"));
    }
    Ok(n as f64 * COPY_LEN as f64 / secs / 1e9)
}

/// Waits until `word` holds `want` (or [`STOP`]) and returns what it holds: spins up to
/// `spins` times, then yields the CPU between looks. An error after [`PATIENCE`].
fn wait_for(word: &AtomicU64, want: u64, spins: u32) -> io::Result<u64> {
    let mut tries = 0u32;
    let mut deadline = None;
    loop {
        let v = word.load(Ordering::Acquire);
        if v == want || v == STOP {
            return Ok(v);
        }
        if tries < spins {
            tries += 1;
            std::hint::spin_loop();
            continue;
        }
        std::thread::yield_now();
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + PATIENCE);
        if Instant::now() > deadline {
            return Err(io::Error::other("the other side of the cache line is gone"));
        }
    }
}

/// The two CPUs of the unpinned row: the first two this process may use (`None` when it may
/// use only one, as with `--pin`).
fn two_cpus() -> io::Result<Option<(usize, usize)>> {
    let allowed = rustix::thread::sched_getaffinity(None)?;
    let mut cpus = (0..CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c));
    Ok(cpus.next().zip(cpus.next()))
}

fn pin_to(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// The cache-line child: answers each odd value with the next even one until [`STOP`];
/// returns the number of rounds.
fn bounce((shm, cpu): (SharedMemory, Option<usize>)) -> Result<u64, String> {
    let spins = match cpu {
        Some(cpu) => {
            pin_to(cpu).map_err(|e| e.to_string())?;
            SPINS
        }
        None => 0,
    };
    let word = shm.region().atomic_u64(0);
    let mut want = 1;
    loop {
        match wait_for(word, want, spins).map_err(|e| e.to_string())? {
            STOP => return Ok(want / 2),
            v => word.store(v + 1, Ordering::Release),
        }
        want += 2;
    }
}

/// `cacheline_roundtrip`: nanoseconds per round trip of the shared counter.
pub(crate) fn cacheline_roundtrip(rt: &tokio::runtime::Runtime, n: u64) -> io::Result<f64> {
    let cpus = two_cpus()?;
    let shm = SharedMemory::new(128).map_err(other)?;
    let child = {
        let _runtime = rt.enter();
        multiproc::spawn((shm.clone(), cpus.map(|c| c.1)), bounce)
    };
    let before = rustix::thread::sched_getaffinity(None)?;
    let result = (|| -> io::Result<(f64, u64)> {
        let spins = match cpus {
            Some((mine, _)) => {
                pin_to(mine)?;
                SPINS
            }
            None => 0,
        };
        let word = shm.region().atomic_u64(0);
        let round = |k: u64| -> io::Result<()> {
            word.store(2 * k + 1, Ordering::Release);
            match wait_for(word, 2 * k + 2, spins)? {
                STOP => Err(io::Error::other("stopped")),
                _ => Ok(()),
            }
        };
        let warmup = n / 10 + 1;
        for k in 0..warmup {
            round(k)?;
        }
        let t0 = Instant::now();
        for k in warmup..warmup + n {
            round(k)?;
        }
        Ok((t0.elapsed().as_secs_f64(), warmup + n))
    })();
    // Whatever happened: the child stops, this thread may use its CPUs again.
    shm.region().atomic_u64(0).store(STOP, Ordering::Release);
    rustix::thread::sched_setaffinity(None, &before)?;
    let rounds = rt
        .block_on(child)
        .map_err(other)?
        .map_err(io::Error::other)?;
    let (secs, total) = result?;
    if rounds != total {
        return Err(io::Error::other(format!(
            "the child answered {rounds} of {total} rounds"
        )));
    }
    Ok(secs * 1e9 / n as f64)
}
