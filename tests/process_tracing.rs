//! Tracing across processes: a child's spans hang under the parent's span for that child, which
//! hangs under the span the parent spawned it from, so a request that fans out to a child reads
//! as one tree; pool tasks hang under the span they were submitted from with no code in the
//! task; a child whose handle is dropped unjoined still has its exit recorded (by the reaper);
//! and the pool reports a dead worker and its replacement as events.
//!
//! Both processes record with the same small subscriber; the child sends its records back as
//! its result (over the control socket), and the parent joins the two by pid.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use multiproc::{Builder, Pool, spawn};
use multiproc_suite::{eventually, within};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Instrument, Metadata, Subscriber};

/// A span as recorded in one process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpanRecord {
    id: u64,
    parent: Option<u64>,
    name: String,
    fields: BTreeMap<String, String>,
}

/// An event as recorded in one process: its message and the span it happened in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventRecord {
    span: Option<u64>,
    message: String,
}

/// Records every span and event of the process.
#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<Vec<SpanRecord>>,
    events: Mutex<Vec<EventRecord>>,
    /// Each span's metadata, for `Span::current()`.
    metadata: Mutex<BTreeMap<u64, &'static Metadata<'static>>>,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

fn current() -> Option<u64> {
    STACK.with_borrow(|s| s.last().copied())
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

/// The recorder installed as this process's global subscriber.
struct Installed(&'static Recorder);

impl Subscriber for Installed {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed) + 1;
        let parent = if attrs.is_root() {
            None
        } else {
            attrs.parent().map(Id::into_u64).or_else(current)
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.metadata.lock().unwrap().insert(id, attrs.metadata());
        self.0.spans.lock().unwrap().push(SpanRecord {
            id,
            parent,
            name: attrs.metadata().name().into(),
            fields,
        });
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().unwrap();
        if let Some(s) = spans.iter_mut().find(|s| s.id == span.into_u64()) {
            values.record(&mut Fields(&mut s.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn current_span(&self) -> tracing_core::span::Current {
        match current().and_then(|id| Some((id, *self.0.metadata.lock().unwrap().get(&id)?))) {
            Some((id, metadata)) => tracing_core::span::Current::new(Id::from_u64(id), metadata),
            None => tracing_core::span::Current::none(),
        }
    }
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let span = event.parent().map(Id::into_u64).or_else(current);
        let message = fields.remove("message").unwrap_or_default();
        self.0
            .events
            .lock()
            .unwrap()
            .push(EventRecord { span, message });
    }
    fn enter(&self, span: &Id) {
        STACK.with_borrow_mut(|s| s.push(span.into_u64()));
    }
    fn exit(&self, span: &Id) {
        STACK.with_borrow_mut(|s| {
            if let Some(at) = s.iter().rposition(|&i| i == span.into_u64()) {
                s.remove(at);
            }
        });
    }
}

/// Installs a recorder as the process's subscriber.
fn install() -> &'static Recorder {
    let recorder: &'static Recorder = Box::leak(Box::default());
    tracing::subscriber::set_global_default(Installed(recorder)).expect("one subscriber");
    recorder
}

/// The child: records its own spans under the root span `child_span` gives (which names the
/// parent's span), and sends them back with its pid.
fn traced_child(steps: u32) -> (u32, Vec<SpanRecord>) {
    let recorder = install(); // a child never runs `main`: it installs its own subscriber
    {
        let _root = multiproc::process::child_span().entered();
        for step in 0..steps {
            let _work = tracing::info_span!("work", step).entered();
            tracing::info!("working");
        }
    }
    let spans = recorder.spans.lock().unwrap().clone();
    (std::process::id(), spans)
}

fn one<'a>(
    spans: &'a [SpanRecord],
    what: &str,
    pred: impl Fn(&SpanRecord) -> bool,
) -> &'a SpanRecord {
    let found: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "expected one {what} in {spans:#?}");
    found[0]
}

/// A pool worker's recorder, installed by the pool's initializer.
static WORKER: OnceLock<&'static Recorder> = OnceLock::new();

fn install_in_worker(_: ()) {
    let _ = WORKER.set(install());
}

/// Runs `f` inside a fresh `request` span (spawning needs no await).
fn request_in<T>(f: impl FnOnce() -> T) -> T {
    tracing::info_span!("request", id = 8).in_scope(f)
}

/// A pool task: a span of its own (under whatever the worker put around it), then the
/// worker's pid and spans so far.
fn traced_task(x: u32) -> (u32, Vec<SpanRecord>) {
    {
        let _work = tracing::info_span!("task-work", x).entered();
    }
    let spans = WORKER.get().expect("initializer ran").spans.lock().unwrap();
    (std::process::id(), spans.clone())
}

fn sleep_long(_: ()) {
    std::thread::sleep(std::time::Duration::from_secs(600));
}

