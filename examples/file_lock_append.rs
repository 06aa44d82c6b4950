//! Programs that share nothing but a path append to one file under a `FileLock`: two multiproc
//! processes (each opening the lock by path, as separate programs would) and, when `flock(1)`
//! is installed, a shell loop taking the same lock with `flock`.
//!
//! Every line is written in two halves, so without the lock lines would interleave. The parent
//! then checks that the file holds only whole lines, and all of them. (Not to be confused with
//! `lock_file_append`, which shares a multiproc `Lock` handle with its children.)
//! Run with `cargo run --example file_lock_append`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use multiproc::sync::FileLock;

const LINES: usize = 300;
const WIDTH: usize = 80;

/// One "program": opens the lock and the data file by path and appends its lines.
async fn append_lines((lock_path, data_path, tag): (PathBuf, PathBuf, char)) -> usize {
    // `flock` mode, so that `flock(1)` in the shell loop excludes us and we it.
    let lock = FileLock::open_flock(&lock_path).expect("open the lock file");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&data_path)
        .expect("open the data file");
    let line: String = std::iter::repeat_n(tag, WIDTH).collect();
    for _ in 0..LINES {
        let _guard = lock.lock().await.expect("lock");
        file.write_all(&line.as_bytes()[..WIDTH / 2])
            .expect("write");
        tokio::task::yield_now().await;
        file.write_all(&line.as_bytes()[WIDTH / 2..])
            .expect("write");
        file.write_all(b"\n").expect("write");
    }
    LINES
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir();
    let lock_path = dir.join(format!(
        "multiproc-file-lock-append-{}.lock",
        std::process::id()
    ));
    let data_path = dir.join(format!(
        "multiproc-file-lock-append-{}.txt",
        std::process::id()
    ));
    std::fs::write(&data_path, "")?;

    let a = multiproc::spawn((lock_path.clone(), data_path.clone(), 'a'), append_lines);
    let b = multiproc::spawn((lock_path.clone(), data_path.clone(), 'b'), append_lines);
    // The third writer: a shell loop with flock(1), if the machine has it.
    let shell = format!(
        "for i in $(seq {LINES}); do flock {lock} sh -c 'printf %s {half} >> {data}; printf %s\\\\n {half} >> {data}'; done",
        lock = lock_path.display(),
        data = data_path.display(),
        half = "s".repeat(WIDTH / 2),
    );
    let shell = Command::new("sh").arg("-c").arg(&shell).spawn();
    let (a, b) = (a.await?, b.await?);
    let shell_ok = match shell {
        Ok(mut child) => child.wait()?.success(),
        Err(_) => false,
    };
    let shell_lines = if shell_ok {
        LINES
    } else {
        println!("(no flock(1) here: two writers only)");
        0
    };
    println!("writers appended {a} + {b} + {shell_lines} lines");

    let text = std::fs::read_to_string(&data_path)?;
    std::fs::remove_file(&data_path)?;
    std::fs::remove_file(&lock_path)?;
    let lines: Vec<&str> = text.lines().collect();
    let whole = |c: char| {
        lines
            .iter()
            .filter(|l| l.len() == WIDTH && l.chars().all(|x| x == c))
            .count()
    };
    let (wa, wb, ws) = (whole('a'), whole('b'), whole('s'));
    println!(
        "file: {} lines, whole: a={wa} b={wb} shell={ws}",
        lines.len()
    );
    if wa == a && wb == b && ws == shell_lines && lines.len() == a + b + shell_lines {
        println!("no line was torn: the FileLock kept the writers apart");
        Ok(())
    } else {
        Err("torn or missing lines".into())
    }
}
