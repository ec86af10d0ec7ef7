//! Istio's traffic API end to end, each example object applied as written (taken
//! from `../shared/examples/istio/`): a folder of YAML, the controller, a client
//! proxy, and backends by subset (pods labelled `version`) that say who answered
//! (`x-served-by`). The jason header, cookie and query matches land on their subsets;
//! the weights split within tolerance; undefined subsets answer 503 as Istio's do;
//! the ratings retries and per-try timeout; fault delays and aborts at their
//! percentages; mirrors receive copies; redirects, rewrites and header changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use mesh_test::mesh::{pod_ip, write};
use mesh_test::{backend, client, controller, proxy};

/// One object of an example file, as written, found by kind and name.
fn example(file: &str, kind: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/examples/istio")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("example file");
    text.split("\n---")
        .find(|doc| {
            doc.contains(&format!("kind: {kind}\n")) && doc.contains(&format!("  name: {name}\n"))
        })
        .map(|doc| format!("---\n{}\n", doc.trim_start_matches('\n')))
        .unwrap_or_else(|| panic!("{file} has no {kind} {name}"))
}

/// Services, each with pods by version, every pod a backend.
struct Mesh {
    /// The backends by (service, version).
    pods: BTreeMap<(String, String), backend::Http>,
    dir: tempfile::TempDir,
    _ctl: controller::Controller,
    proxy: proxy::Proxy,
}

impl Mesh {
    /// Starts `services` (name, versions) in namespace `default`, port 80 → 8080, and
    /// `objects` beside them.
    async fn start(services: &[(&str, &[&str])], objects: &str) -> Self {
        Self::start_slow(services, objects, Duration::ZERO).await
    }

