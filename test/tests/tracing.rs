//! Distributed tracing end to end: real proxies join the trace a request carries (W3C
//! or B3), hand their own span on to the next hop, honour the caller's sampling
//! decision, and export server and client spans to real collectors (OTLP gRPC and
//! Zipkin v2 JSON) on loopback; access-log lines carry the trace id; a collector that
//! is down costs requests nothing.

use std::time::Duration;

use bytes::Bytes;
use mesh_api::identity::dns_name;
use mesh_test::collector::{self, Received};
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{backend, client, controller, identity, proxy};

const WEB: &str = "web.shop.svc.cluster.local";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The value of header `name` the sample app saw, from its `/headers` answer.
fn seen(reply: &client::Reply, name: &str) -> Option<String> {
    reply
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
}

async fn get(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> client::Reply {
    let mut req = http::Request::get("/headers").header("host", WEB);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(client::body(Bytes::new())).expect("request");
    client::send(&mut client::h1(addr).await, req).await
}

async fn spans_of(c: &collector::Collector, trace: &str, n: usize) -> Vec<Received> {
    mesh_test::eventually(
        &format!("{n} spans of trace {trace}"),
        Duration::from_secs(10),
        || async {
            let spans = c.trace(trace);
            (spans.len() >= n).then_some(spans)
        },
    )
    .await
}

fn kind<'a>(spans: &'a [Received], kind: &str) -> &'a Received {
    spans
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

