//! `mesh viz edges|stat|routes|authz`: tables (or JSON) from mesh-viz's API; `mesh viz
//! tap`: a workload's live calls, streamed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Output formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// More columns: identities, effective vs actual.
    Wide,
    /// The API's items as JSON.
    Json,
}

/// What to ask viz for.
#[derive(Clone, Debug)]
pub enum Query {
    /// Edges between workloads.
    Edges,
    /// Per-workload stats.
    Stat,
    /// Per-route stats of one service.
    Routes(String),
    /// Authorization decisions of one workload, by port and policy.
    Authz(String),
}

/// Parses the resource argument of each command: only deployments (workloads) for
/// edges and stat, `svc/NAME` for routes.
pub fn parse_resource(command: &str, resource: &str) -> anyhow::Result<Query> {
    let workload = matches!(
        resource,
        "deploy" | "deployment" | "deployments" | "deploy/" | "workload" | "workloads"
    );
    match command {
        "edges" if workload => Ok(Query::Edges),
        "stat" if workload => Ok(Query::Stat),
        "routes" => match resource.split_once('/') {
            Some(("svc" | "service" | "services", name)) if !name.is_empty() => {
                Ok(Query::Routes(name.to_owned()))
            }
            _ => bail!("routes needs a service: mesh viz routes svc/NAME"),
        },
        "authz" => match resource.split_once('/') {
            Some(("deploy" | "deployment" | "deployments" | "workload", name))
                if !name.is_empty() =>
            {
                Ok(Query::Authz(name.to_owned()))
            }
            _ => bail!("authz needs a workload: mesh viz authz deploy/NAME"),
        },
        _ => bail!("unsupported resource {resource:?} for {command}: use deployment"),
    }
}

/// Where mesh-viz is: an address, or a Service reached through the Kubernetes API's
/// service proxy (the current kubeconfig's cluster).
#[derive(Clone, Debug)]
pub enum Target {
    /// Directly.
    Addr(SocketAddr),
    /// `mesh-viz` in this namespace, through the API server.
    Kubernetes {
        /// mesh-viz's namespace.
        namespace: String,
    },
}

/// The API server's path to mesh-viz's `path` (which carries its query string).
pub fn service_proxy_path(namespace: &str, path: &str) -> String {
    format!(
        "/api/v1/namespaces/{}/services/mesh-viz:8084/proxy{path}",
        encode(namespace)
    )
}

/// GETs `path` from mesh-viz through the API server's service proxy.
pub async fn get_via(client: kube::Client, namespace: &str, path: &str) -> anyhow::Result<Value> {
    let req = http::Request::get(service_proxy_path(namespace, path)).body(Vec::new())?;
    let text = client.request_text(req).await.with_context(|| {
        format!("cannot reach mesh-viz through the Kubernetes API (service mesh-viz in namespace {namespace}): is it installed?")
    })?;
    serde_json::from_str(&text).context("mesh-viz answered something that is not JSON")
}

async fn fetch(target: &Target, path: &str) -> anyhow::Result<Value> {
    match target {
        Target::Addr(addr) => get(*addr, path).await,
        Target::Kubernetes { namespace } => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API: set KUBECONFIG, or use --viz-addr")?;
            get_via(client, namespace, path).await
        }
    }
}

/// Fetches `query` from viz at `target` and prints it.
pub async fn run(
    target: Target,
    query: Query,
    namespace: Option<&str>,
    all: bool,
    window: &str,
    output: Output,
) -> anyhow::Result<()> {
    let ns = if all {
        "all=1".to_owned()
    } else {
        format!("namespace={}", encode(namespace.unwrap_or("default")))
    };
    let window = encode(window);
    let path = match &query {
        Query::Edges => format!("/api/edges?{ns}&window={window}"),
        Query::Stat => format!("/api/stat?{ns}&window={window}"),
        Query::Routes(svc) => {
            format!("/api/routes?{ns}&service={}&window={window}", encode(svc))
        }
        Query::Authz(workload) => {
            format!(
                "/api/authz?{ns}&workload={}&window={window}",
                encode(workload)
            )
        }
    };
    let body = fetch(&target, &path).await?;
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let wide = output == Output::Wide;
    let table = match query {
        Query::Edges => edges(&items, wide),
        Query::Stat => stat(&items),
        Query::Routes(_) => routes(&items, wide),
        Query::Authz(_) => authz(&items, wide),
    };
    if table.len() <= 1 {
        eprintln!("no traffic in the last {window}");
        return Ok(());
    }
    print!("{}", render(&table));
    Ok(())
}

