//! Sends finished spans to the collector, in batches, over OTLP gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) or as Zipkin v2
//! JSON (`POST /api/v2/spans`). A batch that cannot be delivered is dropped and
//! counted: the exporter never holds more than its queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use tokio::sync::mpsc;

use super::context::hex;
use super::{Counters, Settings, Span, Value};
use crate::vocab::Direction;

/// Spans sent in one export at most.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for company.
const LINGER: Duration = Duration::from_millis(100);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How spans are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (the OpenTelemetry collector, Jaeger, mesh-viz).
    Otlp,
    /// Zipkin's v2 JSON over HTTP.
    Zipkin,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "otlp" | "opentelemetry" | "otel" => Ok(Self::Otlp),
            "zipkin" => Ok(Self::Zipkin),
            other => Err(format!("{other:?}: expected otlp or zipkin")),
        }
    }
}

/// Why the exporter cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The collector's address does not parse.
    #[error("invalid trace collector {0:?}: {1}")]
    Collector(String, String),
}

/// Where a batch goes.
#[derive(Clone, Debug)]
enum Sink {
    Otlp(Uri),
    Zipkin { authority: String, uri: Uri },
}

/// Drains the tracer's queue into the collector.
#[derive(Debug)]
pub struct Exporter {
    rx: mpsc::Receiver<Span>,
    sink: Sink,
    resource: Resource,
    service: String,
    counters: Arc<Counters>,
}

/// `s` as a URI with a scheme; `default_path` when it names none.
fn collector_uri(s: &str, default_path: &str) -> Result<Uri, ExportError> {
    let bad = |why: &str| ExportError::Collector(s.to_string(), why.to_string());
    let text = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let uri: Uri = text
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// collectors are supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.port_u16().is_none() {
        return Err(bad("no port"));
    }
    let path = match uri.path() {
        "" | "/" => default_path,
        p => p,
    };
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| bad(&e.to_string()))
}

impl Exporter {
    /// An exporter to `settings`' collector, reading spans from `rx`.
    pub fn new(
        settings: &Settings,
        identity: Option<&str>,
        rx: mpsc::Receiver<Span>,
        counters: Arc<Counters>,
    ) -> Result<Self, ExportError> {
        let sink = match settings.protocol {
            Protocol::Otlp => Sink::Otlp(collector_uri(&settings.collector, "/")?),
            Protocol::Zipkin => {
                let uri = collector_uri(&settings.collector, "/api/v2/spans")?;
                let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
                Sink::Zipkin { authority, uri }
            }
        };
        let mut attributes = vec![kv("service.name", &Value::Str(settings.service.clone()))];
        attributes.push(kv(
            "k8s.namespace.name",
            &Value::Str(settings.namespace.clone()),
        ));
        if let Some(pod) = &settings.pod {
            attributes.push(kv("k8s.pod.name", &Value::Str(pod.clone())));
        }
        if let Some(id) = identity {
            attributes.push(kv("mesh.identity", &Value::Str(id.to_string())));
        }
        Ok(Self {
            rx,
            sink,
            resource: Resource {
                attributes,
                ..Default::default()
            },
            service: settings.service.clone(),
            counters,
        })
    }

