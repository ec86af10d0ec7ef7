//! Regressions for the holes adversarial testing found, end to end against the real
//! binaries on loopback: forged identity headers, loops into the proxy itself, route
//! regexes that stall it, hung backends and idle connections that take every slot, and
//! ambiguous request heads.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use mesh_test::{backend, client, proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FORGED: &str = "admin.mesh.serviceaccount.identity.mesh.cluster.local";

/// Writes each of `parts` (pausing `pause` between them) and returns what comes back
/// until the other side closes or 5 s pass.
async fn raw_parts(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        // The proxy may already have closed a stalled connection.
        if tcp.write_all(part).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    raw_parts(addr, &[bytes], Duration::ZERO).await
}

/// Requests an HTTP server accepts, in spellings the old protocol detection called
/// opaque: each must be handled as HTTP, so the app never sees a `mesh-client-id` the
/// client wrote. The app here is hyper, which parses all of them.
#[tokio::test]
async fn a_forged_client_id_never_reaches_the_app() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    for request_line in [
        "\r\nGET /headers HTTP/1.1",
        "\r\n\r\nGET /headers HTTP/1.1",
        "get /headers HTTP/1.1",
        "GET /headers HTTP/1.1",
        "GET\t/headers\tHTTP/1.1",
        "\x0bGET /headers HTTP/1.1",
    ] {
        let request = format!(
            "{request_line}\r\nhost: app\r\nmesh-client-id: {FORGED}\r\nconnection: close\r\n\r\n"
        );
        let rsp = raw(proxy.inbound, request.as_bytes()).await;
        assert!(
            !rsp.contains(FORGED),
            "{request_line:?}: the forged identity reached the app:\n{rsp}"
        );
        // Handled as HTTP: served, or refused by the parser (hyper takes no tabs), never
        // passed on raw.
        assert!(rsp.starts_with("HTTP/1.1 "), "{request_line:?}:\n{rsp}");
    }
    // Not HTTP at all: still opaque TCP (Redis's protocol, a binary one).
    let echo = backend::tcp_echo(None).await;
    let proxy = proxy::new().app(echo).run().await;
    let resp = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(raw(proxy.inbound, resp).await.as_bytes(), resp);
    let postgres = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    tcp.write_all(postgres).await.expect("write");
    let mut echoed = [0u8; 8];
    tcp.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, postgres);
}

/// A request line held back past the detect timeout never reaches the app raw (where
/// the rest of it, headers and all, would go unchecked): a method alone is closed; a
/// method and a separator are HTTP already, and get HTTP's handling when the rest comes.
#[tokio::test]
async fn a_stalled_request_line_is_closed_not_forwarded() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .app(app.addr)
        .env("DETECT_TIMEOUT", "300ms")
        .run()
        .await;
    let rest = format!(
        " /headers HTTP/1.1\r\nhost: app\r\nmesh-client-id: {FORGED}\r\nconnection: close\r\n\r\n"
    );
    let rsp = raw_parts(
        proxy.inbound,
        &[b"\r\nGE", format!("T{rest}").as_bytes()],
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(rsp, "", "a stalled request line got an answer");
    assert_eq!(
        app.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the app saw the stalled request"
    );
    let rsp = raw_parts(
        proxy.inbound,
        &[b"GET ", &rest.as_bytes()[1..]],
        Duration::from_millis(800),
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(!rsp.contains(FORGED), "{rsp}");
    // A server-speaks-first client that sends nothing still gets opaque TCP.
    let echo = backend::tcp_echo(Some(b"220 ready\r\n")).await;
    let proxy = proxy::new()
        .app(echo)
        .env("DETECT_TIMEOUT", "200ms")
        .run()
        .await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut banner))
        .await
        .expect("banner in time")
        .expect("banner");
    assert_eq!(&banner, b"220 ready\r\n");
}

/// Ports declared opaque skip detection: a server-speaks-first protocol gets its
/// banner through at once, whatever the detect timeout.
#[tokio::test]
async fn opaque_ports_skip_detection() {
    let echo = backend::tcp_echo(Some(b"220 ready\r\n")).await;
    let proxy = proxy::new()
        .app(echo)
        .env("DETECT_TIMEOUT", "60s")
        .env("OPAQUE_PORTS", echo.port())
        .run()
        .await;
    let mut tcp = TcpStream::connect(proxy.inbound).await.expect("connect");
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut banner))
        .await
        .expect("the banner came before the 60 s detect timeout")
        .expect("banner");
    assert_eq!(&banner, b"220 ready\r\n");
    // Even HTTP is bytes there.
    tcp.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let mut echoed = [0u8; 16];
    tcp.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"GET / HTTP/1.1\r\n");
}

