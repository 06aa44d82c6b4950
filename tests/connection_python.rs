//! Interoperability with CPython's `multiprocessing.connection`, against the machine's
//! interpreters: a Python `Client` talking to a multiproc listener and a multiproc client
//! talking to a Python `Listener`, over a Unix socket and TCP, with the right key and a wrong
//! one. `python3` (3.11 here: the legacy HMAC-MD5 challenge) is required; a CPython 3.12+ (the
//! `{sha256}` challenge) is used too when one is found. Also runs the tutorial examples: the
//! Rust server with the Rust client and with the Python client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use multiproc::connection::{Address, Auth, python};
use multiproc_suite::{within, within_blocking};

fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mp-py-{tag}-{}-{n}.sock", std::process::id()))
}

fn works(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import multiprocessing.connection"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The interpreters to test: `python3` (required) and a CPython 3.12+ when there is one.
fn pythons() -> Vec<PathBuf> {
    let default = PathBuf::from("python3");
    assert!(works(&default), "python3 with multiprocessing is required");
    let mut all = vec![default];
    let mut candidates: Vec<PathBuf> = ["python3.13", "python3.12"].map(PathBuf::from).into();
    if let Some(home) = std::env::var_os("HOME")
        && let Ok(dir) = std::fs::read_dir(Path::new(&home).join(".pyenv/versions"))
    {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("3.12") || name.starts_with("3.13") {
                candidates.push(entry.path().join("bin/python3"));
            }
        }
    }
    match candidates
        .into_iter()
        .find(|p| works(p) && version(p) >= (3, 12))
    {
        Some(modern) => all.push(modern),
        None => eprintln!("no CPython 3.12+ found: only the legacy challenge is tested"),
    }
    all
}