    /// As [`Mesh::start`], every pod answering `delay` late.
    async fn start_slow(services: &[(&str, &[&str])], objects: &str, delay: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml = String::new();
        let mut pods = BTreeMap::new();
        for (name, versions) in services {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
                 spec: {{selector: {{app: {name}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
            ));
            for v in *versions {
                let ip = pod_ip();
                yaml.push_str(&format!(
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{v}, namespace: default, labels: {{app: {name}, version: {v}}}}}\n\
                     spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
                ));
                let app = backend::http_with_delay(SocketAddr::new(ip, 8080), delay)
                    .await
                    .expect("bind backend");
                pods.insert((name.to_string(), v.to_string()), app);
            }
        }
        write(dir.path(), "services", &yaml);
        write(dir.path(), "istio", objects);
        let ctl = controller::start(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
        for (name, _) in services {
            ctl.wait_for_endpoints(&format!("{name}.default.svc.cluster.local:80"))
                .await;
        }
        let proxy = proxy::new()
            .env("DESTINATION_ADDR", ctl.destination)
            .run()
            .await;
        Self {
            pods,
            dir,
            _ctl: ctl,
            proxy,
        }
    }

    fn pod(&self, service: &str, version: &str) -> &backend::Http {
        &self.pods[&(service.to_string(), version.to_string())]
    }

    /// Sends a request to `host` and reads its reply.
    async fn send(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> client::Reply {
        let mut req = Request::get(path).header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(client::body(Bytes::new())).expect("request");
        client::send(&mut client::h1(self.proxy.outbound).await, req).await
    }

    /// Who answered: the version of the pod, or the status when the proxy answered.
    async fn who(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
        let rsp = self.send(host, path, headers).await;
        let by = rsp.header("x-served-by");
        self.pods
            .iter()
            .find(|(_, app)| app.addr.ip().to_string() == by)
            .map(|((_, v), _)| v.clone())
            .unwrap_or_else(|| format!("{}", rsp.status.as_u16()))
    }

    /// Waits until `host` answers `want` (the policy has arrived).
    async fn until(&self, host: &str, headers: &[(&str, &str)], want: &str) {
        mesh_test::eventually(
            &format!("{host} answered by {want}"),
            Duration::from_secs(15),
            || async { (self.who(host, "/", headers).await == want).then_some(()) },
        )
        .await;
    }

    /// How many of `n` requests each answerer took.
    async fn tally(
        &self,
        host: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen.entry(self.who(host, "/", headers).await).or_insert(0) += 1;
        }
        seen
    }
}

/// Whether `got` of `n` is within `tolerance` (absolute share) of `share`.
fn near(got: usize, n: usize, share: f64, tolerance: f64) -> bool {
    ((got as f64 / n as f64) - share).abs() <= tolerance
}

#[tokio::test]
async fn the_jason_header_goes_to_v2_and_the_rest_splits_75_25() {
    let objects = example("routing.yaml", "VirtualService", "reviews")
        + &example("routing.yaml", "DestinationRule", "reviews");
    let mesh = Mesh::start(&[("reviews", &["v1", "v2"])], &objects).await;
    let host = "reviews.default.svc.cluster.local";
    mesh.until(host, &[("end-user", "jason")], "v2").await;
    let jason = mesh.tally(host, &[("end-user", "jason")], 30).await;
    assert_eq!(jason.get("v2"), Some(&30), "{jason:?}");
    let n = 400;
    let rest = mesh.tally(host, &[("end-user", "someone")], n).await;
    let v1 = rest.get("v1").copied().unwrap_or(0);
    assert_eq!(v1 + rest.get("v2").copied().unwrap_or(0), n, "{rest:?}");
    assert!(near(v1, n, 0.75, 0.07), "75/25 within tolerance: {rest:?}");
}

#[tokio::test]
async fn cookie_and_query_matches_land_on_their_subsets_and_undefined_ones_answer_503() {
    // reviews-content as written, with the examples' DestinationRule (v1, v2) and one
    // of our own for v3: a host's DestinationRules merge.
    let v3 = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
              metadata: {name: reviews-v3}\nspec: {host: reviews, subsets: [{name: v3, labels: {version: v3}}]}\n";
    let objects = example("routing.yaml", "VirtualService", "reviews-content")
        + &example("routing.yaml", "DestinationRule", "reviews");
    let mesh = Mesh::start(&[("reviews", &["v1", "v2", "v3"])], &objects).await;
    let host = "reviews.default.svc.cluster.local";
    mesh.until(host, &[], "v1").await;
    // v3 is no DestinationRule's yet: Istio's 503.
    assert_eq!(
        mesh.who(host, "/", &[("cookie", "a=b;user=jason")]).await,
        "503"
    );
    write(mesh.dir.path(), "v3", v3);
    mesh.until(host, &[("cookie", "a=b;user=jason")], "v3")
        .await;
    assert_eq!(mesh.who(host, "/", &[("cookie", "user=jason")]).await, "v3");
    assert_eq!(
        mesh.who(host, "/", &[("cookie", "user=jasonx")]).await,
        "v1"
    );
    assert_eq!(mesh.who(host, "/?test=true", &[]).await, "v2");
    assert_eq!(mesh.who(host, "/?test=false", &[]).await, "v1");
}

#[tokio::test]
async fn helloworld_canaries_90_10_and_web_app_80_20() {
    // helloworld's subsets are defined by no example DestinationRule: ours.
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
              metadata: {name: helloworld}\nspec: {host: helloworld, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}\n";
    let objects = example("routing.yaml", "VirtualService", "helloworld")
        + dr
        + &example("routing.yaml", "VirtualService", "web-vs")
        + &example("routing.yaml", "DestinationRule", "web-dr");
    let mesh = Mesh::start(
        &[("helloworld", &["v1", "v2"]), ("web-app", &["v1", "v2"])],
        &objects,
    )
    .await;
    let hello = "helloworld.default.svc.cluster.local";
    mesh.until(hello, &[("canary", "true")], "v2").await;
    let n = 400;
    let split = mesh.tally(hello, &[], n).await;
    let v1 = split.get("v1").copied().unwrap_or(0);
    assert!(near(v1, n, 0.90, 0.05), "90/10 within tolerance: {split:?}");
    let web = "web-app.default.svc.cluster.local";
    let split = mesh.tally(web, &[], n).await;
    let v1 = split.get("v1").copied().unwrap_or(0);
    assert!(near(v1, n, 0.80, 0.07), "80/20 within tolerance: {split:?}");
}

/// A DestinationRule for ratings' v1, which no example defines.
const RATINGS_DR: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
    metadata: {name: ratings}\nspec: {host: ratings, subsets: [{name: v1, labels: {version: v1}}]}\n";

#[tokio::test]
async fn the_ratings_retries_and_per_try_timeout() {
    let objects = example("resilience.yaml", "VirtualService", "ratings") + RATINGS_DR;
    let mesh = Mesh::start(&[("ratings", &["v1"])], &objects).await;
    let host = "ratings.default.svc.cluster.local";
    mesh.until(host, &[], "v1").await;
    let app = mesh.pod("ratings", "v1");
    // A gateway error is retried (retryOn: gateway-error).
    let before = app.requests.load(Ordering::SeqCst);
    let rsp = mesh.send(host, "/fail-once/ratings", &[]).await;
    assert_eq!(rsp.status.as_u16(), 200);
    assert_eq!(app.requests.load(Ordering::SeqCst) - before, 2);
    // A 500 is not (not a gateway error).
    let before = app.requests.load(Ordering::SeqCst);
    let rsp = mesh.send(host, "/status/500", &[]).await;
    assert_eq!(rsp.status.as_u16(), 500);
    assert_eq!(app.requests.load(Ordering::SeqCst) - before, 1);
    // Each attempt gets 2 s: a backend 3 s late is tried 1 + 3 times, then 504,
    // within the route's 10 s.
    let before = app.requests.load(Ordering::SeqCst);
    let started = Instant::now();
    let rsp = mesh.send(host, "/sleep/3000", &[]).await;
    assert_eq!(rsp.status.as_u16(), 504);
    assert_eq!(app.requests.load(Ordering::SeqCst) - before, 4);
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "4 attempts of 2 s each"
    );
}

