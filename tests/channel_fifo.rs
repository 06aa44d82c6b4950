//! Typed named FIFOs across real processes: several writers whose messages never interleave,
//! the PIPE_BUF rule enforced, the single-writer mode, no descriptors, opening without a
//! reader, end of stream.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use multiproc::error::{FifoOpenError, FifoRecvError, FifoSendError};
use multiproc::fifo::{self, FifoReceiver, FifoSender, MAX_SHARED_MESSAGE};
use multiproc::{Event, spawn};
use multiproc_suite::within;

fn fifo_path(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "multiproc-test-{what}-{}-{n}.fifo",
        std::process::id()
    ));
    fifo::create(&path).unwrap();
    path
}

/// Writer `id` sends `count` messages `(id, i, filler)` with fillers of varying size up to the
/// atomic limit, so that torn writes would show.
async fn write_many((path, id, count): (PathBuf, u32, u32)) {
    let mut tx = FifoSender::<(u32, u32, Vec<u8>)>::open(&path)
        .await
        .unwrap();
    for i in 0..count {
        let len = (i as usize * 397 + id as usize * 1009) % (MAX_SHARED_MESSAGE - 32);
        tx.send(&(id, i, vec![id as u8; len])).await.unwrap();
    }
}

#[tokio::test]
async fn several_writers_messages_arrive_whole_and_in_order_per_writer() {
    let path = fifo_path("writers");
    let mut rx = FifoReceiver::<(u32, u32, Vec<u8>)>::open(&path).unwrap();
    // A writer of our own keeps the stream open until every child has written.
    let keep_open = FifoSender::<(u32, u32, Vec<u8>)>::open(&path)
        .await
        .unwrap();
    let children: Vec<_> = (0..4)
        .map(|id| spawn((path.clone(), id, 300), write_many))
        .collect();
    let mut next = [0u32; 4];
    for _ in 0..4 * 300 {
        let (id, i, filler) = within("message", rx.recv()).await.unwrap().unwrap();
        assert_eq!(i, next[id as usize], "writer {id} out of order");
        next[id as usize] += 1;
        assert!(filler.iter().all(|b| *b == id as u8), "garbled message");
    }
    for child in children {
        within("writer", child).await.unwrap();
    }
    drop(keep_open);
    assert!(within("end", rx.recv()).await.unwrap().is_none());
    fifo::remove(&path).unwrap();
}

#[tokio::test]
async fn a_message_over_pipe_buf_is_refused_when_the_fifo_may_have_several_writers() {
    let path = fifo_path("large");
    let mut rx = FifoReceiver::<Vec<u8>>::open(&path).unwrap();
    let mut tx = FifoSender::<Vec<u8>>::open(&path).await.unwrap();
    assert!(!tx.is_single_writer());
    // postcard: a length varint (2 bytes here) then the bytes.
    tx.send(&vec![1; MAX_SHARED_MESSAGE - 2]).await.unwrap();
    let err = tx.send(&vec![2; MAX_SHARED_MESSAGE - 1]).await.unwrap_err();
    assert!(
        matches!(err, FifoSendError::TooLarge { len, limit } if len == MAX_SHARED_MESSAGE + 1 && limit == MAX_SHARED_MESSAGE),
        "{err}"
    );
    assert!(err.to_string().contains("atomic"));
    tx.send(&vec![3; 10]).await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap().unwrap().len(),
        MAX_SHARED_MESSAGE - 2
    );
    assert_eq!(
        rx.recv().await.unwrap(),
        Some(vec![3; 10]),
        "the refused message was written"
    );
    fifo::remove(&path).unwrap();
}

/// Sends one large message as the single writer, once `reader` is set.
async fn send_large((path, ready): (PathBuf, Event)) -> bool {
    let mut tx = FifoSender::<Vec<u32>>::open_single_writer(&path)
        .await
        .unwrap();
    ready.set();
    tx.send(&(0..100_000).collect()).await.unwrap();
    tx.is_single_writer()
}

