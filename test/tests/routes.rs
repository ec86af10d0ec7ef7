//! ServiceProfile routes in the proxy: requests are classified by the first matching
//! route (its name is the `route` metric label), a route's timeout answers 504 with
//! `mesh-proxy-error: timeout` and cancels the upstream request, and response classes
//! decide what counts as a failure.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_test::{backend, client, controller, proxy};

const PROFILE: &str = r#"
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: webapp.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: slow
    condition: {method: GET, pathRegex: "/sleep/.*"}
    timeout: 200ms
  - name: tolerated
    condition: {pathRegex: "/status/503"}
    responseClasses:
    - condition: {status: {min: 503, max: 503}}
      isFailure: false
  - name: GET
    condition: {method: GET}
"#;

#[tokio::test]
async fn routes_name_metrics_bound_time_and_classify_responses() {
    let (app, _ctl, p, _dir) = mesh_with(PROFILE, 4).await;
    let host = "webapp.default.svc.cluster.local";

    // The slow route's 200 ms timeout: 504, the proxy's own answer, and the backend
    // sees its request cancelled instead of finishing its second of work.
    let rsp = client::get(p.outbound, host, "/sleep/1000").await;
    assert_eq!(rsp.status, 504);
    assert_eq!(rsp.header("mesh-proxy-error"), "timeout");
    mesh_test::eventually(
        "the upstream request cancelled",
        Duration::from_secs(5),
        || async { (app.cancelled.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;

    assert_eq!(client::get(p.outbound, host, "/").await.status, 200);
    assert_eq!(
        client::get(p.outbound, host, "/status/503").await.status,
        503
    );
    // Not a route's path: the default route, where a 500 is a failure.
    let delete = http::Request::delete("/status/500")
        .header("host", host)
        .body(client::body(bytes::Bytes::new()));
    let mut tx = client::h1(p.outbound).await;
    let rsp = client::read(tx.send_request(delete.expect("req")).await.expect("rsp")).await;
    assert_eq!(rsp.status, 500);

    mesh_test::eventually("4 responses counted", Duration::from_secs(5), || async {
        (p.metric("response_total", &[("direction", "outbound")])
            .await
            == 4)
            .then_some(())
    })
    .await;
    let text = p.metrics().await;
    let m = |labels: &[(&str, &str)]| proxy::sum_metric(&text, "response_total", labels);
    assert_eq!(
        m(&[
            ("route", "slow"),
            ("status_code", "504"),
            ("classification", "failure")
        ]),
        1,
        "{text}"
    );
    assert_eq!(
        m(&[
            ("route", "GET"),
            ("status_code", "200"),
            ("classification", "success")
        ]),
        1,
        "{text}"
    );
    // The tolerated route's class says a 503 is not a failure.
    assert_eq!(
        m(&[
            ("route", "tolerated"),
            ("status_code", "503"),
            ("classification", "success")
        ]),
        1,
        "{text}"
    );
    assert_eq!(
        m(&[
            ("route", "default"),
            ("status_code", "500"),
            ("classification", "failure")
        ]),
        1,
        "{text}"
    );
    assert_eq!(
        proxy::sum_metric(&text, "request_total", &[("route", "slow")]),
        1,
        "{text}"
    );
}

const RETRY_PROFILE: &str = r#"
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: webapp.default.svc.cluster.local, namespace: default}
spec:
  routes:
  - name: flaky
    condition: {pathRegex: "/fail-once/.*"}
    isRetryable: true
  - name: broken
    condition: {method: GET, pathRegex: "/status/503"}
    retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 1, ttl: 10s}
  - name: posts
    condition: {method: POST}
    isRetryable: true
  - name: plain
    condition: {pathRegex: "/status/.*"}
"#;

async fn mesh_with(
    profile: &str,
    last_octet: u8,
) -> (
    backend::Http,
    controller::Controller,
    proxy::Proxy,
    tempfile::TempDir,
) {
    let ip = IpAddr::V4(Ipv4Addr::new(
        127,
        230 + (std::process::id() % 20) as u8,
        10,
        last_octet,
    ));
    let app = backend::http_on(SocketAddr::new(ip, 8080)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: webapp, namespace: default}}\n\
             spec: {{selector: {{app: webapp}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: webapp-1, namespace: default, labels: {{app: webapp}}}}\n\
             spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n---\n{profile}"
        ),
    )
    .expect("write");
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let p = proxy::new()
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    (app, ctl, p, dir)
}

