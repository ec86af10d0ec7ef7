//! Identity and mTLS, end to end with real TLS on both sides: the `mesh-identity` CA
//! issues certificates to proxies by service-account token; meshed proxies
//! authenticate each other, check the identity discovery promised, carry HTTP/1 over
//! HTTP/2, and tell the app who called; strict inbound refuses everything else;
//! certificates and issuers rotate without a failed request.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use mesh_api::identity::dns_name;
use mesh_test::identity::{self, Identity};
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{client, controller, proxy};

async fn pod(id: &Identity, sa: &str, mode: &str, anchors: Option<&Path>) -> Pod {
    Pod::start(PodSpec {
        identity: Some(id),
        mode,
        anchors,
        ..PodSpec::new(pod_ip(), sa, "shop")
    })
    .await
}

/// The controller's folder: namespace `shop` (meshed), service `web` on port 80 to
/// 8080, and a pod `web-0` at `ip` running as service account `sa`.
fn write_world(dir: &Path, ip: IpAddr, sa: &str) {
    let yaml = format!(
        "{}---\n{}",
        mesh::service_yaml("web", "shop"),
        mesh::pod_yaml("web-0", "shop", "web", sa, ip)
    );
    mesh::write(dir, "world", &yaml);
}

const WEB: &str = "web.shop.svc.cluster.local";

struct Mesh {
    _dirs: [tempfile::TempDir; 3],
    id: Identity,
    _ctl: controller::Controller,
    web: Pod,
    client: proxy::Proxy,
}

/// An identity service, a controller, a strict `web` pod and a client proxy running
/// as `client`, all with mTLS. `lifetime` is the leaf lifetime.
async fn mesh(lifetime: &str) -> Mesh {
    mesh_as(lifetime, "web").await
}

/// [`mesh`], with the pod's proxy running as service account `sa` while discovery
/// says `web`.
async fn mesh_as(lifetime: &str, sa: &str) -> Mesh {
    let (ca, work, world) = (tmp(), tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, lifetime, work.path()).await;
    let web = pod(&id, sa, "strict", None).await;
    write_world(world.path(), web.ip, "web");
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = id
        .proxy(proxy::new(), "client", "shop")
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    client.wait_ready().await;
    Mesh {
        _dirs: [ca, work, world],
        id,
        _ctl: ctl,
        web,
        client,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test]
async fn meshed_proxies_authenticate_each_other_and_tell_the_app() {
    let m = mesh("24h").await;
    let web_id = dns_name("web", "shop");
    let client_id = dns_name("client", "shop");

    // The app learns the verified caller, whatever the caller claimed.
    let mut tx = client::h1(m.client.outbound).await;
    let req = http::Request::get("/headers")
        .header("host", WEB)
        .header(
            "mesh-client-id",
            "admin.kube-system.serviceaccount.identity.mesh.cluster.local",
        )
        .body(client::body(bytes::Bytes::new()))
        .expect("request");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(rsp.status, 200, "{:?} {}", rsp.headers, rsp.text());
    let seen: Vec<String> = rsp
        .text()
        .lines()
        .filter(|l| l.starts_with("mesh-client-id:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(seen, vec![format!("mesh-client-id: {client_id}")]);

    // HTTP/1 from the app, HTTP/1 at the app, HTTP/2 in between: concurrent requests
    // from separate client connections share one mTLS connection to the pod.
    let version = client::get(m.client.outbound, WEB, "/version").await;
    assert_eq!(version.text(), "HTTP/1.1");
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client::get(m.client.outbound, WEB, "/sleep/200")))
        .collect();
    for r in slow {
        assert_eq!(r.await.expect("join").status, 200);
    }
    let tls_conns = m
        .web
        .proxy
        .metric(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src"), ("tls", "true")],
        )
        .await;
    assert_eq!(
        tls_conns, 1,
        "HTTP/1 was not multiplexed over one HTTP/2 connection"
    );

    // Both proxies' metrics name the other side.
    let outbound = m
        .client
        .metric(
            "response_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", &web_id),
            ],
        )
        .await;
    assert_eq!(outbound, 10, "{}", m.client.metrics().await);
    let inbound = m
        .web
        .proxy
        .metric(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &client_id),
            ],
        )
        .await;
    assert_eq!(inbound, 10, "{}", m.web.proxy.metrics().await);
    let responses = m
        .web
        .proxy
        .metric(
            "response_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &client_id),
            ],
        )
        .await;
    assert_eq!(responses, 10, "{}", m.web.proxy.metrics().await);

    // Strict: plaintext to the pod's inbound port is refused.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let mut tx = client::h1(SocketAddr::new(m.web.ip, 4143)).await;
        let req = http::Request::get("/")
            .header("host", "web")
            .body(client::body(bytes::Bytes::new()))
            .expect("request");
        tx.send_request(req).await
    })
    .await
    .expect("refused promptly");
    assert!(plain.is_err(), "plaintext reached a strict pod: {plain:?}");

    // The identity service counted what it issued.
    let metrics = m.id.metrics().await;
    assert_eq!(
        proxy::sum_metric(&metrics, "identity_cert_issued_total", &[]),
        2,
        "{metrics}"
    );
}

