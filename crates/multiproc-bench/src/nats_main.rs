//! `multiproc-bench-nats`: the distributed rows, side by side in one run.
//!
//! Starts its own `nats-server` on loopback, then measures, interleaved trial by trial:
//! - `nats_queue_put_64B` / `nats_queue_get_64B`: a 64-byte item put (stored, acknowledged)
//!   and got (fetched, acknowledged) one at a time through `multiproc_nats::Queue`, against the
//!   raw JetStream floor (`raw-jetstream`: `async-nats` publish-and-await-ack and
//!   fetch-one-and-ack on a work-queue stream, no multiproc layer);
//! - `nats_pool_map_small`: `Pool::map` of `x * x` over `n` integers with two worker hosts
//!   (separate processes, one local worker each), against a raw JetStream task loop in two
//!   processes (tasks and results on work-queue streams, squared inline) and Dask
//!   distributed's `Client.map` on a local cluster of two worker processes;
//! - `nats_pool_apply_roundtrip`: one task submitted and waited for at a time, same three.
//!
//! Dask runs in `python/bench_dask.py` (its own trials, after ours); it is installed with
//! `pip install dask distributed` when missing, and skipped when that fails. Options:
//! `--quick` (small n, 3 trials), `--trials <k>`, `--no-dask`. One JSON line per row on
//! stdout; the ratios on stderr.

use std::io;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use multiproc_nats::Nats;
use multiproc_nats::pool::{Registry, RemoteFn, WorkerHost};
use multiproc_nats::server::NatsServer;
use serde_bytes::ByteBuf;

/// The Dask script, compiled in.
const DASK_SCRIPT: &str = include_str!("../python/bench_dask.py");
/// Tasks published before their acknowledgements are awaited, in the raw pool floor.
const WINDOW: usize = 256;

fn square(x: u64) -> u64 {
    x * x
}
const SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square");

