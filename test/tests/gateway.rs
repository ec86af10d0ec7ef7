//! The Gateway API's routes attached to a Service (GAMMA), end to end: a folder of
//! YAML, the controller, a client proxy and backends that say who answered
//! (`x-served-by`). Every match kind and the precedence between them and between
//! routes; 404 for what no rule matches; weights, unresolvable backends and rules
//! without backends; each filter (the mirror's copy arrives and its failure stays
//! invisible); both timeouts; GRPCRoute method matches; a bad route refused with the
//! last good one kept.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use mesh_test::mesh::{pod_ip, write};
use mesh_test::{backend, client, controller, proxy};

const HOST: &str = "books.default.svc.cluster.local";

/// Backends for Services `books` (v1), `books-v2` and `shadow`, each one pod; and
/// `nowhere`, a Service whose only pod listens nowhere.
struct Shop {
    v1: backend::Http,
    /// More replicas of `books`, beside v1.
    replicas: Vec<backend::Http>,
    v2: backend::Http,
    shadow: backend::Http,
    dir: tempfile::TempDir,
    _ctl: controller::Controller,
    proxy: proxy::Proxy,
}

impl Shop {
    async fn start(routes: &str) -> Self {
        Self::start_with(routes, "{}", 0).await
    }

    /// With annotations on Service `books` (a YAML flow map) and `replicas` more pods
    /// behind it.
    async fn start_with(routes: &str, annotations: &str, replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = String::new();
        let mut apps = Vec::new();
        let pod = |name: &str, app: &str, ip| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
                 spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
            )
        };
        for name in ["books", "books-v2", "shadow", "nowhere"] {
            let ip = pod_ip();
            let annotations = if name == "books" { annotations } else { "{}" };
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {annotations}}}\n\
                 spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
            ));
            yaml.push_str(&pod(&format!("{name}-1"), name, ip));
            if name != "nowhere" {
                apps.push(backend::http_on(SocketAddr::new(ip, 8080)).await);
            }
        }
        let mut more = Vec::new();
        for i in 0..replicas {
            let ip = pod_ip();
            yaml.push_str(&pod(&format!("books-r{i}"), "books", ip));
            more.push(backend::http_on(SocketAddr::new(ip, 8080)).await);
        }
        write(dir.path(), "shop", &yaml);
        write(dir.path(), "routes", routes);
        let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        ctl.wait_for_endpoints(&format!("{HOST}:80")).await;
        let proxy = proxy::new()
            .env("DESTINATION_ADDR", ctl.destination)
            .run()
            .await;
        let mut apps = apps.into_iter();
        let (Some(v1), Some(v2), Some(shadow)) = (apps.next(), apps.next(), apps.next()) else {
            unreachable!("three backends started");
        };
        Self {
            v1,
            replicas: more,
            v2,
            shadow,
            dir,
            _ctl: ctl,
            proxy,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a request and reads its reply.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> client::Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", HOST);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(client::body(Bytes::new())).expect("request");
        client::send(&mut client::h1(self.proxy.outbound).await, req).await
    }

    /// Who answered `GET path`: "v1", "v2", "shadow", or the status when the proxy
    /// answered itself.
    async fn who(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let rsp = self.send(method, path, headers).await;
        let by = rsp.header("x-served-by");
        if by == self.v1.addr.ip().to_string() {
            "v1".into()
        } else if by == self.v2.addr.ip().to_string() {
            "v2".into()
        } else if by == self.shadow.addr.ip().to_string() {
            "shadow".into()
        } else {
            format!("{} {}", rsp.status.as_u16(), rsp.header("mesh-proxy-error"))
        }
    }

    /// Waits until `GET path` is answered by `want` (a policy change has arrived).
    async fn until(&self, path: &str, headers: &[(&str, &str)], want: &str) {
        mesh_test::eventually(
            &format!("GET {path} answered by {want}"),
            Duration::from_secs(15),
            || async {
                let got = self.who("GET", path, headers).await;
                if got != want {
                    eprintln!("GET {path}: {got}");
                }
                (got == want).then_some(())
            },
        )
        .await;
    }
}

