//! Piped standard streams, both ways, for multiproc children and external programs; an
//! external python3 program using a descriptor passed at a fixed number.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

use multiproc::Builder;
use multiproc::process::Command;
use multiproc_suite::{TEST_LIMIT, within, within_blocking};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper-cases its input line by line, reports the line count on standard error.
fn shout(_: ()) -> usize {
    let mut lines = 0;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        writeln!(out, "{}", line.unwrap().to_uppercase()).unwrap();
        lines += 1;
    }
    out.flush().unwrap();
    eprintln!("{lines} lines");
    lines
}

/// Prints without a newline (so the text sits in the stdout buffer when the function ends),
/// then returns or panics as told.
fn print_unterminated(panic: bool) -> u8 {
    print!("half a line");
    if panic {
        panic!("after printing");
    }
    7
}

/// A child ends with `_exit` (as Python's do), which would drop what its stdout buffer holds;
/// the bootstrap flushes it first, whether the function returned or panicked.
#[tokio::test]
async fn output_still_buffered_when_the_function_ends_is_not_lost() {
    for panic in [false, true] {
        let mut child = Builder::new()
            .stdout(Stdio::piped())
            .spawn(panic, print_unterminated)
            .unwrap();
        let mut stdout = child.stdout().unwrap();
        let mut out = String::new();
        within("stdout", stdout.read_to_string(&mut out))
            .await
            .unwrap();
        assert_eq!(out, "half a line", "panicked: {panic}");
        let joined = within("join", child).await;
        match panic {
            false => assert_eq!(joined.unwrap(), 7),
            true => assert!(joined.unwrap_err().is_panic()),
        }
    }
}

#[tokio::test]
async fn piped_stdio_works_both_ways() {
    let mut child = Builder::new()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn((), shout)
        .unwrap();
    let mut stdin = child.stdin().unwrap();
    let mut stdout = child.stdout().unwrap();
    let mut stderr = child.stderr().unwrap();
    assert!(child.stdin().is_none(), "taken once");
    // More than a pipe buffer, so both sides must stream.
    let input: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let writer = async move {
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin); // end of input
    };
    let reader = async {
        let mut out = String::new();
        stdout.read_to_string(&mut out).await.unwrap();
        out
    };
    let ((), out) = within("streams", async { tokio::join!(writer, reader) }).await;
    let expected: String = (0..20_000).map(|i| format!("LINE {i}\n")).collect();
    assert!(out == expected, "stdout differs ({} bytes)", out.len());
    let mut err = String::new();
    within("stderr", stderr.read_to_string(&mut err))
        .await
        .unwrap();
    assert_eq!(err, "20000 lines\n");
    assert_eq!(within("join", child).await.unwrap(), 20_000);
}

#[tokio::test]
async fn an_external_program_gets_piped_stdio() {
    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cat.stdin().unwrap();
    stdin.write_all(b"through cat\n").await.unwrap();
    drop(stdin);
    let mut out = String::new();
    within(
        "cat's output",
        cat.stdout().unwrap().read_to_string(&mut out),
    )
    .await
    .unwrap();
    assert_eq!(out, "through cat\n");
    assert!(within("cat", cat.wait()).await.unwrap().success());
}

/// Python reads requests from one passed descriptor and answers on another (named in its
/// environment), and prints what it did.
const PYTHON: &str = r#"
import os, socket
requests = socket.socket(fileno=int(os.environ["MULTIPROC_FD_REQUESTS"]))
replies = int(os.environ["MULTIPROC_FD_REPLIES"])
data = b""
while not data.endswith(b"\n"):
    chunk = requests.recv(4096)
    if not chunk:
        break
    data += chunk
os.write(replies, b"python saw: " + data)
os.close(replies)
print("fds", os.environ["MULTIPROC_FD_REQUESTS"], os.environ["MULTIPROC_FD_REPLIES"])
"#;

#[tokio::test]
async fn python_uses_descriptors_passed_at_fixed_numbers() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (reply_read, reply_write) = UnixStream::pair().unwrap();
    let mut python = Command::new("python3")
        .arg("-c")
        .arg(PYTHON)
        .pass_fd("requests", &theirs)
        .pass_fd("replies", &reply_write)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Only the program's copies stay open: our ends see its end-of-file.
    drop(theirs);
    drop(reply_write);
    let reply = within_blocking("python's reply", move || {
        let mut ours = ours;
        ours.set_write_timeout(Some(TEST_LIMIT)).unwrap();
        ours.write_all(b"hello from rust\n").unwrap();
        let mut reply = String::new();
        let mut reply_read = reply_read;
        reply_read.set_read_timeout(Some(TEST_LIMIT)).unwrap();
        reply_read.read_to_string(&mut reply).unwrap();
        reply
    })
    .await;
    assert_eq!(reply, "python saw: hello from rust\n");
    let mut out = String::new();
    within(
        "python's stdout",
        python.stdout().unwrap().read_to_string(&mut out),
    )
    .await
    .unwrap();
    assert_eq!(out, "fds 3 4\n");
    let status = within("python", python.wait()).await.unwrap();
    assert!(status.success(), "python failed: {status}");
}

#[tokio::test]
async fn descriptor_numbers_are_checked() {
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let err = Command::new("true").fd_at(2, &theirs).spawn().unwrap_err();
    let why = chain(&err);
    assert!(why.contains("3 or more"), "{why}");
    let err = Command::new("true")
        .fd_at(5, &theirs)
        .fd_at(5, &theirs)
        .spawn()
        .unwrap_err();
    let why = chain(&err);
    assert!(why.contains("once"), "{why}");
    let mut ok = Command::new("true").fd_at(7, &theirs).spawn().unwrap();
    assert!(within("true", ok.wait()).await.unwrap().success());
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
