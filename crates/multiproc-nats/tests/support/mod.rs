//! What the distributed tests share: a bound on every wait.

use std::future::IntoFuture;
use std::time::Duration;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `f`, panicking with `what` if it takes longer than [`TEST_LIMIT`].
pub(crate) async fn within<T>(what: &str, f: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {TEST_LIMIT:?}: {what}"),
    }
}
