//! Python's Manager tutorial: a child fills a served dict with `arg{i} -> i*i` and a served list
//! with 11..16; the parent prints both.
//!
//! ```python
//! def f(d, l):
//!     for i in range(10):
//!         d[f"arg{i}"] = i * i
//!     l.extend(range(11, 16))
//!
//! with Manager() as manager:
//!     d = manager.dict()
//!     l = manager.list()
//!     p = Process(target=f, args=(d, l)); p.start(); p.join()
//!     print(d); print(l)
//! ```
//!
//! Run with `cargo run --example manager_tutorial`.

use multiproc::manager::{List, Manager, Map};

async fn fill((d, l): (Map<String, u64>, List<u64>)) {
    for i in 0..10 {
        d.insert(format!("arg{i}"), i * i)
            .await
            .expect("manager gone");
    }
    l.extend(11..16).await.expect("manager gone");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Manager::start().await?;
    let d = manager.map::<String, u64>("d").await?;
    let l = manager.list::<u64>("l").await?;

    // The proxies are handles: passed to the child as its argument.
    multiproc::spawn((d.clone(), l.clone()), fill).await?;

    let items = d.items().await?;
    let list = l.items().await?;
    let shown: Vec<String> = items.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
    println!("{{{}}}", shown.join(", "));
    println!("{list:?}");
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|(k, v)| *k == format!("arg{}", v.isqrt())));
    assert_eq!(list, [11, 12, 13, 14, 15]);

    manager.shutdown().await?;
    Ok(())
}