#[tokio::test]
async fn a_single_writer_sends_large_messages_and_excludes_other_writers() {
    let path = fifo_path("single");
    let mut rx = FifoReceiver::<Vec<u32>>::open(&path).unwrap();
    let ready = Event::new().unwrap();
    let child = spawn((path.clone(), ready.clone()), send_large);
    within("single writer opened", ready.wait()).await.unwrap();
    assert!(matches!(
        FifoSender::<Vec<u32>>::try_open(&path),
        Err(FifoOpenError::WriterConflict)
    ));
    let big = within("large message", rx.recv()).await.unwrap().unwrap();
    assert_eq!(big.len(), 100_000);
    assert!(big.iter().enumerate().all(|(i, v)| *v == i as u32));
    assert!(within("child", child).await.unwrap());
    // A shared sender excludes a single writer in turn.
    let _shared = FifoSender::<Vec<u32>>::open(&path).await.unwrap();
    assert!(matches!(
        FifoSender::<Vec<u32>>::open_single_writer(&path).await,
        Err(FifoOpenError::WriterConflict)
    ));
    fifo::remove(&path).unwrap();
}

#[tokio::test]
async fn handles_cannot_go_through_a_fifo() {
    let path = fifo_path("handles");
    let _rx = FifoReceiver::<Event>::open(&path).unwrap();
    let mut tx = FifoSender::<Event>::open(&path).await.unwrap();
    let err = tx.send(&Event::new().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, FifoSendError::Descriptors(n) if n >= 1),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be sent through a FIFO"));
    fifo::remove(&path).unwrap();
}

#[tokio::test]
async fn opening_for_writing_waits_for_a_reader() {
    let path = fifo_path("noreader");
    assert!(matches!(
        FifoSender::<u8>::try_open(&path),
        Err(FifoOpenError::NoReader)
    ));
    let opener = tokio::spawn({
        let path = path.clone();
        async move {
            let mut tx = FifoSender::<u8>::open(&path).await.unwrap();
            tx.send(&5).await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!opener.is_finished(), "opened without a reader");
    let mut rx = FifoReceiver::<u8>::open(&path).unwrap();
    assert_eq!(within("message", rx.recv()).await.unwrap(), Some(5));
    within("opener", opener).await.unwrap();
    assert_eq!(within("end", rx.recv()).await.unwrap(), None);
    // Not a FIFO: a clear error, and `remove` refuses to delete it.
    let file = std::env::temp_dir().join(format!("multiproc-test-plain-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    assert!(FifoReceiver::<u8>::open(&file).is_err());
    assert!(fifo::remove(&file).is_err());
    std::fs::remove_file(&file).unwrap();
    fifo::remove(&path).unwrap();
    assert!(fifo::create(&file).is_ok() && fifo::create(&file).is_err());
    fifo::remove(&file).unwrap();
}

/// Writes raw bytes into the FIFO as another program would.
fn write_raw((path, bytes): (PathBuf, Vec<u8>)) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
}

#[tokio::test]
async fn wrong_types_truncated_frames_and_garbage_are_errors_not_panics() {
    let path = fifo_path("garbage");
    let mut rx = FifoReceiver::<u32>::open(&path)
        .unwrap()
        .with_max_message_size(1024);
    // A writer of our own keeps the stream open between the children (no end of stream).
    let keep_open = FifoSender::<u32>::open(&path).await.unwrap();
    // A whole frame that is not a u32 (postcard varint with no end), then a good one.
    let child = spawn(
        (path.clone(), vec![2, 0, 0, 0, 0xff, 0xff, 1, 0, 0, 0, 7]),
        write_raw,
    );
    assert!(matches!(
        within("bad", rx.recv()).await,
        Err(FifoRecvError::Decode(_))
    ));
    assert_eq!(within("good", rx.recv()).await.unwrap(), Some(7));
    within("child", child).await.unwrap();
    // A frame whose writer died in the middle, noticed when the last writer closes.
    let child = spawn((path.clone(), vec![10, 0, 0, 0, 1, 2]), write_raw);
    within("child", child).await.unwrap();
    drop(keep_open);
    assert!(matches!(
        within("truncated", rx.recv()).await,
        Err(FifoRecvError::Truncated(6))
    ));
    // A length over the limit: the stream is garbage for good.
    let _keep_open = FifoSender::<u32>::open(&path).await.unwrap();
    let child = spawn((path.clone(), vec![0xff; 8]), write_raw);
    assert!(matches!(
        within("corrupt", rx.recv()).await,
        Err(FifoRecvError::Corrupt { limit: 1024, .. })
    ));
    assert!(rx.recv().await.is_err());
    within("child", child).await.unwrap();
    fifo::remove(&path).unwrap();
}

/// Sends one message as a fresh writer, then closes the FIFO.
async fn send_one((path, value): (PathBuf, u32)) {
    let mut tx = FifoSender::<u32>::open(&path).await.unwrap();
    tx.send(&value).await.unwrap();
}

/// Review finding: after the last writer closed, every later `recv` returned `Ok(None)` at once
/// (the kernel keeps reporting hang-up), so the canonical server loop spun a core.
#[tokio::test]
async fn after_the_end_of_the_stream_recv_waits_for_the_next_writer() {
    let path = fifo_path("reopen");
    let mut rx = FifoReceiver::<u32>::open(&path).unwrap();
    for round in 0..3 {
        let child = spawn((path.clone(), round), send_one);
        within("child", child).await.unwrap();
        assert_eq!(within("message", rx.recv()).await.unwrap(), Some(round));
        assert_eq!(within("end", rx.recv()).await.unwrap(), None);
        // No writer now: the next receive waits instead of reporting the end again at once.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "recv returned at once with no writer (round {round})"
        );
    }
    fifo::remove(&path).unwrap();
}

/// Review finding: a single writer moved its whole frame to the pending buffer before writing a
/// byte, so a send cancelled while the FIFO was full was delivered later anyway.
#[tokio::test]
async fn a_single_writer_send_cancelled_before_writing_sends_nothing() {
    let path = fifo_path("cancel-send");
    let mut rx = FifoReceiver::<(u32, Vec<u8>)>::open(&path).unwrap();
    let mut tx = FifoSender::<(u32, Vec<u8>)>::open_single_writer(&path)
        .await
        .unwrap();
    // Small frames (written whole or not at all) until the FIFO is full and a send times out.
    let mut sent = 0u32;
    while tokio::time::timeout(Duration::from_millis(50), tx.send(&(sent, vec![7; 100])))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        sent += 1;
        assert!(sent < 100_000, "the FIFO never filled");
    }
    for i in 0..sent {
        assert_eq!(within("filler", rx.recv()).await.unwrap().unwrap().0, i);
    }
    within("send after", tx.send(&(u32::MAX, Vec::new())))
        .await
        .unwrap();
    // The cancelled message (number `sent`) never arrives.
    assert_eq!(
        within("after", rx.recv()).await.unwrap().unwrap().0,
        u32::MAX
    );
    fifo::remove(&path).unwrap();
}

/// Tries to open a receiver on the FIFO; whether it was refused as a second reader.
fn second_reader_refused(path: PathBuf) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    matches!(
        FifoReceiver::<u32>::open(&path),
        Err(FifoOpenError::ReaderConflict)
    )
}

