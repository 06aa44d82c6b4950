//! Tracing across processes: a child's spans hang under the parent's span for that child, which
//! hangs under the span the parent spawned it from, so a request that fans out to a child reads
//! as one tree; and the pool reports a dead worker and its replacement as events.
//!
//! Both processes record with the same small subscriber; the child sends its records back as
//! its result (over the control socket), and the parent joins the two by pid.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use multiproc::{Pool, spawn};
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
