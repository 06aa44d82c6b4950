//! Named endpoints over Unix sockets across real processes: clients in children, handles in
//! messages, peer credentials, socket files (stale, raced for, removed), a listener killed
//! mid-conversation, Python's `poll`.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use multiproc::connection::{Address, Auth, Listener, connect};
use multiproc::pipe::{self, Duplex, Sender};
use multiproc::{Barrier, spawn};
use multiproc_suite::within;

/// A socket path nobody else uses: pid plus a counter.
fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mp-conn-{tag}-{}-{n}.sock", std::process::id()))
}

fn unique_name(tag: &str) -> Address {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Address::abstract_name(format!("mp-conn-{tag}-{}-{n}", std::process::id()))
}

fn lock_file(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

#[tokio::test]
async fn a_child_connects_by_path_and_a_pipe_end_travels_inside_a_message() {
    let path = unique_path("handles");
    let mut listener = Listener::<Sender<String>, u32>::bind(&*path, Auth::key(b"k"))
        .await
        .unwrap();
    let child = spawn(path.clone(), |path: PathBuf| async move {
        let mut end = connect::<u32, Sender<String>>(&*path, Auth::key(b"k"))
            .await
            .unwrap();
        end.send(std::process::id()).await.unwrap();
        // The listener's process sends us the sending end of a pipe it made.
        let mut tx = end.recv().await.unwrap().expect("a pipe end");
        tx.send(format!("hi from {}", std::process::id()))
            .await
            .unwrap();
    });
    let (mut end, peer) = within("accept", listener.accept()).await.unwrap();
    assert!(end.carries_handles());
    let pid = within("pid", end.recv()).await.unwrap().unwrap();
    assert_eq!(peer.pid(), Some(pid), "SO_PEERCRED names the client");
    assert_eq!(peer.uid(), Some(rustix::process::geteuid().as_raw()));
    assert_eq!(Some(pid), child.pid());
    let (tx, mut rx) = pipe::simplex::<String>().unwrap();
    end.send(tx).await.unwrap();
    assert_eq!(
        within("through the pipe", rx.recv()).await.unwrap(),
        Some(format!("hi from {pid}"))
    );
    within("child", child).await.unwrap();
}

#[tokio::test]
async fn the_end_is_a_duplex_pipe_end_underneath() {
    let address = unique_name("duplex");
    let mut listener = Listener::<u64, u64>::bind(address.clone(), Auth::none())
        .await
        .unwrap();
    let client = connect::<u64, u64>(address, Auth::none()).await.unwrap();
    let (server, _) = within("accept", listener.accept()).await.unwrap();
    let mut client: Duplex<u64, u64> = client.into_duplex().unwrap();
    let mut server: Duplex<u64, u64> = server.into_duplex().unwrap();
    // A blocking send works: it is a pipe end like any other.
    client.blocking_send(7).unwrap();
    assert_eq!(within("recv", server.recv()).await.unwrap(), Some(7));
}

#[tokio::test]
async fn same_user_accepts_our_own_user_over_an_abstract_name() {
    let address = unique_name("same-user");
    let mut listener = Listener::<String, String>::bind(address.clone(), Auth::same_user())
        .await
        .unwrap();
    let child = spawn(address, |address: Address| async move {
        let mut end = connect::<String, String>(address, Auth::same_user())
            .await
            .unwrap();
        let listener_pid = end.peer().pid();
        end.send("from the child".into()).await.unwrap();
        listener_pid
    });
    let (mut end, peer) = within("accept", listener.accept()).await.unwrap();
    assert_eq!(peer.pid(), child.pid());
    assert_eq!(
        within("recv", end.recv()).await.unwrap().as_deref(),
        Some("from the child")
    );
    // The client saw the listener's process.
    assert_eq!(
        within("child", child).await.unwrap(),
        Some(std::process::id())
    );
}

/// In a child: drop this thread to uid/gid 65534 ("nobody"), then connect with same-user auth
/// from this very thread (Linux credentials are per thread; the socket takes the connecting
/// thread's). Returns (client refused the listener, the error said authentication).
fn connect_as_nobody(address: Address) -> (bool, bool) {
    use rustix::process::{Gid, Uid};
    rustix::thread::set_thread_res_gid(
        Gid::from_raw(65534),
        Gid::from_raw(65534),
        Gid::from_raw(65534),
    )
    .expect("setresgid");
    rustix::thread::set_thread_res_uid(
        Uid::from_raw(65534),
        Uid::from_raw(65534),
        Uid::from_raw(65534),
    )
    .expect("setresuid");
    assert_eq!(rustix::process::geteuid().as_raw(), 65534);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match connect::<u8, u8>(address, Auth::same_user()).await {
            Ok(_) => (false, false),
            Err(e) => (true, e.is_auth()),
        }
    })
}

