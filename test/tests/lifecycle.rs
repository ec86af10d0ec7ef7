//! The admin server and the proxy's lifecycle: metrics that move by exactly the
//! requests sent, readiness, and graceful shutdown by `POST /shutdown` and SIGTERM.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use mesh_test::{backend, client, proxy};

/// Waits until the proxy has received one outbound request.
async fn one_request_in_flight(proxy: &proxy::Proxy) {
    mesh_test::eventually("request in flight", Duration::from_secs(5), || async {
        (proxy
            .metric("request_total", &[("direction", "outbound")])
            .await
            == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_sent() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let authority = app.authority();
    let labels = [("direction", "outbound"), ("authority", authority.as_str())];
    assert_eq!(proxy.metric("request_total", &labels).await, 0);

    let mut tx = client::h1(proxy.outbound).await;
    for path in (0..30).map(|i| if i % 3 == 0 { "/status/503" } else { "/" }) {
        client::get_on(&mut tx, &authority, path).await;
    }
    // A response is counted when its body ends, just after the client has read it.
    mesh_test::eventually("30 responses counted", Duration::from_secs(5), || async {
        (proxy.metric("response_total", &labels).await == 30).then_some(())
    })
    .await;
    let text = proxy.metrics().await;
    let m = |series: &str, extra: &[(&str, &str)]| {
        let all: Vec<_> = labels.iter().chain(extra).copied().collect();
        proxy::sum_metric(&text, series, &all)
    };
    assert_eq!(m("request_total", &[]), 30);
    assert_eq!(
        m(
            "response_total",
            &[("status_code", "200"), ("classification", "success")]
        ),
        20
    );
    assert_eq!(
        m(
            "response_total",
            &[("status_code", "503"), ("classification", "failure")]
        ),
        10
    );
    assert_eq!(
        m("response_latency_ms_count", &[("status_class", "2xx")]),
        20
    );
    assert_eq!(
        m(
            "response_latency_ms_bucket",
            &[("status_class", "5xx"), ("le", "+Inf")]
        ),
        10
    );
    // The client's one connection, and the proxy's one pooled connection to the app.
    assert_eq!(
        m("tcp_open_total", &[]),
        0,
        "tcp metrics carry no authority label"
    );
    assert_eq!(
        proxy::sum_metric(
            &text,
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "src")]
        ),
        1
    );
    assert_eq!(
        proxy::sum_metric(
            &text,
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst")]
        ),
        1
    );
}

#[tokio::test]
async fn grpc_failures_are_classified_from_trailers() {
    let echo = mesh_test::grpc::serve().await;
    let proxy = proxy::new().run().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .expect("uri")
        .origin(format!("http://{echo}").parse().expect("origin"))
        .connect()
        .await
        .expect("connect");
    let mut c = mesh_test::grpc::EchoClient::new(channel);
    for fail_with in [0, 0, 5] {
        let _ = c
            .unary(mesh_test::grpc::EchoRequest {
                message: "m".into(),
                count: 0,
                fail_with,
            })
            .await;
    }
    let labels = |class| {
        [
            ("direction", "outbound"),
            ("status_code", "200"),
            ("classification", class),
        ]
    };
    mesh_test::eventually("3 gRPC responses", Duration::from_secs(5), || async {
        (proxy
            .metric("response_total", &[("direction", "outbound")])
            .await
            == 3)
            .then_some(())
    })
    .await;
    assert_eq!(proxy.metric("response_total", &labels("success")).await, 2);
    assert_eq!(proxy.metric("response_total", &labels("failure")).await, 1);
}

#[tokio::test]
async fn admin_endpoints() {
    let proxy = proxy::new().run().await;
    assert_eq!(
        client::get(proxy.admin, "a", "/live").await.text(),
        "live\n"
    );
    assert_eq!(
        client::get(proxy.admin, "a", "/ready").await.text(),
        "ready\n"
    );
    let metrics = client::get(proxy.admin, "a", "/metrics").await;
    assert!(
        metrics
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    assert_eq!(client::get(proxy.admin, "a", "/nope").await.status, 404);
    // GET does not shut down.
    assert_eq!(client::get(proxy.admin, "a", "/shutdown").await.status, 405);
    assert_eq!(client::get(proxy.admin, "a", "/live").await.status, 200);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_exits_zero() {
    let app = backend::http().await;
    let mut proxy = proxy::new()
        .env("SHUTDOWN_ENDPOINT_ENABLED", true)
        .run()
        .await;
    let (outbound, authority) = (proxy.outbound, app.authority());
    let slow = tokio::spawn(async move { client::get(outbound, &authority, "/sleep/1000").await });
    one_request_in_flight(&proxy).await;
    proxy.shutdown().await;
    // The request in flight completes normally...
    let rsp = slow.await.expect("join");
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "slept"));
    assert_eq!(app.cancelled.load(std::sync::atomic::Ordering::SeqCst), 0);
    // ...and the proxy exits cleanly once it has.
    assert!(proxy.wait(Duration::from_secs(10)).await.success());
    assert!(
        tokio::net::TcpStream::connect(proxy.outbound)
            .await
            .is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn sigterm_drains_like_shutdown() {
    let app = backend::http().await;
    let mut proxy = proxy::new().run().await;
    let (outbound, authority) = (proxy.outbound, app.authority());
    let slow = tokio::spawn(async move { client::get(outbound, &authority, "/sleep/800").await });
    one_request_in_flight(&proxy).await;
    proxy.signal("TERM");
    assert_eq!(slow.await.expect("join").status, 200);
    assert!(proxy.wait(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn shutdown_grace_period_bounds_the_drain() {
    let app = backend::http().await;
    let mut proxy = proxy::new()
        .env("SHUTDOWN_GRACE_PERIOD", "300ms")
        .env("SHUTDOWN_ENDPOINT_ENABLED", true)
        .run()
        .await;
    let (outbound, authority) = (proxy.outbound, app.authority());
    let slow = tokio::spawn(async move {
        let mut tx = client::h1(outbound).await;
        let req = Request::get("/sleep/60000")
            .header("host", authority)
            .body(client::body(Bytes::new()))
            .expect("req");
        tx.send_request(req).await.map(|r| r.status())
    });
    one_request_in_flight(&proxy).await;
    proxy.shutdown().await;
    assert!(proxy.wait(Duration::from_secs(10)).await.success());
    assert!(
        slow.await.expect("join").is_err(),
        "the over-long request was cut when the grace period ended"
    );
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_shutdown() {
    let mut proxy = proxy::new()
        .env("SHUTDOWN_ENDPOINT_ENABLED", true)
        .run()
        .await;
    // A client that connected but never sent a byte: nothing is in flight.
    let _idle = tokio::net::TcpStream::connect(proxy.inbound)
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.shutdown().await;
    // The default grace period is 30 s; the idle client must not make us wait for it.
    let began = std::time::Instant::now();
    assert!(proxy.wait(Duration::from_secs(20)).await.success());
    assert!(began.elapsed() < Duration::from_secs(20));
}

/// `MESH_PROXY_WORKERS=2`: two single-threaded workers share the inbound and outbound
/// ports (`SO_REUSEPORT`), the kernel spreading connections over them; every request
/// is served and counted once, the connection limit holds across both, and SIGTERM
/// drains requests in flight on either worker before the process exits.
#[tokio::test]
async fn two_workers_share_the_ports_and_drain_together() {
    let app = backend::http().await;
    let mut proxy = proxy::new()
        .env("WORKERS", 2)
        .env("INBOUND_APP_ADDR", app.addr)
        .run()
        .await;
    // The proxy's threads: the first worker and one more (a new thread names itself
    // once it runs, so its name may show a moment after the proxy listens).
    mesh_test::eventually(
        "one extra worker thread",
        Duration::from_secs(5),
        || async {
            let threads = thread_names(proxy.pid());
            (threads.iter().filter(|t| *t == "mesh-worker-1").count() == 1).then_some(())
        },
    )
    .await;
    let authority = app.authority();
    // 32 connections, a request on each, both directions.
    for (addr, n) in [(proxy.outbound, 24), (proxy.inbound, 8)] {
        for _ in 0..n {
            let rsp = client::get(addr, &authority, "/").await;
            assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "hello"));
        }
    }
    let metrics = proxy.metrics().await;
    let by_worker: Vec<u64> = ["0", "1"]
        .iter()
        .map(|w| proxy::sum_metric(&metrics, "worker_connections_total", &[("worker", w)]))
        .collect();
    assert_eq!(by_worker.iter().sum::<u64>(), 32, "{metrics}");
    assert!(
        by_worker.iter().all(|n| *n > 0),
        "both workers accept: {by_worker:?}"
    );
    for (direction, n) in [("outbound", 24), ("inbound", 8)] {
        assert_eq!(
            proxy::sum_metric(&metrics, "request_total", &[("direction", direction)]),
            n,
            "{direction}: {metrics}"
        );
    }
    // Slow requests on eight connections, whichever workers took them: SIGTERM lets
    // every one finish, then the proxy exits.
    let mut slow = Vec::new();
    for _ in 0..8 {
        let (outbound, authority) = (proxy.outbound, authority.clone());
        slow.push(tokio::spawn(async move {
            client::get(outbound, &authority, "/sleep/800").await
        }));
    }
    mesh_test::eventually("eight in flight", Duration::from_secs(5), || async {
        (proxy
            .metric("request_total", &[("direction", "outbound")])
            .await
            == 32)
            .then_some(())
    })
    .await;
    proxy.signal("TERM");
    for s in slow {
        let rsp = s.await.expect("join");
        assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "slept"));
    }
    assert!(proxy.wait(Duration::from_secs(10)).await.success());
    assert_eq!(app.cancelled.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// More workers than the CPUs the proxy may run on are not started: two workers on one
/// CPU only take turns (and serve less than one), so a proxy pinned to one CPU runs one
/// worker, says so, and serves as usual.
#[tokio::test]
async fn workers_are_capped_at_the_cpus_the_proxy_may_use() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .env("WORKERS", 2)
        .env("INBOUND_APP_ADDR", app.addr)
        .cpus("0")
        .run()
        .await;
    assert!(
        proxy
            .startup_log()
            .iter()
            .any(|l| l.contains("MESH_PROXY_WORKERS is above the CPUs")),
        "the proxy says why it runs fewer workers"
    );
    // 16 connections: two workers would each have taken some.
    let authority = app.authority();
    for addr in std::iter::repeat_n(proxy.outbound, 12).chain(std::iter::repeat_n(proxy.inbound, 4))
    {
        let rsp = client::get(addr, &authority, "/").await;
        assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "hello"));
    }
    let metrics = proxy.metrics().await;
    let by_worker = |w| proxy::sum_metric(&metrics, "worker_connections_total", &[("worker", w)]);
    assert_eq!((by_worker("0"), by_worker("1")), (16, 0), "{metrics}");
    let threads = thread_names(proxy.pid());
    assert!(
        !threads.iter().any(|t| t.starts_with("mesh-worker")),
        "one worker on one CPU: {threads:?}"
    );
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// The connection limit counts every worker's connections together: of five slow
/// requests on five connections, four are served at once (whichever workers the
/// kernel gave them to), the fifth when a slot frees.
#[tokio::test]
async fn the_connection_limit_holds_across_workers() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .env("WORKERS", 2)
        .env("MAX_CONNECTIONS", 4)
        .run()
        .await;
    let authority = app.authority();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (outbound, authority) = (proxy.outbound, authority.clone());
        calls.push(tokio::spawn(async move {
            client::get(outbound, &authority, "/sleep/1000").await
        }));
    }
    let in_flight = || async {
        proxy
            .metric("request_total", &[("direction", "outbound")])
            .await
    };
    mesh_test::eventually("four in flight", Duration::from_secs(5), || async {
        (in_flight().await == 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        in_flight().await,
        4,
        "a fifth connection was served at the limit"
    );
    for c in calls {
        assert_eq!(c.await.expect("join").status, 200);
    }
    assert_eq!(in_flight().await, 5);
}
