//! The async process spawner across real child processes.

use std::time::Duration;

use multiproc::{Builder, spawn};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

fn triple(x: u32) -> u32 {
    x * 3
}

async fn delayed_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    x * 2
}

#[tokio::test]
async fn sync_and_async_functions_return_their_results() {
    assert_eq!(within(spawn(14, triple)).await.unwrap(), 42);
    assert_eq!(within(spawn(21, delayed_double)).await.unwrap(), 42);
    let joined = within(spawn(("a".to_string(), 3), |(s, n): (String, usize)| {
        s.repeat(n)
    }))
    .await;
    assert_eq!(joined.unwrap(), "aaa");
}

#[tokio::test]
async fn child_panic_carries_message_and_location() {
    let err = within(spawn((), |()| -> u8 { panic!("boom {}", 7) }))
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("boom 7"));
    assert!(
        err.panic_location().unwrap().contains("process_spawn.rs"),
        "{err}"
    );
    assert!(err.to_string().contains("panicked"), "{err}");
}
