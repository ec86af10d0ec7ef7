//! Recent traces, received over OTLP gRPC from the proxies (viz is their collector
//! when no Jaeger is installed) and kept in memory within fixed bounds: at most
//! `max_traces` traces, the oldest dropped first, and at most [`MAX_SPANS`] spans a
//! trace. Queried by the API as a filtered list and as one trace's waterfall.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use serde::Serialize;

/// Spans kept per trace at most; more are counted as dropped.
pub const MAX_SPANS: usize = 256;
/// Attributes kept per span at most.
const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute value kept, in bytes.
const MAX_VALUE: usize = 512;

/// One span as viz keeps it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    /// Its trace (hex).
    pub trace_id: String,
    /// Its id (hex).
    pub span_id: String,
    /// Its parent (hex), `None` for a root.
    pub parent_id: Option<String>,
    /// Its name.
    pub name: String,
    /// `server`, `client`, or another OTLP kind.
    pub kind: &'static str,
    /// The reporting service (`service.name`).
    pub service: String,
    /// Start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// End.
    pub end_ns: u64,
    /// Whether its status is an error.
    pub error: bool,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Trace {
    spans: Vec<Span>,
}

/// A trace in a list: what its spans add up to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The trace (hex).
    pub trace_id: String,
    /// The earliest span's name and service.
    pub root: String,
    /// Its service.
    pub root_service: String,
    /// The earliest start, milliseconds since the epoch.
    pub start_ms: f64,
    /// From the earliest start to the latest end.
    pub duration_ms: f64,
    /// Spans kept.
    pub spans: usize,
    /// Whether any span failed.
    pub error: bool,
    /// The services that reported spans, sorted.
    pub services: Vec<String>,
    /// The routes its spans took, sorted.
    pub routes: Vec<String>,
}

/// What a list asks for; every given field must match some span of a trace.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A reporting service: `service.name`, or its first label (`web` for `web.shop`).
    pub service: Option<String>,
    /// A destination workload a client span went to (`mesh.dst.workload`).
    pub dst: Option<String>,
    /// A route (`mesh.route`).
    pub route: Option<String>,
    /// Only traces with an error.
    pub errors: bool,
}

impl Filter {
    fn matches(&self, t: &Trace) -> bool {
        let service_is =
            |s: &Span, want: &str| s.service == want || s.service.split('.').next() == Some(want);
        // Service and destination belong to the same span: an edge is a client span.
        let edge = match (&self.service, &self.dst) {
            (Some(src), Some(dst)) => t
                .spans
                .iter()
                .any(|s| service_is(s, src) && s.attr("mesh.dst.workload") == Some(dst)),
            (Some(src), None) => t.spans.iter().any(|s| service_is(s, src)),
            (None, Some(dst)) => t
                .spans
                .iter()
                .any(|s| s.attr("mesh.dst.workload") == Some(dst) || service_is(s, dst)),
            (None, None) => true,
        };
        edge && self
            .route
            .as_deref()
            .is_none_or(|r| t.spans.iter().any(|s| s.attr("mesh.route") == Some(r)))
            && (!self.errors || t.spans.iter().any(|s| s.error))
    }
}

/// The recent traces.
#[derive(Debug)]
pub struct Traces {
    by_id: HashMap<String, Trace>,
    /// Trace ids, oldest first (a trace's first span decides).
    order: VecDeque<String>,
    max_traces: usize,
    /// Spans refused: beyond a trace's bound, or malformed.
    pub dropped: u64,
    /// Spans received.
    pub received: u64,
}

