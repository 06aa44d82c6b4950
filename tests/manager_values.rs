//! The manager's served values across real processes: Python's `Manager` behaviours
//! (`TestSyncManagerTypes`, `_TestContainers`, `test_namespace`, `register`) where they match,
//! and what Python gets wrong: nested mutation, batching, pipelining, watching.

use std::collections::HashMap;

use futures::StreamExt;
use multiproc::manager::{Client, Counter, List, Manager, Map, MapEvent, Value};
use multiproc::{Queue, spawn};
use multiproc_suite::within;
use serde::{Deserialize, Serialize};

async fn fill((d, l): (Map<String, u64>, List<u64>)) {
    for i in 0..10 {
        d.insert(format!("arg{i}"), i * i).await.unwrap();
    }
    l.extend(11..16).await.unwrap();
}

#[tokio::test]
async fn a_child_fills_a_dict_and_a_list_the_parent_reads_them() {
    let manager = within("start", Manager::start()).await.unwrap();
    let d = manager.map::<String, u64>("d").await.unwrap();
    let l = manager.list::<u64>("l").await.unwrap();
    within("child", spawn((d.clone(), l.clone()), fill))
        .await
        .unwrap();
    let items: HashMap<String, u64> = d.items().await.unwrap().into_iter().collect();
    assert_eq!(items.len(), 10);
    for i in 0..10 {
        assert_eq!(items[&format!("arg{i}")], i * i);
    }
    // Insertion order is kept, as in a Python dict.
    let keys = d.keys().await.unwrap();
    assert_eq!(keys[0], "arg0");
    assert_eq!(keys[9], "arg9");
    assert_eq!(l.items().await.unwrap(), [11, 12, 13, 14, 15]);
    within("shutdown", manager.shutdown()).await.unwrap();
}

fn push(list: &mut Vec<u32>, x: u32) -> usize {
    list.push(x);
    list.len()
}