#[tokio::test]
async fn ratings_fault_delays_and_aborts_its_percentages() {
    let objects = example("resilience.yaml", "VirtualService", "ratings-fault") + RATINGS_DR;
    let mesh = Mesh::start(&[("ratings", &["v1"])], &objects).await;
    let host = "ratings.default.svc.cluster.local";
    // The policy has arrived once a fault shows (in rounds of concurrent calls: a
    // delayed call takes 5 s).
    mesh_test::eventually("an injected abort", Duration::from_secs(40), || async {
        let got = at_once(&mesh, host, "/", 40).await;
        got.iter().any(|(s, _)| *s == 500).then_some(())
    })
    .await;
    let app = mesh.pod("ratings", "v1");
    let before = app.requests.load(Ordering::SeqCst);
    let n = 300;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let outbound = mesh.proxy.outbound;
        calls.spawn(async move {
            let req = Request::get("/")
                .header("host", "ratings.default.svc.cluster.local")
                .body(client::body(Bytes::new()))
                .expect("request");
            let started = Instant::now();
            let rsp = client::send(&mut client::h1(outbound).await, req).await;
            (rsp.status.as_u16(), started.elapsed())
        });
    }
    let (mut aborted, mut delayed) = (0, 0);
    while let Some(done) = calls.join_next().await {
        let (status, took) = done.expect("call");
        if status == 500 {
            aborted += 1;
        }
        if took >= Duration::from_millis(4_500) {
            delayed += 1;
        }
    }
    // 10% each, drawn independently: binomial(300, 0.1) is 30 ± 5.2.
    assert!((12..=50).contains(&aborted), "aborted {aborted} of {n}");
    assert!((12..=50).contains(&delayed), "delayed {delayed} of {n}");
    // Aborted requests never reach the app, and are not retried.
    let reached = app.requests.load(Ordering::SeqCst) - before;
    assert_eq!(reached, n - aborted, "aborts answered by the proxy");
}

