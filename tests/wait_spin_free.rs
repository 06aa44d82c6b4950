//! Spin-free mode: with `set_spinning(false)` (or `MULTIPROC_SPIN=0`) no wait of the process,
//! nor of the children it starts afterwards, spins before it parks.
//!
//! The setting is process-wide, so this file holds one test that goes from spinning to not.

use multiproc::pipe::{self, Duplex};
use multiproc::{Builder, Event, SPIN_ENV, set_spinning, spawn, spinning, spins_begun};
use multiproc_suite::within;

const ROUNDS: u32 = 200;

/// Echoes every number back until end-of-stream, then says whether it spins and how many spins
/// it began.
async fn echo(mut end: Duplex<u32, u32>) -> (bool, u64) {
    while let Ok(Some(n)) = end.recv().await {
        end.send(n).await.unwrap();
    }
    (spinning(), spins_begun())
}

/// A request-and-answer exchange with a child, which is where a receiver spins: each receive
/// expects the answer to a request just sent.
async fn ping_pong(builder: Builder) -> (bool, u64) {
    let (mut here, there) = pipe::duplex::<u32, u32>().unwrap();
    let child = builder.spawn(there, echo).unwrap();
    for i in 0..ROUNDS {
        here.send(i).await.unwrap();
        assert_eq!(within("echo", here.recv()).await.unwrap(), Some(i));
    }
    drop(here);
    within("join the echo child", child).await.unwrap()
}

/// Event waits answered by a child: an answer-wait of the sync primitives.
async fn event_rounds() {
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn(
        (ping.clone(), pong.clone()),
        |(ping, pong): (Event, Event)| {
            for _ in 0..20 {
                ping.blocking_wait().unwrap();
                ping.clear();
                pong.set();
            }
        },
    );
    for _ in 0..20 {
        ping.set();
        within("pong", pong.wait()).await.unwrap();
        pong.clear();
    }
    within("join the event child", child).await.unwrap();
}

/// In a child started with `MULTIPROC_SPIN=0`: turns spinning back on through the API, then
/// reports whether a grandchild spins.
async fn turned_on_again(_: ()) -> (bool, bool, u64) {
    let inherited = spinning();
    set_spinning(true);
    let (grandchild_spins, grandchild_count) = ping_pong(Builder::new()).await;
    (inherited, grandchild_spins, grandchild_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_free_mode_spins_nowhere_and_children_inherit_it() {
    assert!(
        spinning(),
        "spinning is on unless {SPIN_ENV}=0 or set_spinning(false)"
    );

    // On: the exchanges spin (at least the first wait of each receiver does; later ones may
    // back off, which is the policy's business).
    let before = spins_begun();
    let (child_spins, child_count) = ping_pong(Builder::new()).await;
    assert!(child_spins);
    assert!(
        spins_begun() > before,
        "a ping-pong with spinning on began no spin here"
    );
    assert!(
        child_count > 0,
        "the echo child began no spin with spinning on"
    );

    // The variable alone turns it off in the child it is given to.
    let (child_spins, child_count) = ping_pong(Builder::new().env(SPIN_ENV, "0")).await;
    assert!(!child_spins, "{SPIN_ENV}=0 left the child spinning");
    assert_eq!(child_count, 0, "the child began spins with {SPIN_ENV}=0");

    // Off through the API: nothing here spins, and children started now inherit it.
    set_spinning(false);
    assert!(!spinning());
    let before = spins_begun();
    let (child_spins, child_count) = ping_pong(Builder::new()).await;
    event_rounds().await;
    assert_eq!(spins_begun(), before, "a wait spun with spinning off");
    assert!(
        !child_spins,
        "the child did not inherit set_spinning(false)"
    );
    assert_eq!(
        child_count, 0,
        "the child began spins after set_spinning(false)"
    );

    // And back on.
    set_spinning(true);
    assert!(spinning());

    // A process started with MULTIPROC_SPIN=0 that turns spinning on passes that on too.
    let child = Builder::new()
        .env(SPIN_ENV, "0")
        .spawn((), turned_on_again)
        .unwrap();
    let (inherited, grandchild_spins, grandchild_count) =
        within("the child that turns spinning on", child)
            .await
            .unwrap();
    assert!(!inherited, "the child did not start with {SPIN_ENV}=0");
    assert!(
        grandchild_spins,
        "set_spinning(true) did not reach the grandchild of a {SPIN_ENV}=0 process"
    );
    assert!(grandchild_count > 0, "the grandchild began no spin");
}
