//! The manager's serving loop: one task that takes new connections off the connector and
//! serves every connection, round by round.
//!
//! Each round reads every request already waiting on every connection, applies each under the
//! state's lock, queues the answers, and then writes each connection's answers with one flush:
//! many requests, from one client or several, cost one write per connection. A round that
//! found nothing ends with the task waiting on every connection at once (and the connector).
//! With a task per connection, one connection's receive that spun for its client's next
//! request (the channel's spin policy) held the thread while the other clients' requests sat
//! unread; here a connection is only looked at (no spin) while another still has requests
//! left over, and the channel's receive waits only in a round where no one does.
//!
//! A connection whose answers cannot be written yet (its client is not reading) is not read
//! again until its earlier answers are written, so a slow client holds up no one but itself.
//! A connection whose first request is a watch leaves the loop for a task of its own
//! ([`watch`]), which forwards changes as they happen.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Sink, Stream};
use multiproc_channel::error::TryRecvError;
use multiproc_channel::pipe;
use multiproc_core::message;
use multiproc_core::transport::packet::{PacketRecv, PacketSocket};

use crate::server::{Shared, answer, watch};
use crate::wire::{Failure, Op, Request, Response};

/// A connection's end in the manager.
pub(crate) type End = pipe::Duplex<Response, Request>;

/// Rounds that found work before the loop lets the runtime's other tasks (watches) run.
const ROUNDS_PER_YIELD: u32 = 32;

/// Requests read from one connection in a round before the loop moves on to the next, so a
/// client that keeps sending cannot keep the others waiting.
const REQUESTS_PER_ROUND: u32 = 256;

/// One served connection.
struct Conn {
    end: End,
    /// Answers were queued that are not written yet.
    unflushed: bool,
    /// Answers were written since its last request: its client is (probably) waiting for them
    /// and will send again, which the channel's receive may spin for.
    due: bool,
    /// The last round stopped at [`REQUESTS_PER_ROUND`] with requests left to read.
    more: bool,
}

impl Conn {
    fn new(end: End) -> Self {
        Self {
            end,
            unflushed: false,
            due: false,
            more: false,
        }
    }
}

/// What a round did with one connection.
enum Outcome {
    /// Served at least one request.
    Served,
    /// Nothing to read, or waiting for its answers to be written.
    Idle,
    /// Closed, broken, or sent something that is not a request: dropped.
    Gone,
    /// Its first request opens a watch: it leaves the loop.
    Watch(Request, u32),
}