#[tokio::test]
async fn mirrors_redirects_rewrites_and_header_changes() {
    let objects = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: shop.example}
  - match: [{uri: {prefix: /api/v1}, ignoreUriCase: true}]
    rewrite: {uri: /}
    route: [{destination: {host: shop}}]
  - headers:
      request: {set: {x-from: mesh}}
      response: {add: {x-served-through: istio-route}}
    route:
    - destination: {host: shop}
      headers: {request: {add: {x-backend: shop}}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
"#;
    let mesh = Mesh::start(&[("shop", &["v1"]), ("shadow", &["v1"])], objects).await;
    let host = "shop.default.svc.cluster.local";
    let shadow = mesh.pod("shadow", "v1");
    mesh_test::eventually("the route's headers", Duration::from_secs(15), || async {
        let rsp = mesh.send(host, "/headers", &[]).await;
        (rsp.header("x-served-through") == "istio-route").then_some(())
    })
    .await;
    let rsp = mesh.send(host, "/headers", &[]).await;
    let text = String::from_utf8_lossy(&rsp.body).to_string();
    assert!(text.contains("x-from: mesh"), "{text}");
    assert!(text.contains("x-backend: shop"), "{text}");
    // Every request is copied to the mirror, whose answers nobody sees.
    let before = shadow.requests.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(mesh.send(host, "/", &[]).await.status.as_u16(), 200);
    }
    mesh_test::eventually(
        "20 copies at the mirror",
        Duration::from_secs(10),
        || async { (shadow.requests.load(Ordering::SeqCst) - before >= 20).then_some(()) },
    )
    .await;
    // Istio's redirect default is 301; the path is replaced whole.
    let rsp = mesh.send(host, "/old/x", &[]).await;
    assert_eq!(rsp.status.as_u16(), 301);
    assert_eq!(rsp.header("location"), "http://shop.example/new");
    // A string prefix, case-insensitively, replaced by the rewrite: the app sees
    // `/version` and answers its HTTP version.
    for path in ["/API/V1/version", "/api/v1/version"] {
        let rsp = mesh.send(host, path, &[]).await;
        assert_eq!(rsp.status.as_u16(), 200);
        let text = String::from_utf8_lossy(&rsp.body).to_string();
        assert!(text.starts_with("HTTP/"), "{path}: {text}");
    }
}

/// Sends `n` requests for `path` to `host` at once; their statuses and
/// `mesh-proxy-error`s.
async fn at_once(mesh: &Mesh, host: &str, path: &str, n: usize) -> Vec<(u16, String)> {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (outbound, host, path) = (mesh.proxy.outbound, host.to_string(), path.to_string());
        calls.spawn(async move {
            let req = Request::get(path.as_str())
                .header("host", host)
                .body(client::body(Bytes::new()))
                .expect("request");
            let rsp = client::send(&mut client::h1(outbound).await, req).await;
            (rsp.status.as_u16(), rsp.header("mesh-proxy-error"))
        });
    }
    let mut out = Vec::new();
    while let Some(done) = calls.join_next().await {
        out.push(done.expect("call"));
    }
    out
}

#[tokio::test]
async fn the_httpbin_circuit_breaker_sheds_concurrent_callers_and_ejects_a_gateway_error() {
    let objects = example("resilience.yaml", "DestinationRule", "httpbin");
    let mesh = Mesh::start(&[("httpbin", &["v1", "v2"])], &objects).await;
    let host = "httpbin.default.svc.cluster.local";
    // The policy has arrived once an ejection is counted.
    mesh.until(host, &[], "v1").await;
    mesh.until(host, &[], "v2").await;
    // consecutiveErrors: 1 (gateway errors): one 503 ejects the pod for 3 minutes.
    // (v2 answers slowly meanwhile, so that the balancer tries v1.)
    let v1 = mesh.pod("httpbin", "v1");
    v1.failing.store(503, Ordering::SeqCst);
    let ejections = format!("outbound_endpoint_ejections_total{{backend=\"{host}:80\"}} 1");
    mesh_test::eventually("v1 ejected", Duration::from_secs(10), || async {
        let _ = mesh.send(host, "/sleep/100", &[]).await;
        mesh.proxy
            .metrics()
            .await
            .contains(&ejections)
            .then_some(())
    })
    .await;
    let seen = mesh.tally(host, &[], 20).await;
    assert_eq!(seen.get("v2"), Some(&20), "{seen:?}");
    // 500s are no gateway errors: v2 stays.
    for _ in 0..5 {
        assert_eq!(
            mesh.send(host, "/status/500", &[]).await.status.as_u16(),
            500
        );
    }
    let metrics = mesh.proxy.metrics().await;
    assert!(metrics.contains(&ejections), "only v1: {metrics}");
    assert!(
        metrics.contains(&format!(
            "outbound_endpoints{{backend=\"{host}:80\",state=\"ejected\"}} 1"
        )),
        "{metrics}"
    );
    // maxConnections 1, http1MaxPendingRequests 1: of 8 callers at once, one is in
    // flight, one waits, the rest are refused at once.
    let got = at_once(&mesh, host, "/sleep/1000", 8).await;
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    let shed = got
        .iter()
        .filter(|(s, e)| *s == 503 && e == "overflow")
        .count();
    assert_eq!(ok + shed, 8, "{got:?}");
    assert!((1..=2).contains(&ok) && shed >= 6, "{got:?}");
    // One caller at a time is never shed.
    for _ in 0..10 {
        assert_eq!(mesh.send(host, "/", &[]).await.status.as_u16(), 200);
    }
}

