//! The HTTP API (JSON), `/metrics` for Prometheus, and the dashboard.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::query::{self, Namespaces};
use crate::store::Store;
use crate::traces::{Filter, Traces};

/// Traces a list returns at most.
const MAX_LIST: usize = 200;

/// The window used when a query names none (and for `/metrics`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

const DASHBOARD: &str = include_str!("dashboard.html");

/// A response body: whole, or a tap's stream.
type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// What the API serves from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The scraped metrics.
    pub store: Arc<Mutex<Store>>,
    /// The traces received.
    pub traces: Arc<Mutex<Traces>>,
    /// How viz reaches the proxies' tap.
    pub via: crate::tap::Via,
    /// Taps being relayed.
    pub relays: Arc<crate::tap::Relays>,
}

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, sources: Sources) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let sources = sources.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                use http_body_util::BodyExt;
                let path = req.uri().path();
                let rsp = if path == "/api/tap" {
                    tap_route(&req, &sources)
                } else if path.starts_with("/api/traces") {
                    trace_route(&req, &sources.traces).map(|b| b.boxed_unsync())
                } else {
                    route(&req, &sources.store).map(|b| b.boxed_unsync())
                };
                async move { Ok::<_, Infallible>(rsp) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// A query's parameters.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Self {
        Self(
            query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn namespaces(&self) -> Namespaces {
        match (self.get("all"), self.get("namespace")) {
            (Some("1" | "true"), _) | (_, Some("*")) => Namespaces::All,
            (_, Some(ns)) if !ns.is_empty() => Namespaces::One(ns.to_owned()),
            _ => Namespaces::One("default".into()),
        }
    }

    fn window(&self, min: Duration, retention: Duration) -> Result<Duration, String> {
        let Some(w) = self.get("window") else {
            return Ok(DEFAULT_WINDOW.min(retention));
        };
        let d = parse_duration(w)
            .ok_or_else(|| format!("invalid window {w:?}: use e.g. 30s, 1m, 5m"))?;
        if d < min || d > retention {
            return Err(format!(
                "window {w} is out of range: between {min:?} (two scrapes) and {retention:?} (the retention)"
            ));
        }
        Ok(d)
    }
}

/// Percent-decoding for query parameters (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a duration (`500ms`, `30s`, `1m`, `1m30s`), as ServiceProfiles write them.
pub fn parse_duration(s: &str) -> Option<Duration> {
    mesh_api::duration::parse(s).ok()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    rsp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// `/api/tap?namespace=NS&workload=W` and the proxies' filters (`direction`, `to`,
/// `authority`, `path`, `method`): the workload's live calls, one JSON line each,
/// until the watcher goes.
fn tap_route<B>(req: &Request<B>, sources: &Sources) -> Response<Body> {
    use http_body_util::BodyExt;
    let fail = |status, text: &str| error(status, text).map(|b| b.boxed_unsync());
    if req.method() != Method::GET {
        return fail(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let params = Params::parse(req.uri().query());
    let Some(workload) = params.get("workload").filter(|w| !w.is_empty()) else {
        return fail(StatusCode::BAD_REQUEST, "tap needs a workload");
    };
    let namespace = params
        .get("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let pods = sources
        .store
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pods_of(namespace, workload);
    if pods.is_empty() {
        return fail(
            StatusCode::NOT_FOUND,
            &format!("no meshed pods of workload {namespace}/{workload}"),
        );
    }
    let Some(slot) = sources.relays.take() else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{} taps already", crate::tap::MAX_TAPS),
        );
    };
    let limit = match params.get("limit").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => return fail(StatusCode::BAD_REQUEST, "limit: expected a positive number"),
    };
    let query = crate::tap::proxy_query(&params.0);
    let stream = crate::tap::start(pods, &sources.via, query, limit, slot);
    let mut rsp = Response::new(stream.boxed_unsync());
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    rsp
}

/// `/api/traces` (the newest traces, filtered by `service`, `dst`, `route`, `errors`,
/// at most `limit`) and `/api/traces/ID` (one trace's spans, earliest first, with
/// their depths).
fn trace_route<B>(req: &Request<B>, traces: &Mutex<Traces>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let params = Params::parse(req.uri().query());
    let traces = traces.lock().unwrap_or_else(|e| e.into_inner());
    match req.uri().path().trim_end_matches('/') {
        "/api/traces" => {
            let limit = match params.get("limit").map(str::parse::<usize>) {
                None => 50,
                Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("limit: expected 1 to {MAX_LIST}"),
                    );
                }
            };
            let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).map(str::to_owned);
            let filter = Filter {
                service: text("service"),
                dst: text("dst"),
                route: text("route"),
                errors: params
                    .get("errors")
                    .is_some_and(|v| v == "1" || v == "true"),
            };
            let items = traces.list(&filter, limit);
            json(
                StatusCode::OK,
                &serde_json::json!({"traces_kept": traces.len(), "spans_received": traces.received, "spans_dropped": traces.dropped, "items": items}),
            )
        }
        path => {
            let id = path.trim_start_matches("/api/traces/");
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return error(StatusCode::BAD_REQUEST, "a trace id is 32 hex digits");
            }
            match traces.trace(&id.to_ascii_lowercase()) {
                Some(spans) => {
                    let spans: Vec<serde_json::Value> = spans
                        .into_iter()
                        .map(|(s, depth)| {
                            let mut v = serde_json::json!(s);
                            if let Some(o) = v.as_object_mut() {
                                o.insert("depth".into(), depth.into());
                            }
                            v
                        })
                        .collect();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"trace_id": id, "spans": spans}),
                    )
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "no such trace (viz keeps only the most recent)",
                ),
            }
        }
    }
}

