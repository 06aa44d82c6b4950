//! The handle registry (`multiproc::named`) across real processes: handles published under a
//! name and looked up by processes that received nothing but the name; missing names, wrong
//! types, withdrawal, a publisher killed with SIGKILL, and a lookup by another user refused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use multiproc::{Event, Lock, Queue, SharedMemory, named, pipe, spawn};
use multiproc_suite::{within, within_blocking};

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("mpt-{what}-{}-{n}", std::process::id())
}

type Bundle = (Queue<String>, Lock, Event, SharedMemory);

/// Looks the bundle up by name alone and uses every handle in it.
async fn use_bundle(name: String) -> bool {
    let (queue, lock, event, shm): Bundle = named::lookup(&name).await.unwrap();
    let guard = lock.try_lock().is_ok();
    queue
        .put(format!("hello from {}", std::process::id()))
        .await
        .unwrap();
    shm.write(0, b"seen");
    event.set();
    guard
}

#[tokio::test]
async fn handles_published_under_a_name_are_the_same_primitives_in_a_process_that_looks_them_up() {
    let name = unique("bundle");
    let bundle: Bundle = (
        Queue::new().unwrap(),
        Lock::new().unwrap(),
        Event::new().unwrap(),
        SharedMemory::new(16).unwrap(),
    );
    let publication = named::publish(&name, &bundle).unwrap();
    assert_eq!(publication.name(), name);
    let held = bundle.1.lock().await.unwrap();
    let child = spawn(name.clone(), use_bundle);
    within("event set by the child", bundle.2.wait())
        .await
        .unwrap();
    let got_lock = within("child", child).await.unwrap();
    assert!(!got_lock, "the child's lock is not the same lock");
    drop(held);
    let message = within("message", bundle.0.get()).await.unwrap();
    assert!(message.starts_with("hello from "));
    assert_eq!(&bundle.3.to_vec()[..4], b"seen");
}

#[tokio::test]
async fn a_pipe_end_looked_up_by_name_talks_to_its_peer() {
    let name = unique("pipe");
    let (mut here, there) = pipe::duplex::<u32, u32>().unwrap();
    let _publication = named::publish(&name, &there).unwrap();
    drop(there);
    let child = spawn(name.clone(), |name: String| {
        let mut end: pipe::Duplex<u32, u32> = named::blocking_lookup(&name).unwrap();
        let n = end.blocking_recv().unwrap().unwrap();
        end.blocking_send(n + 1).unwrap();
    });
    here.send(41).await.unwrap();
    assert_eq!(within("answer", here.recv()).await.unwrap(), Some(42));
    within("child", child).await.unwrap();
}

#[tokio::test]
async fn missing_names_wrong_types_and_duplicates_are_clear_errors() {
    let name = unique("errors");
    let err = named::lookup::<u32>(&name).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains(&name));
    let publication = named::publish(&name, &7u32).unwrap();
    let err = named::publish(&name, &8u32).unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    let err = named::lookup::<String>(&name).await.unwrap_err();
    assert!(err.is_wrong_type(), "{err}");
    assert_eq!(named::blocking_lookup::<u32>(&name).unwrap(), 7);
    assert!(named::publish("", &1u8).unwrap_err().is_invalid_name());
    assert!(named::publish("a/b", &1u8).unwrap_err().is_invalid_name());
    assert!(
        named::lookup::<u8>(&"n".repeat(120))
            .await
            .unwrap_err()
            .is_invalid_name()
    );
    drop(publication);
    // Withdrawn at once: the lookup fails, and the name can be published again.
    assert!(
        named::lookup::<u32>(&name)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let _again = named::publish(&name, &9u32).unwrap();
    assert_eq!(named::lookup::<u32>(&name).await.unwrap(), 9);
}

/// Publishes an event under `name`, sets `published`, and sleeps until killed.
fn publish_forever((name, published): (String, Event)) {
    let _publication = named::publish(&name, &published).unwrap();
    published.set();
    std::thread::sleep(Duration::from_secs(3600));
}

#[tokio::test]
async fn a_publisher_killed_with_sigkill_takes_its_names_with_it() {
    let name = unique("sigkill");
    let published = Event::new().unwrap();
    let mut child = spawn((name.clone(), published.clone()), publish_forever);
    within("published", published.wait()).await.unwrap();
    let found: Event = named::lookup(&name).await.unwrap();
    assert!(found.is_set());
    child.kill().unwrap();
    assert!(
        within("killed", child.join())
            .await
            .unwrap_err()
            .is_killed()
    );
    let gone = multiproc_suite::eventually(|| {
        named::blocking_lookup::<Event>(&name).is_err_and(|e| e.is_not_found())
    })
    .await;
    assert!(gone);
}

