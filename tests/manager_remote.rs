//! Remote managers across real processes: a manager served on TCP with a key and on a Unix
//! socket, used by processes that connect (Python's `BaseManager(address, authkey)` with
//! `connect()`, `test_remote`); a wrong key is refused and the manager keeps serving.

use std::time::Duration;

use futures::StreamExt;
use multiproc::connection::{Address, Auth};
use multiproc::manager::{self, Manager, MapEvent};
use multiproc::spawn;
use multiproc_suite::within;

const KEY: &[u8] = b"manager test key";

fn add(v: &mut u64, by: u64) -> u64 {
    *v += by;
    *v
}

/// Connects to the manager at `address` like an unrelated program would, and uses it.
async fn remote_user((address, who): (Address, u32)) -> (u64, usize) {
    let client = manager::connect(address, Auth::key(KEY)).await.unwrap();
    let m = client.map::<String, String>("m").await.unwrap();
    m.insert(format!("from{who}"), "üñíçødé ✓".into())
        .await
        .unwrap();
    let l = client.list::<Vec<u8>>("bytes").await.unwrap();
    l.push(vec![0, 255, who as u8]).await.unwrap();
    // This child is of the same program tree: its update functions are known to the manager.
    let v = client.value("v", 0u64).await.unwrap();
    let total = v.update(add, 10).await.unwrap();
    let mut batch = client.batch();
    let len = batch.push(m.ops().len()).unwrap();
    let len = batch.run().await.unwrap().take(len).unwrap();
    (total, len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_served_on_tcp_with_a_key_is_used_by_processes_that_connect() {
    let manager = within("start", Manager::start()).await.unwrap();
    let serving = within(
        "serve",
        manager.serve(Address::tcp("127.0.0.1:0"), Auth::key(KEY)),
    )
    .await
    .unwrap();
    let address = serving.local_address().clone();
    let m = manager.map::<String, String>("m").await.unwrap();
    let mut changes = m.watch().await.unwrap();
    let a = spawn((address.clone(), 1), remote_user);
    let b = spawn((address.clone(), 2), remote_user);
    let (ta, _) = within("a", a).await.unwrap();
    let (tb, _) = within("b", b).await.unwrap();
    assert_eq!(ta.max(tb), 20);
    let mut items = m.items().await.unwrap();
    items.sort();
    assert_eq!(
        items,
        [
            ("from1".to_string(), "üñíçødé ✓".to_string()),
            ("from2".to_string(), "üñíçødé ✓".to_string())
        ]
    );
    assert!(matches!(
        within("event", changes.next()).await.unwrap().unwrap(),
        MapEvent::Inserted { .. }
    ));
    // The parent can be a remote client too, and watch from there.
    let remote = within("connect", manager::connect(address, Auth::key(KEY)))
        .await
        .unwrap();
    let rm = remote.map::<String, String>("m").await.unwrap();
    let mut remote_changes = rm.watch().await.unwrap();
    m.remove("from1").await.unwrap();
    assert_eq!(
        within("remote event", remote_changes.next())
            .await
            .unwrap()
            .unwrap(),
        MapEvent::Removed {
            key: "from1".into()
        }
    );
    assert_eq!(rm.len().await.unwrap(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_manager_keeps_serving() {
    let manager = Manager::start().await.unwrap();
    let serving = manager
        .serve(Address::tcp("127.0.0.1:0"), Auth::key(KEY))
        .await
        .unwrap();
    let address = serving.local_address().clone();
    let err = within(
        "wrong key",
        manager::connect(address.clone(), Auth::key(b"wrong key")),
    )
    .await
    .unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    let err = within("no key", manager::connect(address.clone(), Auth::none()))
        .await
        .unwrap_err();
    assert!(!err.is_unreachable() || err.is_auth(), "{err:?}");
    // The right key still works.
    let ok = within("right key", manager::connect(address, Auth::key(KEY)))
        .await
        .unwrap();
    ok.counter("c").await.unwrap().add(1).await.unwrap();
    assert_eq!(manager.counter("c").await.unwrap().get().await.unwrap(), 1);
}

async fn unix_user(address: Address) -> i64 {
    let client = manager::connect(address, Auth::same_user()).await.unwrap();
    client.counter("c").await.unwrap().add(5).await.unwrap()
}

#[tokio::test]
async fn a_manager_served_on_a_unix_socket_hands_connections_to_the_manager() {
    let manager = Manager::start().await.unwrap();
    let name = format!("multiproc-manager-test-{}-{}", std::process::id(), line!());
    let serving = manager
        .serve(Address::abstract_name(&name), Auth::same_user())
        .await
        .unwrap();
    let got = within("child", spawn(serving.local_address().clone(), unix_user))
        .await
        .unwrap();
    assert_eq!(got, 5);
    // Stop serving: new clients cannot connect, the manager still serves its proxies.
    let address = serving.local_address().clone();
    drop(serving);
    let err = within("stopped", manager::connect(address, Auth::same_user()))
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert_eq!(manager.counter("c").await.unwrap().get().await.unwrap(), 5);
}

#[tokio::test]
async fn remote_clients_fail_promptly_when_the_manager_dies_and_their_proxies_stay_home() {
    let manager = Manager::start().await.unwrap();
    let serving = manager
        .serve(Address::tcp("127.0.0.1:0"), Auth::key(KEY))
        .await
        .unwrap();
    let remote = manager::connect(serving.local_address().clone(), Auth::key(KEY))
        .await
        .unwrap();
    let m = remote.map::<u32, u32>("m").await.unwrap();
    m.insert(1, 1).await.unwrap();
    // A proxy of a remote manager would have to carry the key: it refuses to travel.
    assert!(multiproc::core::message::encode(&m).is_err());
    manager.kill().unwrap();
    let err = within("gone", m.insert(2, 2)).await.unwrap_err();
    assert!(err.is_manager_gone(), "{err}");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        within("later", m.len())
            .await
            .unwrap_err()
            .is_manager_gone()
    );
}
