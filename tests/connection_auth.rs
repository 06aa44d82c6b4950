//! Authentication of named endpoints across real processes: wrong keys, silent clients, a
//! thousand idle connections while real clients are served, kind mismatches in bounded time,
//! TLS (with and without a key, and its clean end), and what may not go together.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use multiproc::connection::rustls;
use multiproc::connection::{Address, Auth, Listener, connect};
use multiproc::error::SendErrorKind;
use multiproc::pipe::{self, Duplex};
use multiproc::spawn;
use multiproc_suite::within;

fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mp-auth-{tag}-{}-{n}.sock", std::process::id()))
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// In a child: connects with `key` and reports (connected, error was authentication).
async fn client_with_key((address, key): (Address, Vec<u8>)) -> (bool, bool) {
    match connect::<u8, u8>(address, Auth::key(key)).await {
        Ok(mut end) => {
            end.send(1).await.unwrap();
            (true, false)
        }
        Err(e) => (false, e.is_auth()),
    }
}

async fn wrong_key_fails_on_both_sides(address: Address) {
    let mut listener = Listener::<u8, u8>::bind(address, Auth::key(b"secret"))
        .await
        .unwrap();
    let address = listener.local_address().clone();
    let child = spawn((address.clone(), b"wrong".to_vec()), client_with_key);
    let err = within("accept", listener.accept())
        .await
        .expect_err("wrong key");
    assert!(err.is_auth() && !err.is_fatal(), "{err}");
    let chain = chain(&err);
    assert!(chain.contains("digest received was wrong"), "{chain}");
    assert_eq!(within("child", child).await.unwrap(), (false, true));
    // The right key still gets in, and the listener still serves.
    let child = spawn((address, b"secret".to_vec()), client_with_key);
    let (mut end, _) = within("accept right key", listener.accept()).await.unwrap();
    assert_eq!(within("recv", end.recv()).await.unwrap(), Some(1));
    assert_eq!(within("child", child).await.unwrap(), (true, false));
}

#[tokio::test]
async fn a_wrong_key_fails_on_both_sides_over_a_unix_socket() {
    wrong_key_fails_on_both_sides(Address::path(unique_path("wrong"))).await;
}

#[tokio::test]
async fn a_wrong_key_fails_on_both_sides_over_tcp() {
    wrong_key_fails_on_both_sides(Address::tcp("127.0.0.1:0")).await;
}

#[tokio::test]
async fn an_empty_key_is_a_key() {
    let path = unique_path("empty");
    let mut listener = Listener::<u8, u8>::bind(&*path, Auth::key(b""))
        .await
        .unwrap();
    let child = spawn((Address::path(&path), b"x".to_vec()), client_with_key);
    let err = within("accept", listener.accept()).await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(within("child", child).await.unwrap(), (false, true));
    let child = spawn((Address::path(&path), Vec::new()), client_with_key);
    // Keep the accepted end until the child is done: dropping it at once could close the
    // connection before the child's `send`, which would then fail with `Closed`.
    let (mut end, _) = within("accept empty key", listener.accept()).await.unwrap();
    assert_eq!(within("recv", end.recv()).await.unwrap(), Some(1));
    assert_eq!(within("child", child).await.unwrap(), (true, false));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout_while_others_are_served() {
    let path = unique_path("silent");
    let auth = Auth::key(b"k").handshake_timeout(Duration::from_millis(300));
    let mut listener = Listener::<u8, u8>::bind(&*path, auth).await.unwrap();
    let started = Instant::now();
    // Connects and says nothing.
    let mut silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let child = spawn((Address::path(&path), b"k".to_vec()), client_with_key);
    let (mut served, mut timed_out) = (false, false);
    while !(served && timed_out) {
        match within("accept", listener.accept()).await {
            Ok((mut end, _)) => {
                assert_eq!(within("recv", end.recv()).await.unwrap(), Some(1));
                served = true;
            }
            Err(e) => {
                assert!(e.is_timeout() && !e.is_fatal(), "{e}");
                timed_out = true;
            }
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(within("child", child).await.unwrap(), (true, false));
    // The listener closed the silent connection: after the challenge it sent, end-of-file.
    silent
        .set_read_timeout(Some(multiproc_suite::TEST_LIMIT))
        .unwrap();
    let mut all = Vec::new();
    silent.read_to_end(&mut all).unwrap();
    assert!(all.windows(11).any(|w| w == b"#CHALLENGE#"));
}

/// In a child: opens `n` connections that say nothing, reports, and holds them until told.
fn hold_idle((path, n, mut ctl): (PathBuf, usize, Duplex<usize, ()>)) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(std::os::unix::net::UnixStream::connect(&path).unwrap());
    }
    ctl.blocking_send(held.len()).unwrap();
    let _ = ctl.blocking_recv();
}

async fn ping_client(path: PathBuf) -> u32 {
    let mut end = connect::<u32, u32>(&*path, Auth::key(b"k")).await.unwrap();
    let mut total = 0;
    for i in 0..10 {
        end.send(i).await.unwrap();
        total += end.recv().await.unwrap().unwrap();
    }
    total
}

/// Raises the soft descriptor limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current < want {
        limit.current = Some(limit.maximum.map_or(want, |max| max.min(want)));
        setrlimit(Resource::Nofile, limit).expect("raise RLIMIT_NOFILE");
    }
}