/// Review findings: with the publisher stopped, lookups queue in its backlog and then (once it
/// is full) retry their connect; that retry slept a runtime thread, freezing a current-thread
/// runtime. When the stopped publisher is then killed, the queued connections are reset, which
/// was reported as an I/O error instead of `is_not_found`.
#[tokio::test(flavor = "current_thread")]
async fn lookups_of_a_stopped_then_killed_publisher_block_no_thread_and_end_not_found() {
    use rustix::process::{Pid, Signal, kill_process};
    let name = unique("stopped");
    let published = Event::new().unwrap();
    let mut child = spawn((name.clone(), published.clone()), publish_forever);
    within("published", published.wait()).await.unwrap();
    let pid = Pid::from_raw(child.pid().unwrap() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    // The signal is asynchronous: wait until every thread of the child (its serving thread
    // included) is stopped, state `T` in /proc.
    let raw = pid.as_raw_nonzero().get();
    let stopped = multiproc_suite::eventually(|| {
        std::fs::read_dir(format!("/proc/{raw}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('T')
                    })
                })
            })
            .unwrap_or(false)
    })
    .await;
    assert!(stopped, "the publisher did not stop");
    // More lookups than the backlog holds (128): some are queued, the rest retry connecting.
    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let name = name.clone();
            tokio::spawn(async move { named::lookup::<Event>(&name).await })
        })
        .collect();
    // The runtime's only thread keeps running other tasks meanwhile; no lookup can finish
    // (the publisher is stopped; they would time out only after LOOKUP_TIMEOUT, 10 s).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        lookups.iter().all(|l| !l.is_finished()),
        "a lookup ended while its publisher was stopped (it blocked the runtime until its timeout)"
    );
    child.kill().unwrap();
    assert!(
        within("killed", child.join())
            .await
            .unwrap_err()
            .is_killed()
    );
    for lookup in lookups {
        let e = within("lookup", lookup).await.unwrap().unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
    }
}

#[tokio::test]
async fn many_lookups_at_once_are_all_answered() {
    let name = unique("many");
    let _publication = named::publish(&name, &vec![1u64, 2, 3]).unwrap();
    let lookups: Vec<_> = (0..200)
        .map(|_| {
            let name = name.clone();
            tokio::spawn(async move { named::lookup::<Vec<u64>>(&name).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(within("lookup", lookup).await.unwrap().unwrap(), [1, 2, 3]);
    }
}

/// Runs `f` on a thread whose user ids are `nobody`'s (the kernel records a socket's
/// credentials from the thread that connects or listens; the other threads keep theirs).
async fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within_blocking("a call as nobody", move || {
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        f()
    })
    .await
}

fn seqpacket() -> std::os::fd::OwnedFd {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

/// The abstract socket name the registry uses for `name` (its documented layout).
fn socket_name(name: &str) -> rustix::net::SocketAddrUnix {
    let uid = rustix::process::geteuid().as_raw();
    rustix::net::SocketAddrUnix::new_abstract_name(
        format!("multiproc/{uid}/registry/{name}").as_bytes(),
    )
    .unwrap()
}

#[tokio::test]
async fn other_users_are_refused_on_both_sides() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: acting as another uid needs root");
        return;
    }
    // A publisher answers nothing to a process of another user: the connection is closed.
    let name = unique("uid");
    let _publication = named::publish(&name, &1u32).unwrap();
    let addr = socket_name(&name);
    let answer = as_nobody(move || {
        let socket = seqpacket();
        rustix::net::connect(&socket, &addr).unwrap();
        let mut buf = [0u8; 256];
        rustix::io::read(&socket, &mut buf).unwrap()
    })
    .await;
    assert_eq!(answer, 0, "the publisher answered another user");
    // Names are per user: another user looking the name up finds nothing of ours.
    let theirs = name.clone();
    let err = as_nobody(move || named::blocking_lookup::<u32>(&theirs).unwrap_err()).await;
    assert!(err.is_not_found(), "{err}");
    // A process of another user squatting our name is reported, never believed.
    let squatted = unique("squat");
    let addr = socket_name(&squatted);
    let _squatter = as_nobody(move || {
        let socket = seqpacket();
        rustix::net::bind(&socket, &addr).unwrap();
        rustix::net::listen(&socket, 8).unwrap();
        socket
    })
    .await;
    let err = named::lookup::<u32>(&squatted).await.unwrap_err();
    assert!(err.is_other_user(), "{err}");
    assert!(
        named::publish(&squatted, &1u32)
            .unwrap_err()
            .is_already_exists()
    );
}
