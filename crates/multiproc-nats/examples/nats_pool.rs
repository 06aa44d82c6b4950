//! A distributed pool end to end: a NATS server, two worker "hosts" (separate processes, each
//! with its own local pool of worker processes) and this process submitting a map over 10,000
//! items. Halfway through, one host is killed (SIGKILL): its unfinished tasks go to the other
//! host after the ack timeout, and every item's result arrives exactly once.
//!
//! Run with `cargo run -p multiproc-nats --example nats_pool` (it starts its own
//! `nats-server`; see `multiproc_nats::server` for where it looks for one).

use std::time::{Duration, Instant};

use futures::StreamExt;
use multiproc_nats::Nats;
use multiproc_nats::pool::{Registry, RemoteFn, WorkerHost};
use multiproc_nats::server::NatsServer;

const ITEMS: u64 = 10_000;
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The work: runs in a worker process of whichever host took the task.
fn collatz_steps(mut n: u64) -> u64 {
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

const COLLATZ: RemoteFn<u64, u64> = RemoteFn::new("collatz_steps");

/// A worker host: its own local pool of two worker processes, serving until killed.
async fn host((url, name): (String, String)) -> () {
    let nats = Nats::builder()
        .url(url)
        .namespace("example")
        .connect()
        .await
        .unwrap();
    let registry = Registry::new().register(COLLATZ, collatz_steps);
    WorkerHost::builder(&nats, "collatz", registry)
        .workers(2)
        .ack_timeout(ACK_TIMEOUT)
        .host_name(name)
        .serve()
        .await
        .unwrap();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = NatsServer::start()?;
    println!("nats-server {} at {}", server.version(), server.url());
    let nats = Nats::builder()
        .url(server.url())
        .namespace("example")
        .connect()
        .await?;
    let pool = nats
        .pool_builder("collatz")
        .ack_timeout(ACK_TIMEOUT)
        .open()
        .await?;

    let a = multiproc_process::spawn((server.url(), "host-a".to_string()), host);
    let b = multiproc_process::spawn((server.url(), "host-b".to_string()), host);
    println!("hosts: a = pid {:?}, b = pid {:?}", a.pid(), b.pid());

    let started = Instant::now();
    let mut results = pool.imap(COLLATZ, 1..=ITEMS);
    let mut got = Vec::with_capacity(ITEMS as usize);
    while let Some(r) = results.next().await {
        got.push(r?);
        if got.len() == (ITEMS / 2) as usize {
            a.kill()?;
            println!("{} results in: killed host a", got.len());
        }
    }
    let elapsed = started.elapsed();

    // Exactly once: one result per item, each the right one.
    assert_eq!(got.len() as u64, ITEMS);
    for (i, steps) in got.iter().enumerate() {
        assert_eq!(*steps, collatz_steps(i as u64 + 1), "item {i}");
    }
    println!(
        "{ITEMS} results, each exactly once, in {elapsed:.2?} ({:.0} tasks/s); max steps {}",
        ITEMS as f64 / elapsed.as_secs_f64(),
        got.iter().max().unwrap_or(&0)
    );
    b.kill()?;
    Ok(())
}
