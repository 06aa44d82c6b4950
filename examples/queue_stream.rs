//! A producer process puts words on a queue and shuts it down (the only producer is done); the
//! parent reads the queue as a `Stream` with `StreamExt` combinators, which ends when the queue
//! is shut down and drained.
//!
//! Run with `cargo run --example queue_stream`.

use futures::{SinkExt, StreamExt, TryStreamExt};
use multiproc::Queue;

async fn produce(words: Queue<String>) {
    // Producers can use the queue as a `Sink`.
    let mut sink = words.sink();
    let text = "the quick brown fox jumps over the lazy dog";
    let mut items = futures::stream::iter(text.split(' ').map(|w| Ok(w.to_string())));
    sink.send_all(&mut items).await.expect("queue shut down");
    // Flushing the sink leaves the queue open; `shutdown` ends it for every process.
    sink.close().await.expect("queue shut down");
    words.shutdown();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let words: Queue<String> = Queue::bounded(4)?;
    let producer = multiproc::spawn(words.clone(), produce);

    let long_words: Vec<(usize, String)> = words
        .stream()
        .try_filter(|w| futures::future::ready(w.len() > 3))
        .map_ok(|w| w.to_uppercase())
        .enumerate()
        .map(|(i, w)| w.map(|w| (i, w)))
        .try_collect()
        .await?;
    producer.await?;

    println!("{long_words:?}");
    let expected = ["QUICK", "BROWN", "JUMPS", "OVER", "LAZY"];
    assert_eq!(
        long_words
            .iter()
            .map(|(_, w)| w.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(long_words.iter().enumerate().all(|(n, (i, _))| n == *i));
    Ok(())
}
