//! Distributed tracing: the proxy joins the trace a request carries (W3C or B3,
//! [`context`]), or starts one, records a server span per inbound request and a
//! client span per outbound one with the mesh's attributes, and exports them over
//! OTLP gRPC or Zipkin v2 JSON ([`export`]).
//!
//! The caller's sampling decision is honoured; without one the configured rate
//! decides, and the decision goes on to the next hop either way, so a trace is
//! recorded whole or not at all. Finished spans are handed to the exporter through a
//! bounded queue: a request never waits for it, and spans it has no room for are
//! dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::HeaderMap;
use http::header::HeaderValue;
use tokio::sync::mpsc;

use crate::vocab::Direction;

pub mod context;
pub mod export;

pub use context::{Incoming, Outgoing};
pub use export::{Exporter, Protocol};

/// Finished spans waiting for the exporter at most.
const QUEUE: usize = 4096;

/// What tracing is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where spans go: `host:port`, or a URL (`http://zipkin:9411/api/v2/spans`).
    pub collector: String,
    /// How they are sent.
    pub protocol: Protocol,
    /// The share of traces started here (no decision from the caller) that are
    /// recorded, 0 to 1.
    pub sampling: f64,
    /// The `service.name` spans are reported under.
    pub service: String,
    /// The pod, for the `k8s.pod.name` resource attribute.
    pub pod: Option<String>,
    /// The pod's namespace.
    pub namespace: String,
}

/// Counts of what happened to spans, for the admin port's metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Spans the exporter delivered.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full, or their export failed.
    pub dropped: AtomicU64,
    /// Exports that failed.
    pub export_failures: AtomicU64,
}

/// A span attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A number.
    Int(i64),
}