#[tokio::test]
async fn an_ejected_endpoint_returns_after_its_ejection_and_round_robin_takes_turns() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web}\n\
              spec:\n  host: web\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n\
              \x20   outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}\n";
    let mesh = Mesh::start(&[("web", &["a", "b", "c"])], dr).await;
    let host = "web.default.svc.cluster.local";
    mesh.until(host, &[], "a").await;
    // Turns: 30 requests, 10 each.
    let seen = mesh.tally(host, &[], 30).await;
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{seen:?}"
    );
    let a = mesh.pod("web", "a");
    a.failing.store(500, Ordering::SeqCst);
    // Two 5xx in a row eject a; then only b and c answer.
    mesh_test::eventually("a ejected", Duration::from_secs(10), || async {
        let seen = mesh.tally(host, &[], 6).await;
        (!seen.contains_key("500") && !seen.contains_key("a")).then_some(())
    })
    .await;
    a.failing.store(0, Ordering::SeqCst);
    let ejected = Instant::now();
    mesh_test::eventually("a back", Duration::from_secs(10), || async {
        (mesh.tally(host, &[], 3).await.contains_key("a")).then_some(())
    })
    .await;
    assert!(
        ejected.elapsed() < Duration::from_secs(5),
        "back after its 2 s ejection"
    );
}

#[tokio::test]
async fn sticky_sessions_by_cookie_and_by_header() {
    // my-service-affinity as written: a cookie made for clients without one.
    let objects = example("resilience.yaml", "DestinationRule", "my-service-affinity")
        + "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\n\
           spec: {host: api, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}\n";
    let mesh = Mesh::start(
        &[("my-service", &["a", "b", "c"]), ("api", &["a", "b", "c"])],
        &objects,
    )
    .await;
    let host = "my-service.default.svc.cluster.local";
    let cookie = mesh_test::eventually("a session cookie", Duration::from_secs(15), || async {
        let set = mesh.send(host, "/", &[]).await.header("set-cookie");
        set.starts_with("session-cookie=").then_some(set)
    })
    .await;
    assert!(cookie.contains("Max-Age=3600"), "{cookie}");
    let value = cookie.split(';').next().unwrap_or_default().to_string();
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let rsp = mesh.send(host, "/", &[("cookie", &value)]).await;
        assert_eq!(
            rsp.header("set-cookie"),
            "",
            "a client with the cookie keeps it"
        );
        pods.insert(rsp.header("x-served-by"));
    }
    assert_eq!(pods.len(), 1, "one pod for one session: {pods:?}");
    // Different sessions spread.
    let mut spread = std::collections::BTreeSet::new();
    for _ in 0..30 {
        spread.insert(mesh.send(host, "/", &[]).await.header("x-served-by"));
    }
    assert!(spread.len() > 1, "{spread:?}");
    // A header: one pod per user.
    let api = "api.default.svc.cluster.local";
    mesh_test::eventually("the header's policy", Duration::from_secs(15), || async {
        let first = mesh.who(api, "/", &[("x-user", "jason")]).await;
        let mut same = true;
        for _ in 0..10 {
            same &= mesh.who(api, "/", &[("x-user", "jason")]).await == first;
        }
        same.then_some(())
    })
    .await;
    let mut users = std::collections::BTreeSet::new();
    for u in 0..30 {
        users.insert(
            mesh.who(api, "/", &[("x-user", &format!("user-{u}"))])
                .await,
        );
    }
    assert!(users.len() > 1, "{users:?}");
}