fn route<B>(req: &Request<B>, store: &Mutex<Store>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let params = Params::parse(req.uri().query());
    let now = Instant::now();
    let path = req.uri().path();
    // Compute under the lock; serialize after releasing it.
    let answer = {
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        let window = match params.window(store.min_window(), store.retention()) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let ns = params.namespaces();
        // The span the rates cover: less than the window while viz is young, and
        // whole minutes past the last two (see Store::covered).
        let covered = store.covered(window, now);
        let envelope = |items: serde_json::Value| serde_json::json!({ "window_seconds": window.as_secs_f64(), "covered_seconds": covered, "items": items });
        match path {
            "/api/edges" => Ok(envelope(serde_json::json!(query::edges(
                &store, &ns, window, now
            )))),
            "/api/stat" => Ok(envelope(serde_json::json!(query::stat(
                &store, &ns, window, now
            )))),
            "/api/routes" => {
                let service = params.get("service").filter(|s| !s.is_empty());
                Ok(envelope(serde_json::json!(query::routes(
                    &store, &ns, service, window, now
                ))))
            }
            "/api/authz" => {
                let workload = params.get("workload").filter(|s| !s.is_empty());
                Ok(envelope(serde_json::json!(query::authz(
                    &store, &ns, workload, window, now
                ))))
            }
            "/api/targets" => Ok(serde_json::json!(query::targets(&store))),
            "/api/series" => match series(&store, &params, now) {
                Ok(v) => Ok(v),
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            },
            "/metrics" => Err(metrics(&store, now)),
            _ => Ok(serde_json::Value::Null),
        }
    };
    match (path, answer) {
        (_, Err(text)) => {
            let mut rsp = Response::new(Full::new(Bytes::from(text)));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            rsp
        }
        ("/" | "/index.html", _) => {
            let mut rsp = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            rsp
        }
        ("/live" | "/ready", _) => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        (_, Ok(serde_json::Value::Null)) => error(
            StatusCode::NOT_FOUND,
            "not found: try /api/edges, /api/stat, /api/routes, /api/authz, /api/targets, /api/traces, /api/tap, /metrics or /",
        ),
        (_, Ok(value)) => json(StatusCode::OK, &value),
    }
}

/// Points a series has at most.
const MAX_POINTS: usize = 120;