/// What `mesh viz tap` selects, beyond the workload.
#[derive(Clone, Debug, Default)]
pub struct TapFilter {
    /// Outbound calls answered by this workload (`deploy/NAME` or `NAME`).
    pub to: Option<String>,
    /// Paths starting with this.
    pub path: Option<String>,
    /// This method.
    pub method: Option<String>,
    /// This authority.
    pub authority: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
}

impl TapFilter {
    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.to.is_none()
            && self.path.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.direction.is_none()
    }

    /// The query string viz's `/api/tap` takes.
    fn query(&self) -> anyhow::Result<String> {
        let mut q = Vec::new();
        if let Some(d) = &self.direction {
            if !matches!(d.as_str(), "inbound" | "outbound") {
                bail!("--direction {d:?}: expected inbound or outbound");
            }
            q.push(format!("direction={d}"));
        }
        if let Some(to) = &self.to {
            q.push(format!(
                "to={}",
                encode(&tap_workload(to).or_else(|_| {
                    if to.contains('/') {
                        bail!("--to {to:?}: expected deploy/NAME")
                    } else {
                        Ok(to.clone())
                    }
                })?)
            ));
        }
        for (k, v) in [
            ("path", &self.path),
            ("method", &self.method),
            ("authority", &self.authority),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        Ok(q.join("&"))
    }
}

/// The workload of `tap`'s resource: `deploy/NAME`.
pub fn tap_workload(resource: &str) -> anyhow::Result<String> {
    match resource.split_once('/') {
        Some(("deploy" | "deployment" | "deployments" | "workload", name)) if !name.is_empty() => {
            Ok(name.to_owned())
        }
        _ => bail!("tap needs a workload: mesh viz tap deploy/NAME"),
    }
}

/// One tapped call as a line: Linkerd's `req`/`rsp` pair, folded into one.
pub fn tap_line(call: &Value) -> String {
    let s = |k: &str| call[k].as_str().unwrap_or("-").to_owned();
    if let Some(e) = call["error"].as_str() {
        return format!("error pod={} {e}", s("pod"));
    }
    if let Some(pods) = call["tapping"].as_array() {
        let names: Vec<&str> = pods.iter().filter_map(Value::as_str).collect();
        return format!("tapping {}", names.join(", "));
    }
    let peer = match call["direction"].as_str() {
        Some("inbound") => format!("src={} client_id={}", s("client_addr"), s("client_id")),
        _ => format!("dst={} server_id={}", s("endpoint"), s("server_id")),
    };
    format!(
        "{dir} pod={pod} {peer} tls={tls} :method={method} :authority={authority} :path={path} :status={status} latency={latency}ms bytes={bytes} route={route}{grpc}",
        dir = if call["direction"] == "inbound" {
            "in "
        } else {
            "out"
        },
        pod = s("pod"),
        tls = s("tls"),
        method = s("method"),
        authority = s("authority"),
        path = s("path"),
        status = call["status"],
        latency = call["latency_ms"],
        bytes = call["bytes"],
        route = s("route"),
        grpc = call["grpc_status"]
            .as_u64()
            .map(|g| format!(" grpc-status={g}"))
            .unwrap_or_default(),
    )
}

