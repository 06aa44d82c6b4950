//! Named `SharedMemory` across real processes: attach by name, Python's error rules, an owner
//! killed with SIGKILL (nothing left behind), and Python-compatible POSIX names used by the
//! machine's python3 in both directions.
//!
//! Error rules follow CPython's `test_shared_memory_basics` and friends (SHM-01..07 in the
//! Python contract): FileExistsError, FileNotFoundError, size zero refused, unlink twice.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use multiproc::{Event, SharedMemory, spawn};
use multiproc_suite::{within, within_blocking};

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("mpt_{what}_{}_{n}", std::process::id())
}

/// Attaches by name only (no handle travels), checks the owner's bytes, writes its own.
fn attach_and_write(name: String) -> Vec<u8> {
    let shm = SharedMemory::blocking_attach(&name).unwrap();
    assert_eq!(shm.name(), Some(name.as_str()));
    let mut buf = vec![0u8; 5];
    shm.read(0, &mut buf);
    shm.write(100, b"howdy");
    buf
}

#[tokio::test]
async fn a_process_attaches_by_name_and_both_see_each_others_writes() {
    let name = unique("attach");
    let shm = SharedMemory::create(&name, 512).unwrap();
    assert_eq!(shm.name(), Some(name.as_str()));
    assert_eq!(shm.len(), 512);
    shm.write(0, b"HELLO");
    let seen = within("child", spawn(name.clone(), attach_and_write))
        .await
        .unwrap();
    assert_eq!(seen, b"HELLO");
    let mut buf = [0u8; 5];
    shm.read(100, &mut buf);
    assert_eq!(&buf, b"howdy");
    // A second handle in this process is the same memory, and keeps the name while it lives.
    let clone = shm.clone();
    drop(shm);
    assert_eq!(
        within("attach", SharedMemory::attach(&name))
            .await
            .unwrap()
            .to_vec()[100..105],
        *b"howdy"
    );
    drop(clone);
    assert!(
        within("attach", SharedMemory::attach(&name))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[test]
fn python_error_rules() {
    let name = unique("rules");
    let shm = SharedMemory::create(&name, 100).unwrap();
    // FileExistsError, FileNotFoundError, size zero, bad names.
    assert!(
        SharedMemory::create(&name, 100)
            .unwrap_err()
            .is_already_exists()
    );
    assert!(
        SharedMemory::blocking_attach(&unique("missing"))
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        SharedMemory::create(&unique("zero"), 0)
            .unwrap_err()
            .is_invalid()
    );
    assert!(SharedMemory::create("a\0b", 10).unwrap_err().is_invalid());
    assert!(SharedMemory::create("a/b", 10).unwrap_err().is_invalid());
    assert!(SharedMemory::create("", 10).unwrap_err().is_invalid());
    assert!(
        SharedMemory::blocking_attach(&"x".repeat(200))
            .unwrap_err()
            .is_invalid()
    );
    // unlink withdraws the name; a second unlink is not found (as Python's).
    shm.unlink().unwrap();
    assert!(shm.unlink().unwrap_err().is_not_found());
    assert!(
        SharedMemory::blocking_attach(&name)
            .unwrap_err()
            .is_not_found()
    );
    shm.write(0, b"still mapped");
    // Anonymous memory has no name to unlink.
    assert!(SharedMemory::new(8).unwrap().unlink().is_err());
}

/// Creates `name`, says so, and sleeps until killed.
fn own_forever((name, created): (String, Event)) {
    let shm = SharedMemory::create(&name, 4096).unwrap();
    shm.write(0, b"from the owner");
    created.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn dev_shm_mentions(name: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.contains(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a socket is bound to the abstract name that serves `name` (`/proc/net/unix`).
fn abstract_name_bound(name: &str) -> bool {
    let listed = format!(
        "@multiproc/{}/shm/{name}",
        rustix::process::geteuid().as_raw()
    );
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .any(|l| l.ends_with(&listed))
}

#[tokio::test]
async fn an_owner_killed_with_sigkill_leaves_nothing_behind() {
    let name = unique("sigkill");
    let created = Event::new().unwrap();
    let mut owner = spawn((name.clone(), created.clone()), own_forever);
    within("owner created the memory", created.wait())
        .await
        .unwrap();
    let attached = within("attach", SharedMemory::attach(&name)).await.unwrap();
    assert_eq!(&attached.to_vec()[..14], b"from the owner");
    assert!(
        abstract_name_bound(&name),
        "the live owner's name is listed (so the check after its death can fail)"
    );
    owner.kill().unwrap();
    assert!(
        within("killed owner", owner.join())
            .await
            .unwrap_err()
            .is_killed()
    );
    // The name died with its owner, and nothing of it is in /dev/shm...
    let gone = within_blocking("name withdrawn", {
        let name = name.clone();
        move || {
            multiproc_suite::blocking_eventually(Duration::from_secs(30), || {
                SharedMemory::blocking_attach(&name).is_err_and(|e| e.is_not_found())
            })
        }
    })
    .await;
    assert!(gone);
    // Served memory is a memfd, never in /dev/shm (documentation of the model; this cannot
    // fail). What could leak is the abstract name, inherited by some other process: no
    // listener of it may remain in /proc/net/unix.
    assert!(dev_shm_mentions(&name).is_empty());
    assert!(!abstract_name_bound(&name), "the name is still bound");
    // ...while a process that had attached keeps its memory.
    assert_eq!(&attached.to_vec()[..14], b"from the owner");
}

/// Receives a handle (not a name) to served memory: it is the same memory, but not an owner.
fn received(shm: SharedMemory) -> (Option<String>, bool) {
    shm.write(0, b"x");
    (shm.name().map(str::to_owned), shm.unlink().is_err())
}

#[tokio::test]
async fn a_named_handle_sent_to_a_child_is_the_same_memory_but_not_an_owner() {
    let name = unique("sent");
    let shm = SharedMemory::create(&name, 64).unwrap();
    let (child_name, refused) = within("child", spawn(shm.clone(), received)).await.unwrap();
    assert_eq!(child_name.as_deref(), Some(name.as_str()));
    assert!(refused, "a non-owner withdrew the name");
    assert_eq!(shm.to_vec()[0], b'x');
    assert!(within("attach", SharedMemory::attach(&name)).await.is_ok());
}

/// Runs a python3 script with arguments; its stdout, or a panic with its stderr.
async fn python(script: &'static str, args: Vec<String>) -> String {
    let out = within_blocking("python3", move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 is needed for the interoperability tests")
    })
    .await;
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Python attaches by name, reads 5 bytes, writes 5 and detaches without unlinking. (Python
/// 3.11's resource tracker would unlink a segment it merely attached when the script exits,
/// gh-82300; the script unregisters it, as code attaching to others' segments must.)
const PY_ATTACH: &str = "\
import sys
from multiprocessing import shared_memory, resource_tracker
shm = shared_memory.SharedMemory(name=sys.argv[1])
resource_tracker.unregister(shm._name, 'shared_memory')
print(bytes(shm.buf[:5]).decode(), shm.size)
shm.buf[100:105] = b'PYTHN'
shm.close()
";

const PY_CREATE: &str = "\
import sys
from multiprocessing import shared_memory, resource_tracker
shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=int(sys.argv[2]))
resource_tracker.unregister(shm._name, 'shared_memory')
shm.buf[:6] = b'python'
shm.close()
";

const PY_MISSING: &str = "\
import sys
from multiprocessing import shared_memory
try:
    shared_memory.SharedMemory(name=sys.argv[1])
except FileNotFoundError:
    print('FileNotFoundError')
";

#[tokio::test]
async fn python_attaches_a_segment_multiproc_created() {
    let name = unique("rs2py");
    let shm = SharedMemory::create_posix(&name, 4096).unwrap();
    assert!(Path::new(&format!("/dev/shm/{name}")).exists());
    shm.write(0, b"HELLO");
    let out = python(PY_ATTACH, vec![name.clone()]).await;
    assert_eq!(out.trim(), "HELLO 4096");
    let mut buf = [0u8; 5];
    shm.read(100, &mut buf);
    assert_eq!(&buf, b"PYTHN");
    // Python's FileExistsError rule on our name, and unlink as Python does it.
    assert!(
        SharedMemory::create_posix(&name, 10)
            .unwrap_err()
            .is_already_exists()
    );
    shm.unlink().unwrap();
    assert!(!Path::new(&format!("/dev/shm/{name}")).exists());
    assert!(shm.unlink().unwrap_err().is_not_found());
    let out = python(PY_MISSING, vec![name.clone()]).await;
    assert_eq!(out.trim(), "FileNotFoundError");
}

/// Attaches a POSIX segment by name in a child and returns its first bytes.
fn attach_posix_in_child(name: String) -> Vec<u8> {
    SharedMemory::attach_posix(&name).unwrap().to_vec()[..6].to_vec()
}

#[tokio::test]
async fn multiproc_attaches_a_segment_python_created() {
    let name = unique("py2rs");
    python(PY_CREATE, vec![name.clone(), "1000".into()]).await;
    let shm = SharedMemory::attach_posix(&name).unwrap();
    // Python's size: Linux rounds nothing, the object is exactly what Python asked for.
    assert_eq!(shm.len(), 1000);
    assert_eq!(&shm.to_vec()[..6], b"python");
    assert_eq!(
        within("child", spawn(name.clone(), attach_posix_in_child))
            .await
            .unwrap(),
        b"python"
    );
    // A POSIX handle travels by name (as Python pickles it) and is the same memory.
    let via_handle = within(
        "child",
        spawn(shm.clone(), |shm: SharedMemory| {
            shm.write(0, b"rust!!");
            shm.name().map(str::to_owned)
        }),
    )
    .await
    .unwrap();
    assert_eq!(via_handle.as_deref(), Some(name.as_str()));
    assert_eq!(&shm.to_vec()[..6], b"rust!!");
    shm.unlink().unwrap();
    assert!(
        SharedMemory::attach_posix(&name)
            .unwrap_err()
            .is_not_found()
    );
}

/// Review finding: `attach_posix` followed a symbolic link planted in the world-writable
/// `/dev/shm`, mapping (and so writing) the file it pointed to. glibc and Python open with
/// `O_NOFOLLOW`.
#[test]
fn attach_posix_refuses_a_symbolic_link_in_dev_shm() {
    let target = std::env::temp_dir().join(unique("shm_target"));
    std::fs::write(&target, [0u8; 4096]).unwrap();
    let name = unique("link");
    let link = Path::new("/dev/shm").join(&name);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let attached = SharedMemory::attach_posix(&name);
    std::fs::remove_file(&link).unwrap();
    let e = match attached {
        Ok(shm) => {
            shm.write(0, b"written through a link");
            panic!("attach_posix mapped the link's target");
        }
        Err(e) => e,
    };
    assert!(e.is_invalid(), "{e:?}");
    assert_eq!(std::fs::read(&target).unwrap(), vec![0u8; 4096]);
    std::fs::remove_file(&target).unwrap();
}

/// Attaches the POSIX object, says so, waits for `shrunk`, then reads its last byte.
fn read_after_shrink((name, attached, shrunk): (String, Event, Event)) -> u8 {
    let shm = SharedMemory::attach_posix(&name).unwrap();
    attached.set();
    shrunk.blocking_wait().unwrap();
    let mut last = [0u8; 1];
    shm.read(shm.len() - 1, &mut last);
    last[0]
}

/// Review finding (documentation): a POSIX object is not sealed, so another process that
/// shrinks it makes an attached process's access fault. The documented outcome is death by
/// SIGBUS, never a silent wrong value.
#[tokio::test]
async fn a_shrunk_posix_object_kills_its_reader_with_sigbus_as_documented() {
    let name = unique("shrink");
    let shm = SharedMemory::create_posix(&name, 3 * 4096).unwrap();
    let (attached, shrunk) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn(
        (name.clone(), attached.clone(), shrunk.clone()),
        read_after_shrink,
    );
    within("child attached", attached.wait()).await.unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(Path::new("/dev/shm").join(&name))
        .unwrap()
        .set_len(0)
        .unwrap();
    shrunk.set();
    let e = within("child", child).await.unwrap_err();
    assert_eq!(
        e.signal(),
        Some(rustix::process::Signal::BUS.as_raw()),
        "{e:?}"
    );
    shm.unlink().unwrap();
}

/// Cancel safety: attach futures dropped mid-way leave the owner serving the next attach.
#[tokio::test]
async fn a_dropped_attach_leaves_the_owner_serving() {
    let name = unique("dropped");
    let owner = SharedMemory::create(&name, 64).unwrap();
    owner.write(0, b"ok");
    for _ in 0..20 {
        let mut attach = std::pin::pin!(SharedMemory::attach(&name));
        let _ = futures::poll!(attach.as_mut());
    }
    let shm = within("attach after drops", SharedMemory::attach(&name))
        .await
        .unwrap();
    assert_eq!(&shm.to_vec()[..2], b"ok");
}
