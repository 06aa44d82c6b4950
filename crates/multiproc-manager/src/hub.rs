//! The manager's serving loop: one task that takes new connections off the connector and
//! serves every connection, round by round.
//!
//! Each round reads every request already waiting on every connection, applies each under the
//! state's lock, queues the answers, and then writes each connection's answers with one flush:
//! many requests, from one client or several, cost one write per connection. Reading within a
//! round never waits: a connection is only asked whether a whole request is there (which also
//! registers the task's waker on it).
//!
//! A round that found nothing may spin before the task parks, by the workspace's one spin
//! policy (`multiproc_core::wait::spin`): while clients were just answered (their next request
//! is due), the loop tries every such connection in turn, so whichever client sends first is
//! served at once, without the cost of a sleep and a wake-up. With a task (or a channel's own
//! spin) per connection, a spin for one client's next request held the thread while another
//! client's request sat unread. While every such client runs on another CPU (by its ring's
//! cue), the spin busy-waits: a yield would only cost a system call, and a manager that keeps
//! a CPU of its own serves both clients of a two-CPU machine at once. While one runs on the
//! manager's CPU, the loop parks at once, so that the client's wake-up may move one of the two
//! to another CPU, or takes turns with it (yields) when such parks leave them together
//! (`multiproc_core::wait::ParkApart`, the pipe receiver's rule). When the spin runs out, or no
//! answer is due, the task parks on every connection at once (and the connector).
//!
//! A connection is parked only then: one whose client was just answered is looked at without
//! registering anything, since parking marks its shared ring, and a client that finds the ring
//! marked sends its next request with a wake-up frame through the socket (a system call on
//! each side, measured at one per operation when every round parked every connection).
//!
//! A connection whose answers cannot be written yet (its client is not reading) is not read
//! again until its earlier answers are written, so a slow client holds up no one but itself.
//! A connection whose first request is a watch leaves the loop for a task of its own
//! ([`watch`]), which forwards changes as they happen.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Sink;
use multiproc_channel::error::TryRecvError;
use multiproc_channel::pipe;
use multiproc_core::message;
use multiproc_core::transport::packet::{PacketRecv, PacketSocket};
use multiproc_core::wait::ParkApart;
use multiproc_core::wait::spin::{SpinPolicy, Spun, poll_spin};

use crate::codec::first_watch;
use crate::server::{Shared, answer, watch};
use crate::wire::{Failure, Request, Response, Results};

/// A connection's end in the manager.
pub(crate) type End = pipe::Duplex<Response, Request>;

/// Rounds that found work before the loop lets the runtime's other tasks (watches) run.
const ROUNDS_PER_YIELD: u32 = 32;

/// Requests read from one connection in a round before the loop moves on to the next, so a
/// client that keeps sending cannot keep the others waiting.
const REQUESTS_PER_ROUND: u32 = 256;

/// What a connection's next read gave, when a spin took it ahead of its round.
type Taken = Result<Request, ()>;

/// One served connection.
struct Conn {
    end: End,
    /// Answers were queued that are not written yet.
    unflushed: bool,
    /// Answers were written since its last request: its client is (probably) waiting for them
    /// and will send again soon, which a quiet round may spin for.
    due: bool,
    /// Read by a spin, to be served in the next round.
    taken: Option<Taken>,
}

impl Conn {
    fn new(end: End) -> Self {
        Self {
            end,
            unflushed: false,
            due: false,
            taken: None,
        }
    }

    /// The next request if one is whole already, without waiting. `None`: nothing yet, and
    /// with `park` the task's waker is registered (and the connection's ring marked parked, so
    /// that its client's next request comes with a wake-up); without it, nothing is
    /// registered. `Some(Err)`: closed, broken, or not a request.
    fn poll_request(&mut self, cx: &mut Context<'_>, park: bool) -> Option<Taken> {
        if let Some(taken) = self.taken.take() {
            return Some(taken);
        }
        if !park {
            return self.look();
        }
        for _ in 0..2 {
            match self.end.receiver().poll_ready(cx) {
                Poll::Pending => return None,
                Poll::Ready(Err(_)) => return Some(Err(())),
                Poll::Ready(Ok(())) => {
                    if let Some(taken) = self.try_request() {
                        return Some(taken);
                    }
                    // Ready, yet nothing to take: ask again, which registers the waker.
                }
            }
        }
        // Never seen; but a connection must not be left without a wake-up.
        cx.waker().wake_by_ref();
        None
    }

    /// Whether a quiet round spins for this connection's next request: its client was just
    /// answered, and the answers are written.
    fn spun_for(&self) -> bool {
        self.due && !self.unflushed
    }

    /// The next request if one has arrived, looked for as a spin looks: without a system call
    /// unless the client sent something through the socket, and without parking.
    fn look(&mut self) -> Option<Taken> {
        match self.end.receiver().try_ready_spinning() {
            Ok(false) => None,
            Ok(true) => self.try_request(),
            Err(_) => Some(Err(())),
        }
    }

