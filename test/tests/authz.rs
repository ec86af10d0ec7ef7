//! Who may call whom, end to end with real mTLS: the examples' Istio security objects
//! (`shared/examples/istio/security.yaml`, `ratelimit-envoyfilter.yaml`) applied as
//! written from a folder, meshed pods calling each other through their proxies, and
//! what each proxy admits, refuses (403), refuses to plaintext (STRICT) and rate
//! limits (429), counted in its metrics; policy changes apply without restarts, and a
//! bad object leaves the last good policy in force.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use mesh_test::identity::{self, Identity};
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{client, controller};

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/examples/istio")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pods: (name, namespace, app label, service account).
const PODS: [(&str, &str, &str, &str); 6] = [
    ("httpbin-0", "default", "httpbin", "httpbin"),
    ("sleep-0", "default", "sleep", "sleep"),
    ("other-0", "default", "other", "other"),
    ("productpage-0", "default", "productpage", "productpage"),
    (
        "order-service-0",
        "production",
        "order-service",
        "order-service",
    ),
    ("api-gateway-0", "production", "api-gateway", "api-gateway"),
];

/// A pod: (name, namespace, app label, service account).
type PodRow = (&'static str, &'static str, &'static str, &'static str);

/// An issuer's JWKS served over HTTPS on loopback, as `raw.githubusercontent.com` (the
/// examples' `jwksUri`), and a signer for its key.
struct Issuer {
    /// Signs tokens the served keys verify.
    signer: jsonwebtoken::EncodingKey,
    /// The controller's settings that make it fetch from here.
    env: Vec<(String, String)>,
    /// How many times the document was fetched.
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _roots: tempfile::TempDir,
}

const JWKS_HOST: &str = "raw.githubusercontent.com";
const JWKS_PATH: &str = "/istio/istio/release-1.14/security/tools/jwt/samples/jwks.json";

impl Issuer {
    async fn start() -> Self {
        use base64::Engine;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string();
        let signer = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        // The server's certificate, self-signed, is the controller's extra root.
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![JWKS_HOST.into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let roots = tempfile::tempdir().expect("tmp");
        let roots_file = roots.path().join("roots.pem");
        std::fs::write(&roots_file, cert.pem()).expect("write roots");
        let tls = mesh_controller::webhook::tls_config(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = fetches.clone();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, jwks, counted) = (acceptor.clone(), jwks.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let ok = req.uri().path() == JWKS_PATH;
                        if ok {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let rsp = http::Response::builder()
                            .status(if ok { 200 } else { 404 })
                            .body(http_body_util::Full::new(bytes::Bytes::from(if ok {
                                jwks.clone()
                            } else {
                                String::new()
                            })));
                        async move { rsp }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            signer,
            env: vec![
                (
                    "MESH_CONTROLLER_JWKS_RESOLVE".into(),
                    format!("{JWKS_HOST}:443={addr}"),
                ),
                (
                    "MESH_CONTROLLER_JWKS_ROOTS".into(),
                    roots_file.display().to_string(),
                ),
            ],
            fetches,
            _roots: roots,
        }
    }

    /// A token of the examples' issuer, expiring in `ttl_s` seconds (negative: expired).
    fn token(&self, groups: &[&str], ttl_s: i64) -> String {
        token(&self.signer, groups, ttl_s)
    }
}

fn token(signer: &jsonwebtoken::EncodingKey, groups: &[&str], ttl_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "testing@secure.istio.io",
        "sub": "testing@secure.istio.io",
        "groups": groups,
        "exp": now + ttl_s,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, signer).expect("token")
}

struct World {
    rows: &'static [PodRow],
    issuer: Option<Issuer>,
    _ca: tempfile::TempDir,
    _work: tempfile::TempDir,
    dir: tempfile::TempDir,
    _id: Identity,
    _ctl: controller::Controller,
    pods: Vec<Pod>,
}

impl World {
    /// The examples' world: their pods, `security.yaml` and the rate-limit EnvoyFilter.
    async fn start() -> Self {
        let issuer = Issuer::start().await;
        let mut w = Self::start_with(
            &PODS,
            mesh::pod_yaml,
            &[
                ("security", example("security.yaml")),
                ("ratelimit", example("ratelimit-envoyfilter.yaml")),
            ],
            &issuer.env,
        )
        .await;
        w.issuer = Some(issuer);
        w
    }