const MATCHES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-canary, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRefs:
  - {group: "", kind: Service, name: books, port: 80}
  rules:
  # The examples' canary: a header sends a request to v2.
  - matches:
    - headers: [{name: end-user, value: jason}]
    backendRefs: [{name: books-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api}
    backendRefs: [{name: books, port: 80}]
  # More query matches win at the same prefix.
  - matches:
    - path: {type: PathPrefix, value: /api}
      queryParams: [{type: RegularExpression, name: v, value: "2|two"}]
    backendRefs: [{name: books-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - path: {type: RegularExpression, value: "/items/[0-9]+"}
    backendRefs: [{name: books-v2, port: 80}]
  # A method at the same path wins; an exact path over any prefix.
  - matches:
    - path: {type: PathPrefix, value: /v2}
      method: DELETE
    - path: {type: Exact, value: /v2/exact}
    backendRefs: [{name: books, port: 80}]
  - matches:
    - path: {type: Exact, value: /conflict}
    backendRefs: [{name: books, port: 80}]
---
# Older: its rule wins a tie with the newer route's.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-older, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs:
  - {group: "", kind: Service, name: books}
  rules:
  - matches:
    - path: {type: Exact, value: /conflict}
    backendRefs: [{name: books-v2, port: 80}]
"#;

#[tokio::test]
async fn matches_take_the_most_specific_rule_and_the_rest_is_not_found() {
    let shop = Shop::start(MATCHES).await;
    shop.until("/api/x", &[], "v1").await;
    let who = |method, path, headers| shop.who(method, path, headers);
    let jason = [("end-user", "jason")];
    assert_eq!(who("GET", "/", &jason).await, "v2", "the header canary");
    assert_eq!(who("GET", "/other", &jason).await, "v2");
    assert_eq!(
        who("GET", "/", &[("end-user", "bob")]).await,
        "404 no route matches the request"
    );
    assert_eq!(
        who("GET", "/api/books", &jason).await,
        "v1",
        "a longer path over a header"
    );
    assert_eq!(
        who("GET", "/api/books?v=two", &[]).await,
        "v2",
        "query parameters"
    );
    assert_eq!(who("GET", "/api/books?v=three", &[]).await, "v1");
    assert_eq!(who("GET", "/v2/list", &[]).await, "v2");
    assert_eq!(who("GET", "/v2", &[]).await, "v2");
    assert_eq!(
        who("GET", "/v2example", &[]).await,
        "404 no route matches the request",
        "prefixes match whole segments"
    );
    assert_eq!(who("DELETE", "/v2/list", &[]).await, "v1", "a method");
    assert_eq!(who("GET", "/v2/exact", &[]).await, "v1", "an exact path");
    assert_eq!(
        who("GET", "/items/12", &[]).await,
        "v2",
        "a regular expression"
    );
    assert_eq!(
        who("GET", "/items/12/x", &[]).await,
        "404 no route matches the request",
        "anchored"
    );
    assert_eq!(
        who("GET", "/conflict", &[]).await,
        "v2",
        "the older route wins a tie"
    );

    // The route's metrics name the route and rule.
    let text = shop.proxy.metrics().await;
    assert!(
        proxy::sum_metric(&text, "response_total", &[("route", "books-canary/0")]) >= 2,
        "{text}"
    );

    // With no route attached any more, the Service's own endpoints take everything.
    write(shop.path(), "routes", "");
    shop.until("/v2example", &[], "v1").await;
}

const WEIGHTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-split, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - matches: [{path: {value: /split}}]
    backendRefs:
    - {name: books, port: 80, weight: 75}
    - {name: books-v2, port: 80, weight: 25}
    - {name: shadow, port: 80, weight: 0}
  - matches: [{path: {value: /half-missing}}]
    backendRefs:
    - {name: books, port: 80}
    - {name: missing, port: 80}
  - matches: [{path: {value: /no-backends}}]
"#;

#[tokio::test]
async fn weights_split_traffic_and_unresolved_backends_answer_500() {
    let shop = Shop::start(WEIGHTS).await;
    shop.until("/split", &[], "v1").await;
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    let mut tx = client::h1(shop.proxy.outbound).await;
    for _ in 0..800 {
        let rsp = client::get_on(&mut tx, HOST, "/split").await;
        assert_eq!(rsp.status, 200);
        *counts.entry(rsp.header("x-served-by")).or_default() += 1;
    }
    let v1 = counts
        .get(&shop.v1.addr.ip().to_string())
        .copied()
        .unwrap_or(0);
    let v2 = counts
        .get(&shop.v2.addr.ip().to_string())
        .copied()
        .unwrap_or(0);
    assert_eq!(v1 + v2, 800, "weight 0 gets nothing: {counts:?}");
    let share = f64::from(v1) / 800.0;
    // 75% of 800: a binomial's standard deviation is 12 requests; 6 of them is far.
    assert!(
        (0.66..=0.84).contains(&share),
        "v1 got {share:.3}: {counts:?}"
    );

    // Half of the requests go to a backend that does not resolve: 500 for them.
    let mut failed = 0;
    for _ in 0..200 {
        let rsp = client::get_on(&mut tx, HOST, "/half-missing").await;
        match rsp.status.as_u16() {
            200 => {}
            500 => {
                assert!(
                    rsp.header("mesh-proxy-error")
                        .contains("no Service default/missing")
                );
                failed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((60..=140).contains(&failed), "{failed} of 200 failed");
    let rsp = client::get_on(&mut tx, HOST, "/no-backends").await;
    assert_eq!(rsp.status, 500);
    assert!(
        rsp.header("mesh-proxy-error").contains("no backends"),
        "{rsp:?}"
    );
}

const FILTERS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-filters, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}]
  rules:
  - matches: [{path: {value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: "1"}]
        add: [{name: x-added, value: "2"}]
        remove: [x-secret]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: x-route, value: books-filters}]
    backendRefs:
    - name: books
      port: 80
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: x-backend, value: v1}]}
  - matches: [{path: {value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: books.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 301
  - matches: [{path: {value: /legacy}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: books-v2.default.svc.cluster.local
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /}
    backendRefs: [{name: books-v2, port: 80}]
  - matches: [{path: {value: /mirrored}}, {path: {value: /echo}}, {path: {value: /consume}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: nowhere, port: 80}}
    backendRefs: [{name: books, port: 80}]
  - matches: [{path: {value: /sometimes}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: shadow, port: 80}
        fraction: {numerator: 1, denominator: 4}
    backendRefs: [{name: books, port: 80}]
"#;

#[tokio::test]
async fn filters_change_redirect_rewrite_and_mirror() {
    let shop = Shop::start(FILTERS).await;
    shop.until("/headers", &[], "v1").await;

    // Header changes, the route's and its backend's.
    let rsp = shop
        .send("GET", "/headers", &[("x-secret", "s"), ("x-added", "1")])
        .await;
    let seen = rsp.text();
    assert!(seen.contains("x-set: 1\n"), "{seen}");
    assert!(
        seen.contains("x-added: 1\n") && seen.contains("x-added: 2\n"),
        "{seen}"
    );
    assert!(seen.contains("x-backend: v1\n"), "{seen}");
    assert!(!seen.contains("x-secret"), "{seen}");
    assert_eq!(rsp.header("x-route"), "books-filters");

    // A redirect, answered by the proxy.
    let rsp = shop.send("GET", "/old/page?x=1", &[]).await;
    assert_eq!(rsp.status, 301);
    assert_eq!(rsp.header("location"), "http://books.example/new/page?x=1");

    // A rewrite: the backend sees the new host and path.
    let rsp = shop.send("GET", "/legacy/headers", &[]).await;
    assert_eq!(rsp.header("x-served-by"), shop.v2.addr.ip().to_string());
    let seen = rsp.text();
    assert!(
        seen.contains("host: books-v2.default.svc.cluster.local"),
        "{seen}"
    );

    // Mirrors: every copy reaches the shadow; the other mirror's pod is not there,
    // and the caller never learns of it.
    let before = shop.shadow.requests.load(Ordering::SeqCst);
    for _ in 0..20 {
        let rsp = shop.send("POST", "/mirrored", &[]).await;
        assert_eq!(rsp.status, 200, "{rsp:?}");
        assert_eq!(rsp.header("x-served-by"), shop.v1.addr.ip().to_string());
    }
    mesh_test::eventually("20 mirrored copies", Duration::from_secs(10), || async {
        (shop.shadow.requests.load(Ordering::SeqCst) - before == 20).then_some(())
    })
    .await;
    // A large body is copied as it streams: it arrives whole upstream and at the
    // mirror, over HTTP/1 (a length) and HTTP/2 alike.
    let body = backend::pattern(300_000);
    let req = Request::post("/echo")
        .header("host", HOST)
        .body(client::body(body.clone()))
        .expect("request");
    let rsp = client::send(&mut client::h1(shop.proxy.outbound).await, req).await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body.as_ref(), body.as_slice());
    for h2 in [false, true] {
        let before = shop.shadow.consumed.load(Ordering::SeqCst);
        let req = Request::post(format!("http://{HOST}/consume/200"))
            .header("host", HOST)
            .body(client::body(body.clone()))
            .expect("request");
        let rsp = if h2 {
            let mut tx = client::h2(shop.proxy.outbound).await;
            client::read(tx.send_request(req).await.expect("response")).await
        } else {
            client::send(&mut client::h1(shop.proxy.outbound).await, req).await
        };
        assert_eq!(rsp.text(), "read 300000 bytes", "h2: {h2}");
        mesh_test::eventually(
            "the whole body mirrored",
            Duration::from_secs(10),
            || async {
                (shop.shadow.consumed.load(Ordering::SeqCst) - before == 300_000).then_some(())
            },
        )
        .await;
    }

    // A fraction: about a quarter of the requests are copied.
    let before = shop.shadow.requests.load(Ordering::SeqCst);
    let mut tx = client::h1(shop.proxy.outbound).await;
    for _ in 0..400 {
        assert_eq!(
            client::get_on(&mut tx, HOST, "/sometimes").await.status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copied = shop.shadow.requests.load(Ordering::SeqCst) - before;
    assert!(
        (60..=140).contains(&copied),
        "{copied} of 400 copied at 1/4"
    );
}

const TIMEOUTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-timeouts, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}]
  rules:
  - matches: [{path: {value: /sleep}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: books, port: 80}]
  - matches: [{path: {type: Exact, value: /sleep/1000}}]
    timeouts: {request: 5s, backendRequest: 200ms}
    backendRefs: [{name: books, port: 80}]
  - backendRefs: [{name: books, port: 80}]
"#;

#[tokio::test]
async fn request_and_backend_request_timeouts_answer_504() {
    let shop = Shop::start(TIMEOUTS).await;
    shop.until("/", &[], "v1").await;
    let rsp = shop.send("GET", "/sleep/2000", &[]).await;
    assert_eq!(
        (rsp.status.as_u16(), rsp.header("mesh-proxy-error").as_str()),
        (504, "timeout")
    );
    assert_eq!(shop.send("GET", "/sleep/50", &[]).await.status, 200);
    // The backend request's own timeout: 200 ms for the attempt, though the request
    // may take 5 s.
    let rsp = shop.send("GET", "/sleep/1000", &[]).await;
    assert_eq!(
        (rsp.status.as_u16(), rsp.header("mesh-proxy-error").as_str()),
        (504, "timeout")
    );
    mesh_test::eventually(
        "both upstream requests cancelled",
        Duration::from_secs(5),
        || async { (shop.v1.cancelled.load(Ordering::SeqCst) == 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_bad_route_is_refused_and_the_last_good_one_stays() {
    let shop = Shop::start(MATCHES).await;
    shop.until("/v2/x", &[], "v2").await;
    // An invalid regex: the whole object is refused; the last good version stays.
    write(
        shop.path(),
        "routes",
        &MATCHES
            .replace("\"/items/[0-9]+\"", "\"/items/([0-9]+\"")
            .replace("/v2}", "/v3}"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        shop.who("GET", "/v2/x", &[]).await,
        "v2",
        "the last good route"
    );
    assert_eq!(shop.who("GET", "/items/12", &[]).await, "v2");
    // A good version again applies.
    write(shop.path(), "routes", &MATCHES.replace("/v2}", "/v3}"));
    shop.until("/v3/x", &[], "v2").await;
}

const GRPC: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: books-grpc, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}]
  rules:
  - matches:
    - method: {service: shop.Books, method: Get}
    backendRefs: [{name: books-v2, port: 80}]
  - matches:
    - method: {type: RegularExpression, service: "shop\\..*"}
      headers: [{name: x-canary, value: "true"}]
    backendRefs: [{name: books-v2, port: 80}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-canary-route, value: "yes"}]}
  - backendRefs: [{name: books, port: 80}]
---
# Beside a GRPCRoute, an HTTPRoute on the same Service is conflicted, not applied.
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-http, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - backendRefs: [{name: shadow, port: 80}]
"#;

#[tokio::test]
async fn grpc_routes_match_services_methods_and_headers() {
    let shop = Shop::start(GRPC).await;
    let call = |path: &'static str, canary: bool| {
        let outbound = shop.proxy.outbound;
        async move {
            let mut req = Request::post(format!("http://{HOST}{path}"))
                .header("content-type", "application/grpc");
            if canary {
                req = req.header("x-canary", "true");
            }
            let req = req.body(client::body(Bytes::new())).expect("request");
            let mut tx = client::h2(outbound).await;
            client::read(tx.send_request(req).await.expect("response")).await
        }
    };
    let v1 = shop.v1.addr.ip().to_string();
    let v2 = shop.v2.addr.ip().to_string();
    mesh_test::eventually("the GRPCRoute applied", Duration::from_secs(15), || async {
        (call("/shop.Books/Get", false).await.header("x-served-by") == v2).then_some(())
    })
    .await;
    assert_eq!(
        call("/shop.Books/List", false).await.header("x-served-by"),
        v1
    );
    let canary = call("/shop.Books/List", true).await;
    assert_eq!(canary.header("x-served-by"), v2);
    assert_eq!(canary.header("x-canary-route"), "yes");
    assert_eq!(
        call("/other.Svc/List", true).await.header("x-served-by"),
        v1
    );
}

#[tokio::test]
async fn linkerd_retry_and_timeout_annotations_apply_with_linkerd_precedence() {
    // On the Service: retries of 5xx and UNAVAILABLE, twice, each attempt within
    // 300 ms; requests within 1 s.
    let annotations = r#"{"retry.linkerd.io/http": "5xx", "retry.linkerd.io/grpc": "unavailable", "retry.linkerd.io/limit": "2", "retry.linkerd.io/timeout": "300ms", "timeout.linkerd.io/request": "1s"}"#;
    // One route overrides the Service's retries with none and its timeouts with an
    // idle timeout only; another's rule sets its own request timeout.
    let routes = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: books-no-retries
  namespace: default
  annotations: {retry.linkerd.io/limit: "0", timeout.linkerd.io/idle: 300ms}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - matches: [{path: {value: /no-retry}}, {path: {type: Exact, value: /sleep/2000}}]
    backendRefs: [{name: books, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-rest, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books}]
  rules:
  - matches: [{path: {value: /slow}}]
    timeouts: {request: 3s}
    backendRefs: [{name: books, port: 80}]
  - backendRefs: [{name: books, port: 80}]
"#;
    let shop = Shop::start_with(routes, annotations, 0).await;
    shop.until("/", &[], "v1").await;
    let key = format!("k{}", std::process::id());

    // The Service's retries: a 503 is sent again.
    let rsp = shop.send("GET", &format!("/fail-once/{key}"), &[]).await;
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "ok now"));
    // gRPC's UNAVAILABLE too.
    let req = Request::post(format!("http://{HOST}/grpc-fail-once/{key}"))
        .header("content-type", "application/grpc")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = client::read(
        client::h2(shop.proxy.outbound)
            .await
            .send_request(req)
            .await
            .expect("response"),
    )
    .await;
    assert_eq!(rsp.header("grpc-status"), "0", "{rsp:?}");
    // An attempt slower than 300 ms is given up and sent again.
    let rsp = shop.send("GET", &format!("/sleep-once/{key}"), &[]).await;
    assert_eq!((rsp.status.as_u16(), rsp.text().as_str()), (200, "awake"));
    // The Service's request timeout.
    let rsp = shop.send("GET", "/sleep/1500", &[]).await;
    assert_eq!(
        (rsp.status.as_u16(), rsp.header("mesh-proxy-error").as_str()),
        (504, "timeout")
    );
    // A rule's own request timeout wins over the annotation's (its attempts still
    // time out at 300 ms: 3 attempts, then the last one's timeout).
    let rsp = shop.send("GET", "/slow/x", &[]).await;
    assert_eq!(rsp.status, 200);

    // The route's annotations replace the Service's: no retries, an idle timeout.
    let rsp = shop
        .send("GET", &format!("/no-retry/fail-once/{key}"), &[])
        .await;
    assert_eq!(rsp.status, 200, "the app's /no-retry/... is `hello`");
    let before = shop.v1.requests.load(Ordering::SeqCst);
    let rsp = shop.send("GET", "/no-retry", &[("x-status", "503")]).await;
    assert_eq!(rsp.status, 503);
    assert_eq!(
        shop.v1.requests.load(Ordering::SeqCst) - before,
        1,
        "not retried"
    );
    // Its idle timeout: no headers for 300 ms is a timeout, though it has no request
    // timeout of its own any more.
    let started = std::time::Instant::now();
    let rsp = shop.send("GET", "/sleep/2000", &[]).await;
    assert_eq!(
        (rsp.status.as_u16(), rsp.header("mesh-proxy-error").as_str()),
        (504, "timeout")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the idle timeout, not the sleep"
    );
}

#[tokio::test]
async fn failure_accrual_ejects_a_failing_replica_and_restores_it() {
    let annotations = r#"{"balancer.linkerd.io/failure-accrual": "consecutive", "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3", "balancer.linkerd.io/failure-accrual-consecutive-min-penalty": "500ms", "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "2s", "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio": "0", "retry.linkerd.io/http": "5xx", "retry.linkerd.io/limit": "3"}"#;
    let shop = Shop::start_with("", annotations, 1).await;
    let flaky = &shop.replicas[0];
    mesh_test::eventually("both replicas in use", Duration::from_secs(15), || async {
        let _ = shop.send("GET", "/", &[]).await;
        (flaky.requests.load(Ordering::SeqCst) > 0 && shop.v1.requests.load(Ordering::SeqCst) > 0)
            .then_some(())
    })
    .await;

    // The replica starts failing: under load, no request fails (retries go to the
    // healthy one) and the replica is ejected.
    flaky.failing.store(503, Ordering::SeqCst);
    let backend = [("backend", "books.default.svc.cluster.local:80")];
    let mut tx = client::h1(shop.proxy.outbound).await;
    for round in 0.. {
        for _ in 0..50 {
            let rsp = client::get_on(&mut tx, HOST, "/").await;
            assert_eq!(rsp.status, 200, "{rsp:?}");
        }
        let text = shop.proxy.metrics().await;
        if proxy::sum_metric(&text, "outbound_endpoint_ejections_total", &backend) >= 1 {
            break;
        }
        // The balancer shuns a failing endpoint by itself: it may take a while to fail
        // three times in a row.
        assert!(round < 100, "never ejected: {text}");
    }
    // Ejected, it gets (almost) nothing: only probation requests once its penalty is
    // over, each ejecting it again for longer.
    let tried = flaky.requests.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(client::get_on(&mut tx, HOST, "/").await.status, 200);
    }
    let more = flaky.requests.load(Ordering::SeqCst) - tried;
    assert!(more <= 5, "the ejected replica got {more} of 100 requests");

    // It recovers: after its penalty, one success on probation restores it.
    flaky.failing.store(0, Ordering::SeqCst);
    mesh_test::eventually("the replica restored", Duration::from_secs(15), || async {
        let before = flaky.requests.load(Ordering::SeqCst);
        for _ in 0..20 {
            let _ = shop.send("GET", "/", &[]).await;
        }
        let text = shop.proxy.metrics().await;
        let available = proxy::sum_metric(
            &text,
            "outbound_endpoints",
            &[backend[0], ("state", "available")],
        );
        (available == 2 && flaky.requests.load(Ordering::SeqCst) > before + 2).then_some(())
    })
    .await;

    // Both fail: once both are out, requests fail at once with 503 `unavailable`.
    flaky.failing.store(500, Ordering::SeqCst);
    shop.v1.failing.store(500, Ordering::SeqCst);
    mesh_test::eventually("every replica out", Duration::from_secs(15), || async {
        let rsp = shop.send("GET", "/", &[]).await;
        (rsp.status == 503 && rsp.header("mesh-proxy-error") == "unavailable").then_some(())
    })
    .await;
}