    /// Sends batches until the tracer is dropped.
    pub async fn run(mut self) {
        let mut otlp = match &self.sink {
            Sink::Otlp(uri) => match tonic::transport::Endpoint::from_shared(uri.to_string()) {
                Ok(e) => Some(TraceServiceClient::new(
                    e.connect_timeout(Duration::from_secs(2)).connect_lazy(),
                )),
                Err(error) => {
                    tracing::warn!(%error, "trace collector unusable: spans are dropped");
                    None
                }
            },
            Sink::Zipkin { .. } => None,
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    more = self.rx.recv() => match more {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                    () = &mut linger => break,
                }
            }
            let n = batch.len() as u64;
            let sent = match (&self.sink, otlp.as_mut()) {
                (Sink::Otlp(_), Some(client)) => {
                    let request = self.otlp_request(&batch);
                    match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(status.to_string()),
                        Err(_) => Err("timed out".to_string()),
                    }
                }
                (Sink::Otlp(_), None) => Err("no collector".to_string()),
                (Sink::Zipkin { authority, uri }, _) => {
                    let body = zipkin_json(&self.service, &batch);
                    tokio::time::timeout(EXPORT_TIMEOUT, post(authority, uri, body))
                        .await
                        .unwrap_or_else(|_| Err("timed out".to_string()))
                }
            };
            match sent {
                Ok(()) => {
                    self.counters.exported.fetch_add(n, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters
                        .export_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!(%error, spans = n, "trace export failed: spans dropped");
                }
            }
            batch.clear();
        }
    }

    fn otlp_request(&self, spans: &[Span]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "mesh-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.iter().map(otlp_span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn kv(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.clone()),
        Value::Int(i) => any_value::Value::IntValue(*i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `s` as OTLP has it.
pub fn otlp_span(s: &Span) -> otlp::Span {
    otlp::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: s.trace_state.clone(),
        // The W3C flags: sampled.
        flags: 1,
        name: s.name.clone(),
        kind: match s.direction {
            Direction::Inbound => otlp::span::SpanKind::Server as i32,
            Direction::Outbound => otlp::span::SpanKind::Client as i32,
        },
        start_time_unix_nano: unix_nanos(s.start),
        end_time_unix_nano: unix_nanos(s.end),
        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
        status: Some(otlp::Status {
            code: if s.error {
                otlp::status::StatusCode::Error as i32
            } else {
                otlp::status::StatusCode::Unset as i32
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `spans` as Zipkin v2 JSON.
pub fn zipkin_json(service: &str, spans: &[Span]) -> Bytes {
    let list: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let start = unix_nanos(s.start) / 1000;
            let end = unix_nanos(s.end) / 1000;
            let mut tags = serde_json::Map::new();
            for (k, v) in &s.attributes {
                tags.insert((*k).to_string(), v.text().into());
            }
            if s.error {
                tags.insert("error".into(), "true".into());
            }
            // A 64-bit B3 trace stays 64 bits: Zipkin matches ids strictly.
            let trace_id = if s.trace_id[..8] == [0; 8] {
                hex(&s.trace_id[8..])
            } else {
                hex(&s.trace_id)
            };
            let mut span = serde_json::json!({
                "traceId": trace_id,
                "id": hex(&s.span_id),
                "kind": match s.direction {
                    Direction::Inbound => "SERVER",
                    Direction::Outbound => "CLIENT",
                },
                "name": s.name,
                "timestamp": start,
                "duration": end.saturating_sub(start).max(1),
                "localEndpoint": { "serviceName": service },
                "tags": tags,
            });
            if let (Some(p), Some(o)) = (s.parent, span.as_object_mut()) {
                o.insert("parentId".into(), hex(&p).into());
            }
            span
        })
        .collect();
    Bytes::from(serde_json::Value::Array(list).to_string())
}

/// POSTs `body` as JSON to `uri` on a connection of its own.
async fn post(authority: &str, uri: &Uri, body: Bytes) -> Result<(), String> {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/api/v2/spans", |p| p.as_str());
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if rsp.status().is_success() {
        Ok(())
    } else {
        Err(format!("collector answered {}", rsp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_parse() {
        assert_eq!(
            collector_uri("zipkin:9411", "/api/v2/spans")
                .expect("ok")
                .to_string(),
            "http://zipkin:9411/api/v2/spans"
        );
        assert_eq!(
            collector_uri("http://viz.mesh:4317", "/")
                .expect("ok")
                .to_string(),
            "http://viz.mesh:4317/"
        );
        assert!(collector_uri("https://x:1", "/").is_err());
        assert!(collector_uri("nohost", "/").is_err());
        assert!(collector_uri("a b:1", "/").is_err());
        assert!("zipkin".parse::<Protocol>().is_ok() && "jaeger".parse::<Protocol>().is_err());
    }
}