/// `/api/series?kind=workload&namespace=NS&name=W` (or `kind=edge&src=A&dst=B`, or
/// `kind=route&service=S&route=R`), `points` (default 30) windows of `step` each
/// (default: the retention over the points, at least two scrapes), the newest last:
/// each window's rates, success and percentiles, exactly as the same window's
/// `/api/stat`, `/api/edges` or `/api/routes` says.
fn series(store: &Store, params: &Params, now: Instant) -> Result<serde_json::Value, String> {
    let points = match params.get("points").map(str::parse::<usize>) {
        None => 30,
        Some(Ok(n)) if (2..=MAX_POINTS).contains(&n) => n,
        Some(_) => return Err(format!("points: expected 2 to {MAX_POINTS}")),
    };
    let step = match params.get("step") {
        Some(s) => parse_duration(s).ok_or_else(|| format!("invalid step {s:?}: use e.g. 10s"))?,
        // What viz holds, in even steps: its age while young, then the retention.
        None => {
            let n = u32::try_from(points).unwrap_or(30);
            let held = store.age(now).min(store.retention());
            let even = Duration::from_secs((held / n).as_secs().max(1));
            even.max(store.min_window()).min(store.retention() / n)
        }
    };
    if step < store.min_window() || step * u32::try_from(points).unwrap_or(1) > store.retention() {
        return Err(format!(
            "{points} points of {step:?} do not fit: each at least {:?} (two scrapes), all within {:?} (the retention)",
            store.min_window(),
            store.retention()
        ));
    }
    let ns = params
        .get("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let namespaces = Namespaces::One(ns.to_owned());
    let want = |k: &str| {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{k}: missing"))
    };
    let kind = params.get("kind").unwrap_or("workload");
    // Which item of each window's answer is the one followed.
    let pick: Box<dyn Fn(Instant) -> Option<serde_json::Value>> = match kind {
        "workload" => {
            let name = want("name")?.to_owned();
            Box::new(move |t| {
                query::stat(store, &namespaces, step, t)
                    .into_iter()
                    .find(|w| w.name == name)
                    .map(|w| serde_json::json!(w))
            })
        }
        "edge" => {
            let (src, dst) = (want("src")?.to_owned(), want("dst")?.to_owned());
            Box::new(move |t| {
                query::edges(store, &namespaces, step, t)
                    .into_iter()
                    .find(|e| e.src == src && e.dst == dst)
                    .map(|e| serde_json::json!(e))
            })
        }
        "route" => {
            let (service, route) = (want("service")?.to_owned(), want("route")?.to_owned());
            Box::new(move |t| {
                query::routes(store, &namespaces, Some(&service), step, t)
                    .into_iter()
                    .find(|r| r.route == route)
                    .map(|r| serde_json::json!(r))
            })
        }
        other => return Err(format!("kind {other:?}: expected workload, edge or route")),
    };
    const FIELDS: [&str; 9] = [
        "rps",
        "success",
        "effective_rps",
        "actual_rps",
        "effective_success",
        "actual_success",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ];
    let mut items = Vec::with_capacity(points);
    for k in (0..points).rev() {
        let back = step * u32::try_from(k).unwrap_or(0);
        let Some(t) = now.checked_sub(back) else {
            continue;
        };
        let mut point = serde_json::Map::new();
        point.insert("seconds_ago".into(), back.as_secs_f64().into());
        if let Some(serde_json::Value::Object(item)) = pick(t) {
            for f in FIELDS {
                if let Some(v) = item.get(f) {
                    point.insert(f.into(), v.clone());
                }
            }
        }
        items.push(serde_json::Value::Object(point));
    }
    Ok(serde_json::json!({"kind": kind, "step_seconds": step.as_secs_f64(), "items": items}))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text: the default window's edges and workloads as gauges.
fn metrics(store: &Store, now: Instant) -> String {
    let window = DEFAULT_WINDOW.min(store.retention());
    let mut out = String::new();
    let edges = query::edges(store, &Namespaces::All, window, now);
    let stats = query::stat(store, &Namespaces::All, window, now);
    let _ = writeln!(
        out,
        "# HELP viz_edge_rps Requests per second from one workload to another over the last minute.\n# TYPE viz_edge_rps gauge"
    );
    let edge_labels = |e: &query::Edge| {
        format!(
            "src_namespace=\"{}\",src=\"{}\",dst_namespace=\"{}\",dst=\"{}\",secured=\"{}\"",
            escape(&e.src_namespace),
            escape(&e.src),
            escape(&e.dst_namespace),
            escape(&e.dst),
            e.secured
        )
    };
    for e in &edges {
        let _ = writeln!(out, "viz_edge_rps{{{}}} {}", edge_labels(e), e.rps);
    }
    let _ = writeln!(
        out,
        "# HELP viz_edge_success_ratio Successful fraction of an edge's requests over the last minute.\n# TYPE viz_edge_success_ratio gauge"
    );
    for e in &edges {
        if let Some(s) = e.success {
            let _ = writeln!(out, "viz_edge_success_ratio{{{}}} {s}", edge_labels(e));
        }
    }
    let _ = writeln!(
        out,
        "# HELP viz_edge_latency_ms Exact latency percentiles of an edge over the last minute.\n# TYPE viz_edge_latency_ms gauge"
    );
    for e in &edges {
        for (q, v) in [
            ("0.5", e.latency.p50_ms),
            ("0.95", e.latency.p95_ms),
            ("0.99", e.latency.p99_ms),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "viz_edge_latency_ms{{{},quantile=\"{q}\"}} {v}",
                    edge_labels(e)
                );
            }
        }
    }
    let wl = |s: &query::WorkloadStat| {
        format!(
            "namespace=\"{}\",workload=\"{}\"",
            escape(&s.namespace),
            escape(&s.name)
        )
    };
    let _ = writeln!(
        out,
        "# HELP viz_workload_rps Requests per second a workload received over the last minute.\n# TYPE viz_workload_rps gauge"
    );
    for s in &stats {
        let _ = writeln!(out, "viz_workload_rps{{{}}} {}", wl(s), s.rps);
    }
    let _ = writeln!(
        out,
        "# HELP viz_workload_success_ratio Successful fraction of a workload's inbound requests over the last minute.\n# TYPE viz_workload_success_ratio gauge"
    );
    for s in &stats {
        if let Some(v) = s.success {
            let _ = writeln!(out, "viz_workload_success_ratio{{{}}} {v}", wl(s));
        }
    }
    let _ = writeln!(
        out,
        "# HELP viz_workload_latency_ms Exact inbound latency percentiles of a workload over the last minute.\n# TYPE viz_workload_latency_ms gauge"
    );
    for s in &stats {
        for (q, v) in [
            ("0.5", s.latency.p50_ms),
            ("0.95", s.latency.p95_ms),
            ("0.99", s.latency.p99_ms),
        ] {
            if let Some(v) = v {
                let _ = writeln!(
                    out,
                    "viz_workload_latency_ms{{{},quantile=\"{q}\"}} {v}",
                    wl(s)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP viz_workload_meshed_pods Pods of a workload that run the proxy.\n# TYPE viz_workload_meshed_pods gauge"
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "viz_workload_meshed_pods{{{}}} {}",
            wl(s),
            s.meshed_pods
        );
    }
    let _ = writeln!(
        out,
        "# HELP viz_scrape_failures_total Failed scrapes of a proxy.\n# TYPE viz_scrape_failures_total counter"
    );
    for t in query::targets(store) {
        let _ = writeln!(
            out,
            "viz_scrape_failures_total{{namespace=\"{}\",pod=\"{}\"}} {}",
            escape(&t.namespace),
            escape(&t.pod),
            t.status.failures
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_windows() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(600));
        let p = Params::parse(Some("namespace=shop&window=30s&x=%2Fa+b"));
        assert!(matches!(p.namespaces(), Namespaces::One(ns) if ns == "shop"));
        assert_eq!(p.window(min, max), Ok(Duration::from_secs(30)));
        assert_eq!(p.get("x"), Some("/a b"));
        assert!(matches!(
            Params::parse(Some("all=1")).namespaces(),
            Namespaces::All
        ));
        for bad in ["window=forever", "window=1h", "window=1s"] {
            assert!(Params::parse(Some(bad)).window(min, max).is_err(), "{bad}");
        }
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(
            decode("%é%"),
            "%é%",
            "multi-byte text after % is not sliced"
        );
    }
}
