//! How the two ends of a connection prove themselves to each other.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long a handshake may take by default, on either side.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The authentication a listener demands and a client offers; both sides must use the same
/// kind (and key).
///
/// - [`Auth::none`]: anyone who can reach the address. No bytes are exchanged for it.
/// - [`Auth::same_user`]: only processes of this effective user, checked by each side on the
///   kernel's record of the peer (`SO_PEERCRED`), with no round trip. Unix addresses only.
/// - [`Auth::key`]: a shared key and a mutual HMAC challenge, byte-compatible with Python's
///   `authkey` (`multiprocessing.connection`); SHA-256, constant-time comparison. An empty key
///   is a key like any other, never "no authentication".
/// - `Auth::tls_server` / `Auth::tls_client` (the `tls` feature): TLS over TCP (rustls),
///   optionally with a key on top ([`Auth::with_key`]).
///
/// After any of them, a native connection over a Unix socket sets up its shared ring: the client
/// offers it (16 bytes and a descriptor, no round trip) and the listener checks it, so over a
/// Unix socket even [`Auth::none`] makes the listener wait for the client's first bytes.
///
/// Every handshake is bounded by a timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`], see
/// [`handshake_timeout`](Auth::handshake_timeout)): a client that says nothing is dropped, and
/// a key that does not match fails on both sides rather than hang.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use multiproc::connection::Auth;
///
/// let auth = Auth::key(b"secret password").handshake_timeout(Duration::from_secs(2));
/// # let _ = auth;
/// ```
#[derive(Clone)]
pub struct Auth {
    pub(crate) kind: AuthKind,
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) timeout: Duration,
}

#[derive(Clone)]
pub(crate) enum AuthKind {
    None,
    SameUser,
    Key,
    #[cfg(feature = "tls")]
    TlsServer(Arc<rustls::ServerConfig>),
    #[cfg(feature = "tls")]
    TlsClient(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
}

impl Auth {
    fn with(kind: AuthKind, key: Option<Arc<[u8]>>) -> Auth {
        Auth {
            kind,
            key,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// No authentication: anyone who can reach the address may connect.
    pub fn none() -> Auth {
        Auth::with(AuthKind::None, None)
    }

    /// Only processes running as this process's effective user (peer credentials, checked by
    /// both sides; no bytes exchanged). Unix addresses only.
    pub fn same_user() -> Auth {
        Auth::with(AuthKind::SameUser, None)
    }

    /// A shared key: Python's `authkey`, with its mutual challenge.
    pub fn key(key: impl AsRef<[u8]>) -> Auth {
        Auth::with(AuthKind::Key, Some(key.as_ref().into()))
    }

    /// TLS, the listening side (TCP addresses only; the `tls` feature). Add a key with [`with_key`](Self::with_key)
    /// to also demand one inside the encrypted connection.
    #[cfg(feature = "tls")]
    pub fn tls_server(config: Arc<rustls::ServerConfig>) -> Auth {
        Auth::with(AuthKind::TlsServer(config), None)
    }

    /// TLS, the connecting side: `server_name` is checked against the server's certificate
    /// (the `tls` feature).
    ///
    /// # Errors
    /// When `server_name` is neither a DNS name nor an IP address.
    #[cfg(feature = "tls")]
    pub fn tls_client(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Auth, rustls::pki_types::InvalidDnsNameError> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
        Ok(Auth::with(AuthKind::TlsClient(config, name), None))
    }

    /// Adds a shared key on top of TLS (the same challenge as [`Auth::key`], inside the
    /// encrypted connection). On other kinds it makes [`Auth::key`] (same-user and none are
    /// replaced).
    pub fn with_key(mut self, key: impl AsRef<[u8]>) -> Auth {
        if matches!(self.kind, AuthKind::None | AuthKind::SameUser) {
            self.kind = AuthKind::Key;
        }
        self.key = Some(key.as_ref().into());
        self
    }

    /// Sets the time the whole handshake (connect, TLS, challenge) may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Auth {
        self.timeout = timeout;
        self
    }

    /// The kind's name, for messages.
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.kind {
            AuthKind::None => "none",
            AuthKind::SameUser => "same-user",
            AuthKind::Key => "key",
            #[cfg(feature = "tls")]
            AuthKind::TlsServer(_) => "tls-server",
            #[cfg(feature = "tls")]
            AuthKind::TlsClient(..) => "tls-client",
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Auth")
            .field("kind", &self.kind_name())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("handshake_timeout", &self.timeout)
            .finish()
    }
}