async fn append_many((d, who): (Map<String, Vec<u32>>, u32)) {
    for i in 0..20 {
        d.update(&format!("list{}", i % 3), push, who * 100 + i)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_updates_from_ten_processes_are_all_kept() {
    let manager = within("start", Manager::start()).await.unwrap();
    let d = manager.map::<String, Vec<u32>>("nested").await.unwrap();
    let children: Vec<_> = (0..10)
        .map(|who| spawn((d.clone(), who), append_many))
        .collect();
    for child in children {
        within("child", child).await.unwrap();
    }
    let mut all: Vec<u32> = Vec::new();
    for (_, list) in d.items().await.unwrap() {
        all.extend(list);
    }
    all.sort();
    let mut expected: Vec<u32> = (0..10)
        .flat_map(|who| (0..20).map(move |i| who * 100 + i))
        .collect();
    expected.sort();
    assert_eq!(all, expected);
}

#[tokio::test]
async fn reads_are_copies_and_reassigning_works() {
    let manager = Manager::start().await.unwrap();
    let d = manager.map::<String, Vec<u32>>("d").await.unwrap();
    d.insert("k".into(), vec![1]).await.unwrap();
    // Python's `d['k'].append(2)`: here the copy is plainly a copy.
    let mut copy = d.get("k").await.unwrap().unwrap();
    copy.push(2);
    assert_eq!(d.get("k").await.unwrap(), Some(vec![1]));
    // The reassign pattern works, as in Python.
    d.insert("k".into(), copy).await.unwrap();
    assert_eq!(d.get("k").await.unwrap(), Some(vec![1, 2]));
    assert_eq!(d.update("k", push, 3).await.unwrap(), 3);
    assert_eq!(d.get("k").await.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(d.remove("k").await.unwrap(), Some(vec![1, 2, 3]));
    assert!(!d.contains_key("k").await.unwrap());
    assert!(d.is_empty().await.unwrap());
}

#[tokio::test]
async fn list_operations_follow_python() {
    let manager = Manager::start().await.unwrap();
    let l = manager.list::<i32>("l").await.unwrap();
    assert_eq!(l.extend([5, 3, 8]).await.unwrap(), 3);
    assert_eq!(l.push(1).await.unwrap(), 4);
    assert_eq!(l.get(0).await.unwrap(), Some(5));
    assert_eq!(l.get(9).await.unwrap(), None);
    assert_eq!(l.set(1, 30).await.unwrap(), 3);
    l.insert(0, -1).await.unwrap();
    assert_eq!(l.items().await.unwrap(), [-1, 5, 30, 8, 1]);
    assert_eq!(l.remove(0).await.unwrap(), -1);
    assert_eq!(l.pop().await.unwrap(), Some(1));
    assert_eq!(l.len().await.unwrap(), 3);
    // IndexError: nothing changes.
    assert!(l.set(3, 0).await.unwrap_err().is_out_of_range());
    assert!(l.remove(7).await.unwrap_err().is_out_of_range());
    assert!(l.insert(4, 0).await.unwrap_err().is_out_of_range());
    assert_eq!(
        l.update(
            0,
            |x: &mut i32, by: i32| {
                *x += by;
                *x
            },
            10
        )
        .await
        .unwrap(),
        15
    );
    assert_eq!(l.items().await.unwrap(), [15, 30, 8]);
    l.clear().await.unwrap();
    assert_eq!(l.pop().await.unwrap(), None);
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    name: String,
    done: u32,
}

impl Job {
    fn finish(&mut self, n: u32) -> u32 {
        self.done += n;
        self.done
    }
}

async fn work(job: Value<Job>) -> u32 {
    job.update(Job::finish, 2).await.unwrap()
}

#[tokio::test]
async fn a_namespace_and_a_registered_type_with_methods() {
    let manager = Manager::start().await.unwrap();
    let job = manager
        .value(
            "job",
            Job {
                name: "build".into(),
                done: 0,
            },
        )
        .await
        .unwrap();
    // A second open finds the same value (init is ignored).
    let again = manager
        .value(
            "job",
            Job {
                name: "other".into(),
                done: 99,
            },
        )
        .await
        .unwrap();
    assert_eq!(again.get().await.unwrap().name, "build");
    let children: Vec<_> = (0..3).map(|_| spawn(job.clone(), work)).collect();
    for child in children {
        within("child", child).await.unwrap();
    }
    assert_eq!(job.get().await.unwrap().done, 6);
    let old = job
        .set(Job {
            name: "deploy".into(),
            done: 0,
        })
        .await
        .unwrap();
    assert_eq!(old.done, 6);
    assert_eq!(job.get().await.unwrap().name, "deploy");
}

async fn count_up((c, n): (Counter, i64)) {
    for _ in 0..n {
        c.add(1).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_adds_atomically_across_processes() {
    let manager = Manager::start().await.unwrap();
    let c = manager.counter("hits").await.unwrap();
    let children: Vec<_> = (0..4).map(|_| spawn((c.clone(), 50), count_up)).collect();
    for child in children {
        within("child", child).await.unwrap();
    }
    assert_eq!(c.get().await.unwrap(), 200);
    assert_eq!(c.set(7).await.unwrap(), 200);
    assert_eq!(c.add(-10).await.unwrap(), -3);
}

#[tokio::test]
async fn opening_a_name_as_another_kind_or_type_is_refused() {
    let manager = Manager::start().await.unwrap();
    manager.map::<String, u32>("x").await.unwrap();
    assert!(manager.list::<u32>("x").await.unwrap_err().is_wrong_type());
    assert!(
        manager
            .map::<u32, u32>("x")
            .await
            .unwrap_err()
            .is_wrong_type()
    );
    assert!(manager.counter("x").await.unwrap_err().is_wrong_type());
}

#[tokio::test]
async fn a_batch_is_one_request_applied_together() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<u32, String>("m").await.unwrap();
    let l = manager.list::<u32>("l").await.unwrap();
    let mut batch = manager.batch();
    let a = batch
        .push(m.ops().insert(&1, &"one".into()).unwrap())
        .unwrap();
    let b = batch
        .push(m.ops().insert(&1, &"uno".into()).unwrap())
        .unwrap();
    let c = batch.push(l.ops().push(&5).unwrap()).unwrap();
    let d = batch.push(l.ops().remove(3)).unwrap();
    let e = batch.push(m.ops().get(&1).unwrap()).unwrap();
    let mut results = batch.run().await.unwrap();
    assert_eq!(results.take(a).unwrap(), None);
    assert_eq!(results.take(b).unwrap().as_deref(), Some("one"));
    assert_eq!(results.take(c).unwrap(), 1);
    assert!(results.take(d).unwrap_err().is_out_of_range());
    assert_eq!(results.take(e).unwrap().as_deref(), Some("uno"));
    // Operations of another manager cannot join the batch.
    let other = Manager::start().await.unwrap();
    let o = other.counter("c").await.unwrap();
    assert!(manager.batch().push(o.ops().get()).is_err());
}

async fn pipelined_inserts((m, base): (Map<u64, u64>, u64)) -> u64 {
    let mut p = m.pipeline().await.unwrap();
    for i in 0..2000 {
        let _ = p
            .push(m.ops().insert(&(base + i), &(i * i)).unwrap())
            .await
            .unwrap();
    }
    let len = p.push(m.ops().get(&base).unwrap()).await.unwrap();
    let first = p.wait(len).await.unwrap().unwrap();
    p.finish().await.unwrap();
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_from_two_processes_keep_every_operation() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<u64, u64>("m").await.unwrap();
    let a = spawn((m.clone(), 0), pipelined_inserts);
    let b = spawn((m.clone(), 1_000_000), pipelined_inserts);
    assert_eq!(within("a", a).await.unwrap(), 0);
    assert_eq!(within("b", b).await.unwrap(), 0);
    assert_eq!(m.len().await.unwrap(), 4000);
    let got = m.get_many([&1999, &1_001_999, &5000]).await.unwrap();
    assert_eq!(got, [Some(1999 * 1999), Some(1999 * 1999), None]);
}

async fn writer(m: Map<String, u32>) {
    m.insert("a".into(), 1).await.unwrap();
    m.update("a", |v: &mut u32, by: u32| *v += by, 41)
        .await
        .unwrap();
    m.remove("a").await.unwrap();
    m.clear().await.unwrap();
}

#[tokio::test]
async fn watch_streams_every_change_made_by_another_process() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, u32>("w").await.unwrap();
    let c = manager.counter("c").await.unwrap();
    let mut changes = m.watch().await.unwrap();
    let mut counts = c.watch().await.unwrap();
    within("writer", spawn(m.clone(), writer)).await.unwrap();
    c.add(3).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(within("event", changes.next()).await.unwrap().unwrap());
    }
    assert_eq!(
        got,
        [
            MapEvent::Inserted {
                key: "a".into(),
                value: 1
            },
            MapEvent::Inserted {
                key: "a".into(),
                value: 42
            },
            MapEvent::Removed { key: "a".into() },
            MapEvent::Cleared,
        ]
    );
    assert_eq!(within("count", counts.next()).await.unwrap().unwrap(), 3);
    // The manager gone ends the stream with an error.
    manager.shutdown().await.unwrap();
    let last = within("end", changes.next()).await.unwrap();
    assert!(last.unwrap_err().is_manager_gone());
    assert!(within("end", changes.next()).await.is_none());
}

async fn open_by_name(client: Client) -> Vec<u32> {
    let queue_map = client.map::<String, Queue<u32>>("queues").await.unwrap();
    let q = queue_map.get("jobs").await.unwrap().unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(q.get().await.unwrap());
    }
    client
        .list::<u32>("seen")
        .await
        .unwrap()
        .extend(got.clone())
        .await
        .unwrap();
    got
}

#[tokio::test]
async fn a_client_travels_and_served_values_may_hold_handles() {
    let manager = Manager::start().await.unwrap();
    let queues = manager.map::<String, Queue<u32>>("queues").await.unwrap();
    let q = Queue::<u32>::new().unwrap();
    queues.insert("jobs".into(), q.clone()).await.unwrap();
    for i in 0..3 {
        q.put(i).await.unwrap();
    }
    let got = within("child", spawn(manager.client(), open_by_name))
        .await
        .unwrap();
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(
        manager
            .list::<u32>("seen")
            .await
            .unwrap()
            .items()
            .await
            .unwrap(),
        [0, 1, 2]
    );
}

#[tokio::test]
async fn dropping_the_last_owner_stops_the_manager() {
    let manager = Manager::start().await.unwrap();
    let pid = manager.pid().unwrap();
    let m = manager.map::<u8, u8>("m").await.unwrap();
    let clone = manager.clone();
    drop(manager);
    m.insert(1, 1).await.unwrap(); // a clone still owns it
    drop(clone);
    assert!(multiproc_suite::eventually(|| multiproc_suite::process_gone(pid)).await);
    let err = within("gone", m.insert(2, 2)).await.unwrap_err();
    assert!(err.is_manager_gone(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_of_one_process_share_one_connection() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<u32, u32>("m").await.unwrap();
    let tasks: Vec<_> = (0..50u32)
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..20u32 {
                    let k = t * 100 + i;
                    m.insert(k, k * 2).await.unwrap();
                    assert_eq!(m.get(&k).await.unwrap(), Some(k * 2));
                    if i.is_multiple_of(5) {
                        // A cancelled operation in the middle of others' traffic.
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_micros(1),
                            m.contains_key(&k),
                        )
                        .await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        within("task", t).await.unwrap();
    }
    assert_eq!(m.len().await.unwrap(), 1000);
}

fn record((l, x): (List<u64>, u64)) -> u64 {
    // A pool task is sync here: run the proxy on a runtime of its own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move { l.push(x).await.unwrap() as u64 })
}

#[tokio::test]
async fn proxies_travel_to_pool_tasks_and_inside_messages() {
    let manager = Manager::start().await.unwrap();
    let l = manager.list::<u64>("l").await.unwrap();
    let pool = multiproc::Pool::new(2).unwrap();
    let lens = within("pool", pool.map(record, (0..10).map(|x| (l.clone(), x))))
        .await
        .unwrap();
    assert_eq!(lens.len(), 10);
    let mut items = l.items().await.unwrap();
    items.sort();
    assert_eq!(items, (0..10).collect::<Vec<_>>());

    // Inside a message: a queue carries the proxy to a child.
    let q = Queue::<Counter>::new().unwrap();
    q.put(manager.counter("c").await.unwrap()).await.unwrap();
    let child = spawn(q.clone(), |q: Queue<Counter>| async move {
        q.get().await.unwrap().add(5).await.unwrap()
    });
    assert_eq!(within("child", child).await.unwrap(), 5);
}

async fn read_nested(outer: Map<String, List<u32>>) -> Vec<u32> {
    let inner = outer.get("inner").await.unwrap().unwrap();
    inner.push(3).await.unwrap();
    inner.items().await.unwrap()
}

#[tokio::test]
async fn a_proxy_stored_in_a_served_map_works_wherever_it_is_read() {
    let manager = Manager::start().await.unwrap();
    let inner = manager.list::<u32>("inner").await.unwrap();
    inner.extend([1, 2]).await.unwrap();
    let outer = manager.map::<String, List<u32>>("outer").await.unwrap();
    outer.insert("inner".into(), inner.clone()).await.unwrap();
    drop(inner);
    let got = within("child", spawn(outer.clone(), read_nested))
        .await
        .unwrap();
    assert_eq!(got, [1, 2, 3]);
    let inner = outer.get("inner").await.unwrap().unwrap();
    assert_eq!(inner.items().await.unwrap(), [1, 2, 3]);
}

async fn insert_from_a_child((strings, floats): (Map<String, u32>, Map<(f64, u8), u32>)) {
    strings.insert("k".into(), 1).await.unwrap();
    floats.insert((0.0, 1), 2).await.unwrap();
    floats.insert((f64::NAN, 1), 3).await.unwrap();
}

/// Keys are the same key exactly when they encode the same (documented on `Map`): a `String`
/// key set in a child is found with a `&str`, through single operations, a batch and a
/// pipeline alike; floats go by their bits (`-0.0` is another key than `0.0`, a NaN is found
/// by the same NaN).
#[tokio::test]
async fn keys_are_equal_when_their_encodings_are() {
    let manager = within("start", Manager::start()).await.unwrap();
    let strings = manager.map::<String, u32>("s").await.unwrap();
    let floats = manager.map::<(f64, u8), u32>("f").await.unwrap();
    within(
        "child",
        spawn((strings.clone(), floats.clone()), insert_from_a_child),
    )
    .await
    .unwrap();
    assert_eq!(within("get", strings.get("k")).await.unwrap(), Some(1));
    let mut batch = manager.batch();
    let by_str = batch.push(strings.ops().get("k").unwrap()).unwrap();
    let zero = batch.push(floats.ops().get(&(0.0, 1)).unwrap()).unwrap();
    let minus_zero = batch.push(floats.ops().get(&(-0.0, 1)).unwrap()).unwrap();
    let nan = batch
        .push(floats.ops().get(&(f64::NAN, 1)).unwrap())
        .unwrap();
    let mut results = within("batch", batch.run()).await.unwrap();
    assert_eq!(results.take(by_str).unwrap(), Some(1));
    assert_eq!(results.take(zero).unwrap(), Some(2));
    assert_eq!(results.take(minus_zero).unwrap(), None);
    assert_eq!(results.take(nan).unwrap(), Some(3));
    let mut p = within("pipeline", strings.pipeline()).await.unwrap();
    p.push_forget(strings.ops().insert(&"k".to_string(), &5).unwrap())
        .await
        .unwrap();
    let got = p.push(strings.ops().get("k").unwrap()).await.unwrap();
    assert_eq!(within("wait", p.wait(got)).await.unwrap(), Some(5));
    within("finish", p.finish()).await.unwrap();
    assert_eq!(within("len", floats.len()).await.unwrap(), 2);
}

async fn take_through_a_batch_and_a_pipeline(queues: Map<String, Queue<u32>>) -> Vec<u32> {
    let mut batch = queues.batch();
    let a = batch.push(queues.ops().get("a").unwrap()).unwrap();
    let missing = batch.push(queues.ops().get("none").unwrap()).unwrap();
    let len = batch.push(queues.ops().len()).unwrap();
    let mut results = within("batch", batch.run()).await.unwrap();
    assert_eq!(results.take(missing).unwrap().map(drop), None);
    assert_eq!(results.take(len).unwrap(), 2);
    let a = results.take(a).unwrap().unwrap();
    let mut p = within("pipeline", queues.pipeline()).await.unwrap();
    let b = p.push(queues.ops().get("b").unwrap()).await.unwrap();
    let b = within("wait", p.wait(b)).await.unwrap().unwrap();
    within("finish", p.finish()).await.unwrap();
    vec![
        within("a", a.get()).await.unwrap(),
        within("b", b.get()).await.unwrap(),
    ]
}

/// Values holding handles go through batches and pipelines beside operations on plain
/// values (inserted and read back in another process, the old value of a replaced one
/// returned), and keys and values long enough to need a two-byte length go through all
/// three ways.
#[tokio::test]
async fn handles_and_long_keys_go_through_batches_and_pipelines() {
    let manager = within("start", Manager::start()).await.unwrap();
    let queues = manager.map::<String, Queue<u32>>("queues").await.unwrap();
    let plain = manager.map::<String, String>("plain").await.unwrap();
    let (a, b) = (Queue::<u32>::new().unwrap(), Queue::<u32>::new().unwrap());
    within("put", a.put(1)).await.unwrap();
    within("put", b.put(2)).await.unwrap();
    let long_key = "k".repeat(300);
    let long_value = "v".repeat(1000);

    let mut batch = manager.batch();
    let first = batch
        .push(queues.ops().insert(&"a".to_string(), &b).unwrap())
        .unwrap();
    let long = batch
        .push(plain.ops().insert(&long_key, &long_value).unwrap())
        .unwrap();
    let replaced = batch
        .push(queues.ops().insert(&"a".to_string(), &a).unwrap())
        .unwrap();
    let short = batch
        .push(
            plain
                .ops()
                .insert(&"s".to_string(), &"t".to_string())
                .unwrap(),
        )
        .unwrap();
    let mut results = within("batch", batch.run()).await.unwrap();
    assert!(results.take(first).unwrap().is_none());
    assert_eq!(results.take(long).unwrap(), None);
    assert_eq!(results.take(short).unwrap(), None);
    // The old value, holding a handle, comes back: it is `b` (one message on it).
    let old = results.take(replaced).unwrap().unwrap();
    within("old", old.put(3)).await.unwrap();
    assert_eq!(within("get", b.get()).await.unwrap(), 2);
    assert_eq!(within("get", b.get()).await.unwrap(), 3);

    let mut p = within("pipeline", plain.pipeline()).await.unwrap();
    p.push_forget(queues.ops().insert(&"b".to_string(), &b).unwrap())
        .await
        .unwrap();
    let got = p
        .push(plain.ops().get(long_key.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        within("wait", p.wait(got)).await.unwrap(),
        Some(long_value.clone())
    );
    within("finish", p.finish()).await.unwrap();
    assert_eq!(
        within("get", plain.get(long_key.as_str())).await.unwrap(),
        Some(long_value)
    );
    within("put", b.put(2)).await.unwrap();

    let got = within(
        "child",
        spawn(queues.clone(), take_through_a_batch_and_a_pipeline),
    )
    .await
    .unwrap();
    assert_eq!(got, [1, 2]);
}
