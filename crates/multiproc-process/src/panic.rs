//! Turning a panic in a child or pool worker into data for the parent: message and location.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

/// The message and location of the last panic on any thread, recorded by the hook.
static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

/// What the parent learns of a panic.
pub(crate) struct PanicReport {
    pub message: String,
    pub location: Option<String>,
}

/// Records every panic's message and location for [`catch`]. With `print`, the default hook
/// still prints it, after a line saying whose panic it is and that the parent gets it (so a
/// deliberate panic in a test or demo reads as handled, not as a crash); a pool worker stays
/// quiet, since the error reaches the caller anyway.
pub(crate) fn install_hook(print: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = payload_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(PanicReport { message, location });
        if print {
            eprintln!(
                "multiproc: child process {} panicked; its parent receives this panic as a \
                 JoinError (is_panic):",
                std::process::id()
            );
            default(info);
        }
    }));
}

/// Runs `f`, turning a panic into its report (from the hook when installed).
///
/// Unwind safety is asserted: the panicking function's state is dropped, and the process
/// either reports and exits (a child) or goes on to unrelated tasks (a pool worker), as
/// Python's pool does after an exception.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, PanicReport> {
    // Small, with the report made out of line: a pool worker calls this once per task.
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(report)
}

/// The report of the panic whose payload `catch` caught.
#[cold]
fn report(payload: Box<dyn std::any::Any + Send>) -> PanicReport {
    LAST_PANIC
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| PanicReport {
            message: payload_message(payload.as_ref()),
            location: None,
        })
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}