#[tokio::test]
async fn a_thousand_idle_connections_while_real_clients_are_served() {
    const IDLE: usize = 1000;
    const REAL: usize = 4;
    // This process holds the listener's side of every idle connection.
    raise_nofile(4 * IDLE as u64);
    let path = unique_path("idle");
    let auth = Auth::key(b"k").handshake_timeout(multiproc_suite::TEST_LIMIT * 2);
    let mut listener = Listener::<u32, u32>::bind(&*path, auth).await.unwrap();
    let (mut ctl, there) = pipe::duplex::<(), usize>().unwrap();
    let holder = spawn(
        (path.clone(), IDLE, there),
        |(path, n, ctl): (PathBuf, usize, Duplex<usize, ()>)| {
            // The child needs the descriptors too.
            raise_nofile(4 * n as u64);
            hold_idle((path, n, ctl))
        },
    );
    assert_eq!(
        within("idle clients", ctl.recv()).await.unwrap(),
        Some(IDLE)
    );
    let clients: Vec<_> = (0..REAL)
        .map(|_| spawn(path.clone(), ping_client))
        .collect();
    for _ in 0..REAL {
        let (mut end, _) = within("accept a real client", listener.accept())
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok(Some(n)) = end.recv().await {
                end.send(n + 1).await.unwrap();
            }
        });
    }
    for client in clients {
        assert_eq!(
            within("client", client).await.unwrap(),
            (1..=10).sum::<u32>()
        );
    }
    drop(ctl);
    within("holder", holder).await.unwrap();
    // The idle ones closed without a handshake: each is a failed handshake, none fatal.
    for _ in 0..IDLE {
        let err = within("idle outcome", listener.accept()).await.unwrap_err();
        assert!(err.is_handshake(), "{err}");
    }
}

#[tokio::test]
async fn a_keyed_client_of_a_keyless_listener_fails_in_bounded_time() {
    let path = unique_path("mismatch");
    let mut listener = Listener::<u8, u8>::bind(&*path, Auth::none())
        .await
        .unwrap();
    let started = Instant::now();
    let err = connect::<u8, u8>(
        &*path,
        Auth::key(b"k").handshake_timeout(Duration::from_millis(300)),
    )
    .await
    .expect_err("no challenge ever comes");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The listener waited for the client's shared-ring offer (the first bytes of a native Unix
    // connection after the authentication, none here), and saw the client leave instead.
    let err = within("accept", listener.accept()).await.unwrap_err();
    assert!(err.is_handshake(), "{err}");
    assert!(err.to_string().contains("handshake"), "{err}");
}

