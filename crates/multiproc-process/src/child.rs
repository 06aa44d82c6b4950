//! The child side: runs in the re-executed program, before `main`, and never returns.

use std::os::fd::OwnedFd;

use multiproc_core::proc::{bootstrap, pidfd, title, tree};
use multiproc_core::transport::channel::{self, RawReceiver, RawSender, TryRecv};
use multiproc_core::{SharedFd, message};
use serde::de::DeserializeOwned;

use crate::function::ChildOutput;
use crate::identity;
use crate::panic::{self, PanicReport};
use crate::spawn_protocol::{Report, Setup};

/// Exit code of a child that could not talk to its parent at all.
const CONTROL_LOST_EXIT: i32 = 122;

/// Exit code of a child whose function did not return its value: it panicked, or the child
/// could not decode its arguments or send its result (Python's exit code for an uncaught
/// exception).
const FAILED_EXIT: i32 = 1;

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
    crate::trace::set_remote_parent(setup.trace_parent);
    if setup.die_with_parent && pidfd::die_with_parent(setup.parent_pid).is_err() {
        std::process::exit(CONTROL_LOST_EXIT);
    }
    // Cosmetic and best effort: `ps` and `/proc/<pid>/comm` show the name.
    let _ = title::set_process_name(&setup.name);
    // Orphans of our descendants stay in our tree, where a kill of the tree finds them.
    let _ = tree::become_subreaper();
    identity::set_child(
        setup.name,
        setup.identity,
        setup.die_with_parent,
        setup.parent_pid,
    );
    if let Err(e) = setup.limits.apply() {
        let message = format!("cannot apply the child's resource limits: {e}");
        fail::<R::Output>(
            &mut tx,
            Report::Panicked {
                message,
                location: None,
            },
        );
    }
    let args: A = match recv(&mut rx) {
        Ok(args) => args,
        Err(e) => fail::<R::Output>(&mut tx, Report::BadArgs(e)),
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
                let location = None;
                fail::<R::Output>(&mut tx, Report::Panicked { message, location })
            }
        }
    } else {
        None
    };
    let msg = match panic::catch(|| f(args).resolve(runtime.as_ref())) {
        Ok(value) => Report::Returned(value),
        Err(PanicReport { message, location }) => Report::Panicked { message, location },
    };
    let returned = report(&mut tx, msg);
    drop(runtime);
    bootstrap::exit_child(if returned { 0 } else { FAILED_EXIT })
}

/// Reports a failure before the function ran, and exits.
fn fail<R: serde::Serialize>(tx: &mut RawSender, msg: Report<R>) -> ! {
    report(tx, msg);
    bootstrap::exit_child(FAILED_EXIT)
}

fn recv<T: DeserializeOwned>(rx: &mut RawReceiver) -> Result<T, String> {
    match rx.blocking_recv_with(None, |bytes, fds| message::decode::<T>(bytes, fds)) {
        Ok(TryRecv::Frame(Ok(value))) => Ok(value),
        Ok(TryRecv::Frame(Err(e))) => Err(e.to_string()),
        Ok(TryRecv::Empty | TryRecv::Closed) => Err("the parent closed the control socket".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends the report; if the value cannot be encoded, says so instead. True when the report
/// was a returned value, encoded (whether the parent is still there to read it or not).
fn report<R: serde::Serialize>(tx: &mut RawSender, msg: Report<R>) -> bool {
    let mut returned = matches!(msg, Report::Returned(_));
    let pushed = tx.push(|buf| message::encode_into(&msg, buf));
    if let Err(e) = pushed {
        returned = false;
        let fallback: Report<R> =
            Report::BadResult(format!("the child could not send its result: {e}"));
        if tx.push(|buf| message::encode_into(&fallback, buf)).is_err() {
            return returned;
        }
    }
    // A parent that went away is not our problem any more.
    let _ = tx.blocking_flush(None);
    returned
}
