//! The client of `connection_server` (the `c.py` of Python's `multiprocessing.connection`
//! tutorial): connects with the shared key, reads the greeting, sends two requests.
//!
//! ```sh
//! cargo run --example connection_client                    # TCP 127.0.0.1:6000
//! cargo run --example connection_client -- /tmp/app.sock   # a Unix socket
//! ```

use multiproc::connection::{Address, Auth, python};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address: Address = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:6000")
        .parse()?;
    let mut conn = python::connect(address, Auth::key(b"secret password")).await?;
    let greeting = conn.recv_bytes().await?.ok_or("the server closed")?;
    println!("{}", String::from_utf8_lossy(&greeting));
    for request in ["sum 2 3 4", "upper hello from rust"] {
        conn.send_bytes(request.as_bytes()).await?;
        let reply = conn.recv_bytes().await?.ok_or("the server closed")?;
        println!("{request} -> {}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}
