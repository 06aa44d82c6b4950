//! Every public handle, guard and future is `Send` and `Sync` where users need it.

use multiproc::pipe::{Duplex, Receiver, Sender};
use multiproc::{Builder, JoinError, JoinHandle, SpawnError};

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn send_val<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync() {
    send::<Sender<String>>();
    sync::<Sender<String>>();
    send::<Receiver<String>>();
    sync::<Receiver<String>>();
    send::<Duplex<u8, String>>();
    sync::<Duplex<u8, String>>();
    send::<JoinHandle<u64>>();
    send::<Builder>();
    send::<JoinError>();
    sync::<JoinError>();
    send::<SpawnError>();
    sync::<SpawnError>();
    send::<multiproc::error::RecvError>();
    sync::<multiproc::error::RecvError>();
    send::<multiproc::error::SendError<String>>();
}

#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn futures_are_send() {
    let (mut tx, mut rx) = multiproc::pipe::simplex::<String>().unwrap();
    let (mut a, _b) = multiproc::pipe::duplex::<u8, u8>().unwrap();
    send_val(&tx.send(String::new()));
    send_val(&tx.flush());
    send_val(&rx.recv());
    send_val(&rx.recv_timeout(std::time::Duration::ZERO));
    send_val(&a.send(1));
    send_val(&a.recv());
    send_val(&tx.send_bytes(b"x"));
    send_val(&rx.recv_bytes());
    send_val(&a.send_bytes(b"x"));
    send_val(&a.recv_bytes());
    let mut child = multiproc::spawn((), |()| ());
    send_val(&child.join());
    send_val(&child.join_timeout(std::time::Duration::ZERO));
    child.await.unwrap();
}

fn square(x: u64) -> u64 {
    x * x
}

#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn pool_handles_and_futures_are_send() {
    use multiproc::pool::{Imap, ImapUnordered, Map, MapFuture};
    use multiproc::{Pool, PoolBuilder, PoolError, TaskHandle};
    send::<Pool>();
    sync::<Pool>();
    send::<PoolBuilder>();
    send::<PoolError>();
    sync::<PoolError>();
    send::<TaskHandle<u64>>();
    send::<Map<u64, u64>>();
    send::<MapFuture<u64, u64>>();
    send::<Imap<u64, u64>>();
    send::<ImapUnordered<u64, u64>>();
    let pool = Pool::new(1).unwrap();
    send_val(&pool.map(square, 0..3).into_future());
    send_val(&pool.apply(square, 3));
    send_val(&pool.join());
    let mut task = pool.submit(square, 2);
    send_val(&task.result_timeout(std::time::Duration::ZERO));
    pool.terminate();
}

// --- manager (issue 15) ---
fn add_one(x: &mut u64, by: u64) -> u64 {
    *x += by;
    *x
}

#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn manager_handles_and_futures_are_send() {
    use multiproc::manager::{
        Batch, BatchResults, Client, Counter, List, Manager, Map, MapEvent, OpError, Pipeline,
        ShutdownError, Snapshot, StartError, Value, Watch,
    };
    send::<Manager>();
    sync::<Manager>();
    send::<Client>();
    sync::<Client>();
    send::<Map<String, u64>>();
    sync::<Map<String, u64>>();
    send::<List<u64>>();
    sync::<List<u64>>();
    send::<Value<u64>>();
    sync::<Value<u64>>();
    send::<Counter>();
    sync::<Counter>();
    send::<Batch>();
    send::<BatchResults>();
    send::<Pipeline>();
    send::<Watch<MapEvent<String, u64>>>();
    send::<Snapshot>();
    send::<OpError>();
    sync::<OpError>();
    send::<StartError>();
    sync::<StartError>();
    send::<ShutdownError>();
    sync::<ShutdownError>();
    send::<multiproc::manager::Serving>();
    sync::<multiproc::manager::Serving>();
    send::<multiproc::manager::ConnectError>();
    sync::<multiproc::manager::ConnectError>();
    send::<multiproc::manager::ServeError>();
    sync::<multiproc::manager::ServeError>();
    let manager = Manager::start().await.unwrap();
    let m = manager.map::<String, u64>("m").await.unwrap();
    let v = manager.value("v", 0u64).await.unwrap();
    send_val(&Manager::start());
    send_val(&manager.map::<String, u64>("m"));
    send_val(&m.insert("k".into(), 1));
    send_val(&m.get("k"));
    send_val(&m.update("k", add_one, 1));
    send_val(&v.update(add_one, 1));
    send_val(&m.watch());
    send_val(&m.pipeline());
    send_val(&manager.batch().run());
    send_val(&manager.snapshot());
    send_val(&manager.shutdown());
    let address = multiproc::connection::Address::tcp("127.0.0.1:0");
    send_val(&manager.serve(address.clone(), multiproc::connection::Auth::none()));
    send_val(&multiproc::manager::connect(
        address,
        multiproc::connection::Auth::none(),
    ));
    let mut p = m.pipeline().await.unwrap();
    let slot = p.push(m.ops().len()).await.unwrap();
    send_val(&p.wait(slot));
    send_val(&p.finish());
    manager.shutdown().await.unwrap();
}
// --- end manager ---
// ---- Named resources ----

