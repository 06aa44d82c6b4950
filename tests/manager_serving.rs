//! The manager's serving loop and grouped pipelines across real processes: a batch with a
//! failure in the middle, pipelines whose operations go out in groups (failures and results
//! land in the right slots), a client doing single operations beside a streaming pipeline,
//! and a deep pipeline whose manager is killed (every outstanding operation fails promptly).

use std::time::Duration;

use multiproc::manager::{Manager, Map};
use multiproc::{Queue, spawn};
use multiproc_suite::within;

#[tokio::test]
async fn a_batch_of_many_operations_with_a_failure_in_the_middle() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<u32, u32>("m").await.unwrap();
    let l = manager.list::<u32>("l").await.unwrap();
    let c = manager.counter("c").await.unwrap();
    let mut batch = manager.batch();
    let mut inserts = Vec::new();
    for i in 0..150 {
        inserts.push(batch.push(m.ops().insert(&i, &(i * 2)).unwrap()).unwrap());
    }
    let bad = batch.push(l.ops().remove(7)).unwrap();
    let pushed = batch.push(l.ops().push(&9).unwrap()).unwrap();
    let added = batch.push(c.ops().add(5)).unwrap();
    let mut gets = Vec::new();
    for i in 140..160 {
        gets.push((i, batch.push(m.ops().get(&i).unwrap()).unwrap()));
    }
    let len = batch.push(m.ops().len()).unwrap();
    assert_eq!(batch.len(), 150 + 3 + 20 + 1);
    let mut results = within("batch", batch.run()).await.unwrap();
    for slot in inserts {
        assert_eq!(results.take(slot).unwrap(), None);
    }
    assert!(results.take(bad).unwrap_err().is_out_of_range());
    // What follows the failure was applied.
    assert_eq!(results.take(pushed).unwrap(), 1);
    assert_eq!(results.take(added).unwrap(), 5);
    for (i, slot) in gets {
        assert_eq!(results.take(slot).unwrap(), (i < 150).then_some(i * 2));
    }
    assert_eq!(results.take(len).unwrap(), 150);
    assert_eq!(l.items().await.unwrap(), [9]);
}

#[tokio::test]
async fn a_pipeline_keeps_every_result_in_its_slot_across_groups() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<u64, u64>("m").await.unwrap();
    let l = manager.list::<u64>("l").await.unwrap();
    let mut p = within("pipeline", m.pipeline()).await.unwrap();
    let mut gets = Vec::new();
    let mut failures = Vec::new();
    for i in 0..1000u64 {
        p.push_forget(m.ops().insert(&i, &(i + 7)).unwrap())
            .await
            .unwrap();
        gets.push((i, p.push(m.ops().get(&i).unwrap()).await.unwrap()));
        if i % 97 == 0 {
            // An operation that fails, inside a group, its result kept.
            failures.push(p.push(l.ops().remove(i as usize)).await.unwrap());
        }
    }
    // Results taken out of order, some before the pipeline sent everything.
    let (last, last_slot) = gets.pop().unwrap();
    assert_eq!(
        within("wait", p.wait(last_slot)).await.unwrap(),
        Some(last + 7)
    );
    for (i, slot) in gets.into_iter().rev() {
        assert_eq!(p.wait(slot).await.unwrap(), Some(i + 7));
    }
    for slot in failures {
        assert!(p.wait(slot).await.unwrap_err().is_out_of_range());
    }
    within("finish", p.finish()).await.unwrap();
    // A forgotten operation that fails is reported by `finish`.
    p.push_forget(l.ops().remove(0)).await.unwrap();
    let len = p.push(m.ops().len()).await.unwrap();
    assert_eq!(p.wait(len).await.unwrap(), 1000);
    assert!(
        within("finish", p.finish())
            .await
            .unwrap_err()
            .is_out_of_range()
    );
}