/// Streams `workload`'s live calls from viz at `target` and prints each (as a line, or
/// as JSON), until `max` calls or Ctrl-C.
pub async fn tap(
    target: Target,
    namespace: &str,
    workload: &str,
    filter: &TapFilter,
    output: Output,
    max: Option<u64>,
) -> anyhow::Result<()> {
    let mut path = format!(
        "/api/tap?namespace={}&workload={}",
        encode(namespace),
        encode(workload)
    );
    let q = filter.query()?;
    if !q.is_empty() {
        path.push('&');
        path.push_str(&q);
    }
    let mut seen = 0;
    let mut print = |line: &str| -> bool {
        let Ok(call) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        let is_call = call.get("status").is_some();
        if output == Output::Json {
            println!("{call}");
        } else {
            println!("{}", tap_line(&call));
        }
        if is_call {
            seen += 1;
        }
        max.is_some_and(|m| seen >= m)
    };
    match target {
        Target::Addr(addr) => {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let uri: http::Uri = format!("http://{addr}{path}").parse()?;
            let rsp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
                .await
                .map_err(|_| anyhow::anyhow!("mesh-viz at {addr} did not answer within 10s"))?
                .with_context(|| format!("cannot reach mesh-viz at {addr}: is it running?"))?;
            let status = rsp.status();
            let mut body = rsp.into_body();
            if !status.is_success() {
                let text = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                bail!(
                    "mesh-viz: {status}: {}",
                    String::from_utf8_lossy(&text).trim()
                );
            }
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the tap stream broke")?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if print(String::from_utf8_lossy(&line).trim()) {
                        return Ok(());
                    }
                }
            }
            bail!("mesh-viz ended the tap")
        }
        Target::Kubernetes { namespace: viz_ns } => {
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API: set KUBECONFIG, or use --viz-addr")?;
            tap_via(client, &viz_ns, &path, print).await
        }
    }
}

/// Streams viz's tap at `path` through the API server's service proxy, handing each
/// line to `on_line` until it says stop (`true`) or the stream ends.
pub async fn tap_via(
    client: kube::Client,
    viz_ns: &str,
    path: &str,
    mut on_line: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use futures_util::io::AsyncBufReadExt;
    let req = http::Request::get(service_proxy_path(viz_ns, path)).body(Vec::new())?;
    let stream = client.request_stream(req).await.with_context(|| {
        format!("cannot reach mesh-viz through the Kubernetes API (service mesh-viz in namespace {viz_ns})")
    })?;
    let mut lines = stream.lines();
    while let Some(line) = lines.next().await {
        if on_line(line.context("the tap stream broke")?.trim()) {
            return Ok(());
        }
    }
    bail!("mesh-viz ended the tap")
}

/// Percent-encodes a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The per-workload table of `namespace` over `window`, as `mesh viz stat` prints it.
pub async fn stat_table(addr: SocketAddr, namespace: &str, window: &str) -> anyhow::Result<String> {
    let body = get(
        addr,
        &format!(
            "/api/stat?namespace={}&window={}",
            encode(namespace),
            encode(window)
        ),
    )
    .await?;
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(render(&stat(&items)))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Value> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{addr}{path}").parse()?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("mesh-viz at {addr} did not answer within 10s"))?
        .with_context(|| {
            format!("cannot reach mesh-viz at {addr}: is it running? (`mesh demo` starts one; --viz-addr points elsewhere)")
        })?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .with_context(|| format!("mesh-viz at {addr} answered something that is not JSON"))?;
    if !status.is_success() {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("error");
        bail!("mesh-viz: {msg}");
    }
    Ok(value)
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn pct(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_f64)
        .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
}

fn rate(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_f64)
        .map_or("-".into(), |x| format!("{x:.1}"))
}

fn ms(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_f64).map_or("-".into(), |x| {
        if x < 10.0 {
            format!("{x:.2}ms")
        } else {
            format!("{x:.0}ms")
        }
    })
}

fn edges(items: &[Value], wide: bool) -> Vec<Vec<String>> {
    let mut head = vec![
        "SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "RPS", "SUCCESS", "P50", "P99",
    ];
    if wide {
        head.extend(["SRC_ID", "DST_ID"]);
    }
    let mut t = vec![head.into_iter().map(String::from).collect()];
    for e in items {
        let secured = if e.get("secured").and_then(Value::as_bool) == Some(true) {
            "√".to_owned()
        } else {
            s(e, "reason")
        };
        let mut row = vec![
            s(e, "src"),
            s(e, "dst"),
            s(e, "src_namespace"),
            s(e, "dst_namespace"),
            secured,
            rate(e, "rps"),
            pct(e, "success"),
            ms(e, "p50_ms"),
            ms(e, "p99_ms"),
        ];
        if wide {
            row.push(s(e, "src_identity"));
            row.push(s(e, "dst_identity"));
        }
        t.push(row);
    }
    t
}