#[tokio::test]
async fn a_keyless_client_of_a_keyed_listener_fails_in_bounded_time() {
    let auth = Auth::key(b"k").handshake_timeout(Duration::from_millis(300));
    let mut listener = Listener::<u8, u8>::bind(Address::tcp("127.0.0.1:0"), auth)
        .await
        .unwrap();
    let mut client = connect::<u8, u8>(listener.local_address().clone(), Auth::none())
        .await
        .unwrap();
    // The listener either reads our message as a bad answer or times out: an error either way.
    client.send(5).await.unwrap();
    let err = within("accept", listener.accept()).await.unwrap_err();
    assert!(err.is_auth() || err.is_timeout(), "{err}");
    // The client sees the challenge (not a message of its type) and then the end.
    let mut outcome = within("client", client.recv()).await;
    while let Err(e) = &outcome {
        if e.is_fatal() {
            break;
        }
        outcome = within("client", client.recv()).await;
    }
    assert!(matches!(outcome, Ok(None) | Err(_)));
}

#[tokio::test]
async fn kinds_that_do_not_fit_the_address_are_refused() {
    let err = Listener::<u8, u8>::bind(Address::tcp("127.0.0.1:0"), Auth::same_user())
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err}");
    let (server, client) = tls_configs();
    let err = Listener::<u8, u8>::bind(unique_path("tls-unix").as_path(), Auth::tls_server(server))
        .await
        .unwrap_err();
    assert!(err.is_invalid(), "{err}");
    let err = connect::<u8, u8>(
        Address::tcp("127.0.0.1:1"),
        Auth::tls_server(tls_configs().0),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls_client"), "{err}");
    drop(client);
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made by `openssl`: (certificate,
/// private key), DER.
fn make_certificate() -> (Vec<u8>, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mp-tls-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed for the TLS tests");
    assert!(status.success());
    let cert = CertificateDer::from_pem_file(&cert).unwrap().to_vec();
    let private = PrivateKeyDer::from_pem_file(&key)
        .unwrap()
        .secret_der()
        .to_vec();
    std::fs::remove_dir_all(&dir).unwrap();
    (cert, private)
}

fn server_config((cert, key): &(Vec<u8>, Vec<u8>)) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = CertificateDer::from(cert.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone()));
    Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    )
}

fn client_config(trusted: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let pair = make_certificate();
    (server_config(&pair), client_config(&pair.0))
}

/// In a child: connects over TLS trusting `trusted` (a certificate), with `key` on top if any,
/// and asks for an echo. On failure: (was authentication, message).
async fn tls_client(
    (address, key, trusted): (Address, Option<Vec<u8>>, Vec<u8>),
) -> Result<String, (bool, String)> {
    let mut auth = Auth::tls_client(client_config(&trusted), "localhost").unwrap();
    if let Some(key) = key {
        auth = auth.with_key(key);
    }
    let mut end = connect::<String, String>(address, auth)
        .await
        .map_err(|e| (e.is_auth(), chain(&e)))?;
    end.send("over tls".into()).await.unwrap();
    Ok(end.recv().await.unwrap().unwrap())
}

