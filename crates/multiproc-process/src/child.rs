//! The child side: runs in the re-executed program, before `main`, and never returns.

use std::os::fd::OwnedFd;

use multiproc_core::channel::{self, RawReceiver, RawSender, TryRecv};
use multiproc_core::{SharedFd, message, pidfd};
use serde::de::DeserializeOwned;

use crate::function::ChildOutput;
use crate::panic::{self, PanicReport};
use crate::protocol::{Report, Setup};

/// Exit code of a child that could not talk to its parent at all.
const CONTROL_LOST_EXIT: i32 = 122;

/// Entry point for a child running `f`: reads setup and arguments, runs, reports, exits.
pub(crate) fn child_main<A, R, M, F>(f: F, control: OwnedFd)
where
    A: DeserializeOwned,
    F: Fn(A) -> R + Copy + 'static,
    R: ChildOutput<M>,
{
    let Ok((mut tx, mut rx)) = channel::split(SharedFd::new(control)) else {
        std::process::exit(CONTROL_LOST_EXIT);
    };
    let setup: Setup = match recv(&mut rx) {
        Ok(setup) => setup,
        Err(_) => std::process::exit(CONTROL_LOST_EXIT),
    };
    if setup.die_with_parent && pidfd::die_with_parent(setup.parent_pid).is_err() {
        std::process::exit(CONTROL_LOST_EXIT);
    }
    let args: A = match recv(&mut rx) {
        Ok(args) => args,
        Err(e) => {
            report::<R::Output>(&mut tx, Report::BadArgs(e));
            std::process::exit(0);
        }
    };
    drop(rx);
    panic::install_hook(true);

    let runtime = if R::ASYNC {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                let message = format!("cannot start the child's tokio runtime: {e}");
                report::<R::Output>(
                    &mut tx,
                    Report::Panicked {
                        message,
                        location: None,
                    },
                );
                std::process::exit(0);
            }
        }
    } else {
        None
    };
    let msg = match panic::catch(|| f(args).resolve(runtime.as_ref())) {
        Ok(value) => Report::Returned(value),
        Err(PanicReport { message, location }) => Report::Panicked { message, location },
    };
    report(&mut tx, msg);
    drop(runtime);
    std::process::exit(0);
}

fn recv<T: DeserializeOwned>(rx: &mut RawReceiver) -> Result<T, String> {
    match rx.blocking_recv_with(None, |bytes, fds| message::decode::<T>(bytes, fds)) {
        Ok(TryRecv::Frame(Ok(value))) => Ok(value),
        Ok(TryRecv::Frame(Err(e))) => Err(e.to_string()),
        Ok(TryRecv::Empty | TryRecv::Closed) => Err("the parent closed the control socket".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends the report; if the value cannot be encoded, says so instead.
fn report<R: serde::Serialize>(tx: &mut RawSender, msg: Report<R>) {
    let pushed = tx.push(|buf| message::encode_into(&msg, buf));
    if let Err(e) = pushed {
        let fallback: Report<R> =
            Report::BadResult(format!("the child could not send its result: {e}"));
        if tx.push(|buf| message::encode_into(&fallback, buf)).is_err() {
            return;
        }
    }
    // A parent that went away is not our problem any more.
    let _ = tx.blocking_flush(None);
}