/// The outbound port never reaches the proxy's own listeners, however their address
/// is spelled, and the admin server refuses what the proxy relays to it.
#[tokio::test]
async fn the_outbound_port_never_reaches_the_proxy_itself() {
    let mut proxy = proxy::new()
        .env("ADMIN_ADDR", "0.0.0.0:0")
        .env("SHUTDOWN_ENDPOINT_ENABLED", true)
        .run()
        .await;
    let admin = proxy.admin.port();
    let outbound = proxy.outbound.port();
    for target in [
        format!("0.0.0.0:{admin}"),
        format!("127.0.0.1:{admin}"),
        format!("127.0.0.7:{admin}"),
        format!("[::ffff:127.0.0.1]:{admin}"),
        format!("[::ffff:0.0.0.0]:{admin}"),
        format!("0.0.0.0:{outbound}"),
        format!("[::ffff:127.0.0.1]:{outbound}"),
        format!("127.0.0.1:{outbound}"),
    ] {
        let mut tx = client::h1(proxy.outbound).await;
        let req = Request::post(format!("http://{target}/shutdown"))
            .header("host", &target)
            .body(client::body(Bytes::new()))
            .expect("request");
        let rsp = client::send(&mut tx, req).await;
        assert_eq!(rsp.status, 502, "{target}: {rsp:?}");
        assert_eq!(
            rsp.header("mesh-proxy-error"),
            "request would loop back to the proxy",
            "{target}"
        );
    }
    // Still running, and no recursion ate its memory or connection slots.
    let live = client::get(SocketAddr::from(([127, 0, 0, 1], admin)), "admin", "/live").await;
    assert_eq!(live.status, 200);
    assert!(proxy_rss_kib(&proxy) < 100 * 1024, "RSS grew");
    // Shutdown itself still works from the pod, when enabled.
    let mut tx = client::h1(SocketAddr::from(([127, 0, 0, 1], admin))).await;
    let req = Request::post("/shutdown")
        .header("host", "admin")
        .body(client::body(Bytes::new()))
        .expect("request");
    assert_eq!(client::send(&mut tx, req).await.status, 200);
    assert!(proxy.wait(Duration::from_secs(10)).await.success());
}

/// The proxy's resident set, from /proc.
fn proxy_rss_kib(proxy: &proxy::Proxy) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// `POST /shutdown` is off unless enabled: a process that merely runs on the pod's
/// loopback cannot stop the proxy by default.
#[tokio::test]
async fn shutdown_is_disabled_by_default() {
    let proxy = proxy::new().run().await;
    let mut tx = client::h1(proxy.admin).await;
    let req = Request::post("/shutdown")
        .header("host", "admin")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(rsp.status, 403);
    assert!(rsp.text().contains("MESH_PROXY_SHUTDOWN_ENDPOINT_ENABLED"));
    assert_eq!(client::get(proxy.admin, "a", "/live").await.status, 200);
}

/// Two `Host` headers are ambiguous (which one routes?): 400, as RFC 9112 asks.
#[tokio::test]
async fn two_host_headers_are_refused() {
    let app = backend::http().await;
    let proxy = proxy::new().app(app.addr).run().await;
    let request = format!(
        "GET /headers HTTP/1.1\r\nhost: {}\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
        app.authority()
    );
    for addr in [proxy.outbound, proxy.inbound] {
        let rsp = raw(addr, request.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{addr}: {rsp}");
        assert!(rsp.contains("more than one Host header"), "{rsp}");
    }
    assert_eq!(app.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Paths longer than the limit get 414 before any route is matched against them.
#[tokio::test]
async fn over_long_paths_get_414() {
    let app = backend::http().await;
    let proxy = proxy::new().env("MAX_PATH_BYTES", 1024).run().await;
    let long = format!("/{}", "a".repeat(2000));
    let rsp = client::get(proxy.outbound, &app.authority(), &long).await;
    assert_eq!(rsp.status, 414);
    let ok = format!("/{}", "a".repeat(1000));
    assert_eq!(
        client::get(proxy.outbound, &app.authority(), &ok)
            .await
            .status,
        200
    );
}

/// A hung backend holds at most its destination's share of the in-flight slots, and
/// its requests end at the default response-headers timeout: other destinations keep
/// being served.
#[tokio::test]
async fn a_hung_backend_cannot_starve_other_destinations() {
    let hung = backend::http().await;
    let healthy = backend::http().await;
    let proxy = proxy::new()
        .env("MAX_IN_FLIGHT_PER_DESTINATION", 4)
        .env("MAX_IN_FLIGHT_REQUESTS", 6)
        .env("RESPONSE_HEADERS_TIMEOUT", "2s")
        .run()
        .await;
    // Four requests hang (the app sleeps far longer than the timeout), over h2c.
    let mut h2 = client::h2(proxy.outbound).await;
    let mut hanging = Vec::new();
    for _ in 0..4 {
        let req = Request::get(format!("http://{}/sleep/60000", hung.authority()))
            .body(client::body(Bytes::new()))
            .expect("request");
        let rsp = h2.send_request(req);
        hanging.push(tokio::spawn(async move {
            rsp.await.map(|r| r.status().as_u16())
        }));
    }
    mesh_test::eventually(
        "four requests in flight",
        Duration::from_secs(5),
        || async { (hung.requests.load(std::sync::atomic::Ordering::SeqCst) >= 4).then_some(()) },
    )
    .await;
    // The hung destination's share is taken: a fifth gets 503 at once...
    let rsp = client::get(proxy.outbound, &hung.authority(), "/").await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        rsp.header("mesh-proxy-error"),
        format!("too many requests in flight to {}", hung.authority())
    );
    // ...while another destination is served.
    assert_eq!(
        client::get(proxy.outbound, &healthy.authority(), "/")
            .await
            .status,
        200
    );
    // The hung requests end with 504 at the response-headers timeout.
    for h in hanging {
        let status = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("the default timeout ended the hung request")
            .expect("join")
            .expect("response");
        assert_eq!(status, 504);
    }
    // And their slots are back.
    assert_eq!(
        client::get(proxy.outbound, &hung.authority(), "/")
            .await
            .status,
        200
    );
}

/// An HTTP/2 connection with no stream open is closed after the idle timeout, so idle
/// clients cannot hold every connection slot; one with a stream open is not.
#[tokio::test]
async fn idle_h2_connections_are_closed() {
    let app = backend::http().await;
    let proxy = proxy::new()
        .env("HTTP2_IDLE_TIMEOUT", "500ms")
        .app(app.addr)
        .run()
        .await;
    for listener in [proxy.outbound, proxy.inbound] {
        // Idle from the handshake on.
        let idle = client::h2(listener).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !idle.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the idle connection was closed");
        // A stream longer than the idle timeout is served to its end.
        let mut busy = client::h2(listener).await;
        let req = Request::get(format!("http://{}/sleep/1500", app.authority()))
            .body(client::body(Bytes::new()))
            .expect("request");
        let rsp = client::read(busy.send_request(req).await.expect("response")).await;
        assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "slept"));
    }
}

