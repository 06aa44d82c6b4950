//! The one connection builder: server address, TLS, credentials and the namespace prefix.
//!
//! Owns [`Nats`] (a cheap-to-clone connection that every distributed type is built from) and
//! [`NatsBuilder`]. Everything secret lives here and only here: handles that travel between
//! hosts carry names, and the receiving host opens them on its own [`Nats`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;

use crate::error::ConnectError;

/// A connection to a NATS server with JetStream, and the namespace every name is created in.
///
/// Cheap to clone (clones share the connection). The client reconnects by itself when the
/// server goes away; operations issued meanwhile wait for the reconnection or fail with a
/// [remote error](crate::error::RemoteError) when their own timeout passes.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let nats = multiproc_nats::Nats::builder()
///     .url("nats://127.0.0.1:4222")
///     .namespace("orders")
///     .connect()
///     .await?;
/// let queue = nats.queue::<String>("incoming").await?;
/// queue.put("hello".to_string()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Nats {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) namespace: String,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("namespace", &self.namespace)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// A builder for a connection; [`NatsBuilder::connect`] opens it.
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// Connects to `url` with no credentials, no TLS and the default namespace (`mp`).
    ///
    /// # Errors
    /// The server cannot be reached or refuses the connection.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons the connection attempt.
    pub async fn connect(url: impl Into<String>) -> Result<Nats, ConnectError> {
        Self::builder().url(url).connect().await
    }

    /// The namespace prefix every stream, subject and key of this connection is created under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The underlying `async-nats` client, for what multiproc does not wrap.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Name of the stream for `kind` and `name` in this namespace (`ns_kind_name`).
    pub(crate) fn stream_name(&self, kind: &str, name: &str) -> String {
        format!("{}_{kind}_{name}", self.namespace)
    }

    /// Subject for `kind` and `name` in this namespace (`ns.kind.name`).
    pub(crate) fn subject(&self, kind: &str, name: &str) -> String {
        format!("{}.{kind}.{name}", self.namespace)
    }
}

/// Options for a [`Nats`] connection: server address, TLS, credentials, namespace.
///
/// Credentials and TLS come from here, never from a handle received from another host.
#[derive(Default)]
pub struct NatsBuilder {
    urls: Vec<String>,
    namespace: Option<String>,
    user_password: Option<(String, String)>,
    token: Option<String>,
    credentials_file: Option<PathBuf>,
    nkey_seed: Option<String>,
    root_certificates: Vec<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    name: Option<String>,
    request_timeout: Option<Duration>,
}

impl fmt::Debug for NatsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets are never printed.
        f.debug_struct("NatsBuilder")
            .field("urls", &self.urls)
            .field("namespace", &self.namespace)
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

impl NatsBuilder {
    /// A server to connect to (`nats://host:port`, `tls://host:port`); call again to add more
    /// servers of the same cluster. Default `nats://127.0.0.1:4222`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// The prefix every stream, subject and key-value bucket is created under, so that several
    /// applications (or tests) share one server without seeing each other. ASCII letters,
    /// digits, `-` and `_`; default `mp`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Authenticates with a user name and password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with a NATS credentials file (a user JWT and its nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with an nkey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.nkey_seed = Some(seed.into());
        self
    }

    /// Trusts the CA certificates in this PEM file (and requires TLS).
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates.push(path.into());
        self.require_tls = true;
        self
    }

    /// Presents this client certificate and key (PEM files) to the server (and requires TLS).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self.require_tls = true;
        self
    }

    /// Refuses to talk to the server without TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// A name for this connection, shown by the server's monitoring.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long one JetStream request (a put's acknowledgement, a key update) may take before
    /// it fails with a remote error; default 5 s. A server restart shorter than this is
    /// invisible to callers.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Opens the connection.
    ///
    /// # Errors
    /// A namespace with characters outside `[A-Za-z0-9_-]`, an unreadable credentials file,
    /// an unreachable server, or one that refuses the credentials
    /// ([`ConnectError::is_auth`]).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons the connection attempt.
    pub async fn connect(self) -> Result<Nats, ConnectError> {
        let namespace = self.namespace.unwrap_or_else(|| "mp".to_string());
        crate::name::check(&namespace).map_err(ConnectError::invalid)?;
        let mut options = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 50).min(1000))
            })
            .connection_timeout(Duration::from_secs(5));
        if let Some((user, password)) = self.user_password {
            options = options.user_and_password(user, password);
        }
        if let Some(token) = self.token {
            options = options.token(token);
        }
        if let Some(path) = self.credentials_file {
            let text = std::fs::read_to_string(&path).map_err(ConnectError::io)?;
            options = options.credentials(&text).map_err(ConnectError::io)?;
        }
        if let Some(seed) = self.nkey_seed {
            options = options.nkey(seed);
        }
        for path in self.root_certificates {
            options = options.add_root_certificates(path);
        }
        if let Some((cert, key)) = self.client_certificate {
            options = options.add_client_certificate(cert, key);
        }
        if let Some(name) = self.name {
            options = options.name(name);
        }
        options = options.require_tls(self.require_tls);
        let urls = if self.urls.is_empty() {
            vec!["nats://127.0.0.1:4222".to_string()]
        } else {
            self.urls
        };
        let addrs = urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectError::io)?;
        let client = options
            .connect(addrs)
            .await
            .map_err(ConnectError::from_nats)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(self.request_timeout.unwrap_or(Duration::from_secs(5)));
        Ok(Nats {
            client,
            js,
            namespace,
        })
    }
}