fn stat(items: &[Value]) -> Vec<Vec<String>> {
    let head = [
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ];
    let mut t = vec![head.into_iter().map(String::from).collect()];
    for w in items {
        let n = |k: &str| w.get(k).and_then(Value::as_u64).unwrap_or(0);
        t.push(vec![
            s(w, "name"),
            format!("{}/{}", n("meshed_pods"), n("pods")),
            pct(w, "success"),
            rate(w, "rps"),
            ms(w, "p50_ms"),
            ms(w, "p95_ms"),
            ms(w, "p99_ms"),
            n("tcp_connections").to_string(),
        ]);
    }
    t
}

/// `mesh viz authz`: each policy with its allowed and denied counts and the
/// identities it denied (all of them with `-o wide`, else the first three).
fn authz(items: &[Value], wide: bool) -> Vec<Vec<String>> {
    let head = [
        "PORT",
        "KIND",
        "POLICY",
        "ALLOWED",
        "DENIED",
        "UNAUTHENTICATED",
        "RATE_LIMITED",
        "DENIED_CLIENTS",
    ];
    let mut t = vec![head.into_iter().map(String::from).collect()];
    let n = |r: &Value, k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0).to_string();
    for r in items {
        let clients: Vec<String> = r
            .get("denied_clients")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| Some(format!("{} ({})", c.get(0)?.as_str()?, c.get(1)?.as_u64()?)))
            .collect();
        let shown = if wide || clients.len() <= 3 {
            clients.join(", ")
        } else {
            format!("{}, … {} more", clients[..3].join(", "), clients.len() - 3)
        };
        t.push(vec![
            n(r, "port"),
            s(r, "kind"),
            s(r, "name"),
            n(r, "allowed"),
            n(r, "denied"),
            n(r, "unauthenticated"),
            n(r, "rate_limited"),
            if shown.is_empty() { "-".into() } else { shown },
        ]);
    }
    t
}