/// Serves every connection the connector brings until the connector closes.
pub(crate) async fn serve_all(socket: PacketSocket, state: Shared) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut start = 0usize;
    let mut rounds = 0u32;
    poll_fn(|cx| {
        loop {
            // While some connection has requests left over, a round must not wait (spin) for
            // a client that was just answered: those are only looked at.
            let hurry = conns.iter().any(|c| c.more);
            let mut busy = false;
            match poll_accept(&socket, cx, &mut conns) {
                Poll::Ready(Accepted::Closed) => return Poll::Ready(()),
                Poll::Ready(Accepted::Some) => busy = true,
                Poll::Pending => {}
            }
            // Start with a different connection each round, for fairness.
            let n = conns.len();
            let mut gone = Vec::new();
            for k in 0..n {
                let i = (start + k) % n;
                match serve_one(&state, &mut conns[i], hurry, cx) {
                    Outcome::Served => busy = true,
                    Outcome::Idle => {}
                    Outcome::Gone => gone.push((i, None)),
                    Outcome::Watch(request, id) => gone.push((i, Some((request, id)))),
                }
            }
            gone.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
            for (i, watching) in gone {
                let conn = conns.swap_remove(i);
                if let Some((request, id)) = watching {
                    tokio::spawn(watch(state.clone(), conn.end, request, id));
                }
            }
            start = start.wrapping_add(1);
            if !busy && !hurry {
                // Every connection was polled and registered the task's waker.
                rounds = 0;
                return Poll::Pending;
            }
            rounds += 1;
            if rounds >= ROUNDS_PER_YIELD {
                rounds = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    })
    .await;
}

enum Accepted {
    Some,
    Closed,
}

/// Takes the connections waiting on the connector. Anything that is not a pipe end is dropped:
/// its sender gets no answer and, having sent its end, sees end-of-file.
fn poll_accept(
    socket: &PacketSocket,
    cx: &mut Context<'_>,
    conns: &mut Vec<Conn>,
) -> Poll<Accepted> {
    let Ok(registration) = socket.readable_registration() else {
        return Poll::Ready(Accepted::Closed);
    };
    let mut accepted = false;
    loop {
        let mut ready = match registration.poll_read_ready(cx) {
            Poll::Ready(Ok(ready)) => ready,
            Poll::Ready(Err(_)) => return Poll::Ready(Accepted::Closed),
            Poll::Pending if accepted => return Poll::Ready(Accepted::Some),
            Poll::Pending => return Poll::Pending,
        };
        match socket.try_recv() {
            Ok(PacketRecv::Packet(incoming)) => {
                accepted = true;
                let Ok((bytes, fds)) = incoming.open(0, 1 << 16) else {
                    continue;
                };
                if let Ok(end) = message::decode::<End>(&bytes, fds) {
                    conns.push(Conn::new(end));
                }
            }
            Ok(PacketRecv::Empty) => ready.clear_ready(),
            Ok(PacketRecv::Closed) => return Poll::Ready(Accepted::Closed),
            Err(_) => ready.clear_ready(),
        }
    }
}

/// One round on one connection: finish writing its earlier answers, then serve what waits
/// and write the answers (one flush for all of them).
///
/// A connection is read with the channel's receive, which registers the task's waker and,
/// for a client that was just answered, may spin briefly for its next request (the channel's
/// policy) — unless `hurry`, when it is only looked at (a non-blocking read).
fn serve_one(state: &Shared, conn: &mut Conn, hurry: bool, cx: &mut Context<'_>) -> Outcome {
    if conn.unflushed {
        match Pin::new(&mut conn.end).poll_flush(cx) {
            Poll::Ready(Ok(())) => conn.unflushed = false,
            Poll::Ready(Err(_)) => return Outcome::Gone,
            // Not read until its answers are written (the flush registered the waker), so
            // it gives no one a reason to hurry.
            Poll::Pending => {
                conn.more = false;
                return Outcome::Idle;
            }
        }
    }
    conn.more = false;
    let mut served = 0;
    let mut gone = false;
    loop {
        if served == REQUESTS_PER_ROUND {
            conn.more = true;
            break;
        }
        // Room for another answer (the sink writes out when its buffer is full).
        match Pin::new(&mut conn.end).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Outcome::Gone,
            // Its answers are being written: wait for that (the waker is registered).
            Poll::Pending => {
                conn.unflushed = true;
                break;
            }
        }
        let next = if hurry && conn.due {
            match conn.end.try_recv() {
                Ok(request) => Some(Ok(request)),
                Err(TryRecvError::Empty) => None,
                Err(_) => Some(Err(())),
            }
        } else {
            match Pin::new(&mut conn.end).poll_next(cx) {
                Poll::Ready(Some(Ok(request))) => Some(Ok(request)),
                Poll::Pending => None,
                Poll::Ready(_) => Some(Err(())),
            }
        };
        let request = match next {
            Some(Ok(request)) => request,
            None => break,
            // Closed, or something that is not a request: answer what was served, then drop.
            Some(Err(())) => {
                gone = true;
                break;
            }
        };
        conn.due = false;
        let response = match request.ops.first() {
            Some(Op::Watch(id)) if served == 0 && !conn.unflushed => {
                let id = *id;
                return Outcome::Watch(request, id);
            }
            // A watch must open its own connection; refused here.
            Some(Op::Watch(_)) => Response::Done {
                id: request.id,
                results: vec![Err(Failure::BadWatch)],
            },
            _ => answer(state, request),
        };
        if Pin::new(&mut conn.end).start_send(response).is_err() {
            return Outcome::Gone;
        }
        served += 1;
        conn.unflushed = true;
    }
    if conn.unflushed {
        conn.due = true;
        match Pin::new(&mut conn.end).poll_flush(cx) {
            Poll::Ready(Ok(())) => conn.unflushed = false,
            Poll::Ready(Err(_)) => return Outcome::Gone,
            Poll::Pending => {}
        }
    }
    if gone {
        Outcome::Gone
    } else if served > 0 {
        Outcome::Served
    } else {
        Outcome::Idle
    }
}