    /// One non-blocking read.
    fn try_request(&mut self) -> Option<Taken> {
        match self.end.try_recv() {
            Ok(request) => Some(Ok(request)),
            Err(TryRecvError::Empty) => None,
            Err(_) => Some(Err(())),
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
    let mut policy = SpinPolicy::new();
    let mut park_apart = ParkApart::new();
    // The last spin stopped at once to park apart from a client on this CPU.
    let mut parked_apart = false;
    // When the policy chose to park without spinning: the wait's length is reported to it.
    let mut parked_since: Option<Instant> = None;
    poll_fn(|cx| {
        if let Some(since) = parked_since.take() {
            policy.parked(since.elapsed());
        }
        loop {
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
                match serve_one(&state, &mut conns[i], cx) {
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
            if busy {
                if let Some(since) = parked_since.take() {
                    // The round after a spin that chose not to wait found work at once.
                    policy.parked(since.elapsed());
                }
                rounds += 1;
                if rounds >= ROUNDS_PER_YIELD {
                    rounds = 0;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                continue;
            }
            // A quiet round: every connection with nothing due registered the task's waker.
            // Spin for the clients that were just answered, if the policy says so, else park.
            rounds = 0;
            if !conns.iter().any(Conn::spun_for) {
                return Poll::Pending;
            }
            let conns_cell = RefCell::new(&mut conns);
            // While every such client runs on another CPU, busy-wait (a yield would only cost a
            // system call, and hand this CPU to nobody); while one runs here, park at once or
            // take turns with it (`ParkApart`).
            let mut elsewhere = || {
                conns_cell
                    .borrow_mut()
                    .iter_mut()
                    .filter(|c| c.spun_for())
                    .all(|c| c.end.receiver().sender_runs_elsewhere() == Some(true))
            };
            // A park that was to move apart from a client on this CPU: did it?
            let mut here = !elsewhere();
            if std::mem::take(&mut parked_apart) {
                if here {
                    park_apart.still_together();
                    here = !elsewhere();
                } else {
                    park_apart.woke_apart();
                }
            }
            let apart: Option<&mut dyn FnMut() -> bool> = if !here {
                Some(&mut elsewhere)
            } else if park_apart.may_park() {
                // With a client on this CPU, `elsewhere` stops the spin at once: the task
                // parks, and the client's wake-up may move one of the two to another CPU.
                parked_apart = true;
                Some(&mut elsewhere)
            } else {
                None
            };
            let spun = poll_spin(cx, &mut policy, None, apart, || {
                let mut caught = false;
                for conn in conns_cell.borrow_mut().iter_mut().filter(|c| c.spun_for()) {
                    if let Some(taken) = conn.look() {
                        conn.taken = Some(taken);
                        caught = true;
                    }
                }
                caught.then_some(())
            });
            match spun {
                // Out of cooperative budget: tokio runs the task again after its neighbours.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Spun::Caught(())) => continue,
                Poll::Ready(Spun::Park(since)) => {
                    // One spin per wait: until a client is answered again, park at once. The
                    // connections that were due are not parked yet: one more round parks
                    // every connection (and serves what came meanwhile).
                    for conn in &mut conns {
                        conn.due = false;
                    }
                    parked_since = since;
                    continue;
                }
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
/// and write the answers (one flush for all of them). Never waits for a request.
fn serve_one(state: &Shared, conn: &mut Conn, cx: &mut Context<'_>) -> Outcome {
    if conn.unflushed {
        match Pin::new(&mut conn.end).poll_flush(cx) {
            Poll::Ready(Ok(())) => conn.unflushed = false,
            Poll::Ready(Err(_)) => return Outcome::Gone,
            // Not read until its answers are written (the flush registered the waker).
            Poll::Pending => return Outcome::Idle,
        }
    }
    let mut served = 0;
    let mut gone = false;
    loop {
        if served == REQUESTS_PER_ROUND {
            // Requests may be left: the round counts as busy, so the next one comes soon.
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
        // A connection whose answers just went out is not parked: its client's next request
        // is due, and the loop looks for it (see `serve_all`) rather than have the client pay
        // for a wake-up frame. Only a connection with nothing due parks.
        let park = !conn.due && served == 0;
        let request = match conn.poll_request(cx, park) {
            Some(Ok(request)) => request,
            None => break,
            // Closed, or something that is not a request: answer what was served, then drop.
            Some(Err(())) => {
                gone = true;
                break;
            }
        };
        conn.due = false;
        let response = match first_watch(&request.ops) {
            Some(id) if served == 0 && !conn.unflushed => return Outcome::Watch(request, id),
            // A watch must open its own connection; refused here.
            Some(_) => Response::Done {
                id: request.id,
                results: Results::from_results([&Err(Failure::BadWatch)]),
            },
            None => answer(state, &request),
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
