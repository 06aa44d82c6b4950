//! The manager's faults across real processes: the manager killed (every pending and later
//! operation fails promptly, a restart serves the last snapshot), a client killed mid-operation
//! (the manager keeps serving, every stored value is whole), values that cannot be encoded,
//! update functions that panic, and operations cancelled half-way.

use std::time::Duration;

use multiproc::manager::{Manager, Map, OpError};
use multiproc::spawn;
use multiproc_suite::{eventually, process_gone, within};
use serde::{Deserialize, Serialize, Serializer};

fn sleep_in_manager(v: &mut u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    *v += 1;
    *v
}

/// Uses the proxy until the manager is gone; how many operations succeeded, and whether the
/// failure said the manager is gone.
async fn use_until_gone(m: Map<String, u64>) -> (u64, bool) {
    let mut ok = 0;
    loop {
        match m.insert(format!("k{}", ok % 10), ok).await {
            Ok(_) => ok += 1,
            Err(e) => return (ok, e.is_manager_gone()),
        }
        if ok == 20 {
            // Tell the parent we are running, then keep going more slowly.
            m.insert("ready".into(), 1).await.ok();
        }
        if ok > 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_manager_fails_every_pending_and_later_operation_everywhere() {
    let manager = within("start", Manager::start()).await.unwrap();
    let m = manager.map::<String, u64>("m").await.unwrap();
    let slow = manager.map::<String, u64>("slow").await.unwrap();
    let child = spawn(m.clone(), use_until_gone);
    assert!(
        within("child ready", async {
            loop {
                if m.get("ready").await.unwrap().is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    );
    // An operation pending in the manager (it sleeps there) when the manager is killed.
    let pending = tokio::spawn({
        let slow = slow.clone();
        async move { slow.update("x", sleep_in_manager, 30_000).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = manager.pid().unwrap();
    manager.kill().unwrap();
    let err: OpError = within("pending op", pending).await.unwrap().unwrap_err();
    assert!(err.is_manager_gone(), "{err}");
    assert!(err.to_string().contains("manager is gone"), "{err}");
    // The child's proxy fails too, and says why.
    let (done, gone) = within("child", child).await.unwrap();
    assert!(done >= 20);
    assert!(gone, "the child's error did not say the manager is gone");
    // Later operations, on every proxy, and new proxies in new processes, fail at once.
    assert!(
        within("later", m.len())
            .await
            .unwrap_err()
            .is_manager_gone()
    );
    assert!(
        within("later", manager.counter("c"))
            .await
            .unwrap_err()
            .is_manager_gone()
    );
    let (done, gone) = within("new child", spawn(m.clone(), use_until_gone))
        .await
        .unwrap();
    assert_eq!(done, 0);
    assert!(gone);
    assert!(eventually(|| process_gone(pid)).await);
}

#[tokio::test]
async fn a_supervised_restart_serves_the_last_snapshot_and_loses_the_rest() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, u64>("m").await.unwrap();
    let l = manager.list::<String>("l").await.unwrap();
    m.insert("kept".into(), 1).await.unwrap();
    l.push("kept".into()).await.unwrap();
    let snapshot = manager.snapshot().await.unwrap();
    assert_eq!(snapshot.len(), 2);
    m.insert("lost".into(), 2).await.unwrap();
    manager.kill().unwrap();
    assert!(
        within("old proxy", m.len())
            .await
            .unwrap_err()
            .is_manager_gone()
    );

    // The supervisor: the manager died, start a new one from the snapshot.
    let restarted = Manager::builder().restore(snapshot).start().await.unwrap();
    let m2 = restarted.map::<String, u64>("m").await.unwrap();
    assert_eq!(m2.items().await.unwrap(), [("kept".to_string(), 1)]);
    let l2 = restarted.list::<String>("l").await.unwrap();
    assert_eq!(l2.items().await.unwrap(), ["kept"]);
    // Proxies of the old manager stay failed.
    assert!(
        within("old proxy", m.len())
            .await
            .unwrap_err()
            .is_manager_gone()
    );
    // Without a snapshot, a restart starts empty.
    let fresh = Manager::start().await.unwrap();
    assert!(
        fresh
            .map::<String, u64>("m")
            .await
            .unwrap()
            .is_empty()
            .await
            .unwrap()
    );
}

#[derive(Serialize, Deserialize, Default)]
struct Pair {
    a: Vec<u64>,
    b: Vec<u64>,
}

fn push_both(p: &mut Pair, x: u64) {
    p.a.push(x);
    p.b.push(x);
}

/// Writes big values and updates as fast as it can, until killed.
async fn hammer(m: Map<u64, Vec<u64>>) {
    let pairs = m; // the same manager holds the pair
    let mut p = pairs.pipeline().await.unwrap();
    for i in 0u64.. {
        let big = vec![i; 200_000];
        p.push_forget(pairs.ops().insert(&(i % 4), &big).unwrap())
            .await
            .unwrap();
        if i == 3 {
            p.finish().await.unwrap();
            pairs.insert(99, vec![1]).await.unwrap(); // "started"
        }
    }
}

async fn update_pair_forever(pair: Map<String, Pair>) {
    for x in 0u64.. {
        pair.update("p", push_both, x).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_operation_leaves_whole_values_and_a_serving_manager() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<u64, Vec<u64>>("big").await.unwrap();
    let pair = manager.map::<String, Pair>("pair").await.unwrap();
    let writer = spawn(m.clone(), hammer);
    let updater = spawn(pair.clone(), update_pair_forever);
    within("writer and updater started", async {
        while m.get(&99).await.unwrap().is_none() || pair.get("p").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    writer.kill().unwrap();
    updater.kill().unwrap();
    assert!(within("writer", writer).await.unwrap_err().is_killed());
    assert!(within("updater", updater).await.unwrap_err().is_killed());
    // Every stored value is whole: 200 000 copies of one number.
    for (k, v) in within("items", m.items()).await.unwrap() {
        if k == 99 {
            continue;
        }
        assert_eq!(v.len(), 200_000, "key {k}");
        assert!(
            v.iter().all(|x| *x == v[0] && x % 4 == k),
            "key {k} is torn"
        );
    }
    // Every update was applied whole or not at all.
    let p = pair.get("p").await.unwrap().unwrap();
    assert_eq!(p.a, p.b);
    assert!(!p.a.is_empty());
    // And the manager keeps serving others.
    m.insert(5, vec![5]).await.unwrap();
    assert_eq!(m.get(&5).await.unwrap(), Some(vec![5]));
}

#[derive(Debug)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[tokio::test]
async fn a_value_that_cannot_be_encoded_fails_in_the_caller() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, Unencodable>("m").await.unwrap();
    let err = m.insert("k".into(), Unencodable).await.unwrap_err();
    assert!(err.is_encode(), "{err}");
    assert!(!err.is_manager_gone());
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(m.len().await.unwrap(), 0);
    // A key holding a handle is refused too: keys are compared by their bytes.
    let fds = manager.map::<multiproc::Event, u32>("fds").await.unwrap();
    let err = fds
        .insert(multiproc::Event::new().unwrap(), 1)
        .await
        .unwrap_err();
    assert!(err.is_encode(), "{err}");
}

fn explode(v: &mut Vec<u32>, x: u32) {
    v.push(x);
    panic!("refusing {x}");
}

#[tokio::test]
async fn a_panicking_update_leaves_the_value_and_the_manager_serving() {
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, Vec<u32>>("m").await.unwrap();
    m.insert("k".into(), vec![1]).await.unwrap();
    let err = m.update("k", explode, 7).await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("refusing 7"));
    assert_eq!(m.get("k").await.unwrap(), Some(vec![1]));
    assert!(manager.is_alive());
}

#[tokio::test]
async fn an_operation_dropped_while_waiting_does_not_mix_up_answers() {
    let manager = Manager::start().await.unwrap();
    let v = manager.value("v", 0u64).await.unwrap();
    let slow = v.update(sleep_in_manager, 300);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err()
    );
    // The dropped update is still applied; this answer is the get's, not the update's.
    assert_eq!(within("get", v.get()).await.unwrap(), 1);
    assert_eq!(
        within("update", v.update(sleep_in_manager, 0))
            .await
            .unwrap(),
        2
    );
}

/// Connects to the manager by hand: a raw socket pair whose other end goes through the
/// connector. The socket we keep, to write anything on it.
fn connect_raw(
    connector: &multiproc_core::transport::packet::PacketSocket,
) -> std::os::fd::OwnedFd {
    use multiproc_core::SharedFd;
    use multiproc_core::transport::packet::Packet;

    let (mine, theirs) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )
    .unwrap();
    // A pipe end over a bare socket (no shared ring): what the manager takes from its
    // connector.
    let end = multiproc_core::transport::channel::ChannelEnd::from_fd(SharedFd::new(theirs));
    let (bytes, fds) = multiproc::core::message::encode(&end).unwrap();
    connector
        .try_send(&[], &Packet::new(&bytes, fds).unwrap())
        .unwrap();
    mine
}

#[tokio::test]
async fn garbage_from_a_client_never_stops_the_manager() {
    use multiproc_core::SharedFd;
    use multiproc_core::transport::packet::{Packet, PacketSocket};

    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, u64>("m").await.unwrap();
    m.insert("k".into(), 1).await.unwrap();
    // A client is the manager's id and its connector; take the connector out.
    let (bytes, fds) = multiproc::core::message::encode(&manager.client()).unwrap();
    let (_, connector): (u64, SharedFd) = multiproc::core::message::decode(&bytes, fds).unwrap();
    let socket = PacketSocket::new(connector).unwrap();
    // A packet that is not a pipe end.
    socket
        .try_send(&[], &Packet::new(b"not a pipe end", Vec::new()).unwrap())
        .unwrap();
    // A real pipe end, then bytes that are not frames on it.
    let mine = connect_raw(&socket);
    rustix::io::write(&mine, b"\xff\xffgarbage that is not a frame").unwrap();
    // A frame header announcing far more than the limit.
    let mine2 = connect_raw(&socket);
    let mut header = b"MPF1".to_vec();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    rustix::io::write(&mine2, &header).unwrap();
    // The manager dropped those connections and serves everyone else.
    let mut buf = [0u8; 16];
    let n = within("closed", async {
        loop {
            match rustix::io::read(&mine, &mut buf) {
                Ok(n) => return n,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    assert_eq!(n, 0, "the manager answered garbage instead of closing");
    assert_eq!(within("serving", m.get("k")).await.unwrap(), Some(1));
    assert!(manager.is_alive());
    drop(mine2);
}

/// A request as the manager reads it, made by hand: the operations in the compact codec of
/// `crates/multiproc-manager/src/codec.rs` (a map insert is tag 1, the map's id, the key's and
/// the value's postcard bytes, each after its length; a get is tag 2, the id and the key).
#[derive(Serialize)]
struct RawRequest {
    id: u64,
    quiet: u64,
    /// Postcard writes a `Vec<u8>` as its length and the bytes, as the manager reads them.
    ops: Vec<u8>,
    fds: Vec<u8>,
}

/// The manager's answer: results in the compact codec (tag 2: no value; tag 3: a value's
/// bytes after its length; tag 0: a failure, as postcard bytes).
#[derive(Deserialize)]
enum RawResponse {
    Done { id: u64, results: RawResults },
}

#[derive(Deserialize)]
struct RawResults {
    bytes: Vec<u8>,
    fds: Vec<u8>,
}

/// Sends `ops` as request `id` and returns the answer's result bytes.
async fn ask(
    conn: &mut multiproc::pipe::Duplex<RawRequest, RawResponse>,
    id: u64,
    ops: Vec<u8>,
) -> Vec<u8> {
    let request = RawRequest {
        id,
        quiet: 0,
        ops,
        fds: Vec::new(),
    };
    within("send", conn.send(request)).await.unwrap();
    let Some(RawResponse::Done { id: got, results }) = within("answer", conn.recv()).await.unwrap()
    else {
        panic!("the manager closed the connection");
    };
    assert_eq!(got, id);
    assert!(results.fds.is_empty());
    results.bytes
}

/// A request whose operations do not parse is answered with a failure, none of its
/// operations applied (a batch stays atomic), and the connection and the manager go on.
#[tokio::test]
async fn a_malformed_request_is_refused_whole_and_the_manager_goes_on() {
    use multiproc_core::SharedFd;
    use multiproc_core::transport::packet::{Packet, PacketSocket};

    let manager = Manager::start().await.unwrap();
    // The first value opened: id 0 (checked by the first request below).
    let m = manager.map::<String, u64>("m").await.unwrap();
    let (bytes, fds) = multiproc::core::message::encode(&manager.client()).unwrap();
    let (_, connector): (u64, SharedFd) = multiproc::core::message::decode(&bytes, fds).unwrap();
    let socket = PacketSocket::new(connector).unwrap();
    let (mut mine, theirs) = multiproc::pipe::duplex::<RawRequest, RawResponse>().unwrap();
    let (bytes, fds) = multiproc::core::message::encode(&theirs).unwrap();
    drop(theirs);
    socket
        .try_send(&[], &Packet::new(&bytes, fds).unwrap())
        .unwrap();
    // "k2" -> 5 into map 0: nothing was there.
    let insert_k2 = vec![1, 0, 3, 2, b'k', b'2', 1, 5];
    assert_eq!(ask(&mut mine, 1, insert_k2).await, [2]);
    assert_eq!(within("get", m.get("k2")).await.unwrap(), Some(5));
    // An insert of "k3", then a get whose key runs past the end: refused whole.
    let mut cut = vec![1, 0, 3, 2, b'k', b'3', 1, 6];
    cut.extend_from_slice(&[2, 0, 5, 1]);
    let answer = ask(&mut mine, 2, cut).await;
    assert_eq!(answer[0], 0, "not a failure: {answer:?}");
    assert_eq!(within("get", m.get("k3")).await.unwrap(), None);
    // An unknown tag, a length that overflows, an id that overflows 32 bits.
    for (id, bad) in [
        (3, vec![9, 0]),
        (
            4,
            vec![
                2, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
        ),
        (5, vec![2, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0]),
    ] {
        assert_eq!(ask(&mut mine, id, bad).await[0], 0);
    }
    // The connection still works: "k2" is 5 (tag 3, one byte, 5).
    assert_eq!(
        ask(&mut mine, 6, vec![2, 0, 3, 2, b'k', b'2']).await,
        [3, 1, 5]
    );
    m.insert("k4".into(), 4).await.unwrap();
    assert_eq!(within("get", m.get("k4")).await.unwrap(), Some(4));
    assert!(manager.is_alive());
}
