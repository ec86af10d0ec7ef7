//! What the proxy answers when it cannot forward, and what it does with bad input:
//! every case gets the right status and a `mesh-proxy-error` header, never a panic, and
//! the proxy keeps serving afterwards.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use mesh_test::{backend, client, proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns everything the proxy answers until it closes or 5 s pass.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn connect_refused_is_502() {
    let proxy = proxy::new().run().await;
    // Bind then drop a listener: nothing listens on that port now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let rsp = client::get(proxy.outbound, &closed.to_string(), "/").await;
    assert_eq!(rsp.status, 502);
    assert!(
        rsp.header("mesh-proxy-error")
            .contains("Connection refused"),
        "{:?}",
        rsp.headers
    );
}

#[tokio::test]
async fn unknown_name_is_503_no_endpoints() {
    let proxy = proxy::new().run().await;
    let rsp = client::get(proxy.outbound, "nothing-here.invalid:80", "/").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        "no endpoints for nothing-here.invalid:80"
    );
}

#[tokio::test]
async fn connect_timeout_is_504() {
    let hole = backend::blackhole();
    let proxy = proxy::new().env("CONNECT_TIMEOUT", "300ms").run().await;
    let rsp = client::get(proxy.outbound, &hole.addr.to_string(), "/").await;
    assert_eq!(rsp.status, 504);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        format!("connect to {} timed out", hole.addr)
    );
}

#[tokio::test]
async fn too_many_requests_in_flight_get_503_overloaded() {
    let app = backend::http().await;
    let proxy = proxy::new().env("MAX_IN_FLIGHT_REQUESTS", 1).run().await;
    let (outbound, authority) = (proxy.outbound, app.authority());
    let slow = tokio::spawn(async move { client::get(outbound, &authority, "/sleep/1500").await });
    // Wait until the slow request holds the only slot.
    mesh_test::eventually("slow request in flight", Duration::from_secs(5), || async {
        let m = proxy
            .metric("request_total", &[("direction", "outbound")])
            .await;
        (m >= 1).then_some(())
    })
    .await;
    let rsp = client::get(proxy.outbound, &app.authority(), "/").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.header("mesh-proxy-error"), "proxy overloaded");
    assert_eq!(slow.await.expect("join").status, 200);
    // The slot is free again.
    assert_eq!(
        client::get(proxy.outbound, &app.authority(), "/")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn grpc_clients_get_grpc_statuses_for_proxy_errors() {
    let proxy = proxy::new().run().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .expect("uri")
        .origin("http://nothing-here.invalid:50051".parse().expect("origin"))
        .connect()
        .await
        .expect("connect");
    let mut c = mesh_test::grpc::EchoClient::new(channel);
    let err = c
        .unary(mesh_test::grpc::EchoRequest::default())
        .await
        .expect_err("no endpoints");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("no endpoints"), "{err:?}");
}

#[tokio::test]
async fn a_request_to_the_proxy_itself_is_refused_not_looped() {
    let proxy = proxy::new().run().await;
    let rsp = client::get(proxy.outbound, &proxy.outbound.to_string(), "/").await;
    assert_eq!(rsp.status, 502);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        "request would loop back to the proxy"
    );
}

#[tokio::test]
async fn a_wildcard_listener_still_detects_loops() {
    let app = backend::http().await;
    let proxy = proxy::new().env("OUTBOUND_ADDR", "0.0.0.0:0").run().await;
    let own = format!("127.0.0.1:{}", proxy.outbound.port());
    let rsp = client::get(
        (
            "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"),
            proxy.outbound.port(),
        )
            .into(),
        &own,
        "/",
    )
    .await;
    assert_eq!(rsp.status, 502);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        "request would loop back to the proxy"
    );
    let ok = client::get(
        (
            "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"),
            proxy.outbound.port(),
        )
            .into(),
        &app.authority(),
        "/",
    )
    .await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn bad_authorities_are_400() {
    let proxy = proxy::new().run().await;
    let rsp = client::get(proxy.outbound, "web:notaport", "/").await;
    assert_eq!(rsp.status, 400);
    assert!(
        rsp.header("mesh-proxy-error")
            .starts_with("invalid authority"),
        "{:?}",
        rsp.headers
    );
    // HTTP/1.0 without Host and without an original destination: nothing to route to.
    let got = raw(proxy.outbound, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 400"), "{got}");
    assert!(
        got.contains("mesh-proxy-error: request has no authority"),
        "{got}"
    );
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_proxy_lives_on() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n"[..],
        b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        // Headers are fine, so the request goes on; its chunked body is not.
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let got = raw(proxy.inbound, bad).await;
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "answer to {:?}: {got}",
            String::from_utf8_lossy(bad)
        );
    }
    // Still serving.
    assert_eq!(client::get(proxy.inbound, "a", "/").await.status, 200);
}

#[tokio::test]
async fn oversize_headers_are_431() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .app(app.addr)
        .env("MAX_HEADER_BYTES", 16 * 1024)
        .run()
        .await;
    let big = "x".repeat(32 * 1024);
    let got = raw(
        proxy.inbound,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let got = raw(
        proxy.inbound,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert_eq!(client::get(proxy.inbound, "a", "/").await.status, 200);
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .app(app.addr)
        .env("HEADER_READ_TIMEOUT", "300ms")
        .run()
        .await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
            cut = true;
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut b)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "the proxy kept a dribbling client for 10 s");
    assert_eq!(client::get(proxy.inbound, "a", "/").await.status, 200);
}

#[tokio::test]
async fn h2_garbage_after_the_preface_does_not_hurt_the_proxy() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0xff; 64]);
    let _ = raw(proxy.inbound, &bytes).await;
    let mut tx = client::h2(proxy.inbound).await;
    let req = Request::get("http://a/")
        .version(http::Version::HTTP_2)
        .body(client::body(Bytes::new()))
        .expect("req");
    assert_eq!(tx.send_request(req).await.expect("rsp").status(), 200);
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .app(app.addr)
        .env("MAX_CONNECTIONS", 1)
        .run()
        .await;
    // The first connection holds the only slot.
    let mut first = client::h1(proxy.inbound).await;
    let req = Request::get("/")
        .header("host", "a")
        .body(client::body(Bytes::new()))
        .expect("req");
    assert_eq!(first.send_request(req).await.expect("rsp").status(), 200);
    let inbound = proxy.inbound;
    let second = tokio::spawn(async move { client::get(inbound, "a", "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served beyond the limit"
    );
    drop(first);
    let rsp = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served")
        .expect("join");
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn a_peer_cannot_aim_the_inbound_proxy_at_its_own_ports() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    let admin_port = proxy.admin.port().to_string();
    let mut tx = client::h1(proxy.inbound).await;
    let req = Request::get("/metrics")
        .header("host", "a")
        .header("mesh-target-port", admin_port)
        .body(client::body(Bytes::new()))
        .expect("req");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(rsp.status, 502);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        "request would loop back to the proxy"
    );
}