/// Review finding: two receivers on one FIFO tear each other's frames (each reads whatever
/// bytes are there); a second receiver is now refused, in this process or another.
#[tokio::test]
async fn a_fifo_has_one_receiver() {
    let path = fifo_path("one-reader");
    let rx = FifoReceiver::<u32>::open(&path).unwrap();
    assert!(matches!(
        FifoReceiver::<u32>::open(&path),
        Err(FifoOpenError::ReaderConflict)
    ));
    let child = spawn(path.clone(), second_reader_refused);
    assert!(within("child", child).await.unwrap());
    drop(rx);
    let mut rx = FifoReceiver::<u32>::open(&path).unwrap();
    let child = spawn((path.clone(), 5), send_one);
    within("child", child).await.unwrap();
    assert_eq!(within("message", rx.recv()).await.unwrap(), Some(5));
    fifo::remove(&path).unwrap();
}

/// Review finding: opening a path that is not a FIFO opened it for reading or writing first
/// (a terminal would become the controlling terminal); the type is now checked on an `O_PATH`
/// descriptor, and a regular file is refused without being opened.
#[tokio::test]
async fn a_path_that_is_not_a_fifo_is_refused() {
    let file = std::env::temp_dir().join(format!("multiproc-test-notfifo-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let e = FifoReceiver::<u32>::open(&file).unwrap_err();
    assert!(
        matches!(&e, FifoOpenError::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput),
        "{e:?}"
    );
    let e = FifoSender::<u32>::try_open(&file).unwrap_err();
    assert!(
        matches!(&e, FifoOpenError::Io(io) if io.kind() == std::io::ErrorKind::InvalidInput),
        "{e:?}"
    );
    // A FIFO reached through a symbolic link still opens.
    let path = fifo_path("linked");
    let link = path.with_extension("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let _rx = FifoReceiver::<u32>::open(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&file).unwrap();
    fifo::remove(&path).unwrap();
}
