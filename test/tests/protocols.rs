//! Every protocol the proxy carries, end to end through the real binary: HTTP/1 (both
//! ways of naming the target, keep-alive, chunked and multi-megabyte bodies,
//! `Expect: 100-continue`), WebSocket upgrades, h2c with trailers, gRPC in all four
//! streaming shapes, and opaque TCP with half-close.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use mesh_test::grpc::{EchoClient, EchoRequest};
use mesh_test::{backend, client, grpc, proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn http1_outbound_by_host_header_and_as_http_proxy() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;

    let rsp = client::get(proxy.outbound, &app.authority(), "/").await;
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "hello"));

    // Absolute-form, as an app with http_proxy set sends it: the backend must see
    // origin-form and the URI's authority as Host, not the stale Host header.
    let mut tx = client::h1(proxy.outbound).await;
    let uri = format!("http://{}/headers", app.authority());
    let rsp = client::get_on(&mut tx, "stale:1", &uri).await;
    assert_eq!(rsp.status, 200);
    assert!(
        rsp.text().contains(&format!("host: {}\n", app.authority())),
        "{}",
        rsp.text()
    );
}

#[tokio::test]
async fn http1_inbound_forwards_to_the_app_and_strips_hop_by_hop_headers() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    let mut tx = client::h1(proxy.inbound).await;
    let req = Request::get("/headers")
        .header("host", "web.default:80")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-app", "passes")
        .body(client::body(Bytes::new()))
        .expect("req");
    let rsp = client::send(&mut tx, req).await;
    let seen = rsp.text();
    assert!(seen.contains("x-app: passes"), "{seen}");
    assert!(seen.contains("host: web.default:80"), "{seen}");
    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(!seen.contains(&format!("{gone}:")), "{gone} leaked: {seen}");
    }
}

#[tokio::test]
async fn http1_trailers_pass_through_when_the_client_asks_for_them() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let mut tx = client::h1(proxy.outbound).await;
    let req = Request::get("/trailers")
        .header("host", app.authority())
        .header("te", "trailers")
        .body(client::body(Bytes::new()))
        .expect("req");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(rsp.text(), "part1,part2");
    assert_eq!(rsp.trailers.expect("trailers")["x-checksum"], "abc123");
}

#[tokio::test]
async fn keep_alive_reuses_one_upstream_connection() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let mut tx = client::h1(proxy.outbound).await;
    for _ in 0..20 {
        let req = Request::get("/")
            .header("host", app.authority())
            .body(client::body(Bytes::new()))
            .expect("req");
        assert_eq!(client::send(&mut tx, req).await.status, 200);
    }
    assert_eq!(app.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn multi_megabyte_bodies_arrive_intact_both_ways() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let big = backend::pattern(5 * 1024 * 1024 + 7);

    // Download.
    let rsp = client::get(
        proxy.outbound,
        &app.authority(),
        &format!("/size/{}", big.len()),
    )
    .await;
    assert_eq!(rsp.body.len(), big.len());
    assert!(rsp.body == big, "downloaded body differs");

    // Upload with a chunked (streamed, length-unknown) body, echoed back.
    let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = big
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
    let mut tx = client::h1(proxy.outbound).await;
    let req = Request::post("/echo")
        .header("host", app.authority())
        .body(body)
        .expect("req");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(rsp.status, 200);
    assert!(
        rsp.body == big,
        "echoed body differs ({} bytes)",
        rsp.body.len()
    );
}

