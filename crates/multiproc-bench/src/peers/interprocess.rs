//! The `interprocess` peer: `interprocess` 2.x local sockets on tokio (on Linux a Unix stream
//! socket at an abstract, namespaced name: `ListenerOptions::create_tokio` in the parent,
//! `local_socket::tokio::Stream::connect` in the child), with tokio-util's
//! `LengthDelimitedCodec` and postcard, the workloads of [`super::framed`]. Both processes run
//! current-thread runtimes.

use std::io;

use interprocess::local_socket::tokio::Stream;
use interprocess::local_socket::tokio::prelude::*;
use interprocess::local_socket::{GenericNamespaced, ListenerOptions};

use super::{PeerChild, arg_field, arg_u64, child_runtime, framed, unique_name};
use crate::Workload;
use crate::sync_bench::PATIENCE;

/// The role prefix of this peer's children.
pub(crate) const PEER: &str = "interprocess";

/// A peer child: `pingpong` or `stream`; `arg` is `name=<socket>,n=<n>,size=<bytes>`.
pub(crate) fn child(task: &str, arg: &str) -> io::Result<()> {
    let (n, size) = (arg_u64(arg, "n")?, arg_u64(arg, "size")?);
    child_runtime()?.block_on(async {
        let name = arg_field(arg, "name")?.to_ns_name::<GenericNamespaced>()?;
        let stream = Stream::connect(name).await?;
        framed::child(task, stream, n, size).await
    })
}

/// One trial of a pipe workload: microseconds per round trip, or messages (64 B) or MiB
/// (1 MiB) per second.
pub(crate) fn pipe(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    let (task, size) = framed::task(w)?;
    rt.block_on(async {
        let name = unique_name(PEER);
        let listener = ListenerOptions::new()
            .name(name.as_str().to_ns_name::<GenericNamespaced>()?)
            .create_tokio()?;
        let child = PeerChild::spawn(
            &format!("{PEER}/{task}"),
            &format!("name={name},n={n},size={size}"),
        )?;
        let stream = tokio::time::timeout(PATIENCE, listener.accept())
            .await
            .map_err(|_| io::Error::other("the peer child never connected"))??;
        framed::parent(w, child, stream, n).await
    })
}
