//! Ten processes print under one `Lock`; no line is ever interleaved.
//!
//! Each child prints five lines one character at a time (flushing after each, so without the
//! lock the characters of different processes would mix) and mirrors every character into a
//! shared log file. The parent checks the log holds 50 whole lines.
//! Run with `cargo run --example lock_print`.

use std::io::Write;

use multiproc::Lock;

const CHILDREN: usize = 10;
const LINES: usize = 5;

fn print_lines((lock, log, id): (Lock, String, usize)) {
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open log");
    for n in 0..LINES {
        let line = format!(
            "hello from process {id} ({}), line {n}\n",
            std::process::id()
        );
        let _guard = lock.blocking_lock().expect("lock");
        let mut out = std::io::stdout().lock();
        for ch in line.as_bytes() {
            out.write_all(std::slice::from_ref(ch)).expect("print");
            out.flush().expect("flush");
            log.write_all(std::slice::from_ref(ch)).expect("log");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = std::env::temp_dir().join(format!("multiproc-lock-print-{}.txt", std::process::id()));
    std::fs::write(&log, "")?;
    let log_str = log.to_string_lossy().into_owned();
    let lock = Lock::new()?;
    let children: Vec<_> = (0..CHILDREN)
        .map(|id| multiproc::spawn((lock.clone(), log_str.clone(), id), print_lines))
        .collect();
    for child in children {
        child.await?;
    }
    let text = std::fs::read_to_string(&log)?;
    std::fs::remove_file(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), CHILDREN * LINES, "wrong number of lines");
    for line in &lines {
        let ok = line.starts_with("hello from process ")
            && line.matches("hello").count() == 1
            && line.contains(", line ");
        assert!(ok, "interleaved line: {line:?}");
    }
    println!("ok: {} lines, none interleaved", lines.len());
    Ok(())
}
