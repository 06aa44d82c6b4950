//! A remote manager: this program serves a manager on TCP with a key, and a second program (this
//! same executable started again as a separate program, not a multiproc child) connects with
//! the key and uses it; a client with a wrong key is refused.
//!
//! ```python
//! class QueueManager(BaseManager): pass
//! m = QueueManager(address=("127.0.0.1", 50000), authkey=b"abracadabra"); m.start()
//! # in another program:
//! m = QueueManager(address=("127.0.0.1", 50000), authkey=b"abracadabra"); m.connect()
//! ```
//!
//! Run with `cargo run --example manager_remote`.

use multiproc::connection::{Address, Auth};
use multiproc::manager::{self, Manager};

const KEY: &[u8] = b"abracadabra";

/// The other program: connect with the key, and use the served values.
async fn client(address: String) -> Result<(), Box<dyn std::error::Error>> {
    let remote = manager::connect(Address::tcp(address.clone()), Auth::key(KEY)).await?;
    let greetings = remote.map::<String, String>("greetings").await?;
    greetings
        .insert(
            format!("pid {}", std::process::id()),
            "hello from afar".into(),
        )
        .await?;
    let visits = remote.counter("visits").await?.add(1).await?;
    println!("client: connected to {address}, visit number {visits}");
    // A wrong key is refused.
    let wrong = manager::connect(Address::tcp(address), Auth::key(b"open sesame")).await;
    assert!(wrong.is_err_and(|e| e.is_auth()));
    println!("client: a wrong key was refused");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [role, address] = &args[..]
        && role == "client"
    {
        return client(address.clone()).await;
    }
    let manager = Manager::start().await?;
    let serving = manager
        .serve(Address::tcp("127.0.0.1:0"), Auth::key(KEY))
        .await?;
    let Address::Tcp(address) = serving.local_address().clone() else {
        unreachable!("served on TCP")
    };
    println!("serving a manager on {address}");
    // Start the client as a separate program.
    let program = std::env::current_exe()?;
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .args(["client", &address])
            .status()
    })
    .await??;
    assert!(status.success(), "the client failed: {status}");
    let greetings = manager.map::<String, String>("greetings").await?;
    for (who, what) in greetings.items().await? {
        println!("served: {who}: {what}");
    }
    assert_eq!(manager.counter("visits").await?.get().await?, 1);
    manager.shutdown().await?;
    Ok(())
}