struct Sizes {
    queue: u64,
    map: u64,
    apply: u64,
    trials: usize,
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut dask = true;
    let mut trials = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--no-dask" => dask = false,
            "--trials" => trials = args.next().and_then(|v| v.parse().ok()),
            "--bench" => {}
            other => {
                eprintln!(
                    "usage: multiproc-bench-nats [--quick] [--trials k] [--no-dask] ({other:?}?)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let sizes = if quick {
        Sizes {
            queue: 1_000,
            map: 2_000,
            apply: 200,
            trials: trials.unwrap_or(3),
        }
    } else {
        Sizes {
            queue: 20_000,
            map: 20_000,
            apply: 2_000,
            trials: trials.unwrap_or(7),
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multiproc-bench-nats: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match NatsServer::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("multiproc-bench-nats: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("# nats-server {} at {}", server.version(), server.url());
    let mut rows = match rt.block_on(run(&server, &sizes)) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("multiproc-bench-nats: {e}");
            return ExitCode::FAILURE;
        }
    };
    if dask {
        match run_dask(&sizes) {
            Ok(lines) => rows.extend(lines),
            Err(e) => eprintln!("# dask rows skipped: {e}"),
        }
    }
    summary(&rows);
    ExitCode::SUCCESS
}

/// One printed row.
struct Row {
    workload: String,
    imp: String,
    value: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn emit(rows: &mut Vec<Row>, workload: &str, imp: &str, unit: &str, n: u64, mut values: Vec<f64>) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let trials = values.len();
    let value = median(&mut values);
    println!(
        "{{\"workload\": \"{workload}\", \"impl\": \"{imp}\", \"value\": {value:.2}, \"unit\": \"{unit}\", \
         \"n\": {n}, \"trials\": {trials}, \"min\": {min:.2}, \"max\": {max:.2}}}"
    );
    rows.push(Row {
        workload: workload.to_string(),
        imp: imp.to_string(),
        value,
    });
}

async fn run(server: &NatsServer, sizes: &Sizes) -> io::Result<Vec<Row>> {
    let err = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let nats = Nats::builder()
        .url(server.url())
        .namespace("bench")
        .connect()
        .await
        .map_err(|e| err(&e))?;
    let js = jetstream::new(nats.client().clone());
    let mut rows = Vec::new();

    // Queues.
    let queue = nats.queue::<ByteBuf>("q").await.map_err(|e| err(&e))?;
    let raw_stream = js
        .get_or_create_stream(stream::Config {
            name: "RAWQ".into(),
            subjects: vec!["raw.q".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))?;
    let raw_consumer = raw_stream
        .get_or_create_consumer(
            "get",
            pull::Config {
                durable_name: Some("get".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err(&e))?;
    let n = sizes.queue;
    let (mut put_mp, mut put_raw, mut get_mp, mut get_raw) = (vec![], vec![], vec![], vec![]);
    for _ in 0..sizes.trials {
        let start = Instant::now();
        for _ in 0..n {
            queue
                .put(ByteBuf::from(vec![7u8; 64]))
                .await
                .map_err(|e| err(&e))?;
        }
        put_mp.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..n {
            js.publish("raw.q", vec![7u8; 64].into())
                .await
                .map_err(|e| err(&e))?
                .await
                .map_err(|e| err(&e))?;
        }
        put_raw.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..n {
            queue.get().await.map_err(|e| err(&e))?;
        }
        get_mp.push(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..n {
            let mut batch = raw_consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| err(&e))?;
            let msg = batch
                .next()
                .await
                .ok_or_else(|| io::Error::other("raw queue empty"))?
                .map_err(|e| err(&e))?;
            msg.ack().await.map_err(|e| err(&*e))?;
        }
        get_raw.push(n as f64 / start.elapsed().as_secs_f64());
    }
    emit(
        &mut rows,
        "nats_queue_put_64B",
        "multiproc-nats",
        "msgs_per_s",
        n,
        put_mp,
    );
    emit(
        &mut rows,
        "nats_queue_put_64B",
        "raw-jetstream",
        "msgs_per_s",
        n,
        put_raw,
    );
    emit(
        &mut rows,
        "nats_queue_get_64B",
        "multiproc-nats",
        "msgs_per_s",
        n,
        get_mp,
    );
    emit(
        &mut rows,
        "nats_queue_get_64B",
        "raw-jetstream",
        "msgs_per_s",
        n,
        get_raw,
    );

    // Pools: two hosts of one worker each, and the raw loop in two processes.
    let pool = nats.pool("p").await.map_err(|e| err(&e))?;
    let hosts = [
        multiproc::spawn(server.url(), host),
        multiproc::spawn(server.url(), host),
    ];
    let raw = RawPool::open(&js).await.map_err(|e| err(&e))?;
    let raw_workers = [
        multiproc::spawn(server.url(), raw_worker),
        multiproc::spawn(server.url(), raw_worker),
    ];
    // Warm up: both kinds of worker are serving.
    pool.map(SQUARE, 0..100u64).await.map_err(|e| err(&e))?;
    raw.map(&js, 100).await?;
    let (mut map_mp, mut map_raw, mut apply_mp, mut apply_raw) = (vec![], vec![], vec![], vec![]);
    for _ in 0..sizes.trials {
        let start = Instant::now();
        let out = pool.map(SQUARE, 0..sizes.map).await.map_err(|e| err(&e))?;
        map_mp.push(sizes.map as f64 / start.elapsed().as_secs_f64());
        assert_eq!(out.len() as u64, sizes.map);
        let start = Instant::now();
        raw.map(&js, sizes.map).await?;
        map_raw.push(sizes.map as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for i in 0..sizes.apply {
            pool.apply(SQUARE, i).await.map_err(|e| err(&e))?;
        }
        apply_mp.push(start.elapsed().as_secs_f64() * 1e6 / sizes.apply as f64);
        let start = Instant::now();
        for _ in 0..sizes.apply {
            raw.map(&js, 1).await?;
        }
        apply_raw.push(start.elapsed().as_secs_f64() * 1e6 / sizes.apply as f64);
    }
    for h in hosts.iter().chain(&raw_workers) {
        let _ = h.kill();
    }
    emit(
        &mut rows,
        "nats_pool_map_small",
        "multiproc-nats",
        "items_per_s",
        sizes.map,
        map_mp,
    );
    emit(
        &mut rows,
        "nats_pool_map_small",
        "raw-jetstream",
        "items_per_s",
        sizes.map,
        map_raw,
    );
    emit(
        &mut rows,
        "nats_pool_apply_roundtrip",
        "multiproc-nats",
        "us_per_task",
        sizes.apply,
        apply_mp,
    );
    emit(
        &mut rows,
        "nats_pool_apply_roundtrip",
        "raw-jetstream",
        "us_per_task",
        sizes.apply,
        apply_raw,
    );
    Ok(rows)
}

/// A worker host with one local worker process.
async fn host(url: String) {
    let nats = Nats::builder()
        .url(url)
        .namespace("bench")
        .connect()
        .await
        .unwrap();
    WorkerHost::builder(&nats, "p", Registry::new().register(SQUARE, square))
        .workers(1)
        .serve()
        .await
        .unwrap();
}

/// The raw floor's tasks and results streams, and the submitter's results consumer.
struct RawPool {
    results: jetstream::consumer::Consumer<pull::Config>,
}

impl RawPool {
    async fn open(js: &jetstream::Context) -> Result<Self, async_nats::Error> {
        let tasks = js
            .get_or_create_stream(stream::Config {
                name: "RAWTASKS".into(),
                subjects: vec!["raw.tasks".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?;
        tasks
            .get_or_create_consumer(
                "w",
                pull::Config {
                    durable_name: Some("w".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await?;
        let results = js
            .get_or_create_stream(stream::Config {
                name: "RAWRESULTS".into(),
                subjects: vec!["raw.results".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await?
            .get_or_create_consumer(
                "s",
                pull::Config {
                    durable_name: Some("s".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await?;
        Ok(Self { results })
    }

    /// Publishes `n` tasks (a window at a time) and reads `n` results.
    async fn map(&self, js: &jetstream::Context, n: u64) -> io::Result<()> {
        let err = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
        let mut acks = Vec::new();
        for x in 0..n {
            acks.push(
                js.publish("raw.tasks", x.to_le_bytes().to_vec().into())
                    .await
                    .map_err(|e| err(&e))?,
            );
            if acks.len() >= WINDOW {
                for a in acks.drain(..) {
                    a.await.map_err(|e| err(&e))?;
                }
            }
        }
        for a in acks {
            a.await.map_err(|e| err(&e))?;
        }
        let mut got = 0;
        while got < n {
            let mut batch = self
                .results
                .batch()
                .max_messages((n - got).min(512) as usize)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| err(&e))?;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(|e| err(&e))?;
                msg.ack().await.map_err(|e| err(&*e))?;
                got += 1;
            }
        }
        Ok(())
    }
}

/// The raw floor's worker: fetch tasks, square inline, publish the result with ack, ack.
async fn raw_worker(url: String) {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("RAWTASKS")
        .await
        .unwrap()
        .get_consumer("w")
        .await
        .unwrap();
    loop {
        let Ok(mut batch) = consumer
            .batch()
            .max_messages(64)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            continue;
        };
        while let Some(Ok(msg)) = batch.next().await {
            let js = js.clone();
            tokio::spawn(async move {
                let x = u64::from_le_bytes(msg.payload[..8].try_into().unwrap_or([0; 8]));
                if let Ok(ack) = js
                    .publish("raw.results", (x * x).to_le_bytes().to_vec().into())
                    .await
                {
                    let _ = ack.await;
                }
                let _ = msg.double_ack().await;
            });
        }
    }
}

/// Runs the Dask script (installing Dask when missing) and forwards its rows.
fn run_dask(sizes: &Sizes) -> io::Result<Vec<Row>> {
    let python = std::env::var("MULTIPROC_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", "import dask.distributed"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        eprintln!("# installing dask distributed (pip install dask distributed)");
        let _ = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "dask", "distributed"])
            .status();
        if !has(&python) {
            return Err(io::Error::other("dask.distributed cannot be imported"));
        }
    }
    let out = Command::new(&python)
        .args(["-c", DASK_SCRIPT, "--n"])
        .arg(sizes.map.to_string())
        .arg("--apply-n")
        .arg(sizes.apply.to_string())
        .arg("--trials")
        .arg(sizes.trials.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "bench_dask.py failed: {}",
            out.status
        )));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let field = |key: &str| {
            let tag = format!("\"{key}\": ");
            let rest = &line[line.find(&tag)? + tag.len()..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim().trim_matches('"').to_string())
        };
        if let (Some(workload), Some(value)) = (field("workload"), field("value")) {
            println!("{line}");
            rows.push(Row {
                workload,
                imp: "dask".into(),
                value: value.parse().unwrap_or(f64::NAN),
            });
        }
    }
    Ok(rows)
}

/// The ratios on stderr: multiproc-nats against the raw floor and against Dask.
fn summary(rows: &[Row]) {
    let get = |w: &str, i: &str| {
        rows.iter()
            .find(|r| r.workload == w && r.imp == i)
            .map(|r| r.value)
    };
    for w in [
        "nats_queue_put_64B",
        "nats_queue_get_64B",
        "nats_pool_map_small",
        "nats_pool_apply_roundtrip",
    ] {
        let Some(mp) = get(w, "multiproc-nats") else {
            continue;
        };
        let higher_is_better = !w.ends_with("roundtrip");
        let mut line = format!("# {w}: multiproc-nats {mp:.1}");
        for other in ["raw-jetstream", "dask"] {
            if let Some(v) = get(w, other) {
                let speedup = if higher_is_better { mp / v } else { v / mp };
                line.push_str(&format!(", {other} {v:.1} ({speedup:.2}x)"));
            }
        }
        eprintln!("{line}");
    }
}