#[tokio::test]
async fn retries_stay_within_the_budget_and_only_where_allowed() {
    let (app, _ctl, p, _dir) = mesh_with(RETRY_PROFILE, 1).await;
    let host = "webapp.default.svc.cluster.local";
    let key = format!("k{}", std::process::id());

    // A retried request that succeeds: the client sees 200; actual counts show the
    // failed attempt, effective counts only the success.
    let rsp = client::get(p.outbound, host, &format!("/fail-once/{key}")).await;
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "ok now"));
    let flaky = [("route", "flaky")];
    mesh_test::eventually(
        "the flaky response counted",
        Duration::from_secs(5),
        || async { (p.metric("response_total", &flaky).await == 1).then_some(()) },
    )
    .await;
    let text = p.metrics().await;
    let m = |series: &str, labels: &[(&str, &str)]| proxy::sum_metric(&text, series, labels);
    assert_eq!(
        m(
            "response_total",
            &[("route", "flaky"), ("status_code", "200")]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        m(
            "response_total",
            &[("route", "flaky"), ("status_code", "503")]
        ),
        0,
        "{text}"
    );
    assert_eq!(
        m(
            "actual_response_total",
            &[
                ("route", "flaky"),
                ("status_code", "503"),
                ("classification", "failure")
            ]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        m(
            "actual_response_total",
            &[
                ("route", "flaky"),
                ("status_code", "200"),
                ("classification", "success")
            ]
        ),
        1,
        "{text}"
    );

    // Always failing, with a budget of 20% plus 1/s over 10 s: over N requests the
    // retries stay within 0.2 N + 10, and some are refused by the budget.
    let n = 100;
    let mut tx = client::h1(p.outbound).await;
    for _ in 0..n {
        let req = http::Request::get("/status/503")
            .header("host", host)
            .body(client::body(bytes::Bytes::new()))
            .expect("req");
        assert_eq!(client::send(&mut tx, req).await.status, 503);
    }
    mesh_test::eventually(
        "the broken responses counted",
        Duration::from_secs(5),
        || async { (p.metric("response_total", &[("route", "broken")]).await == n).then_some(()) },
    )
    .await;
    let text = p.metrics().await;
    // Every attempt is an actual response; the client saw n of them.
    let retries = proxy::sum_metric(&text, "actual_response_total", &[("route", "broken")]) - n;
    assert!(retries > 0, "no retries at all: {text}");
    assert!(
        retries as f64 <= 0.2 * n as f64 + 10.0,
        "{retries} retries for {n} requests: {text}"
    );
    assert!(
        proxy::sum_metric(&text, "retry_skipped_total", &[("route", "broken")]) > 0,
        "{text}"
    );

    // A non-retryable route is never retried.
    let before = app.requests.load(Ordering::SeqCst);
    assert_eq!(
        client::get(p.outbound, host, "/status/502").await.status,
        502
    );
    assert_eq!(app.requests.load(Ordering::SeqCst) - before, 1);

    // A retryable POST whose body is too large to replay is sent once.
    let before = app.requests.load(Ordering::SeqCst);
    let big = vec![b'x'; 1024 * 1024];
    let mut tx = client::h1(p.outbound).await;
    let req = http::Request::post("/consume/503")
        .header("host", host)
        .body(client::body(big))
        .expect("req");
    assert_eq!(client::send(&mut tx, req).await.status, 503);
    assert_eq!(
        app.requests.load(Ordering::SeqCst) - before,
        1,
        "a 1 MiB POST was retried"
    );
    // What was buffered before the body proved too large is sent on, then the rest.
    let big = backend::pattern(300 * 1024);
    let req = http::Request::post("/echo")
        .header("host", host)
        .body(client::body(big.clone()))
        .expect("req");
    let rsp = client::send(&mut tx, req).await;
    assert!(
        rsp.body == big,
        "a large body on a retryable route arrived changed ({} bytes)",
        rsp.body.len()
    );
    // A small one is retried (up to 3 attempts in all).
    let before = app.requests.load(Ordering::SeqCst);
    let req = http::Request::post("/consume/503")
        .header("host", host)
        .body(client::body("small"))
        .expect("req");
    assert_eq!(client::send(&mut tx, req).await.status, 503);
    assert!(
        app.requests.load(Ordering::SeqCst) - before > 1,
        "a small POST on a retryable route was not retried"
    );
}

#[tokio::test]
async fn retries_happen_whenever_the_budget_allows() {
    let (_app, _ctl, p, _dir) = mesh_with(RETRY_PROFILE, 2).await;
    let host = "webapp.default.svc.cluster.local";
    // Each key fails once: with the default budget's reserve every one is retried, so
    // the client sees only successes and effective success beats actual.
    for i in 0..20 {
        let rsp = client::get(
            p.outbound,
            host,
            &format!("/fail-once/sometimes-{}-{i}", std::process::id()),
        )
        .await;
        assert_eq!(rsp.status, 200);
    }
    mesh_test::eventually("20 flaky responses", Duration::from_secs(5), || async {
        (p.metric("response_total", &[("route", "flaky")]).await == 20).then_some(())
    })
    .await;
    let text = p.metrics().await;
    let failed_attempts = proxy::sum_metric(
        &text,
        "actual_response_total",
        &[("route", "flaky"), ("classification", "failure")],
    );
    assert_eq!(failed_attempts, 20, "{text}");
    assert_eq!(
        proxy::sum_metric(
            &text,
            "response_total",
            &[("route", "flaky"), ("classification", "success")]
        ),
        20
    );
    assert_eq!(
        proxy::sum_metric(&text, "retry_skipped_total", &[("route", "flaky")]),
        0
    );
}

#[tokio::test]
async fn the_webapp_example_behaves_as_written() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples");
    let profile =
        std::fs::read_to_string(format!("{examples}/serviceprofile-webapp.yaml")).expect("example");
    let (app, _ctl, p, _dir) = mesh_with(&profile, 3).await;
    let host = "webapp.default.svc.cluster.local";
    let send = |method: http::Method, path: &str, status: Option<u16>| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if let Some(code) = status {
            req = req.header("x-status", code);
        }
        let req = req.body(client::body("payload")).expect("req");
        let outbound = p.outbound;
        async move {
            let mut tx = client::h1(outbound).await;
            client::send(&mut tx, req).await
        }
    };
    // POST /api: retryable by its own budget; a failure is retried.
    let before = app.requests.load(Ordering::SeqCst);
    let rsp = send(http::Method::POST, "/api", Some(503)).await;
    assert_eq!(rsp.status, 503, "{:?} {}", rsp.headers, rsp.text());
    assert!(
        app.requests.load(Ordering::SeqCst) - before > 1,
        "POST /api was not retried"
    );
    // A POST elsewhere matches no route: the default route, no timeout (1 s is fine).
    assert_eq!(
        send(http::Method::POST, "/sleep/1000", None).await.status,
        200,
        "POST /sleep is not /api: default route"
    );
    assert_eq!(send(http::Method::GET, "/", None).await.status, 200);
    // GET / is not retryable: one attempt.
    let before = app.requests.load(Ordering::SeqCst);
    assert_eq!(send(http::Method::GET, "/", Some(503)).await.status, 503);
    assert_eq!(app.requests.load(Ordering::SeqCst) - before, 1);
    mesh_test::eventually("routes counted", Duration::from_secs(5), || async {
        (p.metric("response_total", &[("route", "GET")]).await == 2).then_some(())
    })
    .await;
    let text = p.metrics().await;
    // The GET route's class says 2xx is success; the default route holds the rest.
    assert_eq!(
        proxy::sum_metric(&text, "response_total", &[("route", "POST")]),
        1,
        "{text}"
    );
    assert_eq!(
        proxy::sum_metric(&text, "response_total", &[("route", "default")]),
        1,
        "{text}"
    );
}