impl Traces {
    /// An empty store of at most `max_traces` traces.
    pub fn new(max_traces: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            max_traces: max_traces.max(1),
            dropped: 0,
            received: 0,
        }
    }

    /// Keeps `span`, evicting the oldest trace when there are too many.
    pub fn insert(&mut self, span: Span) {
        self.received += 1;
        if let Some(t) = self.by_id.get_mut(&span.trace_id) {
            if t.spans.len() >= MAX_SPANS || t.spans.iter().any(|s| s.span_id == span.span_id) {
                self.dropped += 1;
            } else {
                t.spans.push(span);
            }
            return;
        }
        while self.by_id.len() >= self.max_traces {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
        self.order.push_back(span.trace_id.clone());
        self.by_id
            .insert(span.trace_id.clone(), Trace { spans: vec![span] });
    }

    /// Traces kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The newest traces matching `filter`, at most `limit`, newest first.
    pub fn list(&self, filter: &Filter, limit: usize) -> Vec<Summary> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.by_id.get(id))
            .filter(|t| filter.matches(t))
            .take(limit)
            .map(summary)
            .collect()
    }

    /// One trace's spans, earliest first, each with its depth below the root.
    pub fn trace(&self, id: &str) -> Option<Vec<(Span, usize)>> {
        let t = self.by_id.get(id)?;
        let mut spans = t.spans.clone();
        spans.sort_by_key(|s| (s.start_ns, s.end_ns));
        let parent: HashMap<&str, Option<&str>> = t
            .spans
            .iter()
            .map(|s| (s.span_id.as_str(), s.parent_id.as_deref()))
            .collect();
        let depth = |s: &Span| {
            let mut d = 0;
            let mut at = s.parent_id.as_deref();
            // Bounded: a cycle in what clients sent must not hang the query.
            while let Some(p) = at {
                match parent.get(p) {
                    Some(next) if d < MAX_SPANS => {
                        d += 1;
                        at = *next;
                    }
                    _ => break,
                }
            }
            d
        };
        Some(
            spans
                .into_iter()
                .map(|s| {
                    let d = depth(&s);
                    (s, d)
                })
                .collect(),
        )
    }
}

