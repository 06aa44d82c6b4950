//! Graceful stop, seen from the child: [`stop_requested`] resolves when the process is asked to
//! stop (`SIGTERM`: [`JoinHandle::terminate`](crate::JoinHandle::terminate),
//! [`JoinHandle::shutdown`](crate::JoinHandle::shutdown), [`ProcessSet::shutdown`](crate::ProcessSet::shutdown)).
//!
//! `SIGTERM` keeps its default action (the process dies) until the first call of
//! [`stop_requested`]: from then on it is a request the process answers in its own time. The
//! parent's `shutdown(grace)` kills what has not exited after the grace period.

use std::sync::Mutex;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The stop flag, watched by every caller; set by a task that waits for `SIGTERM`.
static STOP: Mutex<Option<watch::Receiver<bool>>> = Mutex::new(None);

/// Resolves once this process has been asked to stop (`SIGTERM`), however many times it is
/// awaited, and at once if the request came before. Call it early, when the function starts:
/// until the first call, `SIGTERM` still kills the process outright.
///
/// # Errors
/// When the signal handler cannot be installed (outside a tokio runtime with the I/O driver),
/// or the runtime of the first call, whose task watches for the signal, has shut down.
///
/// # Cancel safety
/// Cancel safe: a request is never consumed; every waiter, now or later, sees it.
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// async fn serve(_: ()) -> String {
///     let stop = multiproc::process::stop_requested();
///     tokio::pin!(stop);
///     loop {
///         tokio::select! {
///             _ = &mut stop => return "stopped cleanly".to_string(),
///             _ = tokio::time::sleep(Duration::from_millis(10)) => { /* a unit of work */ }
///         }
///     }
/// }
///
/// let mut child = multiproc::spawn((), serve);
/// tokio::time::sleep(Duration::from_millis(200)).await;
/// assert_eq!(child.shutdown(Duration::from_secs(5)).await?, "stopped cleanly");
/// # Ok(())
/// # }
/// ```
pub async fn stop_requested() -> std::io::Result<()> {
    let mut flag = {
        let mut slot = STOP.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(flag) => flag.clone(),
            None => {
                let mut terms = signal(SignalKind::terminate())?;
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    if terms.recv().await.is_some() {
                        let _ = tx.send(true);
                    }
                    // Keep the handler (and so the request semantics) for good.
                    std::future::pending::<()>().await;
                });
                *slot = Some(rx.clone());
                rx
            }
        }
    };
    // The sender lives as long as the watching task: an error means its runtime ended.
    match flag.wait_for(|stopped| *stopped).await {
        Ok(_) => Ok(()),
        Err(_) => Err(std::io::Error::other(
            "the runtime that watched for SIGTERM has shut down",
        )),
    }
}

/// True once a stop was requested (see [`stop_requested`], which must have been called once
/// for `SIGTERM` to be a request rather than the end).
pub fn is_stop_requested() -> bool {
    STOP.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|flag| *flag.borrow())
}
