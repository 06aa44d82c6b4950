//! Names for handles, with no file behind them: a process *publishes* a value (any serde type,
//! handles and their descriptors included) under a name, and any process of the same user
//! *looks it up* by name and gets its own copy, descriptors and all. This is the registry
//! Python users build with a `Manager`, without a server process holding the objects, and the
//! mechanism under named shared memory.
//!
//! **How.** Each name is a Linux *abstract* Unix socket (`SOCK_SEQPACKET`) bound by the
//! publisher. A lookup connects, and the publisher answers with one packet: the value encoded
//! by [`message::encode`](crate::message::encode), its descriptors attached as `SCM_RIGHTS`.
//! An abstract name is no file: it vanishes when its socket is closed, which the kernel does
//! when the publisher drops its [`Publication`] *or dies*, even by `SIGKILL`. Nothing is left
//! in `/dev/shm` or anywhere else.
//!
//! **Who may look up.** Abstract names are shared by every user of the network namespace, so
//! both sides check the other with `SO_PEERCRED`: the publisher answers only connections from
//! its own effective user id, and a lookup accepts only a publisher of its own effective user
//! id (anyone may *bind* a name; a squatter of another user is reported, never believed). The
//! socket name carries the user id (`multiproc/<uid>/<namespace>/<name>`), so users do not
//! collide with each other by accident.
//!
//! **Serving thread.** Publications are answered by one thread per process, started at the
//! first publication, blocked in `poll(2)` on every published socket plus a wake-up pipe. Not a
//! tokio task: a publisher may have no runtime (named shared memory is created from plain
//! code), or a runtime that is busy or shutting down, and a lookup must still be answered; one
//! thread for all names costs one stack, not one per name. Answering never blocks the thread (a
//! non-blocking `sendmsg` of one packet on a fresh connection). Withdrawing a name (dropping
//! its [`Publication`]) waits until the thread has let go of the socket, so the name is free
//! again when the drop returns.
//!
//! **Types.** The packet starts with the published type's name
//! ([`std::any::type_name`]); a lookup of another type is [`LookupError::is_wrong_type`], not a
//! garbled value. (Type names are the same for the same type in builds from the same source and
//! compiler, which is what two cooperating programs are.)
//!
//! May import: `sys`, `message`, `fd`, and `transport::endpoint` (peer credentials). Never
//! `wait`, the rest of `transport`, or `proc`.

mod error;
mod lookup;
mod serve;

pub use error::{LookupError, PublishError};
pub use lookup::{LOOKUP_TIMEOUT, blocking_lookup, blocking_lookup_in, lookup, lookup_in};
pub use serve::{Publication, publish, publish_in};

use crate::sys::abstract_socket::MAX_ABSTRACT_NAME;
use crate::transport::endpoint::effective_uid;

/// The namespace of names published through [`publish`]; other users of the mechanism (named
/// shared memory) pass their own to the `_in` functions so names do not clash across kinds.
pub const REGISTRY_NAMESPACE: &str = "registry";

/// The abstract socket name of `name` in `namespace` for this user, or why `name` is invalid.
fn socket_name(namespace: &str, name: &str) -> Result<Vec<u8>, &'static str> {
    if name.is_empty() {
        return Err("a name cannot be empty");
    }
    if name.contains('\0') {
        return Err("a name cannot hold a NUL byte");
    }
    if name.contains('/') {
        return Err("a name cannot hold a `/`");
    }
    let full = format!("multiproc/{}/{namespace}/{name}", effective_uid());
    if full.len() > MAX_ABSTRACT_NAME {
        return Err("the name is too long");
    }
    Ok(full.into_bytes())
}
