//! Tap end to end: a real proxy streams its live calls, filtered, to a watcher on
//! loopback (the admin port) and over mTLS to the tap client identity only; a
//! watcher's filter is checked; no watcher, no cost beyond a load (not measured
//! here: see docs/benchmarks.md).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use mesh_test::{backend, client, identity, proxy};
use serde_json::Value;
use tokio::sync::mpsc;

/// Reads a streamed response's lines into a channel, for as long as it lasts.
fn lines(rsp: http::Response<hyper::body::Incoming>) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel(1000);
    tokio::spawn(async move {
        let mut body = rsp.into_body();
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(v) = serde_json::from_slice(&line)
                    && tx.send(v).await.is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::Receiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a tapped call within 10s")
        .expect("the tap stream ended")
}

async fn watch_admin(admin: std::net::SocketAddr, query: &str) -> mpsc::Receiver<Value> {
    let mut tx = client::h1(admin).await;
    let req = http::Request::get(format!("/tap?{query}"))
        .header("host", "admin")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = tx.send_request(req).await.expect("tap");
    assert_eq!(rsp.status(), 200);
    // The connection is served in the background for as long as the stream lasts.
    tokio::spawn(async move {
        let _keep = tx;
        std::future::pending::<()>().await;
    });
    lines(rsp)
}

#[tokio::test]
async fn a_local_watcher_sees_the_calls_its_filter_selects() {
    let app = backend::http().await;
    let server = proxy::new().app(app.addr).run().await;
    let client_proxy = proxy::new().run().await;
    let mut inbound = watch_admin(server.admin, "path=/status/&method=get").await;
    let mut outbound = watch_admin(client_proxy.admin, "direction=outbound").await;
    // Wait until both watchers are in place.
    mesh_test::eventually("watchers subscribed", Duration::from_secs(5), || async {
        let req = http::Request::get("/status/201")
            .header("host", "books.shop.svc.cluster.local")
            .body(client::body(Bytes::new()))
            .expect("request");
        let rsp = client::send(&mut client::h1(server.inbound).await, req).await;
        assert_eq!(rsp.status, 201);
        Some(())
    })
    .await;
    let first = next(&mut inbound).await;
    assert_eq!(first["direction"], "inbound");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/status/201");
    assert_eq!(first["status"], 201);
    assert_eq!(first["authority"], "books.shop.svc.cluster.local");
    assert_eq!(first["tls"], "disabled");
    assert!(
        first["latency_ms"].as_f64().is_some_and(|l| l > 0.0),
        "{first}"
    );
    assert!(
        first["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    // Filtered out: another path, another method.
    let _ = client::get(server.inbound, "books", "/").await;
    let req = http::Request::post("/status/202")
        .header("host", "books")
        .body(client::body(Bytes::new()))
        .expect("request");
    let _ = client::send(&mut client::h1(server.inbound).await, req).await;
    let _ = client::get(server.inbound, "books", "/status/203").await;
    assert_eq!(next(&mut inbound).await["path"], "/status/203");

    // Outbound, through the client's proxy: the endpoint that answered.
    let _ = client::get(client_proxy.outbound, &app.authority(), "/status/200").await;
    let out = next(&mut outbound).await;
    assert_eq!(out["direction"], "outbound");
    assert_eq!(out["endpoint"], app.addr.to_string());
    assert_eq!(out["status"], 200);

    // A bad filter is refused, naming the field.
    let rsp = client::get(server.admin, "admin", "/tap?direction=sideways").await;
    assert_eq!(rsp.status, 400);
    assert!(rsp.text().contains("direction"), "{}", rsp.text());
    let rsp = client::get(server.admin, "admin", "/tap?colour=red").await;
    assert_eq!(rsp.status, 400);
}

#[tokio::test]
async fn over_mtls_only_the_tap_client_identity_may_watch() {
    let (ca, work) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let app = backend::http().await;
    let server = id
        .proxy(proxy::new(), "books", "shop")
        .app(app.addr)
        .env("TAP_ADDR", "127.0.0.1:0")
        .run()
        .await;
    server.wait_ready().await;
    let tap = server.tap.expect("a tap listener with an identity");
    let sni = mesh_api::identity::dns_name("books", "shop");
    let cert = |sa: &str, ns: &str| {
        identity::client_cert(
            ca.path(),
            sa,
            ns,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
    };
    // Not viz: refused.
    let intruder = cert("intruder", "shop");
    let refused = identity::probe(tap, &sni, Some(&intruder), "/tap").await;
    let text = refused.response.expect("an answer");
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(text.contains("mesh-viz.mesh.serviceaccount"), "{text}");
    // No certificate: no handshake.
    let anonymous = identity::probe(tap, &sni, None, "/tap").await;
    assert!(anonymous.response.is_err(), "{:?}", anonymous.response);

    // viz's identity: the stream of calls.
    let viz = cert("mesh-viz", "mesh");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&id.anchors).expect("anchors");
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(c.expect("pem")).expect("root");
        }
        roots
    })
    .with_client_auth_cert(viz.chain.clone(), viz.key.clone_key())
    .expect("client cert");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tap).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.clone()).expect("name");
    // The server is checked as the proxy's identity, like any meshed peer.
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("http");
    tokio::spawn(conn);
    let req = http::Request::get("/tap?path=/status")
        .header("host", "tap")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = send.send_request(req).await.expect("tap");
    assert_eq!(rsp.status(), 200);
    let mut calls = lines(rsp);
    let mut tx = client::h1(server.inbound).await;
    for _ in 0..3 {
        let _ = client::get_on(&mut tx, "books", "/status/204").await;
    }
    let call = next(&mut calls).await;
    assert_eq!(call["status"], 204);
    assert_eq!(
        call["server_id"].as_str(),
        Some(sni.as_str()),
        "the tapped proxy names itself: {call}"
    );
}