fn version(python: &Path) -> (u32, u32) {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut parts = text.split_whitespace().map(|p| p.parse().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Python's literal for `address`.
fn py_address(address: &Address) -> String {
    match address {
        Address::Path(p) => format!("{:?}", p.to_str().unwrap()),
        Address::Tcp(hp) => {
            let (host, port) = hp.rsplit_once(':').unwrap();
            format!("({host:?}, {port})")
        }
        other => panic!("not used here: {other}"),
    }
}

const CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
from multiprocessing import AuthenticationError
address, key = eval(sys.argv[1]), sys.argv[2].encode()
try:
    with Client(address, authkey=key) as c:
        c.send_bytes(b"from python")
        print(c.recv_bytes().decode())
        print("poll", c.poll(0.05))
except AuthenticationError as e:
    print("AuthenticationError:", e)
"#;

/// Runs the Python client against `address`; its standard output.
async fn python_client(python: &Path, address: &Address, key: &str) -> String {
    let mut cmd = Command::new(python);
    cmd.args(["-c", CLIENT, &py_address(address), key]);
    within_blocking("python client", move || {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
}

async fn python_client_to_multiproc(python: &Path, address: Address) {
    let mut listener = python::Listener::bind(address, Auth::key(b"pykey"))
        .await
        .unwrap();
    let address = listener.local_address().clone();
    let client = python_client(python, &address, "pykey");
    let server = async {
        let (mut conn, _) = within("accept", listener.accept()).await.unwrap();
        let got = within("recv", conn.recv_bytes()).await.unwrap().unwrap();
        assert_eq!(got, b"from python");
        conn.send_bytes(b"from rust").await.unwrap();
        // Python closes: end-of-stream.
        assert_eq!(within("eof", conn.recv_bytes()).await.unwrap(), None);
    };
    let (out, ()) = tokio::join!(client, server);
    assert_eq!(out, "from rust\npoll False\n", "{}", python.display());

    // A wrong key: Python raises AuthenticationError, multiproc reports one.
    let client = python_client(python, &address, "wrong");
    let server = async { within("accept", listener.accept()).await.unwrap_err() };
    let (out, err) = tokio::join!(client, server);
    assert!(err.is_auth(), "{err}");
    assert_eq!(out, "AuthenticationError: digest sent was rejected\n");
}

#[tokio::test]
async fn a_python_client_talks_to_a_multiproc_listener() {
    for python in pythons() {
        python_client_to_multiproc(&python, Address::path(unique_path("client"))).await;
        python_client_to_multiproc(&python, Address::tcp("127.0.0.1:0")).await;
    }
}

const LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
from multiprocessing import AuthenticationError
address, key = eval(sys.argv[1]), sys.argv[2].encode()
with Listener(address, authkey=key) as l:
    a = l.address
    print(("%s:%d" % a) if isinstance(a, tuple) else a, flush=True)
    try:
        with l.accept() as c:
            m = c.recv_bytes()
            c.send_bytes(m.upper())
            print("done", flush=True)
    except AuthenticationError as e:
        print("AuthenticationError:", e, flush=True)
"#;

/// Starts the Python listener; returns the process, its address and its output lines.
fn python_listener(
    python: &Path,
    address: &Address,
) -> (
    std::process::Child,
    Address,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(python)
        .args(["-c", LISTENER, &py_address(address), "pykey"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("the listener prints its address")
        .unwrap();
    let address = match address {
        Address::Tcp(_) => Address::tcp(first),
        _ => Address::path(first),
    };
    (child, address, lines)
}

/// The Python listener's next line, once it exited successfully.
fn last_line(
    mut child: std::process::Child,
    mut lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
) -> String {
    let line = lines.next().unwrap().unwrap();
    assert!(child.wait().unwrap().success());
    line
}

async fn multiproc_client_to_python(python: &Path, address: Address) {
    let python_ = python.to_path_buf();
    let (child, address, lines) = within_blocking("python listener", move || {
        python_listener(&python_, &address)
    })
    .await;
    let mut conn = python::connect(address.clone(), Auth::key(b"pykey"))
        .await
        .unwrap();
    conn.send_bytes(b"shout").await.unwrap();
    assert_eq!(
        within("reply", conn.recv_bytes()).await.unwrap().as_deref(),
        Some(&b"SHOUT"[..])
    );
    let rest = within_blocking("python done", move || last_line(child, lines)).await;
    assert_eq!(rest, "done", "{}", python.display());

    // A wrong key: both sides see an authentication error.
    let again = match &address {
        Address::Tcp(_) => Address::tcp("127.0.0.1:0"),
        _ => Address::path(unique_path("pylistener")),
    };
    let python_ = python.to_path_buf();
    let (child, address, lines) =
        within_blocking("python listener", move || python_listener(&python_, &again)).await;
    let err = python::connect(address, Auth::key(b"wrong"))
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    let rest = within_blocking("python done", move || last_line(child, lines)).await;
    assert_eq!(rest, "AuthenticationError: digest received was wrong");
}

#[tokio::test]
async fn a_multiproc_client_talks_to_a_python_listener() {
    for python in pythons() {
        multiproc_client_to_python(&python, Address::path(unique_path("listener"))).await;
        multiproc_client_to_python(&python, Address::tcp("127.0.0.1:0")).await;
    }
}

/// The example binaries, built by `cargo test` beside the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "build the examples first: {}",
        path.display()
    );
    path
}

/// Starts the example server with `--once` on `address`; returns it and its first line.
fn start_server(address: &str) -> (std::process::Child, String) {
    let mut server = Command::new(example("connection_server"))
        .args([address, "--once"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let address = first.strip_prefix("listening on ").unwrap().to_string();
    std::thread::spawn(move || lines.for_each(drop));
    (server, address)
}

/// Runs `client` (a command taking the address last) against the example server on
/// `address` and checks what it printed.
fn client_against_server(address: &str, mut client: Command, who: &str) {
    let (mut server, address) = start_server(address);
    let out = client.arg(&address).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "hello\nsum 2 3 4 -> 9\nupper hello from {who} -> HELLO FROM {}\n",
            who.to_uppercase()
        )
    );
    assert!(server.wait().unwrap().success());
}

#[tokio::test]
async fn the_tutorial_examples_run_with_the_rust_and_the_python_client() {
    let path = unique_path("example");
    let path = path.to_str().unwrap().to_string();
    within_blocking("rust client", move || {
        client_against_server(&path, Command::new(example("connection_client")), "rust");
    })
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/connection_client.py");
    within_blocking("python client", move || {
        let mut python = Command::new("python3");
        python.arg(&script);
        client_against_server("127.0.0.1:0", python, "python");
    })
    .await;
}