/// Streams pipelined inserts until `stop` is set in the map; how many it sent.
async fn stream_until_stopped(m: Map<u64, u64>) -> u64 {
    let mut p = m.pipeline().await.unwrap();
    let mut sent = 0u64;
    loop {
        for _ in 0..500 {
            p.push_forget(m.ops().insert(&(sent % 1000), &sent).unwrap())
                .await
                .unwrap();
            sent += 1;
        }
        let stop = p.push(m.ops().get(&u64::MAX).unwrap()).await.unwrap();
        if p.wait(stop).await.unwrap().is_some() {
            p.finish().await.unwrap();
            return sent;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_operations_are_served_beside_a_streaming_pipeline() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<u64, u64>("m").await.unwrap();
    let c = manager.counter("c").await.unwrap();
    let streamer = spawn(m.clone(), stream_until_stopped);
    // Wait until the stream runs, then do single operations while it does.
    within("stream running", async {
        while m.len().await.unwrap() < 100 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    for i in 1..=200 {
        assert_eq!(within("single op", c.add(1)).await.unwrap(), i);
    }
    m.insert(u64::MAX, 1).await.unwrap();
    let sent = within("streamer", streamer).await.unwrap();
    assert!(sent >= 500);
    assert_eq!(c.get().await.unwrap(), 200);
}

type Signals = (Queue<()>, Queue<()>);

/// Opens a pipeline, says so; once told, sends hundreds of operations the (blocked) manager
/// cannot answer, says so, then waits for every one: how many failed with "manager gone", and
/// how many did not.
async fn deep_pipeline((m, (to_parent, to_child)): (Map<u64, u64>, Signals)) -> (usize, usize) {
    let mut p = m.pipeline().await.unwrap();
    let first = p.push(m.ops().len()).await.unwrap();
    p.wait(first).await.unwrap();
    to_parent.put(()).await.unwrap();
    to_child.get().await.unwrap();
    let mut slots = Vec::new();
    for i in 0..400u64 {
        slots.push(p.push(m.ops().get(&i).unwrap()).await.unwrap());
    }
    p.flush().await.unwrap();
    to_parent.put(()).await.unwrap();
    let (mut gone, mut other) = (0, 0);
    for slot in slots {
        match p.wait(slot).await {
            Err(e) if e.is_manager_gone() => gone += 1,
            _ => other += 1,
        }
    }
    (gone, other)
}

/// Creates the file `path` names, then holds the manager for `ms`.
fn hold_manager(v: &mut u64, (path, ms): (String, u64)) -> u64 {
    std::fs::write(path, b"held").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    *v += 1;
    *v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_fails_every_outstanding_pipelined_operation() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<u64, u64>("m").await.unwrap();
    let blocked = manager.value::<u64>("blocked", 0).await.unwrap();
    let (to_parent, to_child) = (Queue::new().unwrap(), Queue::new().unwrap());
    let child = spawn(
        (m.clone(), (to_parent.clone(), to_child.clone())),
        deep_pipeline,
    );
    within("pipeline open", to_parent.get()).await.unwrap();
    // Hold the manager in an update, so nothing the pipeline sends next is answered.
    let path = std::env::temp_dir().join(format!(
        "multiproc-manager-serving-{}-{}",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_file(&path);
    let arg = (path.to_string_lossy().into_owned(), 60_000);
    let hold = tokio::spawn(async move { blocked.update(hold_manager, arg).await });
    within("manager held", async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    to_child.put(()).await.unwrap();
    within("pipeline deep", to_parent.get()).await.unwrap();
    manager.kill().unwrap();
    assert!(
        within("held op", hold)
            .await
            .unwrap()
            .unwrap_err()
            .is_manager_gone()
    );
    // Every outstanding operation fails, promptly, saying the manager is gone.
    assert_eq!(within("child", child).await.unwrap(), (400, 0));
    let _ = std::fs::remove_file(&path);
}

/// Asks for a big value hundreds of times, then reads none of the answers until told to.
async fn ask_and_stall((m, (to_parent, to_child)): (Map<u64, Vec<u8>>, Signals)) -> usize {
    let mut p = m.pipeline().await.unwrap();
    let mut slots = Vec::new();
    for _ in 0..100 {
        slots.push(p.push(m.ops().get(&0).unwrap()).await.unwrap());
    }
    p.flush().await.unwrap();
    to_parent.put(()).await.unwrap();
    to_child.get().await.unwrap();
    let mut whole = 0;
    for slot in slots {
        if p.wait(slot)
            .await
            .unwrap()
            .is_some_and(|v| v.len() == 128 << 10)
        {
            whole += 1;
        }
    }
    p.finish().await.unwrap();
    whole
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_only_itself() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<u64, Vec<u8>>("m").await.unwrap();
    m.insert(0, vec![1; 128 << 10]).await.unwrap();
    let (to_parent, to_child) = (Queue::new().unwrap(), Queue::new().unwrap());
    let child = spawn(
        (m.clone(), (to_parent.clone(), to_child.clone())),
        ask_and_stall,
    );
    within("asked", to_parent.get()).await.unwrap();
    // 12.5 MiB of answers wait for a reader that does not read; everyone else is served.
    let other = manager.counter("other").await.unwrap();
    for i in 1..=100 {
        assert_eq!(within("served", other.add(1)).await.unwrap(), i);
    }
    to_child.put(()).await.unwrap();
    assert_eq!(within("child", child).await.unwrap(), 100);
}

/// CPU time process `pid` has used (user + system, in clock ticks of 10 ms).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Child: quick single operations (so the manager spins for its next one), then silence.
async fn busy_then_silent(map: Map<u32, u32>) -> u32 {
    for i in 0..2000 {
        map.insert(i % 10, i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    map.get(&0).await.unwrap().unwrap_or_default()
}

#[tokio::test]
async fn a_manager_whose_clients_fall_silent_burns_no_core() {
    let manager = within("start", Manager::start()).await.unwrap();
    let pid = manager.pid().expect("a local manager has a pid");
    let map = manager.map::<u32, u32>("m").await.unwrap();
    let child = spawn(map.clone(), busy_then_silent);
    // Wait until the child's operations are done (its last insert stored 1999 % 10 = 9's).
    let done = async {
        while map.get(&9).await.unwrap() != Some(1999) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    within("the child's operations", done).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let used = cpu_ticks(pid) - before;
    assert_eq!(within("child", child).await.unwrap(), 1990);
    // A manager that kept spinning for the silent client would use about 100 ticks here;
    // allow a third for a loaded machine's bookkeeping.
    assert!(used < 33, "{used} ticks of CPU in 1 s without requests");
    manager.shutdown().await.unwrap();
}