#[tokio::test]
async fn expect_100_continue_is_honoured() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let mut tcp = TcpStream::connect(proxy.outbound).await.expect("connect");
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        app.authority()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .expect("read");
    let got = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(got.starts_with("HTTP/1.1 100 Continue"), "{got}");
    tcp.write_all(b"hello").await.expect("write body");
    let mut all = got;
    while !all.ends_with("hello") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("rsp")
            .expect("read");
        assert!(n > 0, "closed early: {all}");
        all.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(all.contains("HTTP/1.1 200 OK"), "{all}");
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let ws = backend::websocket_echo().await;
    let proxy = proxy::new().run().await;
    let tcp = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut socket, rsp) = tokio_tungstenite::client_async(format!("ws://{ws}/chat"), tcp)
        .await
        .expect("ws handshake");
    assert_eq!(rsp.status(), 101);
    for i in 0..5 {
        let text = format!("message {i}");
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(text.clone()))
            .await
            .expect("send");
        let echoed = socket.next().await.expect("echo").expect("frame");
        assert_eq!(echoed.to_text().expect("text"), text);
    }
    let big = vec![7u8; 1 << 20];
    socket
        .send(tokio_tungstenite::tungstenite::Message::binary(big.clone()))
        .await
        .expect("send");
    let echoed = socket.next().await.expect("echo").expect("frame");
    assert_eq!(echoed.into_data().as_ref(), &big[..]);
}

#[tokio::test]
async fn h2c_streams_with_trailers() {
    let app = backend::http().await;
    let proxy = proxy::new().run().await;
    let mut tx = client::h2(proxy.outbound).await;
    let uri = format!("http://{}/trailers", app.authority());
    let req = Request::get(uri)
        .version(Version::HTTP_2)
        .body(client::body(Bytes::new()))
        .expect("req");
    let rsp = client::read(tx.send_request(req).await.expect("rsp")).await;
    assert_eq!(rsp.text(), "part1,part2");
    let trailers = rsp.trailers.expect("trailers");
    assert_eq!(trailers["x-checksum"], "abc123");

    // Many concurrent streams over one client connection.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut tx = tx.clone();
        let uri = format!("http://{}/size/{}", app.authority(), 1000 + i);
        calls.push(tokio::spawn(async move {
            let req = Request::get(uri)
                .version(Version::HTTP_2)
                .body(client::body(Bytes::new()))
                .expect("req");
            client::read(tx.send_request(req).await.expect("rsp"))
                .await
                .body
                .len()
        }));
    }
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.expect("join"), 1000 + i);
    }
}

#[tokio::test]
async fn grpc_unary_and_streaming_in_both_directions() {
    let echo = grpc::serve().await;
    let proxy = proxy::new().app(echo).run().await;
    // Outbound by authority, and inbound to the app: both paths carry gRPC.
    for (via, authority) in [
        (proxy.outbound, echo.to_string()),
        (proxy.inbound, "echo.default:50051".into()),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{via}"))
            .expect("uri")
            .origin(format!("http://{authority}").parse().expect("origin"))
            .connect()
            .await
            .expect("connect");
        let mut c = EchoClient::new(channel);

        let r = c
            .unary(EchoRequest {
                message: "hi".into(),
                ..Default::default()
            })
            .await
            .expect("unary");
        assert_eq!(r.into_inner().message, "hi");

        let mut s = c
            .server_stream(EchoRequest {
                message: "n".into(),
                count: 100,
                fail_with: 0,
            })
            .await
            .expect("server stream")
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.expect("message") {
            got.push(m.message);
        }
        assert_eq!(got.len(), 100);
        assert_eq!(got[99], "n-99");

        let msgs = (0..10).map(|i| EchoRequest {
            message: format!("m{i}"),
            ..Default::default()
        });
        let r = c
            .client_stream(futures_util::stream::iter(msgs))
            .await
            .expect("client stream");
        assert_eq!(r.into_inner().message, "m0,m1,m2,m3,m4,m5,m6,m7,m8,m9");

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = c
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("bidi")
            .into_inner();
        for word in ["ping", "pong"] {
            tx.send(EchoRequest {
                message: word.into(),
                ..Default::default()
            })
            .await
            .expect("send");
            let reply = replies.message().await.expect("reply").expect("some");
            assert_eq!(reply.message, word.to_uppercase());
        }
        drop(tx);
        assert!(replies.message().await.expect("end").is_none());

        // An error status and its custom metadata travel back in the trailers.
        let err = c
            .unary(EchoRequest {
                message: "x".into(),
                count: 0,
                fail_with: tonic::Code::NotFound as i32,
            })
            .await
            .expect_err("fails");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(
            err.metadata().get("x-echo-detail").expect("trailer"),
            "custom-trailer"
        );
    }
}

