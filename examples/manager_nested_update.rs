//! Python's best-known Manager pitfall, shown working: ten processes append to lists *inside* a
//! served map, and every append is there.
//!
//! In Python, `d["evens"].append(x)` on a `manager.dict()` appends to a copy and is silently
//! lost (the docs' workaround is to re-assign under a lock of your own). Here reads return
//! copies, and `update` runs the append inside the manager, atomically, so nothing is lost
//! however many processes append at once.
//!
//! Run with `cargo run --example manager_nested_update`.

use multiproc::manager::{Manager, Map};

const PROCESSES: u32 = 10;
const PER_PROCESS: u32 = 100;

/// Runs inside the manager: the nested mutation, on the stored list.
fn append(list: &mut Vec<u32>, x: u32) {
    list.push(x);
}

async fn worker((lists, who): (Map<String, Vec<u32>>, u32)) {
    for i in 0..PER_PROCESS {
        let x = who * PER_PROCESS + i;
        let key = if x.is_multiple_of(2) { "evens" } else { "odds" };
        lists.update(key, append, x).await.expect("manager gone");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::start().await?;
    let lists = manager.map::<String, Vec<u32>>("lists").await?;

    let workers: Vec<_> = (0..PROCESSES)
        .map(|who| multiproc::spawn((lists.clone(), who), worker))
        .collect();
    for w in workers {
        w.await?;
    }

    let mut all = Vec::new();
    for (key, list) in lists.items().await? {
        println!("{key}: {} items", list.len());
        all.extend(list);
    }
    all.sort();
    let expected: Vec<u32> = (0..PROCESSES * PER_PROCESS).collect();
    assert_eq!(all, expected, "an append was lost");
    println!(
        "all {} appends from {PROCESSES} processes are there",
        all.len()
    );
    manager.shutdown().await?;
    Ok(())
}