fn summary(t: &Trace) -> Summary {
    let first = t
        .spans
        .iter()
        .min_by_key(|s| (s.start_ns, s.parent_id.is_some()));
    let start = t.spans.iter().map(|s| s.start_ns).min().unwrap_or_default();
    let end = t.spans.iter().map(|s| s.end_ns).max().unwrap_or_default();
    let mut services: Vec<String> = t.spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    let mut routes: Vec<String> = t
        .spans
        .iter()
        .filter_map(|s| s.attr("mesh.route").map(str::to_owned))
        .collect();
    routes.sort();
    routes.dedup();
    Summary {
        trace_id: t
            .spans
            .first()
            .map(|s| s.trace_id.clone())
            .unwrap_or_default(),
        root: first.map(|s| s.name.clone()).unwrap_or_default(),
        root_service: first.map(|s| s.service.clone()).unwrap_or_default(),
        start_ms: start as f64 / 1e6,
        duration_ms: end.saturating_sub(start) as f64 / 1e6,
        spans: t.spans.len(),
        error: t.spans.iter().any(|s| s.error),
        services,
        routes,
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn text(v: Option<&AnyValue>) -> String {
    let mut s = match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(_) => "(complex value)".into(),
        None => String::new(),
    };
    if s.len() > MAX_VALUE {
        let mut cut = MAX_VALUE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The spans of an OTLP export, as viz keeps them; malformed ones (ids of the wrong
/// length) are counted in the second value.
pub fn spans_of(request: ExportTraceServiceRequest) -> (Vec<Span>, u64) {
    let mut out = Vec::new();
    let mut bad = 0;
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_else(|| "unknown".into());
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let parent_ok = span.parent_span_id.is_empty() || span.parent_span_id.len() == 8;
            if span.trace_id.len() != 16 || span.span_id.len() != 8 || !parent_ok {
                bad += 1;
                continue;
            }
            out.push(Span {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_id: (!span.parent_span_id.is_empty()).then(|| hex(&span.parent_span_id)),
                name: span.name.chars().take(200).collect(),
                kind: match span.kind {
                    1 => "internal",
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "unspecified",
                },
                service: service.clone(),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano.max(span.start_time_unix_nano),
                error: span.status.is_some_and(|s| s.code == 2),
                attributes: span
                    .attributes
                    .iter()
                    .take(MAX_ATTRIBUTES)
                    .map(|kv| (kv.key.chars().take(100).collect(), text(kv.value.as_ref())))
                    .collect(),
            });
        }
    }
    (out, bad)
}

/// The OTLP `TraceService` viz serves.
#[derive(Clone, Debug)]
pub struct Receiver(pub Arc<Mutex<Traces>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (spans, bad) = spans_of(request.into_inner());
        let mut traces = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let before = traces.dropped;
        for span in spans {
            traces.insert(span);
        }
        traces.dropped += bad;
        let rejected = traces.dropped - before;
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: "malformed spans, or more than a trace may hold".into(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

/// Serves OTLP gRPC on `listener` into `traces` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, traces: Arc<Mutex<Traces>>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server =
        TraceServiceServer::new(Receiver(traces)).max_decoding_message_size(8 * 1024 * 1024);
    if let Err(error) = tonic::transport::Server::builder()
        .add_service(server)
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(%error, "OTLP receiver stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str, parent: Option<&str>, service: &str, start: u64) -> Span {
        Span {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_id: parent.map(str::to_owned),
            name: "GET".into(),
            kind: "server",
            service: service.into(),
            start_ns: start,
            end_ns: start + 1_000_000,
            error: false,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn bounded_newest_first_and_filtered() {
        let mut t = Traces::new(2);
        t.insert(span("a", "1", None, "web.demo", 10));
        let mut client = span("a", "2", Some("1"), "web.demo", 20);
        client.kind = "client";
        client
            .attributes
            .insert("mesh.dst.workload".into(), "books".into());
        client
            .attributes
            .insert("mesh.route".into(), "GET /books".into());
        t.insert(client);
        t.insert(span("a", "3", Some("2"), "books.demo", 30));
        t.insert(span("b", "1", None, "authors.demo", 5));
        assert_eq!(t.len(), 2);
        let all = t.list(&Filter::default(), 10);
        assert_eq!(
            all.iter().map(|s| s.trace_id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(all[1].spans, 3);
        assert_eq!(all[1].services, ["books.demo", "web.demo"]);
        let edge = Filter {
            service: Some("web".into()),
            dst: Some("books".into()),
            ..Default::default()
        };
        assert_eq!(t.list(&edge, 10).len(), 1);
        let wrong = Filter {
            service: Some("books".into()),
            dst: Some("books".into()),
            ..Default::default()
        };
        assert!(
            t.list(&wrong, 10).is_empty(),
            "books made no client call to books"
        );
        let route = Filter {
            route: Some("GET /books".into()),
            ..Default::default()
        };
        assert_eq!(t.list(&route, 10)[0].trace_id, "a");
        // A third trace evicts the oldest.
        t.insert(span("c", "1", None, "web.demo", 40));
        assert!(t.trace("a").is_none());
        assert_eq!(t.len(), 2);
        // The waterfall: depths from parents.
        let mut t = Traces::new(10);
        t.insert(span("a", "3", Some("2"), "books.demo", 30));
        t.insert(span("a", "1", None, "web.demo", 10));
        t.insert(span("a", "2", Some("1"), "web.demo", 20));
        let w = t.trace("a").expect("trace");
        assert_eq!(
            w.iter()
                .map(|(s, d)| (s.span_id.as_str(), *d))
                .collect::<Vec<_>>(),
            [("1", 0), ("2", 1), ("3", 2)]
        );
        // Duplicates and spans past the bound are dropped and counted.
        t.insert(span("a", "3", Some("2"), "books.demo", 30));
        assert_eq!(t.dropped, 1);
        // An export's malformed spans are refused and counted; the rest kept.
        use opentelemetry_proto::tonic::trace::v1 as otlp;
        let good = otlp::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "GET".into(),
            kind: 2,
            start_time_unix_nano: 10,
            end_time_unix_nano: 5,
            ..Default::default()
        };
        let bad = otlp::Span {
            trace_id: vec![1; 3],
            ..good.clone()
        };
        let orphan_parent = otlp::Span {
            parent_span_id: vec![9; 4],
            ..good.clone()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                scope_spans: vec![otlp::ScopeSpans {
                    spans: vec![good, bad, orphan_parent],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (spans, refused) = spans_of(request);
        assert_eq!((spans.len(), refused), (1, 2));
        assert_eq!(spans[0].kind, "server");
        assert_eq!(spans[0].service, "unknown");
        assert_eq!(spans[0].end_ns, 10, "an end before the start is the start");
        // A parent cycle does not hang.
        t.insert(span("z", "1", Some("2"), "x", 1));
        t.insert(span("z", "2", Some("1"), "x", 2));
        assert_eq!(t.trace("z").map(|w| w.len()), Some(2));
    }
}