#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn named_resources_and_their_futures_are_send() {
    use multiproc::error::{
        AttachError, CreateNamedError, FifoOpenError, FifoRecvError, FifoSendError, FileLockError,
        LookupError, PublishError, TryFileLockError, UnlinkError,
    };
    use multiproc::fifo::{FifoReceiver, FifoSender};
    use multiproc::named::Publication;
    use multiproc::sync::{FileLock, FileLockGuard};
    send::<FileLock>();
    sync::<FileLock>();
    send::<FileLockGuard>();
    sync::<FileLockGuard>();
    send::<Publication>();
    sync::<Publication>();
    send::<multiproc::SharedMemory>();
    sync::<multiproc::SharedMemory>();
    send::<FifoSender<String>>();
    sync::<FifoSender<String>>();
    send::<FifoReceiver<String>>();
    sync::<FifoReceiver<String>>();
    send::<(
        FileLockError,
        TryFileLockError,
        PublishError,
        LookupError,
        CreateNamedError,
    )>();
    sync::<(
        FileLockError,
        TryFileLockError,
        PublishError,
        LookupError,
        CreateNamedError,
    )>();
    send::<(
        AttachError,
        UnlinkError,
        FifoOpenError,
        FifoSendError,
        FifoRecvError,
    )>();
    sync::<(
        AttachError,
        UnlinkError,
        FifoOpenError,
        FifoSendError,
        FifoRecvError,
    )>();
    let path = std::env::temp_dir().join(format!("multiproc-send-sync-{}", std::process::id()));
    let lock = FileLock::open(&path).unwrap();
    send_val(&lock.lock());
    send_val(&lock.lock_shared());
    send_val(&lock.lock_timeout(std::time::Duration::ZERO));
    send_val(&multiproc::named::lookup::<u32>("x"));
    send_val(&FifoSender::<u32>::open(&path));
    std::fs::remove_file(&path).unwrap();
}

// Named endpoints.
#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn connection_types_and_futures_are_send() {
    use multiproc::connection::{Address, Auth, Connection, Listener, Peer, connect, python};
    send::<Listener<u8, String>>();
    sync::<Listener<u8, String>>();
    send::<Connection<u8, String>>();
    sync::<Connection<u8, String>>();
    send::<python::Connection>();
    send::<python::Listener>();
    send::<Peer>();
    send::<Auth>();
    sync::<Auth>();
    send::<multiproc::error::AcceptError>();
    sync::<multiproc::error::AcceptError>();
    send::<multiproc::error::ConnectError>();
    sync::<multiproc::error::ConnectError>();
    send::<multiproc::error::BindError>();
    sync::<multiproc::error::BindError>();
    let address = Address::abstract_name(format!("send-sync-{}", std::process::id()));
    send_val(&Listener::<u8, u8>::bind(address.clone(), Auth::none()));
    send_val(&connect::<u8, u8>(address.clone(), Auth::none()));
    send_val(&python::connect(address.clone(), Auth::none()));
    let mut listener = Listener::<u8, u8>::bind(address.clone(), Auth::none())
        .await
        .unwrap();
    let mut end = connect::<u8, u8>(address, Auth::none()).await.unwrap();
    send_val(&listener.accept());
    send_val(&end.send(1));
    send_val(&end.recv());
    send_val(&end.ready_timeout(std::time::Duration::ZERO));
}
