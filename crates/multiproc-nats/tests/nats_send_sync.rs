//! Every public type of multiproc-nats, and the futures of its async methods, can move between
//! threads (a tokio service needs both).

use multiproc_nats::error::{
    AcquireError, AcquireTimeoutError, ConnectError, EventError, GetError, OpenError, PutError,
    ReleaseError, RemoteError, TaskDoneError,
};
use multiproc_nats::pool::{Pool, PoolError, Registry, RemoteFn, Results, TaskHandle, WorkerHost};
use multiproc_nats::{
    Event, JoinableQueue, LeaseLost, Lock, LockGuard, Nats, Queue, QueueSink, QueueStream,
    Semaphore, SemaphorePermit, Task,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn types_are_send_and_sync() {
    send_sync::<Nats>();
    send_sync::<Queue<String>>();
    send_sync::<JoinableQueue<String>>();
    send_sync::<Task<String>>();
    send_sync::<Lock>();
    send_sync::<LockGuard>();
    send_sync::<Semaphore>();
    send_sync::<SemaphorePermit>();
    send_sync::<Event>();
    send_sync::<Pool>();
    send_sync::<Registry>();
    send_sync::<RemoteFn<u64, u64>>();
    send_sync::<TaskHandle<u64>>();
    send_sync::<PoolError>();
    send_sync::<RemoteError>();
    send_sync::<ConnectError>();
    send_sync::<OpenError>();
    send_sync::<PutError<String>>();
    send_sync::<GetError>();
    send_sync::<TaskDoneError>();
    send_sync::<AcquireError>();
    send_sync::<AcquireTimeoutError>();
    send_sync::<ReleaseError>();
    send_sync::<EventError>();
    send_sync::<WorkerHost>();
}

fn streams_and_futures_are_send(
    nats: Nats,
    q: Queue<String>,
    j: JoinableQueue<String>,
    lock: Lock,
    guard: LockGuard,
    event: Event,
    pool: Pool,
) {
    fn send_only<T: Send>() {}
    send_only::<QueueStream<String>>();
    send_only::<QueueSink<String>>();
    send_only::<LeaseLost>();
    send_only::<Results<u64>>();
    send(&nats.queue::<String>("q"));
    send(&q.put(String::new()));
    send(&q.get());
    send(&j.get());
    send(&j.join());
    send(&lock.lock());
    send(&guard.lease_lost());
    send(&event.wait());
    const F: RemoteFn<u64, u64> = RemoteFn::new("f");
    send(&pool.map(F, vec![1u64]));
    send(&pool.submit(F, 1));
}

#[test]
fn futures_are_send() {
    // Compiling `streams_and_futures_are_send` is the test.
    let _ = streams_and_futures_are_send;
}
