//! Trace collectors for tests: a real OTLP gRPC `TraceService` and a Zipkin v2 JSON
//! endpoint on loopback, keeping every span they receive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// A span as a collector received it, whatever the protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The trace, hex.
    pub trace_id: String,
    /// The span, hex.
    pub span_id: String,
    /// Its parent, hex; empty for a root.
    pub parent: String,
    /// `SERVER` or `CLIENT`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The reporting service.
    pub service: String,
    /// Its attributes (tags), as text.
    pub attributes: Vec<(String, String)>,
    /// Start and end, in microseconds since the epoch.
    pub start_us: u64,
    /// End.
    pub end_us: u64,
    /// Marked as an error.
    pub error: bool,
}

impl Received {
    /// The attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A running collector.
#[derive(Clone, Debug)]
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The spans of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[derive(Clone)]
struct Otlp(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                kept.push(Received {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: match span.kind {
                        2 => "SERVER".into(),
                        3 => "CLIENT".into(),
                        k => k.to_string(),
                    },
                    name: span.name,
                    service: service.clone(),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    start_us: span.start_time_unix_nano / 1000,
                    end_us: span.end_time_unix_nano / 1000,
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(kept);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts an OTLP gRPC collector on loopback.
pub async fn otlp() -> Collector {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind otlp");
    let addr = listener.local_addr().expect("addr");
    let spans = Arc::new(Mutex::new(Vec::new()));
    let service = TraceServiceServer::new(Otlp(spans.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Collector { addr, spans }
}

/// Starts a Zipkin v2 collector (`POST /api/v2/spans`, JSON) on loopback.
pub async fn zipkin() -> Collector {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind zipkin");
    let addr = listener.local_addr().expect("addr");
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/api/v2/spans";
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let parsed = body
                                .ok()
                                .filter(|_| ok)
                                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                            let status = match parsed.as_ref().and_then(|v| v.as_array()) {
                                Some(list) => {
                                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                                    kept.extend(list.iter().map(zipkin_span));
                                    202
                                }
                                None => 400,
                            };
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Collector { addr, spans }
}

fn zipkin_span(v: &serde_json::Value) -> Received {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let tags: Vec<(String, String)> = v["tags"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let start = v["timestamp"].as_u64().unwrap_or_default();
    Received {
        trace_id: s("traceId"),
        span_id: s("id"),
        parent: s("parentId"),
        kind: s("kind"),
        name: s("name"),
        service: v["localEndpoint"]["serviceName"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        error: tags.iter().any(|(k, _)| k == "error"),
        attributes: tags,
        start_us: start,
        end_us: start + v["duration"].as_u64().unwrap_or_default(),
    }
}
