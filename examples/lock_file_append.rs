//! Two processes append to one file under a `Lock` (the classic `multiprocessing.Lock` tutorial).
//!
//! Each child appends 500 lines of 100 characters, writing every line in two halves so that,
//! without the lock, lines from the two processes would interleave. The parent then checks the
//! file holds exactly 1000 whole lines, 500 from each child.
//! Run with `cargo run --example lock_file_append`.

use std::io::Write;

use multiproc::Lock;

const LINES: usize = 500;
const WIDTH: usize = 100;

fn append_lines((lock, path, tag): (Lock, String, char)) -> usize {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log file");
    let line: String = std::iter::repeat_n(tag, WIDTH).collect();
    for _ in 0..LINES {
        let _guard = lock.blocking_lock().expect("lock");
        file.write_all(&line.as_bytes()[..WIDTH / 2])
            .expect("write");
        std::thread::yield_now();
        file.write_all(&line.as_bytes()[WIDTH / 2..])
            .expect("write");
        file.write_all(b"\n").expect("write");
    }
    LINES
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!(
        "multiproc-lock-file-append-{}.txt",
        std::process::id()
    ));
    std::fs::write(&path, "")?;
    let path_str = path.to_string_lossy().into_owned();
    let lock = Lock::new()?;

    let a = multiproc::spawn((lock.clone(), path_str.clone(), 'a'), append_lines);
    let b = multiproc::spawn((lock.clone(), path_str.clone(), 'b'), append_lines);
    let (a, b) = (a.await?, b.await?);
    println!("children wrote {a} + {b} lines");

    let text = std::fs::read_to_string(&path)?;
    std::fs::remove_file(&path)?;
    let lines: Vec<&str> = text.lines().collect();
    let whole = |c: char| {
        lines
            .iter()
            .filter(|l| l.len() == WIDTH && l.chars().all(|x| x == c))
            .count()
    };
    let (from_a, from_b) = (whole('a'), whole('b'));
    println!(
        "file has {} lines: {from_a} whole lines from a, {from_b} from b",
        lines.len()
    );
    assert_eq!(lines.len(), 2 * LINES, "wrong number of lines");
    assert_eq!(
        (from_a, from_b),
        (LINES, LINES),
        "some lines were interleaved"
    );
    println!("ok: every line is whole");
    Ok(())
}
