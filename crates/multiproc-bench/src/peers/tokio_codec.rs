//! The `tokio-codec` peer: tokio's `UnixStream` (a Unix stream socket, the child connecting to
//! the parent's abstract address) with tokio-util's `LengthDelimitedCodec` and postcard, the
//! workloads of [`super::framed`]. Both processes run current-thread runtimes.

use std::io;

use super::{
    PeerChild, arg_field, arg_u64, child_runtime, framed, unique_name, unix_accept, unix_connect,
    unix_listen,
};
use crate::Workload;

/// The role prefix of this peer's children.
pub(crate) const PEER: &str = "tokio-codec";

/// A peer child: `pingpong` or `stream`; `arg` is `name=<socket>,n=<n>,size=<bytes>`.
pub(crate) fn child(task: &str, arg: &str) -> io::Result<()> {
    let (n, size) = (arg_u64(arg, "n")?, arg_u64(arg, "size")?);
    child_runtime()?.block_on(async {
        let stream = unix_connect(arg_field(arg, "name")?)?;
        framed::child(task, stream, n, size).await
    })
}

/// One trial of a pipe workload: microseconds per round trip, or messages (64 B) or MiB
/// (1 MiB) per second.
pub(crate) fn pipe(rt: &tokio::runtime::Runtime, w: Workload, n: u64) -> io::Result<f64> {
    let (task, size) = framed::task(w)?;
    rt.block_on(async {
        let name = unique_name(PEER);
        let listener = unix_listen(&name)?;
        let child = PeerChild::spawn(
            &format!("{PEER}/{task}"),
            &format!("name={name},n={n},size={size}"),
        )?;
        let stream = unix_accept(&listener).await?;
        framed::parent(w, child, stream, n).await
    })
}