#[tokio::test]
async fn the_access_log_writes_a_line_per_request_in_both_directions() {
    let app = backend::http().await;
    let server = proxy::new()
        .app(app.addr)
        .env("ACCESS_LOG", "json")
        .run()
        .await;
    let client_proxy = proxy::new().env("ACCESS_LOG", "text").run().await;
    // Inbound, JSON: method, authority, path with its query, status, latency.
    let req = Request::get("/status/418?x=1")
        .header("host", "books.default.svc.cluster.local")
        .body(client::body(Bytes::new()))
        .expect("request");
    let rsp = client::send(&mut client::h1(server.inbound).await, req).await;
    assert_eq!(rsp.status.as_u16(), 418);
    let line = mesh_test::eventually("an inbound line", Duration::from_secs(5), || async {
        server.stdout_lines().into_iter().next()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(v["direction"], "inbound", "{v}");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["authority"], "books.default.svc.cluster.local");
    assert_eq!(v["path"], "/status/418?x=1");
    assert_eq!(v["status"], 418);
    assert!(v["latency_ms"].as_f64().is_some_and(|l| l > 0.0), "{v}");
    assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    // Outbound, text; one line per request.
    for path in ["/", "/nothing"] {
        let req = Request::get(path)
            .header("host", app.authority())
            .body(client::body(Bytes::new()))
            .expect("request");
        let _ = client::send(&mut client::h1(client_proxy.outbound).await, req).await;
    }
    let lines = mesh_test::eventually("two outbound lines", Duration::from_secs(5), || async {
        let lines = client_proxy.stdout_lines();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains(" outbound GET ") && lines[0].contains(" / 200 "),
        "{lines:?}"
    );
    assert!(lines[1].contains(" /nothing "), "{lines:?}");
    assert!(
        lines.iter().all(|l| l.contains("route=default")),
        "{lines:?}"
    );
    let metrics = client_proxy.metrics().await;
    assert!(
        metrics.contains("access_log_dropped_total 0"),
        "nothing dropped: {metrics}"
    );
}

#[tokio::test]
async fn connections_carry_at_most_their_requests_and_connects_time_out_as_the_rule_says() {
    let hole = backend::blackhole();
    let objects = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\n\
         spec: {{host: web, trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 2}}}}}}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: hole}}\n\
         spec: {{host: hole, trafficPolicy: {{connectionPool: {{tcp: {{connectTimeout: 100ms}}}}}}}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: hole, namespace: default}}\n\
         spec: {{selector: {{app: hole}}, ports: [{{port: 80, targetPort: {port}}}]}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: hole-1, namespace: default, labels: {{app: hole}}}}\n\
         spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\"}}\n",
        port = hole.addr.port(),
        ip = hole.addr.ip(),
    );
    let mesh = Mesh::start(&[("web", &["v1"])], &objects).await;
    let host = "web.default.svc.cluster.local";
    let app = mesh.pod("web", "v1");
    // Once the rule is there, every second request opens a connection.
    mesh_test::eventually(
        "two requests a connection",
        Duration::from_secs(15),
        || async {
            let before = app.connections.load(Ordering::SeqCst);
            for _ in 0..6 {
                assert_eq!(mesh.send(host, "/", &[]).await.status.as_u16(), 200);
            }
            (app.connections.load(Ordering::SeqCst) - before == 3).then_some(())
        },
    )
    .await;
    // A connect that hangs gives up after the rule's 100 ms, not the proxy's 1 s.
    let started = Instant::now();
    mesh_test::eventually(
        "the hole's connect timeout",
        Duration::from_secs(15),
        || async {
            let took = Instant::now();
            let rsp = mesh.send("hole.default.svc.cluster.local", "/", &[]).await;
            (rsp.status.as_u16() == 504 && took.elapsed() < Duration::from_millis(800))
                .then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn random_balancing_reaches_every_pod_out_of_turn() {
    let rule = |lb: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web}}\n\
             spec: {{host: web, trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}}}\n"
        )
    };
    let mesh = Mesh::start(&[("web", &["a", "b", "c"])], &rule("ROUND_ROBIN")).await;
    let host = "web.default.svc.cluster.local";
    // Round robin first: the rule is in force once three in a row are three pods.
    mesh_test::eventually("turns", Duration::from_secs(15), || async {
        let seen = mesh.tally(host, &[], 3).await;
        (seen.len() == 3 && !seen.contains_key("503")).then_some(())
    })
    .await;
    // Then RANDOM, replacing it: pods repeat, which turns never do.
    write(mesh.dir.path(), "istio", &rule("RANDOM"));
    let order = mesh_test::eventually("out of turn", Duration::from_secs(15), || async {
        let mut order = Vec::new();
        for _ in 0..90 {
            order.push(mesh.who(host, "/", &[]).await);
        }
        order.windows(2).any(|w| w[0] == w[1]).then_some(order)
    })
    .await;
    for pod in ["a", "b", "c"] {
        let n = order.iter().filter(|w| *w == pod).count();
        assert!((10..=60).contains(&n), "{pod}: {n} of 90: {order:?}");
    }
}

