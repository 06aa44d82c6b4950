//! What is known of the process on the other end of a connection.

use std::net::SocketAddr;

use multiproc_core::transport::endpoint::PeerCredentials;

/// The other end of a connection, as far as the transport tells: process, user and group ids
/// over Unix sockets (the kernel's record from `SO_PEERCRED`, which the peer cannot forge), the
/// address over TCP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub(crate) credentials: Option<PeerCredentials>,
    pub(crate) addr: Option<SocketAddr>,
}

impl Peer {
    /// The peer's process id (Unix sockets only): the process that connected, or for a client,
    /// the process that listens. `None` also when that process is not visible from our PID
    /// namespace (a peer in a container that shares the socket path).
    pub fn pid(&self) -> Option<u32> {
        self.credentials.and_then(|c| c.pid)
    }
    /// The peer's effective user id (Unix sockets only).
    pub fn uid(&self) -> Option<u32> {
        self.credentials.map(|c| c.uid)
    }
    /// The peer's effective group id (Unix sockets only).
    pub fn gid(&self) -> Option<u32> {
        self.credentials.map(|c| c.gid)
    }
    /// The peer's address (TCP only).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}