    /// `rows` as pods (each's YAML from `pod_yaml`) behind Services on port 80, in
    /// meshed namespaces, with `files` beside them.
    async fn start_with(
        rows: &'static [PodRow],
        pod_yaml: fn(&str, &str, &str, &str, IpAddr) -> String,
        files: &[(&str, String)],
        controller_env: &[(String, String)],
    ) -> Self {
        let (ca, work, dir) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        identity::new_ca(ca.path());
        let id = identity::start(ca.path(), None, "24h", work.path()).await;
        let ips: Vec<IpAddr> = rows.iter().map(|_| pod_ip()).collect();
        let mut yaml = String::new();
        let mut namespaces: Vec<&str> = rows.iter().map(|r| r.1).collect();
        namespaces.push("dev");
        namespaces.sort_unstable();
        namespaces.dedup();
        for ns in namespaces {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, annotations: {{mesh.io/inject: enabled}}}}\n"
            ));
        }
        for ((name, ns, app, sa), ip) in rows.iter().zip(&ips) {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: {ns}}}\n\
                 spec: {{selector: {{app: {app}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n---\n{}",
                pod_yaml(name, ns, app, sa, *ip)
            ));
        }
        mesh::write(dir.path(), "world", &yaml);
        for (name, text) in files {
            mesh::write(dir.path(), name, text);
        }
        let ctl = controller::start_with(
            dir.path(),
            "127.0.0.1:0".parse().expect("addr"),
            controller_env,
        )
        .await;
        for (_, ns, app, _) in rows {
            ctl.wait_for_endpoints(&format!("{app}.{ns}.svc.cluster.local:80"))
                .await;
        }
        let mut pods = Vec::new();
        for ((name, ns, _, sa), ip) in rows.iter().zip(ips) {
            pods.push(
                Pod::start(PodSpec {
                    identity: Some(&id),
                    destination: Some(ctl.destination),
                    name: Some(name),
                    ..PodSpec::new(ip, sa, ns)
                })
                .await,
            );
        }
        Self {
            rows,
            issuer: None,
            _ca: ca,
            _work: work,
            dir,
            _id: id,
            _ctl: ctl,
            pods,
        }
    }

    fn pod(&self, name: &str) -> &Pod {
        let i = self
            .rows
            .iter()
            .position(|(n, ..)| n.starts_with(name))
            .expect("a pod of that name");
        &self.pods[i]
    }

    /// `from`'s app calls `to`'s Service through `from`'s proxy (mTLS between them).
    async fn call(&self, from: &str, method: &str, to: &str, path: &str) -> client::Reply {
        let (_, ns, app, _) = self
            .rows
            .iter()
            .find(|(n, ..)| n.starts_with(to))
            .expect("a pod of that name");
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{app}.{ns}.svc.cluster.local"))
            .body(client::body(bytes::Bytes::new()))
            .expect("request");
        client::send(&mut client::h1(self.pod(from).proxy.outbound).await, req).await
    }

    async fn status(&self, from: &str, method: &str, to: &str, path: &str) -> u16 {
        self.call(from, method, to, path).await.status.as_u16()
    }

    /// A plaintext request straight to `to`'s inbound port: `None` when the
    /// connection is refused.
    async fn plaintext(&self, to: &str, path: &str) -> Option<u16> {
        let addr = SocketAddr::new(self.pod(to).ip, 4143);
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut tx = client::try_h1(addr).await?;
            let req = http::Request::get(path)
                .header("host", "app")
                .body(client::body(bytes::Bytes::new()))
                .ok()?;
            tx.send_request(req).await.ok().map(|r| r.status().as_u16())
        })
        .await
        .ok()
        .flatten()
    }
}