#[tokio::test]
async fn a_peer_of_another_uid_is_refused_under_same_user() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("not root: cannot run a child as another user; skipped");
        return;
    }
    let address = unique_name("other-uid");
    let mut listener = Listener::<u8, u8>::bind(address.clone(), Auth::same_user())
        .await
        .unwrap();
    let child = spawn(address, connect_as_nobody);
    let err = within("accept", listener.accept())
        .await
        .expect_err("a client of another uid must be refused");
    assert!(err.is_auth(), "{err}");
    assert!(!err.is_fatal());
    assert_eq!(err.peer().and_then(|p| p.uid()), Some(65534));
    assert!(err.to_string().contains("handshake"), "{err}");
    let (refused, auth) = within("child", child).await.unwrap();
    assert!(
        refused && auth,
        "the client refuses a listener of another uid too"
    );
    // The listener goes on serving its own user.
    let _client = connect::<u8, u8>(listener.local_address().clone(), Auth::same_user())
        .await
        .unwrap();
    within("accept after", listener.accept()).await.unwrap();
}

/// A child that binds `path` and holds it until killed.
async fn hold_listener((path, mut ready): (PathBuf, Sender<bool>)) {
    let listener = Listener::<u8, u8>::bind(&*path, Auth::none()).await;
    ready.send(listener.is_ok()).await.unwrap();
    let _keep = listener;
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn a_stale_socket_file_of_a_killed_listener_is_reclaimed() {
    let path = unique_path("stale");
    let (tx, mut rx) = pipe::simplex::<bool>().unwrap();
    let child = spawn((path.clone(), tx), hold_listener);
    assert_eq!(within("child bound", rx.recv()).await.unwrap(), Some(true));
    // Live: a second listener is refused.
    let err = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .expect_err("the path is in use");
    assert!(err.is_addr_in_use(), "{err}");
    child.kill().unwrap();
    let _ = within("child killed", child).await;
    // SIGKILL ran no destructor: the socket file is still there, and nobody listens on it.
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let std_err = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
    assert_eq!(std_err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The next bind reclaims it, and works.
    let mut listener = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .unwrap();
    let mut client = connect::<u8, u8>(&*path, Auth::none()).await.unwrap();
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    client.send(9).await.unwrap();
    assert_eq!(within("recv", end.recv()).await.unwrap(), Some(9));
    drop(listener);
    assert!(!path.exists(), "the listener removes its socket file");
    assert!(!lock_file(&path).exists(), "and its lock file");
}

#[tokio::test]
async fn a_live_socket_of_another_program_is_not_taken() {
    let path = unique_path("foreign");
    // A listener that does not take our lock (as Python's does not).
    let foreign = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .expect_err("live");
    assert!(err.is_addr_in_use(), "{err}");
    assert!(path.exists());
    drop(foreign);
    // Now stale: reclaimed.
    let listener = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .unwrap();
    drop(listener);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_never_removed() {
    let path = unique_path("regular");
    std::fs::write(&path, b"precious").unwrap();
    let err = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .expect_err("a regular file is in the way");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn the_listener_removes_only_its_own_file() {
    let path = unique_path("replaced");
    let listener = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .unwrap();
    // Someone replaces the file behind the listener's back.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"not yours").unwrap();
    drop(listener);
    assert_eq!(std::fs::read(&path).unwrap(), b"not yours");
    std::fs::remove_file(&path).unwrap();
}

async fn race_for((path, barrier, mut end): (PathBuf, Barrier, Duplex<bool, ()>)) {
    barrier.wait().await.unwrap();
    let bound = Listener::<u8, u8>::bind(&*path, Auth::none()).await;
    if let Err(e) = &bound {
        assert!(
            e.is_addr_in_use(),
            "a loser is told the address is in use: {e}"
        );
    }
    end.send(bound.is_ok()).await.unwrap();
    // Hold the listener (or not) until the parent has every answer.
    let _ = end.recv().await;
}

#[tokio::test]
async fn of_listeners_racing_for_one_path_exactly_one_wins() {
    const RACERS: usize = 4;
    for round in 0..3 {
        let path = unique_path("race");
        let barrier = Barrier::new(RACERS).unwrap();
        let mut ends = Vec::new();
        let mut children = Vec::new();
        for _ in 0..RACERS {
            let (here, there) = pipe::duplex::<(), bool>().unwrap();
            children.push(spawn((path.clone(), barrier.clone(), there), race_for));
            ends.push(here);
        }
        let mut winners = 0;
        for end in &mut ends {
            if within("racer", end.recv()).await.unwrap().unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one listener binds");
        drop(ends);
        for child in children {
            within("racer exits", child).await.unwrap();
        }
        assert!(!path.exists(), "the winner removed its file");
    }
}

async fn echo_server((path, mut ready): (PathBuf, Sender<()>)) {
    let mut listener = Listener::<String, String>::bind(&*path, Auth::key(b"k"))
        .await
        .unwrap();
    ready.send(()).await.unwrap();
    loop {
        let (mut end, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            while let Ok(Some(s)) = end.recv().await {
                if end.send(s).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[tokio::test]
async fn a_listener_killed_mid_conversation_gives_its_clients_an_error_not_a_hang() {
    let path = unique_path("killed");
    let (tx, mut rx) = pipe::simplex::<()>().unwrap();
    let server = spawn((path.clone(), tx), echo_server);
    within("server ready", rx.recv()).await.unwrap().unwrap();
    let mut a = connect::<String, String>(&*path, Auth::key(b"k"))
        .await
        .unwrap();
    let mut b = connect::<String, String>(&*path, Auth::key(b"k"))
        .await
        .unwrap();
    a.send("one".into()).await.unwrap();
    assert_eq!(
        within("echo", a.recv()).await.unwrap().as_deref(),
        Some("one")
    );
    server.kill().unwrap();
    let _ = within("server killed", server).await;
    // Waiting clients wake with end-of-stream; sending fails.
    assert!(matches!(
        within("a after kill", a.recv()).await,
        Ok(None) | Err(_)
    ));
    assert!(matches!(
        within("b after kill", b.recv()).await,
        Ok(None) | Err(_)
    ));
    let mut failed = false;
    for _ in 0..10 {
        if b.send("anyone?".into()).await.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "sending to a dead listener's connection fails");
    // A new client is refused: the file is stale.
    let err = connect::<String, String>(&*path, Auth::key(b"k"))
        .await
        .unwrap_err();
    assert!(err.is_refused(), "{err}");
}

#[tokio::test]
async fn ready_timeout_is_pythons_poll_and_takes_nothing() {
    let address = unique_name("poll");
    let mut listener = Listener::<u32, u32>::bind(address.clone(), Auth::none())
        .await
        .unwrap();
    let mut client = connect::<u32, u32>(address, Auth::none()).await.unwrap();
    let (mut server, _) = within("accept", listener.accept()).await.unwrap();
    assert!(!server.ready_timeout(Duration::ZERO).await.unwrap());
    assert!(
        !server
            .ready_timeout(Duration::from_millis(20))
            .await
            .unwrap()
    );
    client.send(3).await.unwrap();
    assert!(
        within("poll", server.ready_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
    );
    assert!(server.ready_timeout(Duration::ZERO).await.unwrap());
    assert_eq!(server.try_recv().unwrap(), 3);
    drop(client);
    // End-of-stream counts as ready, as in Python (recv would not wait).
    within("poll at eof", server.ready()).await.unwrap();
    assert_eq!(server.recv().await.unwrap(), None);
}

async fn one_client(path: PathBuf) -> u32 {
    let mut end = connect::<u32, u32>(&*path, Auth::key(b"many"))
        .await
        .unwrap();
    let mut sum = 0;
    for i in 0..20 {
        end.send(i).await.unwrap();
        sum += end.recv().await.unwrap().unwrap();
    }
    sum
}

#[tokio::test]
async fn incoming_serves_many_client_processes_at_once() {
    const CLIENTS: usize = 6;
    let path = unique_path("incoming");
    let mut listener = Listener::<u32, u32>::bind(&*path, Auth::key(b"many"))
        .await
        .unwrap();
    let children: Vec<_> = (0..CLIENTS)
        .map(|_| spawn(path.clone(), one_client))
        .collect();
    let mut served = 0;
    let mut incoming = listener.incoming();
    while served < CLIENTS {
        let (mut end, peer) = within("incoming", incoming.next()).await.unwrap().unwrap();
        assert!(peer.pid().is_some());
        tokio::spawn(async move {
            while let Ok(Some(n)) = end.recv().await {
                end.send(n * 2).await.unwrap();
            }
        });
        served += 1;
    }
    for child in children {
        assert_eq!(
            within("client", child).await.unwrap(),
            2 * (0..20).sum::<u32>()
        );
    }
}

#[tokio::test]
async fn a_client_may_send_and_close_before_the_listener_accepts() {
    // Python's test_issue14725: the message is still received.
    let address = unique_name("early");
    let mut listener = Listener::<u8, String>::bind(address.clone(), Auth::none())
        .await
        .unwrap();
    let child = spawn(address, |address: Address| async move {
        let mut end = connect::<String, u8>(address, Auth::none()).await.unwrap();
        end.send("before accept".into()).await.unwrap();
    });
    within("child", child).await.unwrap();
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    assert_eq!(
        within("recv", end.recv()).await.unwrap().as_deref(),
        Some("before accept")
    );
    assert_eq!(within("eof", end.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn a_dropped_accept_takes_no_connection() {
    use futures::FutureExt;
    let address = unique_name("cancel-accept");
    let mut listener = Listener::<u8, u8>::bind(address.clone(), Auth::key(b"k"))
        .await
        .unwrap();
    // Polled once with nothing there, then dropped; and a wait cut short by a timeout.
    assert!(listener.accept().now_or_never().is_none());
    let cut = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
    assert!(cut.is_err(), "nobody connected yet");
    let mut client = connect::<u8, u8>(address, Auth::key(b"k")).await.unwrap();
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    client.send(8).await.unwrap();
    assert_eq!(within("recv", end.recv()).await.unwrap(), Some(8));
}

#[tokio::test]
async fn a_queue_and_a_lock_travel_to_a_program_that_connected_by_name() {
    use multiproc::{Lock, Queue};
    let address = unique_name("queue-lock");
    let mut listener = Listener::<(Queue<u32>, Lock), ()>::bind(address.clone(), Auth::same_user())
        .await
        .unwrap();
    let child = spawn(address, |address: Address| async move {
        let mut end = connect::<(), (Queue<u32>, Lock)>(address, Auth::same_user())
            .await
            .unwrap();
        let (queue, lock) = end.recv().await.unwrap().expect("handles");
        let _held = lock.lock().await.unwrap();
        for i in 0..3 {
            queue.put(i).await.unwrap();
        }
    });
    let (mut end, _) = within("accept", listener.accept()).await.unwrap();
    let queue = Queue::<u32>::new().unwrap();
    let lock = Lock::new().unwrap();
    end.send((queue.clone(), lock.clone())).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within("get", queue.get()).await.unwrap());
    }
    assert_eq!(got, [0, 1, 2]);
    within("child", child).await.unwrap();
    // The child released the lock when it was done.
    let _guard = within("lock", lock.lock()).await.unwrap();
}