#[tokio::test]
async fn a_trace_crosses_two_meshed_hops_and_reaches_an_otlp_collector() {
    let otlp = collector::otlp().await;
    let (ca, work, world) = (tmp(), tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let web = Pod::start(PodSpec {
        identity: Some(&id),
        mode: "strict",
        env: vec![
            ("TRACE_COLLECTOR", otlp.addr.to_string()),
            ("TRACE_SAMPLING", "1".into()),
        ],
        ..PodSpec::new(pod_ip(), "web", "shop")
    })
    .await;
    // /status/5xx is retryable: the retries show on the client's span.
    let yaml = format!(
        "{}---\n{}---\n{}",
        mesh::service_yaml("web", "shop"),
        mesh::pod_yaml("web-0", "shop", "web", "web", web.ip),
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n\
         metadata: {name: web.shop.svc.cluster.local, namespace: shop}\n\
         spec:\n  routes:\n  - name: fail\n    condition: {method: GET, pathRegex: /status/5.*}\n    isRetryable: true\n"
    );
    mesh::write(world.path(), "world", &yaml);
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    // The client's proxy starts no trace of its own: only a caller's decision records.
    let client = id
        .proxy(proxy::new(), "client", "shop")
        .env("DESTINATION_ADDR", ctl.destination)
        .env("TRACE_COLLECTOR", otlp.addr)
        .env("TRACE_SAMPLING", "0")
        .run()
        .await;
    client.wait_ready().await;
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;

    // The calling app is in trace TRACE, span APP_SPAN, sampled.
    let traceparent = format!("00-{TRACE}-{APP_SPAN}-01");
    let rsp = get(client.outbound, &[("traceparent", &traceparent)]).await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let spans = spans_of(&otlp, TRACE, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (out, inb) = (kind(&spans, "CLIENT"), kind(&spans, "SERVER"));
    // Parent and child: the app's span, the client proxy's, the server proxy's, and
    // the server app is handed the last as its parent.
    assert_eq!(out.parent, APP_SPAN);
    assert_eq!(inb.parent, out.span_id);
    assert_eq!(
        seen(&rsp, "traceparent").as_deref(),
        Some(format!("00-{TRACE}-{}-01", inb.span_id).as_str())
    );
    assert!(out.start_us <= inb.start_us && inb.end_us <= out.end_us + 1000);
    // The mesh's attributes: identities both ways, mTLS, route, status, endpoint.
    let (web_id, client_id) = (dns_name("web", "shop"), dns_name("client", "shop"));
    for s in [out, inb] {
        assert_eq!(s.attr("mesh.client.id"), Some(client_id.as_str()), "{s:#?}");
        assert_eq!(s.attr("mesh.server.id"), Some(web_id.as_str()), "{s:#?}");
        assert_eq!(s.attr("mesh.tls"), Some("true"), "{s:#?}");
        assert_eq!(s.attr("http.response.status_code"), Some("200"));
        assert_eq!(s.attr("http.request.method"), Some("GET"));
        assert_eq!(s.attr("url.path"), Some("/headers"));
        assert_eq!(s.attr("mesh.route"), Some("default"));
        assert!(!s.error);
    }
    assert_eq!(
        (out.service.as_str(), inb.service.as_str()),
        ("client.shop", "web.shop")
    );
    assert_eq!(out.attr("mesh.direction"), Some("outbound"));
    assert_eq!(out.attr("mesh.retries"), Some("0"));
    assert_eq!(out.attr("mesh.dst.workload"), Some("web"));
    assert!(
        out.attr("mesh.endpoint")
            .is_some_and(|e| e.starts_with(&web.ip.to_string())),
        "{out:#?}"
    );
    // One request id, set by the first proxy, seen by the app and on both spans.
    let request_id = seen(&rsp, "x-request-id").expect("x-request-id set");
    assert_eq!(request_id.len(), 36);
    assert_eq!(out.attr("mesh.request_id"), Some(request_id.as_str()));
    assert_eq!(inb.attr("mesh.request_id"), Some(request_id.as_str()));

    // No context and a rate of 0: nothing recorded on either hop, though the server's
    // rate is 1, because the decision travels with the request.
    let unsampled = get(client.outbound, &[]).await;
    let tp = seen(&unsampled, "traceparent").expect("a context was started");
    assert!(tp.ends_with("-00"), "{tp}");
    let unsampled_trace = tp.split('-').nth(1).expect("trace id").to_string();
    // A caller's no wins too, in B3.
    let declined = get(client.outbound, &[("b3", "0")]).await;
    let b3 = seen(&declined, "b3").expect("b3 passed on");
    assert_eq!(b3.split('-').nth(2), Some("0"), "{b3}");

    // B3 single from the app: kept as B3 all the way, parent ids chained.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let rsp = get(
        client.outbound,
        &[("b3", &format!("{b3_trace}-e457b5a2e4d86bd1-1"))],
    )
    .await;
    let spans = spans_of(&otlp, b3_trace, 2).await;
    let (out, inb) = (kind(&spans, "CLIENT"), kind(&spans, "SERVER"));
    assert_eq!(out.parent, "e457b5a2e4d86bd1");
    assert_eq!(inb.parent, out.span_id);
    assert_eq!(
        seen(&rsp, "b3"),
        Some(format!("{b3_trace}-{}-1-{}", inb.span_id, out.span_id))
    );
    assert!(seen(&rsp, "traceparent").is_none(), "the format is kept");
    // Spans go in order: the unsampled requests' would have come before these.
    assert!(otlp.trace(&unsampled_trace).is_empty());
    assert_eq!(otlp.spans().len(), 4, "{:#?}", otlp.spans());
    assert_eq!(client.metric("trace_spans_exported_total", &[]).await, 2);
    assert_eq!(client.metric("trace_spans_dropped_total", &[]).await, 0);
    assert_eq!(web.proxy.metric("trace_spans_exported_total", &[]).await, 2);

    // A failing retryable route: one client span that took three attempts, and three
    // server spans, each the client span's child, all errors.
    let mut n = 0u32;
    let outbound = client.outbound;
    let (out, servers) = mesh_test::eventually("a retried trace", Duration::from_secs(15), || {
        n += 1;
        let trace = format!("{:032x}", 0xabc0 + n);
        let otlp = otlp.clone();
        async move {
            let tp = format!("00-{trace}-{APP_SPAN}-01");
            let mut tx = client::h1(outbound).await;
            let req = http::Request::get("/status/503")
                .header("host", WEB)
                .header("traceparent", &tp)
                .body(client::body(Bytes::new()))
                .expect("request");
            assert_eq!(client::send(&mut tx, req).await.status, 503);
            spans_of(&otlp, &trace, 2).await;
            // The spans of one trace arrive in the exporters' batches: give the rest a
            // moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let spans = otlp.trace(&trace);
            let out = spans.iter().find(|s| s.kind == "CLIENT")?.clone();
            (out.attr("mesh.route") == Some("fail")).then(|| {
                let servers: Vec<Received> = spans
                    .iter()
                    .filter(|s| s.kind == "SERVER")
                    .cloned()
                    .collect();
                (out, servers)
            })
        }
    })
    .await;
    assert_eq!(out.attr("mesh.retries"), Some("2"), "{out:#?}");
    assert_eq!(out.attr("http.response.status_code"), Some("503"));
    assert!(out.error);
    assert_eq!(servers.len(), 3, "{servers:#?}");
    assert!(servers.iter().all(|s| s.parent == out.span_id && s.error));
}

#[tokio::test]
async fn zipkin_gets_b3_spans_and_the_access_log_the_trace_id() {
    let zipkin = collector::zipkin().await;
    let app = backend::http().await;
    let server = proxy::new()
        .app(app.addr)
        .env("ACCESS_LOG", "json")
        .env("TRACE_COLLECTOR", zipkin.addr)
        .env("TRACE_PROTOCOL", "zipkin")
        .env("TRACE_SAMPLING", "0.5")
        .env("TRACE_SERVICE_NAME", "books.shop")
        .run()
        .await;
    // 64-bit B3 ids, sampled by the caller.
    let req = http::Request::get("/status/503")
        .header("host", "books.shop.svc.cluster.local")
        .header("x-b3-traceid", "463ac35c9f6413ad")
        .header("x-b3-spanid", "a2fb4a1d1a96d312")
        .header("x-b3-sampled", "1")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = client::send(&mut client::h1(server.inbound).await, req).await;
    assert_eq!(rsp.status, 503);
    let spans = spans_of(&zipkin, "463ac35c9f6413ad", 1).await;
    let s = &spans[0];
    assert_eq!(s.kind, "SERVER");
    assert_eq!(s.parent, "a2fb4a1d1a96d312");
    assert_eq!(s.service, "books.shop");
    assert_eq!(s.attr("http.response.status_code"), Some("503"));
    assert_eq!(s.attr("mesh.client.id"), None, "a plaintext caller");
    assert_eq!(s.attr("mesh.tls"), Some("disabled"));
    assert!(s.error, "a 5xx is an error: {s:#?}");
    assert!(s.end_us > s.start_us);
    // The access log names the same trace, and the bytes the client got.
    let line = mesh_test::eventually("a log line", Duration::from_secs(5), || async {
        server.stdout_lines().into_iter().next()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(v["trace_id"], "0000000000000000463ac35c9f6413ad", "{v}");
    assert_eq!(v["bytes"], rsp.body.len(), "{v}");
    assert_eq!(v["status"], 503);
    // Malformed context is ignored, not fatal: a fresh trace at the rate.
    for _ in 0..40 {
        let req = http::Request::get("/")
            .header("host", "books.shop.svc.cluster.local")
            .header("traceparent", "00-zz-yy-01")
            .header("x-b3-traceid", "not hex")
            .body(client::body(Bytes::new()))
            .expect("request");
        let rsp = client::send(&mut client::h1(server.inbound).await, req).await;
        assert_eq!(rsp.status, 200);
    }
    let sampled = mesh_test::eventually("sampled spans", Duration::from_secs(10), || async {
        let n = server.metric("trace_spans_exported_total", &[]).await;
        let lines = server.stdout_lines().len();
        (lines == 41).then_some(n)
    })
    .await;
    // Half of 40, give or take: binomial(40, 0.5) is within 5..35 but for 1 in 10^6.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exported = server.metric("trace_spans_exported_total", &[]).await;
    assert!(
        exported >= sampled && (1 + 5..=1 + 35).contains(&exported),
        "{exported}"
    );
    assert_eq!(zipkin.spans().len() as u64, exported);
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let app = backend::http().await;
    let server = proxy::new()
        .app(app.addr)
        .env("TRACE_COLLECTOR", closed)
        .env("TRACE_SAMPLING", "1")
        .run()
        .await;
    let mut tx = client::h1(server.inbound).await;
    for _ in 0..20 {
        let rsp = client::get_on(&mut tx, "books", "/").await;
        assert_eq!(rsp.status, 200);
    }
    mesh_test::eventually(
        "the spans counted as dropped",
        Duration::from_secs(20),
        || async {
            let dropped = server.metric("trace_spans_dropped_total", &[]).await;
            let failures = server.metric("trace_export_failures_total", &[]).await;
            (dropped == 20 && failures >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(server.metric("trace_spans_exported_total", &[]).await, 0);
}