fn routes(items: &[Value], wide: bool) -> Vec<Vec<String>> {
    let head: Vec<&str> = if wide {
        vec![
            "ROUTE",
            "SERVICE",
            "EFFECTIVE_SUCCESS",
            "EFFECTIVE_RPS",
            "ACTUAL_SUCCESS",
            "ACTUAL_RPS",
            "TIMEOUTS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ]
    } else {
        vec![
            "ROUTE",
            "SERVICE",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ]
    };
    let mut t = vec![head.into_iter().map(String::from).collect()];
    for r in items {
        let mut row = vec![
            s(r, "route"),
            s(r, "service"),
            pct(r, "effective_success"),
            rate(r, "effective_rps"),
        ];
        if wide {
            row.push(pct(r, "actual_success"));
            row.push(rate(r, "actual_rps"));
            row.push(
                r.get("timeouts")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    .to_string(),
            );
        }
        row.extend([ms(r, "p50_ms"), ms(r, "p95_ms"), ms(r, "p99_ms")]);
        t.push(row);
    }
    t
}

fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v}{}", " ".repeat(widths[i] - v.chars().count())))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_the_contract() {
        let items = vec![
            serde_json::json!({
                "src": "web", "dst": "api", "src_namespace": "shop", "dst_namespace": "shop",
                "secured": true, "rps": 10.0, "success": 0.995, "p50_ms": 1.5, "p99_ms": 20.0
            }),
            serde_json::json!({
                "src": "web", "dst": "example.com", "src_namespace": "shop", "dst_namespace": "",
                "secured": false, "reason": "not meshed", "rps": 1.0, "success": 1.0, "p50_ms": 3.0, "p99_ms": 3.0
            }),
        ];
        let text = render(&edges(&items, false));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "RPS", "SUCCESS", "P50", "P99"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "web", "api", "shop", "shop", "√", "10.0", "99.50%", "1.50ms", "20ms"
            ]
        );
        assert!(lines[2].contains("not meshed"), "{text}");
    }

    #[tokio::test]
    async fn in_a_cluster_viz_is_reached_through_the_api_servers_service_proxy() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let (req, respond) = handle.next_request().await.expect("request");
            let path = req.uri().to_string();
            respond.send_response(
                Response::builder()
                    .body(Body::from(
                        br#"{"window_seconds": 60, "items": []}"#.to_vec(),
                    ))
                    .expect("response"),
            );
            path
        });
        let v = get_via(client, "mesh", "/api/stat?namespace=shop&window=1m")
            .await
            .expect("answer");
        assert_eq!(v["window_seconds"], 60);
        assert_eq!(
            server.await.expect("server"),
            "/api/v1/namespaces/mesh/services/mesh-viz:8084/proxy/api/stat?namespace=shop&window=1m"
        );
    }

    #[tokio::test]
    async fn tap_streams_through_the_api_servers_service_proxy_and_prints_calls() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let call = serde_json::json!({"pod": "web-0", "direction": "inbound", "client_addr": "10.0.0.9:4000",
            "client_id": "load.shop.serviceaccount.identity.mesh.cluster.local", "tls": "true",
            "method": "GET", "authority": "web:80", "path": "/x", "status": 503, "latency_ms": 1.25,
            "bytes": 12, "route": "default", "grpc_status": 14});
        let body = format!("{{\"tapping\": [\"web-0\"]}}\n{call}\n{call}\n");
        let server = tokio::spawn(async move {
            let (req, respond) = handle.next_request().await.expect("request");
            respond.send_response(
                Response::builder()
                    .body(Body::from(body.into_bytes()))
                    .expect("response"),
            );
            req.uri().to_string()
        });
        let mut seen = Vec::new();
        tap_via(
            client,
            "mesh",
            "/api/tap?namespace=shop&workload=web",
            |l| {
                seen.push(l.to_string());
                seen.len() == 2
            },
        )
        .await
        .expect("stopped after two lines");
        assert_eq!(
            server.await.expect("server"),
            "/api/v1/namespaces/mesh/services/mesh-viz:8084/proxy/api/tap?namespace=shop&workload=web"
        );
        let parsed: Vec<Value> = seen
            .iter()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(tap_line(&parsed[0]), "tapping web-0");
        assert_eq!(
            tap_line(&parsed[1]),
            "in  pod=web-0 src=10.0.0.9:4000 client_id=load.shop.serviceaccount.identity.mesh.cluster.local tls=true :method=GET :authority=web:80 :path=/x :status=503 latency=1.25ms bytes=12 route=default grpc-status=14"
        );
        assert_eq!(tap_workload("deploy/web").expect("ok"), "web");
        assert!(tap_workload("svc/web").is_err());
        let f = TapFilter {
            to: Some("deploy/books".into()),
            direction: Some("sideways".into()),
            ..Default::default()
        };
        assert!(f.query().is_err());
        let f = TapFilter {
            to: Some("deploy/books".into()),
            path: Some("/a b".into()),
            ..Default::default()
        };
        assert_eq!(f.query().expect("query"), "to=books&path=%2Fa%20b");
    }

    #[test]
    fn resources() {
        assert!(matches!(
            parse_resource("edges", "deployment"),
            Ok(Query::Edges)
        ));
        assert!(matches!(parse_resource("stat", "deploy"), Ok(Query::Stat)));
        assert!(matches!(parse_resource("routes", "svc/web"), Ok(Query::Routes(n)) if n == "web"));
        assert!(parse_resource("routes", "web").is_err());
        assert!(matches!(parse_resource("authz", "deploy/web"), Ok(Query::Authz(n)) if n == "web"));
        assert!(parse_resource("authz", "deployment").is_err());
        let items: Vec<Value> = vec![
            serde_json::json!({"port": 8080, "kind": "default", "name": "deny",
            "allowed": 0, "denied": 9, "unauthenticated": 0, "rate_limited": 0,
            "denied_clients": [["a", 5], ["b", 2], ["c", 1], ["d", 1]]}),
        ];
        let t = authz(&items, false);
        assert_eq!(t[1][4], "9");
        assert_eq!(t[1][7], "a (5), b (2), c (1), … 1 more");
        assert_eq!(authz(&items, true)[1][7], "a (5), b (2), c (1), d (1)");
        assert!(parse_resource("edges", "pods").is_err());
    }
}