/// The folder source reads files off the async runtime and only regular ones: a FIFO
/// named `*.yaml` (whose read would block for ever) and an oversized file are refused,
/// and everything else keeps loading and reloading.
#[tokio::test]
async fn the_folder_source_survives_fifos_and_huge_files() {
    use mesh_test::{controller, mesh};
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("stuck.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let huge = std::fs::File::create(dir.path().join("huge.yaml")).expect("create");
    huge.set_len(17 << 20).expect("grow");
    let ip = mesh::pod_ip();
    mesh::write(
        dir.path(),
        "world",
        &format!(
            "{}---\n{}",
            mesh::service_yaml("web", "shop"),
            mesh::pod_yaml("web-0", "shop", "web", "web", ip)
        ),
    );
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    ctl.wait_for_endpoints("web.shop.svc.cluster.local:80")
        .await;
    // A change after start still arrives: the watch was not blocked by the FIFO.
    mesh::write(dir.path(), "api", &mesh::service_yaml("api", "shop"));
    mesh::write(
        dir.path(),
        "api-pod",
        &mesh::pod_yaml("api-0", "shop", "api", "api", mesh::pod_ip()),
    );
    ctl.wait_for_endpoints("api.shop.svc.cluster.local:80")
        .await;
}

/// A ServiceProfile whose route regex would stall the proxy is refused by the real
/// controller (the reason names the field), so no proxy ever compiles it; a valid
/// edit of the same profile is served.
#[tokio::test]
async fn a_stalling_route_regex_is_refused_by_the_controller() {
    use mesh_api::policy::{
        OutboundPolicyRequest, outbound_policies_client::OutboundPoliciesClient,
    };
    use mesh_test::{controller, mesh};
    let dir = tempfile::tempdir().expect("tempdir");
    mesh::write(dir.path(), "web", &mesh::service_yaml("web", "shop"));
    let profile = |regex: &str| {
        format!(
            "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n\
             metadata: {{name: web.shop.svc.cluster.local, namespace: shop}}\n\
             spec:\n  routes:\n  - name: evil\n    condition: {{pathRegex: '{regex}'}}\n"
        )
    };
    mesh::write(dir.path(), "profile", &profile("(?:[a-z0-9/]{1,60}){200}Z"));
    let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let mut client = OutboundPoliciesClient::connect(format!("http://{}", ctl.destination))
        .await
        .expect("connect");
    let mut profiles = client
        .watch(OutboundPolicyRequest {
            authority: "web.shop.svc.cluster.local:80".into(),
            namespace: "shop".into(),
        })
        .await
        .expect("OutboundPolicies.Watch")
        .into_inner();
    let first = profiles
        .message()
        .await
        .expect("stream")
        .expect("a profile");
    assert!(
        first.routes.is_empty(),
        "the stalling route was served: {first:?}"
    );
    mesh::write(dir.path(), "profile", &profile("/books/[^/]+"));
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), profiles.message())
        .await
        .expect("the valid edit arrives")
        .expect("stream")
        .expect("a profile");
    assert_eq!(next.routes.len(), 1);
}
