//! The pool's workloads (`pool_map_small`, `pool_map_small_chunk1`, `pool_apply_roundtrip`)
//! for `multiproc`: a `Pool` of two workers running `x * x`, against Python's `Pool(2)`.
//!
//! The pool is started and warmed up (every worker has run a task) before the clock starts,
//! as in the Python script; the results are checked after it stops.

use std::io;
use std::time::Instant;

use multiproc::Pool;

use crate::{Workload, other};

/// Workers in every pool workload.
const WORKERS: usize = 2;

fn square(x: u64) -> u64 {
    x * x
}

/// Runs one trial of a pool workload.
pub(crate) fn run(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    rt.block_on(async {
        let pool = Pool::new(WORKERS).map_err(other)?;
        // Warm up: both workers started and each ran a task.
        let warm = pool.map(square, 0..64).chunksize(1).await.map_err(other)?;
        if warm.len() != 64 {
            return Err(other("warm-up lost results"));
        }
        let value = match w {
            Workload::PoolMapSmall | Workload::PoolMapSmallChunk1 => {
                let map = pool.map(square, 0..n);
                let map = if w == Workload::PoolMapSmallChunk1 {
                    map.chunksize(1)
                } else {
                    map
                };
                let start = Instant::now();
                let squares = map.await.map_err(other)?;
                let secs = start.elapsed().as_secs_f64();
                let ok = squares.len() as u64 == n
                    && squares
                        .iter()
                        .enumerate()
                        .all(|(i, s)| *s == (i as u64) * (i as u64));
                if !ok {
                    return Err(other("wrong map results"));
                }
                n as f64 / secs
            }
            Workload::PoolApplyRoundtrip => {
                let start = Instant::now();
                for i in 0..n {
                    if pool.apply(square, i).await.map_err(other)? != i * i {
                        return Err(other("wrong apply result"));
                    }
                }
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            }
            _ => return Err(other("not a pool workload")),
        };
        pool.close();
        pool.join().await.map_err(other)?;
        Ok(value)
    })
}