#[tokio::test]
async fn tls_with_and_without_a_key_and_an_untrusted_certificate() {
    let pair = make_certificate();
    let other = make_certificate();
    let server = server_config(&pair);
    for key in [None, Some(b"tls key".to_vec())] {
        let mut auth = Auth::tls_server(server.clone());
        if let Some(key) = &key {
            auth = auth.with_key(key);
        }
        let mut listener = Listener::<String, String>::bind(Address::tcp("127.0.0.1:0"), auth)
            .await
            .unwrap();
        let address = listener.local_address().clone();
        let child = spawn((address.clone(), key.clone(), pair.0.clone()), tls_client);
        let (mut end, peer) = within("accept", listener.accept()).await.unwrap();
        assert!(peer.addr().is_some() && peer.pid().is_none());
        assert!(!end.carries_handles());
        let got = within("recv", end.recv()).await.unwrap().unwrap();
        end.send(got.to_uppercase()).await.unwrap();
        assert_eq!(within("child", child).await.unwrap().unwrap(), "OVER TLS");

        // A client that does not trust the certificate: both sides fail authentication.
        let child = spawn((address.clone(), key.clone(), other.0.clone()), tls_client);
        let err = within("accept untrusted", listener.accept())
            .await
            .unwrap_err();
        assert!(err.is_auth(), "{err}");
        let (auth_err, text) = within("child", child).await.unwrap().unwrap_err();
        assert!(auth_err, "{text}");

        if key.is_some() {
            // The right certificate but the wrong key.
            let child = spawn(
                (address, Some(b"wrong".to_vec()), pair.0.clone()),
                tls_client,
            );
            let err = within("accept wrong key", listener.accept())
                .await
                .unwrap_err();
            assert!(err.is_auth(), "{err}");
            let (auth_err, text) = within("child", child).await.unwrap().unwrap_err();
            assert!(auth_err, "{text}");
        }
    }
}

/// In a child: connects over TLS, sends one message, then drops its end, or closes it and
/// stays alive until the listener hangs up (so the end the listener sees is the close alert).
async fn tls_send_then_end((address, trusted, explicit_close): (Address, Vec<u8>, bool)) {
    let auth = Auth::tls_client(client_config(&trusted), "localhost").unwrap();
    let mut end = connect::<u8, u8>(address, auth).await.unwrap();
    end.send(9).await.unwrap();
    if explicit_close {
        end.close().await.unwrap();
        assert_eq!(end.recv().await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_tls_peer_that_drops_or_closes_its_end_is_end_of_stream() {
    let pair = make_certificate();
    let server = server_config(&pair);
    for explicit_close in [false, true] {
        let mut listener = Listener::<u8, u8>::bind(
            Address::tcp("127.0.0.1:0"),
            Auth::tls_server(server.clone()),
        )
        .await
        .unwrap();
        let address = listener.local_address().clone();
        let child = spawn((address, pair.0.clone(), explicit_close), tls_send_then_end);
        let (mut end, _) = within("accept", listener.accept()).await.unwrap();
        assert_eq!(within("message", end.recv()).await.unwrap(), Some(9));
        assert_eq!(
            within("end", end.recv()).await.unwrap(),
            None,
            "closed cleanly: {explicit_close}"
        );
        if explicit_close {
            // The child waits for our end: our close alert reaches it too.
            within("close", end.close()).await.unwrap();
        }
        drop(end);
        within("child", child).await.unwrap();
    }
}

#[tokio::test]
async fn a_message_holding_a_handle_fails_to_send_over_tcp_and_the_connection_goes_on() {
    let mut listener =
        Listener::<pipe::Sender<u8>, u8>::bind(Address::tcp("127.0.0.1:0"), Auth::none())
            .await
            .unwrap();
    let mut client =
        connect::<u8, pipe::Sender<u8>>(listener.local_address().clone(), Auth::none())
            .await
            .unwrap();
    let (mut server, _) = within("accept", listener.accept()).await.unwrap();
    let (tx, _rx) = pipe::simplex::<u8>().unwrap();
    let err = server.send(tx).await.expect_err("no descriptors over TCP");
    // A pipe end is two descriptors: its socket and its shared ring's region.
    assert!(
        matches!(err.kind(), SendErrorKind::HandlesNotSupported { count: 2 }),
        "{:?}",
        err.kind()
    );
    assert!(err.to_string().contains("handle"), "{err}");
    let _tx_back = err.into_inner();
    // Nothing was sent; plain messages still flow.
    client.send(4).await.unwrap();
    assert_eq!(within("recv", server.recv()).await.unwrap(), Some(4));
    assert!(
        !client
            .ready_timeout(Duration::from_millis(20))
            .await
            .unwrap()
    );
}