#[tokio::test]
async fn the_examples_security_objects_decide_who_calls_whom() {
    let w = World::start().await;

    // `httpbin` (ALLOW): sleep may GET /info*; `require-jwt` (ALLOW) needs a JWT
    // principal nobody here has; with ALLOW policies, nothing else is admitted.
    assert_eq!(w.status("sleep", "GET", "httpbin", "/info").await, 200);
    assert_eq!(
        w.status("sleep", "GET", "httpbin", "/info/x?y=1").await,
        200
    );
    assert_eq!(
        w.status("sleep", "GET", "httpbin", "/status/200").await,
        403
    );
    assert_eq!(w.status("sleep", "POST", "httpbin", "/info").await, 403);
    assert_eq!(w.status("other", "GET", "httpbin", "/info").await, 403);
    assert_eq!(
        w.plaintext("httpbin", "/info").await,
        Some(403),
        "no principal"
    );
    // A denial names no internals.
    let denied = w.call("other", "GET", "httpbin", "/info").await;
    assert!(
        !denied.text().contains("AuthorizationPolicy"),
        "{}",
        denied.text()
    );

    // `jwt-auth` and `require-jwt`: the controller fetched the issuer's keys from its
    // `jwksUri` (served on loopback); a valid token of group1 admits any call, even
    // from a workload `httpbin`'s own ALLOW does not admit.
    let issuer = w.issuer.as_ref().expect("the examples' issuer");
    let with_token = |token: String, path: &'static str| {
        let outbound = w.pod("other").proxy.outbound;
        async move {
            let req = http::Request::get(path)
                .header("host", "httpbin.default.svc.cluster.local")
                .header("authorization", format!("Bearer {token}"))
                .body(client::body(bytes::Bytes::new()))
                .expect("request");
            client::send(&mut client::h1(outbound).await, req)
                .await
                .status
                .as_u16()
        }
    };
    mesh_test::eventually("the JWKS is fetched", Duration::from_secs(20), || async {
        (with_token(issuer.token(&["group1"], 300), "/status/200").await == 200).then_some(())
    })
    .await;
    assert!(issuer.fetches.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Valid, but not of group1: no ALLOW admits it.
    assert_eq!(
        with_token(issuer.token(&["group2"], 300), "/status/200").await,
        403
    );
    // Expired, garbled, or signed by a key the issuer does not publish: 401.
    assert_eq!(
        with_token(issuer.token(&["group1"], -120), "/status/200").await,
        401
    );
    assert_eq!(with_token("not.a.token".into(), "/info").await, 401);
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let forged = token(
        &jsonwebtoken::EncodingKey::from_ec_der(&stranger.serialize_der()),
        &["group1"],
        300,
    );
    assert_eq!(with_token(forged, "/status/200").await, 401);
    // No token: only httpbin's own ALLOW could admit, and it does not for `other`.
    assert_eq!(
        w.status("other", "GET", "httpbin", "/status/200").await,
        403
    );

    // `order-service-policy`: GET and POST from api-gateway only; the namespace is
    // STRICT (`production/default`), so plaintext is refused outright.
    assert_eq!(
        w.status("api-gateway", "GET", "order-service", "/").await,
        200
    );
    assert_eq!(
        w.status("api-gateway", "POST", "order-service", "/").await,
        200
    );
    assert_eq!(
        w.status("api-gateway", "DELETE", "order-service", "/")
            .await,
        403
    );
    assert_eq!(w.status("sleep", "GET", "order-service", "/").await, 403);
    assert_eq!(w.plaintext("order-service", "/").await, None, "STRICT");
    assert_eq!(
        w.plaintext("sleep", "/").await,
        Some(200),
        "default is permissive"
    );

    // The proxy counts by policy and client identity.
    let metrics = w.pod("httpbin").proxy.metrics().await;
    let line = |name: &str, needle: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && l.contains(needle))
    };
    assert!(
        line(
            "inbound_http_authz_allow_total",
            "authz_name=\"default/httpbin\""
        ) && line(
            "inbound_http_authz_allow_total",
            "client_id=\"sleep.default.serviceaccount.identity.mesh.cluster.local\""
        ),
        "{metrics}"
    );
    assert!(
        line(
            "inbound_http_authz_deny_total",
            "client_id=\"other.default.serviceaccount.identity.mesh.cluster.local\""
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn policies_change_without_restarts_and_bad_ones_keep_the_last_good() {
    let w = World::start().await;
    assert_eq!(
        w.status("sleep", "GET", "httpbin", "/info/secret").await,
        200
    );
    // A DENY rule is checked before every ALLOW.
    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                metadata: {name: no-secrets, namespace: default}\n\
                spec: {selector: {matchLabels: {app: httpbin}}, action: DENY, \
                rules: [{to: [{operation: {paths: [\"/info/secret*\"]}}]}]}\n";
    let file = mesh::write(w.dir.path(), "deny", deny);
    mesh_test::eventually("the DENY applies", Duration::from_secs(10), || async {
        (w.status("sleep", "GET", "httpbin", "/info/secret").await == 403).then_some(())
    })
    .await;
    assert_eq!(w.status("sleep", "GET", "httpbin", "/info").await, 200);

    // The same object made invalid (CUSTOM is not supported): refused, the last good
    // version stays in force.
    mesh::replace(&file, &deny.replace("action: DENY", "action: CUSTOM"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.status("sleep", "GET", "httpbin", "/info/secret").await,
        403
    );

    // Removed: admitted again.
    std::fs::remove_file(&file).expect("remove");
    mesh_test::eventually("the DENY is gone", Duration::from_secs(10), || async {
        (w.status("sleep", "GET", "httpbin", "/info/secret").await == 200).then_some(())
    })
    .await;

    // `spec: {}` over a namespace admits nothing by itself: only what another ALLOW
    // admits passes; `rules: [{}]` beside it admits all.
    let all = "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
               metadata: {name: allow-nothing, namespace: default}\nspec: {}\n";
    let file = mesh::write(w.dir.path(), "allow-nothing", all);
    mesh_test::eventually(
        "spec: {} admits nothing",
        Duration::from_secs(10),
        || async { (w.status("other", "GET", "sleep", "/").await == 403).then_some(()) },
    )
    .await;
    assert_eq!(
        w.status("sleep", "GET", "httpbin", "/info").await,
        200,
        "httpbin's ALLOW"
    );
    mesh::replace(
        &file,
        &format!(
            "{all}---\napiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n\
             metadata: {{name: allow-all, namespace: default}}\nspec: {{rules: [{{}}]}}\n"
        ),
    );
    mesh_test::eventually(
        "rules: [{}] admits all",
        Duration::from_secs(10),
        || async {
            (w.status("other", "POST", "httpbin", "/status/200").await == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_examples_envoyfilter_rate_limit_bites_with_429() {
    let w = World::start().await;
    // 100 tokens, 100 more every 60 s: about 100 calls pass, then 429.
    let started = Instant::now();
    let mut passed = 0;
    let mut limited = None;
    for _ in 0..200 {
        let rsp = w.call("sleep", "GET", "productpage", "/").await;
        match rsp.status.as_u16() {
            200 => passed += 1,
            429 => {
                limited = Some(rsp);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let limited = limited.expect("the limit never bit");
    // Tokens trickle back at 100 per 60 s while the loop runs.
    let refilled = (started.elapsed().as_millis() / 600) as i32 + 1;
    assert!(
        (100..=100 + refilled).contains(&passed),
        "{passed} passed in {:?}",
        started.elapsed()
    );
    let retry: u64 = limited
        .header("retry-after")
        .parse()
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // Other workloads are not limited.
    assert_eq!(w.status("sleep", "GET", "other", "/").await, 200);
    let metrics = w.pod("productpage").proxy.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("inbound_http_local_ratelimit_rejected_total")
                && l.contains("authz_name=\"default/rate-limit\"")
        ),
        "{metrics}"
    );
}

/// Linkerd's world: emojivoto's pods, `web` serving a port named `http` with a
/// readiness probe on it.
const EMOJIVOTO: [PodRow; 4] = [
    ("web-0", "emojivoto", "web", "web"),
    ("voting-0", "emojivoto", "voting", "voting"),
    ("emoji-0", "emojivoto", "emoji", "emoji"),
    ("vote-bot-0", "emojivoto", "vote-bot", "vote-bot"),
];

fn emojivoto_pod(name: &str, ns: &str, app: &str, sa: &str, ip: IpAddr) -> String {
    // `emoji` admits meshed clients only, by its own annotation.
    let annotations = if app == "emoji" {
        ", annotations: {config.linkerd.io/default-inbound-policy: all-authenticated}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}{annotations}}}\n\
         spec:\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: x\n    ports: [{{name: http, containerPort: 8080}}]\n    readinessProbe: {{httpGet: {{path: /ready, port: http}}}}\n\
         status: {{podIP: \"{ip}\"}}\n"
    )
}

/// Linkerd's policy objects, as Linkerd's docs write them.
const LINKERD_POLICY: &str = r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: web-http, namespace: emojivoto}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: web-api, namespace: emojivoto}
spec:
  parentRefs: [{name: web-http, kind: Server, group: policy.linkerd.io}]
  rules: [{matches: [{path: {type: PathPrefix, value: /api}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-health, namespace: emojivoto}
spec:
  parentRefs: [{name: web-http, kind: Server, group: policy.linkerd.io}]
  rules: [{matches: [{path: {type: Exact, value: /healthz}}]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: vote-bot, namespace: emojivoto}
spec:
  identities: ["vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-api, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: web-api}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: vote-bot}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: loopback, namespace: emojivoto}
spec:
  networks: [{cidr: 127.0.0.0/8, except: [127.255.255.0/24]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-health, namespace: emojivoto}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web-health}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: loopback}
---
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: voting, namespace: emojivoto}
spec:
  podSelector: {matchLabels: {app: voting}}
  port: 8080
  accessPolicy: all-authenticated
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: voting, namespace: emojivoto}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: voting}
  identity: {requestsPerSecond: 5}
  overrides:
  - requestsPerSecond: 1000
    clientRefs: [{kind: ServiceAccount, name: web}]
"#;

#[tokio::test]
async fn linkerds_policy_objects_decide_who_calls_whom() {
    let w = World::start_with(
        &EMOJIVOTO,
        emojivoto_pod,
        &[("linkerd", LINKERD_POLICY.to_string())],
        &[],
    )
    .await;

    // `web-http` (accessPolicy deny by default): `/api` is vote-bot's alone (by its
    // Linkerd identity, mapped to the mesh's); `/healthz` anyone on loopback's; a
    // path no route of the Server takes is 404; the readiness probe passes.
    assert_eq!(w.status("vote-bot", "GET", "web", "/api/vote").await, 200);
    assert_eq!(w.status("voting", "GET", "web", "/api/vote").await, 403);
    assert_eq!(w.status("voting", "GET", "web", "/healthz").await, 200);
    assert_eq!(w.plaintext("web", "/healthz").await, Some(200));
    assert_eq!(w.plaintext("web", "/api/vote").await, Some(403));
    assert_eq!(w.status("vote-bot", "GET", "web", "/elsewhere").await, 404);

    // `voting` (all-authenticated): meshed clients pass, plaintext is refused (403).
    assert_eq!(w.status("emoji", "GET", "voting", "/").await, 200);
    assert_eq!(w.plaintext("voting", "/").await, Some(403));

    // `emoji`'s own annotation (all-authenticated, no Server): the same, but its
    // kubelet probe still passes in plaintext.
    assert_eq!(w.status("web", "GET", "emoji", "/list").await, 200);
    assert_eq!(w.plaintext("emoji", "/list").await, Some(403));
    assert_eq!(w.plaintext("emoji", "/ready").await, Some(200), "the probe");
    // `vote-bot` decides nothing: everyone passes.
    assert_eq!(w.plaintext("vote-bot", "/").await, Some(200));

    // `voting`'s rate limit: 5 per second per identity, 1000 for web. A burst of 20
    // from emoji is cut to about 5; web's 20 all pass.
    let mut limited = 0;
    for _ in 0..20 {
        if w.status("emoji", "GET", "voting", "/").await == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 limited");
    for _ in 0..20 {
        assert_eq!(w.status("web", "GET", "voting", "/").await, 200);
    }

    let metrics = w.pod("web").proxy.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("inbound_http_authz_deny_total")
                && l.contains(
                    "client_id=\"voting.emojivoto.serviceaccount.identity.mesh.cluster.local\""
                )),
        "{metrics}"
    );
}

#[tokio::test]
async fn linkerd_policy_changes_apply_and_bad_objects_keep_the_last_good() {
    let w = World::start_with(
        &EMOJIVOTO,
        emojivoto_pod,
        &[("linkerd", LINKERD_POLICY.to_string())],
        &[],
    )
    .await;
    assert_eq!(w.status("voting", "GET", "web", "/api/vote").await, 403);

    // voting joins the MeshTLSAuthentication (by ServiceAccount reference).
    let both = LINKERD_POLICY.replace(
        "identities: [\"vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local\"]",
        "identityRefs: [{kind: ServiceAccount, name: vote-bot}, {kind: ServiceAccount, name: voting}]",
    );
    let file = w.dir.path().join("linkerd.yaml");
    mesh::replace(&file, &both);
    mesh_test::eventually("voting is admitted", Duration::from_secs(10), || async {
        (w.status("voting", "GET", "web", "/api/vote").await == 200).then_some(())
    })
    .await;

    // A bad version (identities and identityRefs both) is refused: the last good
    // one stays.
    mesh::replace(
        &file,
        &both.replace("identityRefs:", "identities: [\"*\"]\n  identityRefs:"),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.status("voting", "GET", "web", "/api/vote").await, 200);
    assert_eq!(w.status("emoji", "GET", "web", "/api/vote").await, 403);

    // The route's AuthorizationPolicy gone: the Server's `deny` refuses everyone.
    let without: Vec<&str> = both
        .split("\n---\n")
        .filter(|d| !(d.contains("kind: AuthorizationPolicy") && d.contains("name: web-api,")))
        .collect();
    mesh::replace(&file, &without.join("\n---\n"));
    mesh_test::eventually("web-api is gone", Duration::from_secs(10), || async {
        (w.status("vote-bot", "GET", "web", "/api/vote").await == 403).then_some(())
    })
    .await;
}
