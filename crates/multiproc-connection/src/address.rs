//! Where a listener listens and a client connects: a Unix socket path, a Linux abstract name,
//! or a TCP address.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The address of a listener.
///
/// | Python (`multiprocessing.connection`) | multiproc |
/// |---|---|
/// | `'/tmp/app.sock'` (`AF_UNIX`) | [`Address::path`] |
/// | `'\0app'` (abstract `AF_UNIX`) | [`Address::abstract_name`] |
/// | `('localhost', 6000)` (`AF_INET`) | [`Address::tcp`] or a [`SocketAddr`] |
///
/// Handles (pipe ends, locks, queues, shared memory) travel inside messages only over the Unix
/// kinds; over TCP a message holding one fails to send. An address is plain data: it can be a
/// spawn argument or a field of a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A socket file. The listener creates it, reclaims it if a dead listener left it behind,
    /// and removes it when dropped.
    Path(PathBuf),
    /// A name in Linux's abstract socket namespace (no file; gone with the listener). Visible
    /// to every process in the network namespace, whatever its user: pair it with
    /// authentication.
    Abstract(Vec<u8>),
    /// A TCP address, `host:port` (resolved when binding or connecting). Port 0 binds any free
    /// port; [`Listener::local_address`](crate::Listener::local_address) tells which.
    Tcp(String),
}

impl Address {
    /// A Unix socket file at `path`.
    pub fn path(path: impl Into<PathBuf>) -> Address {
        Address::Path(path.into())
    }

    /// A Linux abstract socket name (without the leading NUL byte Python writes).
    pub fn abstract_name(name: impl AsRef<[u8]>) -> Address {
        Address::Abstract(name.as_ref().to_vec())
    }

    /// A TCP address such as `"127.0.0.1:6000"` or `"localhost:0"`.
    pub fn tcp(host_port: impl Into<String>) -> Address {
        Address::Tcp(host_port.into())
    }

    /// True for the Unix kinds, over which handles travel.
    pub fn is_unix(&self) -> bool {
        matches!(self, Address::Path(_) | Address::Abstract(_))
    }

    /// The path tokio and std take for a Unix address (abstract names start with a NUL byte).
    pub(crate) fn unix_path(&self) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Address::Path(p) => Some(p.clone()),
            Address::Abstract(name) => {
                let mut raw = vec![0u8];
                raw.extend_from_slice(name);
                Some(PathBuf::from(std::ffi::OsStr::from_bytes(&raw)))
            }
            Address::Tcp(_) => None,
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp(addr.to_string())
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Path(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::Path(path.to_path_buf())
    }
}

impl fmt::Display for Address {
    /// `/run/app.sock` (a path with a `/`), `unix:app.sock` (a path that would otherwise read
    /// as something else), `@name`, `tcp://host:port`: text that [`FromStr`](std::str::FromStr)
    /// reads back as the same address, for UTF-8 paths and names (others are shown lossily).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Path(p) => {
                let text = p.display().to_string();
                let plain = text.contains('/')
                    && !text.starts_with('@')
                    && !text.starts_with("unix:")
                    && !text.starts_with("tcp://");
                if plain {
                    f.write_str(&text)
                } else {
                    write!(f, "unix:{text}")
                }
            }
            Address::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Address::Tcp(hp) => write!(f, "tcp://{hp}"),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = std::convert::Infallible;

    /// Reads an address from text, as a command line would give it: `@name` is an abstract
    /// name, `unix:PATH` or anything containing a `/` a socket path, `tcp://host:port` or
    /// the rest `host:port`. What [`Display`](fmt::Display) writes reads back as the same
    /// address (for UTF-8 paths and names).
    ///
    /// ```
    /// use multiproc::connection::Address;
    ///
    /// for address in [
    ///     Address::path("/run/app.sock"),
    ///     Address::path("app.sock"),
    ///     Address::path("@odd.sock"),
    ///     Address::abstract_name("app"),
    ///     Address::tcp("localhost:6000"),
    /// ] {
    ///     assert_eq!(address.to_string().parse(), Ok(address));
    /// }
    /// assert_eq!(Address::path("app.sock").to_string(), "unix:app.sock");
    ///
    /// assert_eq!("@app".parse(), Ok(Address::abstract_name("app")));
    /// assert_eq!("/run/app.sock".parse(), Ok(Address::path("/run/app.sock")));
    /// assert_eq!("unix:app.sock".parse(), Ok(Address::path("app.sock")));
    /// assert_eq!("localhost:6000".parse(), Ok(Address::tcp("localhost:6000")));
    /// assert_eq!("tcp://127.0.0.1:1".parse(), Ok(Address::tcp("127.0.0.1:1")));
    /// ```
    fn from_str(text: &str) -> Result<Address, Self::Err> {
        Ok(if let Some(host_port) = text.strip_prefix("tcp://") {
            Address::tcp(host_port)
        } else if let Some(name) = text.strip_prefix('@') {
            Address::abstract_name(name)
        } else if let Some(path) = text.strip_prefix("unix:") {
            Address::path(path)
        } else if text.contains('/') {
            Address::path(text)
        } else {
            Address::tcp(text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_written() {
        let addresses = [
            Address::path("/tmp/a.sock"),
            Address::path("./a.sock"),
            Address::path("a.sock"),
            Address::path("@a.sock"),
            Address::path("unix:a.sock"),
            Address::path("tcp://a/b"),
            Address::path("dir/a.sock"),
            Address::abstract_name("name"),
            Address::abstract_name(""),
            Address::tcp("127.0.0.1:0"),
            Address::tcp("[::1]:6000"),
            Address::from("127.0.0.1:80".parse::<SocketAddr>().unwrap()),
        ];
        for address in addresses {
            let text = address.to_string();
            assert_eq!(text.parse::<Address>(), Ok(address), "{text}");
        }
    }
}