#[tokio::test]
async fn strict_inbound_refuses_clients_without_a_valid_mesh_certificate() {
    let m = mesh("24h").await;
    let inbound = SocketAddr::new(m.web.ip, 4143);
    let web_id = dns_name("web", "shop");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    // The positive control: a certificate from the mesh's CA gets through, and the
    // server presents the identity discovery promises.
    let good = identity::client_cert(&m.id.ca_dir, "probe", "shop", now - hour, 2 * hour);
    // A `Connection` header naming the identity header cannot make the proxy drop it.
    let ok = identity::probe_with(
        inbound,
        &web_id,
        Some(&good),
        "/headers",
        "mesh-client-id: forged\r\nx-a: 1\r\nconnection: mesh-client-id, x-a\r\n",
    )
    .await;
    let text = ok.response.expect("a valid client certificate is accepted");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("mesh-client-id: {}", dns_name("probe", "shop"))),
        "{text}"
    );
    assert!(!text.contains("forged") && !text.contains("x-a:"), "{text}");
    let (_, leaf) = x509_parser::parse_x509_certificate(&ok.server_chain[0]).expect("leaf");
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .expect("san ext")
        .expect("san")
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(names.contains(&format!("DNSName({web_id})")), "{names:?}");

    // No client certificate.
    let none = identity::probe(inbound, &web_id, None, "/").await;
    assert!(
        none.response.is_err(),
        "no certificate: {:?}",
        none.response
    );

    // A certificate from another CA.
    let other_ca = tmp();
    identity::new_ca(other_ca.path());
    let foreign = identity::client_cert(other_ca.path(), "client", "shop", now - hour, 2 * hour);
    let r = identity::probe(inbound, &web_id, Some(&foreign), "/").await;
    assert!(r.response.is_err(), "foreign CA: {:?}", r.response);

    // An expired certificate from the mesh's own CA.
    let expired = identity::client_cert(&m.id.ca_dir, "client", "shop", now - 3 * hour, hour);
    let r = identity::probe(inbound, &web_id, Some(&expired), "/").await;
    assert!(r.response.is_err(), "expired: {:?}", r.response);
}

