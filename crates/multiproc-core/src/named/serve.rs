//! The publishing side: [`publish`], [`Publication`], and the process's serving thread.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use rustix::event::{PollFd, PollFlags};
use serde::Serialize;

use super::error::{PublishError, PublishErrorKind};
use crate::message;
use crate::sys::abstract_socket::{accept, listen_abstract};
use crate::sys::{MAX_FDS_PER_SENDMSG, send_with_fds};
use crate::transport::endpoint::{effective_uid, peer_credentials};

/// Largest encoded value a name can carry (one `SOCK_SEQPACKET` packet).
pub(crate) const MAX_RECORD: usize = 64 * 1024;

/// A published name. The name stays looked-up-able while this guard lives, and is withdrawn
/// when it is dropped (or when the process dies, however it dies).
///
/// # Examples
/// ```
/// use multiproc_core::named;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-publication-{}", std::process::id());
/// let publication = named::publish(&name, &42u32)?;
/// assert_eq!(named::blocking_lookup::<u32>(&name)?, 42);
/// drop(publication);
/// assert!(named::blocking_lookup::<u32>(&name).unwrap_err().is_not_found());
/// # Ok(()) }
/// ```
#[must_use = "the name is withdrawn as soon as the publication is dropped"]
#[derive(Debug)]
pub struct Publication {
    id: u64,
    name: String,
}

impl Publication {
    /// The name as given to [`publish`].
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Publication {
    fn drop(&mut self) {
        server().withdraw(self.id);
    }
}

/// Publishes `value` under `name` in the registry namespace; see the [module docs](super).
/// Every later lookup gets its own copy of `value` as it is now (a handle looked up is the same
/// primitive: a `Lock`, a `Queue`, a pipe end, shared memory).
///
/// # Errors
/// [`PublishError::is_already_exists`] when the name is taken, by this process or another;
/// [`PublishError::is_invalid_name`] when it is empty, holds a NUL or a `/`, or is too long (the
/// whole socket name must fit 107 bytes: keep names under about 70); an error when the value
/// does not encode or is larger than 64 KiB or 253 descriptors.
pub fn publish<T: Serialize + ?Sized>(name: &str, value: &T) -> Result<Publication, PublishError> {
    publish_in(super::REGISTRY_NAMESPACE, name, value)
}

/// [`publish`] in another namespace than the registry's (for other named kinds, such as named
/// shared memory, whose names must not clash with registry names).
///
/// # Errors
/// As [`publish`].
pub fn publish_in<T: Serialize + ?Sized>(
    namespace: &str,
    name: &str,
    value: &T,
) -> Result<Publication, PublishError> {
    let socket_name = super::socket_name(namespace, name).map_err(|why| {
        PublishError::new(PublishErrorKind::InvalidName {
            name: name.to_owned(),
            why,
        })
    })?;
    let (bytes, fds) = message::encode(&(std::any::type_name::<T>(), value))
        .map_err(|e| PublishError::new(PublishErrorKind::Encode(e)))?;
    if bytes.len() > MAX_RECORD || fds.len() > MAX_FDS_PER_SENDMSG {
        return Err(PublishError::new(PublishErrorKind::TooLarge(
            bytes.len(),
            fds.len(),
        )));
    }
    let listener = listen_abstract(&socket_name).map_err(|e| {
        PublishError::new(if e.kind() == io::ErrorKind::AddrInUse {
            PublishErrorKind::AlreadyExists(name.to_owned())
        } else {
            PublishErrorKind::Io(e)
        })
    })?;
    let id = server()
        .add(Entry {
            listener: Arc::new(listener),
            record: Arc::new(Record { bytes, fds }),
        })
        .map_err(|e| PublishError::new(PublishErrorKind::Io(e)))?;
    Ok(Publication {
        id,
        name: name.to_owned(),
    })
}

/// What a lookup receives: the encoded value and its descriptors.
struct Record {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

#[derive(Clone)]
struct Entry {
    listener: Arc<OwnedFd>,
    record: Arc<Record>,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    next_id: u64,
    /// Bumped by every change of `entries`.
    generation: u64,
    /// The generation the thread's current snapshot was taken at.
    seen: u64,
    started: bool,
}

struct Server {
    state: Mutex<State>,
    /// Signalled when the thread takes a new snapshot.
    snapshot_taken: Condvar,
    /// Written to wake the thread; the thread reads the other end.
    wake_tx: OwnedFd,
    wake_rx: OwnedFd,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (wake_rx, wake_tx) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .expect("cannot create the pipe of the name-serving thread");
        Server {
            state: Mutex::new(State::default()),
            snapshot_taken: Condvar::new(),
            wake_tx,
            wake_rx,
        }
    })
}

impl Server {
    fn add(&'static self, entry: Entry) -> io::Result<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.started {
            std::thread::Builder::new()
                .name("multiproc-names".into())
                .spawn(move || self.run())?;
            state.started = true;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.entries.insert(id, entry);
        state.generation += 1;
        drop(state);
        self.wake();
        Ok(id)
    }

    fn withdraw(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = state.entries.remove(&id) else {
            return;
        };
        state.generation += 1;
        let target = state.generation;
        self.wake();
        // The thread's snapshot may hold the listener; wait until it has taken a newer one, so
        // the socket (and with it the name) is closed when this returns.
        while state.seen < target {
            state = self
                .snapshot_taken
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        drop(entry);
    }

    fn wake(&self) {
        // A full pipe already wakes the thread; nothing else can fail here.
        let _ = rustix::io::write(&self.wake_tx, &[1]);
    }

    fn run(&self) {
        let uid = effective_uid();
        loop {
            let snapshot: Vec<Entry> = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.seen = state.generation;
                self.snapshot_taken.notify_all();
                state.entries.values().cloned().collect()
            };
            let mut pollfds = Vec::with_capacity(snapshot.len() + 1);
            pollfds.push(PollFd::new(&self.wake_rx, PollFlags::IN));
            for entry in &snapshot {
                pollfds.push(PollFd::new(&*entry.listener, PollFlags::IN));
            }
            match rustix::event::poll(&mut pollfds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                // Out of memory for the poll set: retry after a pause rather than spin.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
            let ready: Vec<bool> = pollfds.iter().map(|p| !p.revents().is_empty()).collect();
            drop(pollfds);
            if ready[0] {
                let mut buf = [0u8; 64];
                while matches!(rustix::io::read(&self.wake_rx, &mut buf), Ok(n) if n > 0) {}
            }
            let mut starved = false;
            for (entry, _) in snapshot.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
                loop {
                    match accept(&*entry.listener) {
                        Ok(Some(conn)) => serve(&conn, &entry.record, uid),
                        Ok(None) => break,
                        // Out of descriptors (EMFILE) or memory: the connection stays queued
                        // and the socket readable; pause rather than spin on it.
                        Err(_) => {
                            starved = true;
                            break;
                        }
                    }
                }
            }
            if starved {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            drop(snapshot);
        }
    }
}

/// Answers one lookup: the record, if the peer is of our user; otherwise nothing (the peer
/// sees the connection closed).
fn serve(conn: &OwnedFd, record: &Record, uid: u32) {
    if peer_credentials(conn.as_fd()).map(|c| c.uid).ok() != Some(uid) {
        return;
    }
    let fds: Vec<BorrowedFd<'_>> = record.fds.iter().map(|fd| fd.as_fd()).collect();
    // One packet on a fresh connection fits the socket buffer; if it did not, the peer sees
    // the connection closed and reports the name refused.
    let _ = send_with_fds(conn.as_fd(), &record.bytes, &fds);
}