/// A task that ends its worker process.
fn exit_with(code: i32) {
    std::process::exit(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanned_out_trace_reads_as_one_tree_and_the_pool_reports_worker_deaths() {
    let recorder = install();
    let me = std::process::id();

    // A request span; the child is spawned (and joined) inside it.
    let request = tracing::info_span!("request", id = 7);
    let (child_pid, child_spans) = within(
        "traced child",
        async { spawn(2, traced_child).await }.instrument(request),
    )
    .await
    .unwrap();

    let mine = recorder.spans.lock().unwrap().clone();
    let request = one(&mine, "request span", |s| s.name == "request");
    let for_child = one(&mine, "multiproc.child span for the child", |s| {
        s.name == "multiproc.child" && s.fields.get("pid") == Some(&child_pid.to_string())
    });
    assert_eq!(for_child.parent, Some(request.id), "{mine:#?}");
    assert!(
        for_child.fields["function"].contains("traced_child"),
        "{for_child:?}"
    );
    // How the child ended is an event in its span.
    let events = recorder.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.span == Some(for_child.id) && e.message.contains("returned")),
        "{events:#?}"
    );

    // In the child: its root names the parent's span, and its work hangs under its root.
    let root = one(&child_spans, "multiproc.remote root", |s| {
        s.name == "multiproc.remote"
    });
    assert_eq!(root.parent, None);
    assert_eq!(root.fields["parent.pid"], me.to_string(), "{root:?}");
    assert_eq!(
        root.fields["parent.span"],
        for_child.id.to_string(),
        "{root:?}"
    );
    let work: Vec<_> = child_spans.iter().filter(|s| s.name == "work").collect();
    assert_eq!(work.len(), 2, "{child_spans:#?}");
    assert!(
        work.iter().all(|w| w.parent == Some(root.id)),
        "{child_spans:#?}"
    );

    // Joined by pid, the path from a child's work span up to the request is one chain.
    let mut path = vec![];
    let mut at = (child_pid, work[0].id);
    loop {
        let spans = if at.0 == me { &mine } else { &child_spans };
        let span = spans.iter().find(|s| s.id == at.1).unwrap();
        path.push(span.name.clone());
        at = match (span.parent, span.name.as_str()) {
            (Some(p), _) => (at.0, p),
            (None, "multiproc.remote") => (
                span.fields["parent.pid"].parse().unwrap(),
                span.fields["parent.span"].parse().unwrap(),
            ),
            (None, _) => break,
        };
    }
    assert_eq!(
        path,
        ["work", "multiproc.remote", "multiproc.child", "request"]
    );

    // Pool tasks submitted inside a request hang under it, with no tracing code in the task.
    let pool = Pool::builder()
        .workers(1)
        .initializer((), install_in_worker)
        .build()
        .unwrap();
    let request = tracing::info_span!("pool-request");
    let results = within(
        "traced pool map",
        async { pool.map(traced_task, 0..2u32).await }.instrument(request.clone()),
    )
    .await
    .unwrap();
    let request_id = request.id().unwrap().into_u64();
    let (worker_pid, worker_spans) = results.last().unwrap().clone();
    assert_ne!(worker_pid, me);
    let tasks: Vec<_> = worker_spans
        .iter()
        .filter(|s| s.name == "multiproc.task")
        .collect();
    assert!(!tasks.is_empty(), "{worker_spans:#?}");
    for task in &tasks {
        assert_eq!(task.fields["parent.pid"], me.to_string(), "{task:?}");
        assert_eq!(
            task.fields["parent.span"],
            request_id.to_string(),
            "{task:?}"
        );
    }
    let work: Vec<_> = worker_spans
        .iter()
        .filter(|s| s.name == "task-work")
        .collect();
    assert_eq!(work.len(), 2, "{worker_spans:#?}");
    assert!(
        work.iter()
            .all(|w| tasks.iter().any(|t| w.parent == Some(t.id))),
        "{worker_spans:#?}"
    );
    pool.close();
    within("traced pool join", pool.join()).await.unwrap();

    // A child whose handle is dropped unjoined (detached, or killed by kill_on_drop): its
    // exit is still an event in its span, recorded once the reaper reaps it.
    let quick = request_in(|| spawn((), |()| ()));
    let killed = request_in(|| {
        Builder::new()
            .kill_on_drop(true)
            .spawn((), sleep_long)
            .unwrap()
    });
    let span_of = |pid: Option<u32>| {
        let spans = recorder.spans.lock().unwrap().clone();
        one(&spans, "multiproc.child span", |s| {
            s.name == "multiproc.child" && s.fields.get("pid") == Some(&pid.unwrap().to_string())
        })
        .id
    };
    let (quick_span, killed_span) = (span_of(quick.pid()), span_of(killed.pid()));
    drop((quick, killed));
    let exited_in = |span: u64| {
        recorder
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.span == Some(span) && e.message.contains("reaped unjoined"))
    };
    assert!(
        eventually(|| exited_in(quick_span)).await,
        "{:#?}",
        recorder.events.lock().unwrap()
    );
    assert!(
        eventually(|| exited_in(killed_span)).await,
        "{:#?}",
        recorder.events.lock().unwrap()
    );

    // A pool worker that dies is an event, and so is its replacement.
    let pool = Pool::new(1).unwrap();
    let died = within("task that kills its worker", pool.apply(exit_with, 3))
        .await
        .unwrap_err();
    assert!(died.is_worker_died(), "{died}");
    let saw = |text: &str| {
        recorder
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.message.contains(text))
    };
    assert!(eventually(|| saw("pool worker died")).await);
    assert!(eventually(|| saw("replacing a pool worker")).await);
    assert_eq!(
        within("pool still serves", pool.apply(|x: u32| x + 1, 1))
            .await
            .unwrap(),
        2
    );
    pool.close();
    within("pool join", pool.join()).await.unwrap();
    assert!(saw("pool closed"));
}