/// A meshed peer says what it carries by ALPN; one that negotiates none (or another
/// protocol) is closed rather than sniffed, so that no meshed workload can pass bytes to
/// the app raw with a `mesh-client-id` of its choosing.
#[tokio::test]
async fn meshed_peers_without_a_mesh_alpn_are_closed_not_sniffed() {
    let m = mesh("24h").await;
    let inbound = SocketAddr::new(m.web.ip, 4143);
    let web_id = dns_name("web", "shop");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let cert = identity::client_cert(&m.id.ca_dir, "probe", "shop", now - hour, 2 * hour);
    let forged = format!(
        "\r\nGET /headers HTTP/1.1\r\nhost: app\r\nmesh-client-id: {}\r\nconnection: close\r\n\r\n",
        dns_name("admin", "mesh")
    );
    for alpn in [&[][..], &[b"x-other".as_slice()][..]] {
        let r = identity::probe_raw(inbound, &web_id, Some(&cert), alpn, forged.as_bytes()).await;
        let text = r.response.unwrap_or_default();
        assert!(
            !text.contains("admin.mesh"),
            "ALPN {alpn:?}: the forged identity reached the app: {text}"
        );
        assert!(
            !text.contains("HTTP/1.1 200"),
            "ALPN {alpn:?}: served: {text}"
        );
    }
    // The same bytes with the mesh's ALPN are HTTP: the app hears the verified identity.
    let r = identity::probe_raw(
        inbound,
        &web_id,
        Some(&cert),
        &[b"http/1.1"],
        forged.as_bytes(),
    )
    .await;
    let text = r.response.expect("served with the mesh's ALPN");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("mesh-client-id: {}", dns_name("probe", "shop")))
            && !text.contains("admin.mesh"),
        "{text}"
    );
}

/// The app's own TLS (a ClientHello naming no mesh identity) passes through a
/// permissive pod to the app byte for byte, and is refused by a strict one.
#[tokio::test]
async fn app_tls_passes_through_permissive_pods_only() {
    let (ca, work) = (tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let echo = mesh_test::backend::tcp_echo(None).await;
    let hello = identity::client_hello("db.example.com");
    for (mode, passes) in [("permissive", true), ("strict", false)] {
        let proxy = id
            .proxy(proxy::new(), "db", "shop")
            .app(echo)
            .env("INBOUND_TLS", mode)
            .run()
            .await;
        proxy.wait_ready().await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(proxy.inbound)
            .await
            .expect("connect");
        conn.write_all(&hello).await.expect("write");
        let mut back = vec![0u8; hello.len()];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back)).await;
        match read {
            Ok(Ok(_)) => assert!(passes && back == hello, "{mode}: echoed through"),
            Ok(Err(_)) => assert!(!passes, "{mode}: closed instead of passing through"),
            Err(_) => panic!("{mode}: neither echoed nor closed"),
        }
    }
}

