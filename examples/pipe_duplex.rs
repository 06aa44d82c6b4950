//! A duplex pipe: the parent sends "ping", the child answers "PING".
//!
//! The end passed to the child is a handle: the parent's copy of it stays usable too, which is
//! shown at the end. Run with `cargo run --example pipe_duplex`.

use multiproc::pipe::{self, Duplex};

async fn answer(mut end: Duplex<String, String>) -> Result<(), String> {
    while let Some(msg) = end.recv().await.map_err(|e| e.to_string())? {
        println!("child  {}: got {msg:?}", std::process::id());
        end.send(msg.to_uppercase())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut parent_end, child_end) = pipe::duplex::<String, String>()?;
    // Send the child a copy of its end, keep ours.
    let (bytes, fds) = multiproc::core::message::encode(&child_end)?;
    let child = multiproc::spawn(child_end, answer);

    parent_end.send("ping".to_string()).await?;
    let reply = parent_end.recv().await?;
    println!("parent {}: got {reply:?}", std::process::id());
    assert_eq!(reply.as_deref(), Some("PING"));

    // The parent can also use the end it passed to the child (a duplicate of it).
    let mut also_ours: Duplex<String, String> = multiproc::core::message::decode(&bytes, fds)?;
    also_ours.send("from the other end".to_string()).await?;
    assert_eq!(
        parent_end.recv().await?.as_deref(),
        Some("from the other end")
    );
    println!("parent: the end given to the child works here too");

    drop(also_ours);
    drop(parent_end);
    child.await??;
    Ok(())
}