#[tokio::test]
async fn opaque_tcp_is_forwarded_byte_for_byte_with_half_close() {
    let echo = backend::tcp_echo(None).await;
    let proxy = proxy::new().app(echo).run().await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    // Binary that is neither HTTP/1 nor HTTP/2.
    tcp.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    tcp.write_all(&payload).await.expect("write");
    // Half-close: we are done writing, but still read everything the server sends.
    tcp.shutdown().await.expect("shutdown write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got))
        .await
        .expect("echo")
        .expect("read");
    let n = payload.len() + 3;
    assert_eq!(&got[..3], &[0x16, 0x03, 0x01]);
    assert!(got[3..n] == payload[..], "echoed bytes differ");
    assert_eq!(String::from_utf8_lossy(&got[n..]), format!("\nbytes={n}\n"));
    let read = mesh_test::eventually("tcp byte counters", Duration::from_secs(5), || async {
        let m = proxy
            .metric(
                "tcp_read_bytes_total",
                &[("direction", "inbound"), ("peer", "src")],
            )
            .await;
        (m == n as u64).then_some(m)
    })
    .await;
    assert_eq!(read, n as u64);
}

#[tokio::test]
async fn server_speaks_first_protocols_work_after_detection_times_out() {
    let echo = backend::tcp_echo(Some(b"220 smtp ready\r\n")).await;
    let proxy = proxy::new()
        .app(echo)
        .env("DETECT_TIMEOUT", "200ms")
        .run()
        .await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    let mut banner = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut banner))
        .await
        .expect("banner")
        .expect("read");
    assert_eq!(&banner, b"220 smtp ready\r\n");
    tcp.write_all(b"HELO x\r\n").await.expect("write");
    let mut line = [0u8; 8];
    tcp.read_exact(&mut line).await.expect("echo");
    assert_eq!(&line, b"HELO x\r\n");
}

#[tokio::test]
async fn websocket_tunnels_count_against_the_connection_limit() {
    let ws = backend::websocket_echo().await;
    let app = backend::http().await;
    let proxy = proxy::new().env("MAX_CONNECTIONS", 1).run().await;
    let tcp = TcpStream::connect(proxy.outbound).await.expect("connect");
    let (mut socket, _) = tokio_tungstenite::client_async(format!("ws://{ws}/"), tcp)
        .await
        .expect("ws handshake");
    // The tunnel holds the only slot even though its HTTP connection has ended.
    let (outbound, host) = (proxy.outbound, app.authority());
    let waiting = tokio::spawn(async move { client::get(outbound, &host, "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a request was served beyond the connection limit"
    );
    let msg = tokio_tungstenite::tungstenite::Message::text("still open");
    socket.send(msg).await.expect("send");
    let echoed = socket.next().await.expect("echo").expect("frame");
    assert_eq!(echoed.to_text().expect("text"), "still open");
    socket.close(None).await.expect("close");
    drop(socket);
    let rsp = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the tunnel closed")
        .expect("join");
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn a_text_protocol_whose_first_word_looks_like_a_method_stays_opaque() {
    // Redis's own protocol (RESP) on any port: a `*` line is no request line.
    let echo = backend::tcp_echo(None).await;
    let proxy = proxy::new().app(echo).run().await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    tcp.write_all(b"*1\r\n$4\r\nPING\r\n").await.expect("write");
    let mut line = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut line))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&line, b"*1\r\n$4\r\nPING\r\n");
    // An inline command (an upper-case word and a space) is what a lenient HTTP server
    // would take for an HTTP/0.9 request, so it needs an opaque port; there it passes.
    let proxy = proxy::new()
        .app(echo)
        .env("OPAQUE_PORTS", echo.port())
        .run()
        .await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    tcp.write_all(b"SET key value\r\n").await.expect("write");
    let mut line = [0u8; 15];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut line))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&line, b"SET key value\r\n");
}
