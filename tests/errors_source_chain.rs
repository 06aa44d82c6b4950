//! Every error keeps its cause through `source()`, and no error prints its cause's text again:
//! a report that walks the chain (as `anyhow` or `eyre` do) shows each message once.
//!
//! Each error here is produced for real, through the public API (a spawn, a pool task, a pipe,
//! a queue), from a value whose `Serialize` or `Deserialize` fails.

use std::error::Error;

use multiproc::{Pool, Queue, pipe, spawn};
use multiproc_suite::within;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that refuses to be encoded.
#[derive(Debug, Clone, Copy)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

impl<'de> Deserialize<'de> for Unencodable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("this value refuses to be decoded"))
    }
}

/// The texts of `e` and of every error below it, outermost first.
fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut texts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        texts.push(cause.to_string());
        next = cause.source();
    }
    texts
}

/// Checks that `e` has a cause at least `depth` levels down, and that no level's text contains
/// the text of a level below it (which a report would then print twice).
fn assert_clean_chain(what: &str, e: &(dyn Error + 'static), depth: usize) {
    let texts = chain(e);
    assert!(
        texts.len() > depth,
        "{what}: expected a cause {depth} level(s) down, got the chain {texts:?}"
    );
    for (i, outer) in texts.iter().enumerate() {
        assert!(!outer.is_empty(), "{what}: empty message in {texts:?}");
        for inner in &texts[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{what}: {outer:?} repeats its cause {inner:?} (chain {texts:?})"
            );
        }
    }
}

#[tokio::test]
async fn a_spawn_whose_arguments_do_not_encode_keeps_the_encode_error_as_its_source() {
    let err = within("spawn", spawn(Unencodable, |_: Unencodable| ()))
        .await
        .unwrap_err();
    assert!(err.is_spawn_failure(), "{err}");
    // JoinError -> EncodeError -> the serializer's error.
    assert_clean_chain("spawn", &err, 2);
}

#[tokio::test]
async fn a_pool_task_whose_arguments_do_not_encode_keeps_the_encode_error_as_its_source() {
    let pool = Pool::new(1).unwrap();
    let err = within("apply", pool.apply(|_: Unencodable| (), Unencodable))
        .await
        .unwrap_err();
    assert!(err.is_bad_args(), "{err}");
    assert_clean_chain("pool task", &err, 2);
    let err = Pool::builder()
        .workers(1)
        .initializer(Unencodable, |_: Unencodable| ())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("initializer"), "{err}");
    assert_clean_chain("pool initializer", &err, 2);
    pool.terminate();
}

#[tokio::test]
async fn pipe_errors_keep_their_causes() {
    let (mut tx, _rx) = pipe::simplex::<Unencodable>().unwrap();
    let err = within("send", tx.send(Unencodable)).await.unwrap_err();
    assert_clean_chain("pipe send", &err, 1);

    // A message sent as one type and received as another that refuses it.
    let (mut tx, rx) = pipe::simplex::<u32>().unwrap();
    within("send", tx.send(7)).await.unwrap();
    let mut rx: pipe::Receiver<Unencodable> = reinterpret(&rx);
    let err = within("recv", rx.recv()).await.unwrap_err();
    assert_clean_chain("pipe recv", &err, 1);
}

#[tokio::test]
async fn queue_errors_keep_their_causes() {
    let queue = Queue::<Unencodable>::new().unwrap();
    let err = within("put", queue.put(Unencodable)).await.unwrap_err();
    assert_clean_chain("queue put", &err, 1);

    // A message put as one type and taken as another that refuses it: the decode error's
    // cause is the deserializer's.
    let bytes = Queue::<u32>::new().unwrap();
    within("put", bytes.put(4)).await.unwrap();
    let refusing: Queue<Unencodable> = reinterpret(&bytes);
    let err = within("get", refusing.get()).await.unwrap_err();
    assert_clean_chain("queue get", &err, 1);
}

/// The same handle, typed as `U`: a handle is its descriptors, so it can be sent as one type
/// and received as another, which is what a confused peer does.
fn reinterpret<T: Serialize, U: serde::de::DeserializeOwned>(handle: &T) -> U {
    let (bytes, fds) = multiproc::core::message::encode(handle).unwrap();
    multiproc::core::message::decode(&bytes, fds).unwrap()
}
