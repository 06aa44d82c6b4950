//! The server of two separate programs that meet at an address and prove they share a key
//! (the `s.py` of Python's `multiprocessing.connection` tutorial), speaking Python's protocol so
//! that the Rust client (`connection_client`) and the Python one
//! (`examples/python/connection_client.py`) are both served.
//!
//! ```sh
//! cargo run --example connection_server                       # TCP 127.0.0.1:6000
//! cargo run --example connection_client                       # in another terminal
//! python3 examples/python/connection_client.py                # or the Python client
//! cargo run --example connection_server -- /tmp/app.sock      # a Unix socket instead
//! ```
//!
//! Requests are text: `sum 1 2 3` answers `6`, `upper some text` answers `SOME TEXT`. Many
//! clients are served at once; `--once` exits after the first client is done.

use multiproc::connection::{Address, Auth, python};

const KEY: &[u8] = b"secret password";

async fn serve(
    mut conn: python::Connection,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    conn.send_bytes(b"hello").await?;
    let mut handled = 0;
    while let Some(request) = conn.recv_bytes().await? {
        let text = String::from_utf8_lossy(&request);
        let reply = match text.split_once(' ') {
            Some(("sum", numbers)) => {
                let parsed: Result<Vec<i64>, _> =
                    numbers.split_whitespace().map(str::parse).collect();
                match parsed {
                    Ok(n) => n.iter().sum::<i64>().to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }
            Some(("upper", rest)) => rest.to_uppercase(),
            _ => format!("error: unknown request {text:?}"),
        };
        conn.send_bytes(reply.as_bytes()).await?;
        handled += 1;
    }
    Ok(handled)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).collect::<Vec<_>>();
    let once = args.iter().any(|a| a == "--once");
    args.retain(|a| a != "--once");
    let address: Address = args
        .first()
        .map_or("127.0.0.1:6000", String::as_str)
        .parse()?;
    let mut listener = python::Listener::bind(address, Auth::key(KEY)).await?;
    println!("listening on {}", listener.local_address());
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // One client's failed handshake (a wrong key, a silent client): go on serving.
            Err(e) if !e.is_fatal() => {
                eprintln!("refused a client: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        println!("connection accepted from {}", describe(&peer));
        let client = tokio::spawn(serve(conn));
        if once {
            let handled = client.await?.map_err(|e| e.to_string())?;
            println!("served {handled} requests");
            return Ok(());
        }
    }
}

fn describe(peer: &multiproc::connection::Peer) -> String {
    match (peer.addr(), peer.pid()) {
        (Some(addr), _) => addr.to_string(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => "an unknown peer".into(),
    }
}