impl Value {
    /// The value as text (Zipkin's tags are strings).
    pub fn text(&self) -> String {
        match self {
            Self::Str(s) => s.clone(),
            Self::Int(i) => i.to_string(),
        }
    }
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct Span {
    /// Its trace.
    pub trace_id: [u8; 16],
    /// Its own id.
    pub span_id: [u8; 8],
    /// The caller's span, if it had one.
    pub parent: Option<[u8; 8]>,
    /// Inbound: a server span; outbound: a client span.
    pub direction: Direction,
    /// `METHOD route`.
    pub name: String,
    /// When the request arrived.
    pub start: SystemTime,
    /// When its response ended.
    pub end: SystemTime,
    /// The mesh's attributes (route, identities, status, retries, endpoint).
    pub attributes: Vec<(&'static str, Value)>,
    /// Whether the request failed (5xx, a gRPC error, a stream cut short).
    pub error: bool,
    /// The `tracestate` it came with, passed on to the collector.
    pub trace_state: String,
}

/// A request's place in its trace.
#[derive(Debug)]
pub struct Traced {
    /// What goes on to the next hop.
    pub out: Outgoing,
    /// When it started.
    pub start: SystemTime,
    /// Its `x-request-id`.
    pub request_id: Option<Box<str>>,
    /// Its `tracestate`, when recorded.
    pub trace_state: Option<Box<str>>,
}

/// The proxy's tracer: decides, propagates, and queues spans for export.
#[derive(Debug)]
pub struct Tracer {
    /// Sampled when a random `u64` is below this.
    threshold: u64,
    always: bool,
    tx: mpsc::Sender<Span>,
    counters: Arc<Counters>,
}

impl Tracer {
    /// A tracer per `settings` and the exporter to run beside it (a task of its own:
    /// [`Exporter::run`]); `identity` is this proxy's, a resource attribute.
    pub fn new(
        settings: &Settings,
        identity: Option<&str>,
        counters: Arc<Counters>,
    ) -> Result<(Arc<Self>, Exporter), export::ExportError> {
        let (tracer, rx) = Self::queued(settings.sampling, counters.clone());
        let exporter = Exporter::new(settings, identity, rx, counters)?;
        Ok((tracer, exporter))
    }

    /// A tracer whose spans tests read from the returned queue.
    pub fn for_tests(sampling: f64) -> (Arc<Self>, mpsc::Receiver<Span>) {
        Self::queued(sampling, Arc::default())
    }

    /// A tracer sampling new traces at `sampling` and the receiving end of its queue.
    fn queued(sampling: f64, counters: Arc<Counters>) -> (Arc<Self>, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rate = sampling.clamp(0.0, 1.0);
        let tracer = Arc::new(Self {
            threshold: (rate * u64::MAX as f64) as u64,
            always: rate >= 1.0,
            tx,
            counters,
        });
        (tracer, rx)
    }

    /// The spans' counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Joins the trace `headers` carry (or starts one, sampled at the configured
    /// rate), gives the request this proxy's span as the next hop's parent, and sets
    /// `x-request-id` when the request has none.
    pub fn start(&self, headers: &mut HeaderMap) -> Traced {
        let incoming = context::extract(headers);
        let (trace_id, parent) = match incoming.and_then(|i| i.ids) {
            Some((trace, span)) => (trace, Some(span)),
            None => (context::new_trace_id(), None),
        };
        let sampled = match incoming.and_then(|i| i.sampled) {
            Some(decision) => decision,
            None => self.always || fastrand::u64(..) < self.threshold,
        };
        let out = Outgoing {
            trace_id,
            span_id: context::new_span_id(),
            parent,
            sampled,
        };
        context::inject(headers, &out, incoming.as_ref());
        let request_id = match headers.get(&context::REQUEST_ID) {
            Some(v) => sampled.then(|| v.to_str().ok().map(Box::from)).flatten(),
            None => {
                let id = context::new_request_id();
                if let Ok(v) = HeaderValue::try_from(id.as_str()) {
                    headers.insert(context::REQUEST_ID, v);
                }
                sampled.then(|| id.into())
            }
        };
        let trace_state = sampled
            .then(|| {
                headers
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .map(Box::from)
            })
            .flatten();
        Traced {
            out,
            start: SystemTime::now(),
            request_id,
            trace_state,
        }
    }

    /// Queues `span` for export without waiting; counted as dropped when the queue
    /// is full.
    pub fn finish(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_decision_is_honoured_and_passed_on() {
        let (never, _rx) = Tracer::for_tests(0.0);
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let t = never.start(&mut h);
        assert!(t.out.sampled, "the caller sampled it");
        assert_eq!(
            t.out.parent.map(|p| context::hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let sent = h["traceparent"].to_str().expect("ascii").to_string();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "this proxy's span goes on"
        );
        assert!(h.contains_key("x-request-id"));
        assert!(t.request_id.is_some());

        let (always, _rx) = Tracer::for_tests(1.0);
        let mut h = HeaderMap::new();
        h.insert("b3", HeaderValue::from_static("0"));
        let t = always.start(&mut h);
        assert!(!t.out.sampled, "the caller declined");
        assert!(h["b3"].to_str().expect("ascii").ends_with("-0"));
    }

    #[test]
    fn without_a_decision_the_rate_decides() {
        let (half, _rx) = Tracer::for_tests(0.5);
        let sampled = (0..2000)
            .filter(|_| half.start(&mut HeaderMap::new()).out.sampled)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 2000");
        let (never, _rx) = Tracer::for_tests(0.0);
        assert!(!(0..200).any(|_| never.start(&mut HeaderMap::new()).out.sampled));
        // An existing request id is kept.
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        let (always, _rx) = Tracer::for_tests(1.0);
        let t = always.start(&mut h);
        assert_eq!(t.request_id.as_deref(), Some("abc"));
        assert_eq!(h["x-request-id"], "abc");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (t, _rx) = Tracer::for_tests(1.0);
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            direction: Direction::Inbound,
            name: "GET".into(),
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: vec![],
            error: false,
            trace_state: String::new(),
        };
        for _ in 0..QUEUE + 3 {
            t.finish(span.clone());
        }
        assert_eq!(t.counters().dropped.load(Ordering::Relaxed), 3);
    }
}