#[tokio::test]
async fn permissive_inbound_accepts_plaintext_and_labels_it() {
    let (ca, work) = (tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let web = pod(&id, "web", "permissive", None).await;
    let rsp = client::get(SocketAddr::new(web.ip, 4143), "web", "/").await;
    assert_eq!(rsp.status, 200);
    assert_eq!(
        web.proxy
            .metric(
                "request_total",
                &[("direction", "inbound"), ("tls", "no_identity")]
            )
            .await,
        1
    );
    // Plaintext may not name another port of the pod.
    let mut tx = client::h1(SocketAddr::new(web.ip, 4143)).await;
    let req = http::Request::get("/")
        .header("host", "web")
        .header("mesh-target-port", "4191")
        .body(client::body(bytes::Bytes::new()))
        .expect("request");
    let rsp = client::send(&mut tx, req).await;
    assert_eq!(
        rsp.text(),
        "hello",
        "the header was honoured from plaintext"
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused_and_reported() {
    // Discovery says the pod runs as `web`; its proxy holds `impostor`'s identity.
    let m = mesh_as("24h", "impostor").await;
    let (caller, pod) = (&m.client, &m.web);
    let rsp = client::get(caller.outbound, WEB, "/").await;
    assert_eq!(rsp.status, 502, "{}", rsp.text());
    let error = rsp.header("mesh-proxy-error");
    assert!(
        error.contains("identity mismatch")
            && error.contains(&dns_name("web", "shop"))
            && error.contains(&dns_name("impostor", "shop")),
        "{error}"
    );
    assert_eq!(
        pod.proxy
            .metric("request_total", &[("direction", "inbound")])
            .await,
        0,
        "the request reached the impostor"
    );
}

/// One token cannot mint certificates at will, nor one source flood the token
/// reviewer: both are rate-limited, refusals answered RESOURCE_EXHAUSTED and counted.
#[tokio::test]
async fn certificate_requests_are_rate_limited_per_token_and_source() {
    let (ca, work) = (tmp(), tmp());
    let generated = identity::new_ca(ca.path());
    let id = identity::start_with(
        ca.path(),
        None,
        "24h",
        work.path(),
        &[("RATE_PER_TOKEN", "3"), ("RATE_PER_SOURCE", "6")],
    )
    .await;
    let mut grpc = identity::grpc_client(id.addr, generated.trust_anchor_pem.as_bytes()).await;
    let (token_a, _) = id.token("a", "shop", false);
    let (token_b, _) = id.token("b", "shop", false);
    let (a, b) = (dns_name("a", "shop"), dns_name("b", "shop"));
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (csr_a, csr_b) = (identity::csr(&a, p256), identity::csr(&b, p256));
    for i in 0..3 {
        let ok = identity::certify(&mut grpc, &token_a, &a, &csr_a).await;
        assert!(ok.is_ok(), "request {i} within a's budget: {ok:?}");
    }
    let limited = identity::certify(&mut grpc, &token_a, &a, &csr_a)
        .await
        .expect_err("a's token is over its budget");
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    assert!(limited.message().contains("a.shop"), "{limited:?}");
    // Another token from the same source still has its own budget...
    for _ in 0..2 {
        assert!(
            identity::certify(&mut grpc, &token_b, &b, &csr_b)
                .await
                .is_ok()
        );
    }
    // ...until the source's is spent (6 requests): then even b is refused, before its
    // token is looked at (an unknown token gets the same answer).
    let limited = identity::certify(&mut grpc, &token_b, &b, &csr_b)
        .await
        .expect_err("the source is over its budget");
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
    assert!(limited.message().contains("127.0.0.1"), "{limited:?}");
    let unknown = identity::certify(&mut grpc, "nobody", &b, &csr_b)
        .await
        .expect_err("still limited");
    assert_eq!(unknown.code(), tonic::Code::ResourceExhausted);
    let metrics = id.metrics().await;
    assert_eq!(
        mesh_test::proxy::sum_metric(
            &metrics,
            "identity_cert_rejected_total",
            &[("reason", "rate_limited_token")]
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        mesh_test::proxy::sum_metric(
            &metrics,
            "identity_cert_rejected_total",
            &[("reason", "rate_limited_source")]
        ),
        2,
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_only_buy_their_own_identity() {
    let (ca, work) = (tmp(), tmp());
    let generated = identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let mut grpc = identity::grpc_client(id.addr, generated.trust_anchor_pem.as_bytes()).await;
    let (token_a, _) = id.token("a", "shop", false);
    let (expired, _) = id.token("c", "shop", true);
    let a = dns_name("a", "shop");
    let b = dns_name("b", "shop");
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;

    let ok = identity::certify(&mut grpc, &token_a, &a, &identity::csr(&a, p256)).await;
    let leaf = ok.expect("a gets a").leaf_certificate;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).expect("leaf");
    assert!(
        leaf.subject_alternative_name()
            .expect("ext")
            .expect("san")
            .value
            .general_names
            .iter()
            .any(|n| n.to_string() == format!("DNSName({a})"))
    );

    let cases = [
        (
            "a's token asking for b",
            token_a.as_str(),
            b.clone(),
            identity::csr(&b, p256),
            tonic::Code::PermissionDenied,
        ),
        (
            "a's token, a CSR naming b",
            token_a.as_str(),
            a.clone(),
            identity::csr(&b, p256),
            tonic::Code::PermissionDenied,
        ),
        (
            "a tampered CSR",
            token_a.as_str(),
            a.clone(),
            identity::tamper(identity::csr(&a, p256)),
            tonic::Code::InvalidArgument,
        ),
        (
            "a P-384 key",
            token_a.as_str(),
            a.clone(),
            identity::csr(&a, &rcgen::PKCS_ECDSA_P384_SHA384),
            tonic::Code::InvalidArgument,
        ),
        (
            "garbage for a CSR",
            token_a.as_str(),
            a.clone(),
            b"garbage".to_vec(),
            tonic::Code::InvalidArgument,
        ),
        (
            "an unknown token",
            "no-such-token",
            a.clone(),
            identity::csr(&a, p256),
            tonic::Code::Unauthenticated,
        ),
        (
            "an expired token",
            expired.as_str(),
            dns_name("c", "shop"),
            identity::csr(&dns_name("c", "shop"), p256),
            tonic::Code::Unauthenticated,
        ),
    ];
    for (what, token, name, csr, code) in cases {
        let err = identity::certify(&mut grpc, token, &name, &csr)
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what}: the status says why");
    }
    let metrics = id.metrics().await;
    for (reason, n) in [
        ("wrong_identity", 2),
        ("bad_signature", 1),
        ("unsupported_key", 1),
        ("malformed_csr", 1),
        ("unknown_token", 1),
        ("expired_token", 1),
    ] {
        assert_eq!(
            proxy::sum_metric(
                &metrics,
                "identity_cert_rejected_total",
                &[("reason", reason)]
            ),
            n,
            "{reason}: {metrics}"
        );
    }
    assert_eq!(
        proxy::sum_metric(&metrics, "identity_cert_issued_total", &[]),
        1
    );
    assert!(proxy::sum_metric(&metrics, "identity_issuer_expiry_timestamp_seconds", &[]) > 0);
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let m = Arc::new(mesh("1m").await);
    let inbound = SocketAddr::new(m.web.ip, 4143);
    let web_id = dns_name("web", "shop");
    let now = SystemTime::now();
    let probe_cert = identity::client_cert(
        &m.id.ca_dir,
        "probe",
        "shop",
        now - Duration::from_secs(60),
        Duration::from_secs(3600),
    );

    // Steady load for as long as it takes to see several renewals (bounded).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (m, stop, ok, failed) = (m.clone(), stop.clone(), ok.clone(), failed.clone());
        async move {
            let mut tx = client::h1(m.client.outbound).await;
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let rsp = client::get_on(&mut tx, WEB, "/").await;
                if rsp.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {} {:?}", rsp.status, rsp.headers);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut serials = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(170);
    while serials.len() < 4 && tokio::time::Instant::now() < deadline {
        let probe = identity::probe(inbound, &web_id, Some(&probe_cert), "/").await;
        assert!(probe.response.is_ok(), "{:?}", probe.response);
        let serial = probe.serial();
        if serials.last() != Some(&serial) {
            eprintln!("served serial {serial}");
            serials.push(serial);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.expect("load");
    assert!(
        serials.len() >= 4,
        "served serials over the run: {serials:?}"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across renewals"
    );
    assert!(
        ok.load(Ordering::SeqCst) > 1000,
        "load too thin: {}",
        ok.load(Ordering::SeqCst)
    );
    let issued = proxy::sum_metric(&m.id.metrics().await, "identity_cert_issued_total", &[]);
    assert!(issued >= 6, "two proxies renewing: {issued} certificates");
}

#[tokio::test]
async fn issuer_and_trust_anchor_rotate_with_a_bundle() {
    let (old, new, work, world, bundle_dir) = (tmp(), tmp(), tmp(), tmp(), tmp());
    let old_ca = identity::new_ca(old.path());
    let new_ca = identity::new_ca(new.path());
    // Step 1 of the plan: every proxy trusts both anchors.
    let bundle = bundle_dir.path().join("bundle.crt");
    std::fs::write(
        &bundle,
        format!("{}{}", old_ca.trust_anchor_pem, new_ca.trust_anchor_pem),
    )
    .expect("bundle");
    // The identity service issues from the old issuer, in a folder it watches.
    let issuer_dir = tmp();
    for f in ["tls.crt", "tls.key"] {
        std::fs::copy(old.path().join(f), issuer_dir.path().join(f)).expect("copy");
    }
    let id = identity::start(issuer_dir.path(), Some(&bundle), "15s", work.path()).await;
    let web = pod(&id, "web", "strict", Some(&bundle)).await;
    write_world(world.path(), web.ip, "web");
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = id
        .proxy(proxy::new(), "client", "shop")
        .env("DESTINATION_ADDR", ctl.destination)
        .env("TRUST_ANCHORS", bundle.display())
        .run()
        .await;
    client.wait_ready().await;
    let web_id = dns_name("web", "shop");
    let inbound = SocketAddr::new(web.ip, 4143);
    let probe_cert = identity::client_cert(
        old.path(),
        "probe",
        "shop",
        SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    let presented_issuer = || async {
        identity::probe(inbound, &web_id, Some(&probe_cert), "/")
            .await
            .server_chain[1]
            .clone()
    };
    let pem_der = |pem: &str| {
        mesh_identity::ca::parse_certs("issuer", pem.as_bytes()).expect("pem")[0].clone()
    };
    assert_eq!(presented_issuer().await, pem_der(&old_ca.issuer_cert_pem));
    assert_eq!(client::get(client.outbound, WEB, "/").await.status, 200);

    // Step 2: the new issuer (under the new anchor) replaces the old one in place.
    for f in ["tls.key", "tls.crt"] {
        std::fs::copy(new.path().join(f), issuer_dir.path().join(f)).expect("copy");
    }
    // Requests keep working while some proxies hold old-issuer certificates and some
    // new ones, until every proxy has renewed under the new issuer.
    let new_issuer = pem_der(&new_ca.issuer_cert_pem);
    let mut tx = client::h1(client.outbound).await;
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while presented_issuer().await != new_issuer {
        assert!(
            tokio::time::Instant::now() < deadline,
            "web never renewed under the new issuer"
        );
        let rsp = client::get_on(&mut tx, WEB, "/").await;
        assert_eq!(rsp.status, 200, "{:?}", rsp.headers);
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(n > 0);
    // Step 3: a proxy trusting only the new anchor (the old one removed) talks to web.
    let new_only = id
        .proxy(proxy::new(), "late", "shop")
        .env("DESTINATION_ADDR", ctl.destination)
        .env("TRUST_ANCHORS", new.path().join("ca.crt").display())
        .run()
        .await;
    new_only.wait_ready().await;
    let rsp = client::get(new_only.outbound, WEB, "/").await;
    assert_eq!(rsp.status, 200, "{:?}", rsp.headers);
    // What web presents now verifies under the new anchor alone, and no longer under
    // the old one: step 3 (dropping the old anchor) is safe for it.
    let chain = identity::probe(inbound, &web_id, Some(&probe_cert), "/")
        .await
        .server_chain;
    assert!(identity::verifies(
        &chain,
        &web_id,
        new_ca.trust_anchor_pem.as_bytes()
    ));
    assert!(!identity::verifies(
        &chain,
        &web_id,
        old_ca.trust_anchor_pem.as_bytes()
    ));
    drop(ctl);
}

#[tokio::test]
async fn bad_identity_settings_are_clear_errors() {
    // The proxy needs a name and trust anchors beside the identity address.
    let out = std::process::Command::new(mesh_test::bin_path("mesh-proxy"))
        .env_clear()
        .env("MESH_PROXY_IDENTITY_ADDR", "127.0.0.1:1")
        .env("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0")
        .env("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MESH_PROXY_IDENTITY_NAME"), "{err}");
    // The identity service refuses an issuer that is not under its anchors.
    let (a, b) = (tmp(), tmp());
    identity::new_ca(a.path());
    identity::new_ca(b.path());
    let out = std::process::Command::new(mesh_test::bin_path("mesh-identity"))
        .env_clear()
        .env("MESH_IDENTITY_ISSUER_DIR", a.path())
        .env("MESH_IDENTITY_TRUST_ANCHORS", b.path().join("ca.crt"))
        .env("MESH_IDENTITY_TOKENS", "file:/nonexistent")
        .env("MESH_IDENTITY_ADDR", "127.0.0.1:0")
        .env("MESH_IDENTITY_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not signed by any of the trust anchors"),
        "{err}"
    );
}