/// `connectionPool.http.maxRetries`: retries in flight toward a service are bounded
/// across its callers, as Envoy's circuit breaker bounds them. Alone, a caller makes
/// all its retries (each slot is released when its retry ends); six callers at once
/// against a failing pod share one slot, so the pod sees their six first attempts and
/// one caller's retries, not six callers' each.
#[tokio::test]
async fn max_retries_bounds_the_retries_in_flight_across_callers() {
    let objects = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: flaky}\n\
        spec:\n  hosts: [flaky]\n  http:\n  - route: [{destination: {host: flaky}}]\n    \
        retries: {attempts: 3, retryOn: 5xx}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: flaky}\n\
        spec:\n  host: flaky\n  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n";
    let mesh = Mesh::start_slow(&[("flaky", &["v1"])], objects, Duration::from_millis(300)).await;
    let host = "flaky.default.svc.cluster.local";
    mesh.until(host, &[], "v1").await;
    let pod = mesh.pod("flaky", "v1");
    pod.failing.store(503, Ordering::SeqCst);
    // The VirtualService's retries have arrived once a failing request is retried.
    mesh_test::eventually("the retries", Duration::from_secs(15), || async {
        let before = pod.requests.load(Ordering::SeqCst);
        let status = mesh.send(host, "/", &[]).await.status.as_u16();
        let tried = pod.requests.load(Ordering::SeqCst) - before;
        (status == 503 && tried > 1).then_some(())
    })
    .await;
    // Alone: the first attempt and all three retries, one after another.
    let before = pod.requests.load(Ordering::SeqCst);
    assert_eq!(mesh.send(host, "/", &[]).await.status.as_u16(), 503);
    assert_eq!(pod.requests.load(Ordering::SeqCst) - before, 4, "alone");
    // Six at once: one retry in flight at a time. Unbounded, the pod would see
    // 6 + 6 × 3 = 24 requests.
    let before = pod.requests.load(Ordering::SeqCst);
    let got = at_once(&mesh, host, "/", 6).await;
    assert!(got.iter().all(|(s, _)| *s == 503), "{got:?}");
    let seen = pod.requests.load(Ordering::SeqCst) - before;
    assert!(
        (9..=12).contains(&seen),
        "six callers, one retry slot: {seen} requests"
    );
    let skipped = proxy::sum_metric(
        &mesh.proxy.metrics().await,
        "retry_skipped_total",
        &[("reason", "max_retries")],
    );
    assert!(skipped >= 3, "callers refused a retry: {skipped}");
}
