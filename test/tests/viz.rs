//! mesh-viz end to end: real pods with real proxies carry known traffic; viz scrapes
//! them and reports edges, workloads and routes — counts exact, percentiles equal to
//! those of one histogram of every request — through its API, the CLI, and a dashboard
//! that a real browser draws. Restarts, dead proxies and plaintext edges included.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_api::identity::dns_name;
use mesh_test::mesh::{self, Pod, PodSpec, pod_ip};
use mesh_test::{client, controller, identity, proxy, viz};
use serde_json::Value;

const WEB: &str = "web.shop.svc.cluster.local";

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `mesh viz ARGS --viz-addr ADDR`, its stdout.
fn cli(viz: &viz::Viz, args: &[&str]) -> String {
    let out = std::process::Command::new(mesh_test::bin_path("mesh"))
        .args(args)
        .arg("--viz-addr")
        .arg(viz.addr.to_string())
        .output()
        .expect("run mesh");
    assert!(
        out.status.success(),
        "mesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn find<'a>(items: &'a [Value], field: &str, value: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i[field] == value)
        .unwrap_or_else(|| panic!("no {field}={value} in {items:#?}"))
}

/// The exact percentile (ms, bucket top) of every inbound request the given proxies
/// saw, from their own `/stats`: what viz must report for the workload.
async fn merged_inbound(proxies: &[&proxy::Proxy], q: f64) -> f64 {
    let mut all = hdrhistogram::Histogram::<u64>::new(2).expect("histogram");
    for p in proxies {
        let stats = client::get(p.admin, "admin", "/stats").await;
        let stats: mesh_api::stats::Stats = serde_json::from_str(&stats.text()).expect("json");
        for l in stats
            .latency
            .iter()
            .filter(|l| l.labels.direction == "inbound")
        {
            for (value, count) in &l.buckets {
                all.record_n(*value, *count).expect("record");
            }
        }
    }
    all.highest_equivalent(all.value_at_quantile(q)) as f64 / 1000.0
}

#[tokio::test]
async fn viz_reports_edges_workloads_and_routes_exactly() {
    let (ca, work, world) = (tmp(), tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let spec = |sa, mode| PodSpec {
        identity: Some(&id),
        mode,
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), sa, "shop")
    };
    // Two web pods (one workload), a meshed caller, and a caller without identity.
    let web0 = Pod::start(spec("web", "permissive")).await;
    let spec1 = spec("web", "permissive");
    let web1 = Pod::start(spec1.clone()).await;
    let load = Pod::start(spec("load", "permissive")).await;
    let legacy = Pod::start(PodSpec {
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), "legacy", "shop")
    })
    .await;
    // A pod whose proxy never answers (something listens on its admin port, mute).
    let mute_ip = pod_ip();
    let mute = std::net::TcpListener::bind(SocketAddr::new(mute_ip, 4191)).expect("mute");
    mesh::write(world.path(), "svc", &mesh::service_yaml("web", "shop"));
    for (name, app, sa, ip) in [
        ("web-0", "web", "web", web0.ip),
        ("web-1", "web", "web", web1.ip),
        ("load-0", "load", "load", load.ip),
        ("legacy-0", "legacy", "legacy", legacy.ip),
        ("mute-0", "mute", "mute", mute_ip),
    ] {
        mesh::write(
            world.path(),
            name,
            &mesh::pod_yaml(name, "shop", app, sa, ip),
        );
    }
    mesh::write(
        world.path(),
        "profile",
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n\
         metadata: {name: web.shop.svc.cluster.local, namespace: shop}\n\
         spec:\n  routes:\n  - name: sleep\n    condition: {method: GET, pathRegex: /sleep/.*}\n\
         \x20 - name: fail\n    condition: {method: GET, pathRegex: /status/.*}\n    isRetryable: true\n",
    );
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;
    let v = viz::start(world.path(), "300ms").await;
    v.scraped(&["web-0", "web-1", "load-0", "legacy-0"], 1)
        .await;

    // Known traffic: 40 × 10 ms, 40 × 40 ms, 10 failures (retried) from `load`; 5 from
    // `legacy`, which has no identity.
    let mut tx = client::h1(load.proxy.outbound).await;
    // The first requests may go out before the client proxy has the profile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while load
        .proxy
        .metric("request_total", &[("route", "sleep")])
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the profile never applied"
        );
        assert_eq!(client::get_on(&mut tx, WEB, "/sleep/10").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warmup = load
        .proxy
        .metric("request_total", &[("direction", "outbound")])
        .await;
    for i in 0..80 {
        let ms = if i % 2 == 0 { 10 } else { 40 };
        let rsp = client::get_on(&mut tx, WEB, &format!("/sleep/{ms}")).await;
        assert_eq!(rsp.status, 200);
    }
    for _ in 0..10 {
        assert_eq!(
            client::get_on(&mut tx, WEB, "/status/500").await.status,
            500
        );
    }
    let mut legacy_tx = client::h1(legacy.proxy.outbound).await;
    for _ in 0..5 {
        assert_eq!(client::get_on(&mut legacy_tx, WEB, "/").await.status, 200);
    }
    let total = warmup + 90;

    let edges = mesh_test::eventually(
        "viz to see every request",
        Duration::from_secs(20),
        || async {
            let edges = v.items("/api/edges?namespace=shop&window=10m").await;
            let n = |src: &str| {
                edges
                    .iter()
                    .filter(|e| e["src"] == src && e["dst"] == "web")
                    .map(|e| e["requests"].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            (n("load") == total && n("legacy") == 5).then_some(edges)
        },
    )
    .await;
    let e = find(&edges, "src", "load");
    assert_eq!(e["secured"], true, "{e:#}");
    assert_eq!(e["src_identity"], dns_name("load", "shop"));
    assert_eq!(e["dst_identity"], dns_name("web", "shop"));
    let success = e["success"].as_f64().expect("success");
    assert!(
        (success - (total - 10) as f64 / total as f64).abs() < 1e-9,
        "{success}"
    );
    let plain = find(&edges, "src", "legacy");
    assert_eq!(plain["secured"], false);
    assert_eq!(plain["reason"], "no identity");

    // The workload's percentiles are those of one histogram of every request both web
    // proxies served.
    let stat = v.items("/api/stat?namespace=shop&window=10m").await;
    let web = find(&stat, "name", "web");
    // The web pods saw every attempt: retries of the failing route included.
    let attempts = load
        .proxy
        .metric("actual_response_total", &[("route", "fail")])
        .await;
    assert!(attempts > 10, "the failing route was retried");
    assert_eq!(
        web["requests"].as_u64(),
        Some(total - 10 + attempts + 5),
        "{web:#}"
    );
    assert_eq!(web["meshed_pods"], 2);
    for (field, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
        let want = merged_inbound(&[&web0.proxy, &web1.proxy], q).await;
        assert_eq!(web[field].as_f64(), Some(want), "{field}");
    }
    let p50 = web["p50_ms"].as_f64().expect("p50");
    let p99 = web["p99_ms"].as_f64().expect("p99");
    assert!(
        (10.0..40.0).contains(&p50) && p99 >= 40.0,
        "p50 {p50}, p99 {p99}"
    );

    // Routes: the failing route was retried, so actual attempts exceed requests.
    let routes = v
        .items("/api/routes?namespace=shop&service=web&window=10m")
        .await;
    let fail = find(&routes, "route", "fail");
    assert_eq!(fail["requests"], 10);
    assert!(
        fail["actual_requests"].as_u64().expect("actual") > 10,
        "{fail:#}"
    );
    let sleep = find(&routes, "route", "sleep");
    assert_eq!(sleep["effective_success"], 1.0);

    // The CLI shows the same, as tables and JSON.
    let table = cli(
        &v,
        &["viz", "edges", "deployment", "-n", "shop", "-w", "10m"],
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "RPS", "SUCCESS", "P50", "P99"
        ]
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("load") && l.contains(" √ ")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("legacy") && l.contains("no identity")),
        "{table}"
    );
    let json: Value = serde_json::from_str(&cli(
        &v,
        &[
            "viz",
            "edges",
            "deployment",
            "-n",
            "shop",
            "-o",
            "json",
            "-w",
            "10m",
        ],
    ))
    .expect("json");
    assert_eq!(
        find(json.as_array().expect("array"), "src", "load")["requests"].as_u64(),
        Some(total)
    );
    let stat_table = cli(&v, &["viz", "stat", "deploy", "-n", "shop", "-w", "10m"]);
    assert!(stat_table.starts_with("NAME"), "{stat_table}");
    assert!(
        stat_table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("2/2")),
        "{stat_table}"
    );
    let wide = cli(
        &v,
        &[
            "viz", "routes", "svc/web", "-n", "shop", "-o", "wide", "-w", "10m",
        ],
    );
    assert!(
        wide.contains("ACTUAL_SUCCESS") && wide.contains("fail"),
        "{wide}"
    );

    // The mute proxy is reported, and hurt nothing above.
    let targets = v.get("/api/targets").await;
    let m = find(targets.as_array().expect("targets"), "pod", "mute-0");
    assert!(
        m["failures"].as_u64().unwrap_or(0) > 0 && m["error"].is_string(),
        "{m:#}"
    );
    drop(mute);

    // Prometheus text for users who keep Prometheus.
    let text = client::get(v.addr, "viz", "/metrics").await.text();
    assert!(text.contains("viz_edge_rps{src_namespace=\"shop\",src=\"load\",dst_namespace=\"shop\",dst=\"web\",secured=\"true\"}"), "{text}");

    // A restarted proxy (same pod, same address, a new process): its counts start
    // over, and viz neither loses nor double-counts, even for requests the new
    // instance served before viz first scraped it.
    let stat_requests = || async {
        let stat = v.items("/api/stat?namespace=shop&window=10m").await;
        find(&stat, "name", "web")["requests"]
            .as_u64()
            .expect("requests")
    };
    v.scraped(&["web-0", "web-1"], 1).await;
    let before = stat_requests().await;
    let mut web1 = web1;
    web1.restart_proxy(spec1.clone()).await;
    for _ in 0..20 {
        assert_eq!(client::get_on(&mut tx, WEB, "/").await.status, 200);
    }
    mesh_test::eventually("the restart accounted", Duration::from_secs(20), || async {
        let n = stat_requests().await;
        assert!(n <= before + 20, "double counted: {n} > {before} + 20");
        (n == before + 20).then_some(())
    })
    .await;
    let targets = v.get("/api/targets").await;
    let t = find(targets.as_array().expect("targets"), "pod", "web-1");
    assert!(t["restarts"].as_u64() >= Some(1), "{t:#}");

    // A new pod: what its proxy counted before viz first scraped it is counted too.
    let web2 = Pod::start(spec("web", "permissive")).await;
    let mut direct = client::h1(SocketAddr::new(web2.ip, 4143)).await;
    for _ in 0..7 {
        assert_eq!(client::get_on(&mut direct, "web", "/").await.status, 200);
    }
    let before = stat_requests().await;
    mesh::write(
        world.path(),
        "web-2",
        &mesh::pod_yaml("web-2", "shop", "web", "web", web2.ip),
    );
    mesh_test::eventually(
        "the new pod's first counts",
        Duration::from_secs(20),
        || async {
            let n = stat_requests().await;
            assert!(n <= before + 7, "double counted: {n} > {before} + 7");
            (n == before + 7).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_draws_the_topology_and_traces_in_a_real_browser() {
    let world = tmp();
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let v = viz::start(world.path(), "300ms").await;
    // Both proxies send every trace to viz (named as the injector's identity would).
    let traced = |name: &str| {
        vec![
            ("TRACE_COLLECTOR", v.otlp.to_string()),
            ("TRACE_SAMPLING", "1".to_string()),
            ("TRACE_SERVICE_NAME", format!("{name}.shop")),
        ]
    };
    // web's proxy follows its inbound policy: a DENY on /secret.
    let web = Pod::start(PodSpec {
        destination: Some(ctl.destination),
        name: Some("web-0"),
        env: traced("web"),
        ..PodSpec::new(pod_ip(), "web", "shop")
    })
    .await;
    let load = Pod::start(PodSpec {
        destination: Some(ctl.destination),
        env: traced("load"),
        ..PodSpec::new(pod_ip(), "load", "shop")
    })
    .await;
    mesh::write(
        world.path(),
        "deny",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: no-secrets, namespace: shop}\n\
         spec: {selector: {matchLabels: {app: web}}, action: DENY, rules: [{to: [{operation: {paths: [/secret]}}]}]}\n",
    );
    mesh::write(world.path(), "svc", &mesh::service_yaml("web", "shop"));
    mesh::write(
        world.path(),
        "web-0",
        &mesh::pod_yaml("web-0", "shop", "web", "web", web.ip),
    );
    mesh::write(
        world.path(),
        "load-0",
        &mesh::pod_yaml("load-0", "shop", "load", "load", load.ip),
    );
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;
    v.scraped(&["web-0", "load-0"], 1).await;
    let mut tx = client::h1(load.proxy.outbound).await;
    for _ in 0..10 {
        assert_eq!(client::get_on(&mut tx, WEB, "/").await.status, 200);
    }
    mesh_test::eventually("the DENY applies", Duration::from_secs(20), || async {
        let mut tx = client::h1(load.proxy.outbound).await;
        (client::get_on(&mut tx, WEB, "/secret").await.status == 403).then_some(())
    })
    .await;
    mesh_test::eventually("the edge in the API", Duration::from_secs(20), || async {
        let edges = v.items("/api/edges?all=1").await;
        edges
            .iter()
            .any(|e| e["src"] == "load" && e["dst"] == "web")
            .then_some(())
    })
    .await;
    mesh_test::eventually("the denial in the API", Duration::from_secs(20), || async {
        let authz = v.items("/api/authz?all=1").await;
        authz
            .iter()
            .any(|a| a["workload"] == "web" && a["denied"].as_u64() > Some(0))
            .then_some(())
    })
    .await;

    // viz kept the traces: load's client span and web's server span, parent and
    // child, found by the edge's filter; a denied request's trace is an error.
    let listed = mesh_test::eventually("a whole trace in viz", Duration::from_secs(20), || async {
        let items = v.items("/api/traces?service=load&dst=web&limit=100").await;
        items
            .into_iter()
            .find(|t| t["spans"] == 2 && t["error"] == false)
    })
    .await;
    assert_eq!(
        listed["services"],
        serde_json::json!(["load.shop", "web.shop"])
    );
    let id = listed["trace_id"].as_str().expect("id").to_string();
    let trace = v.get(&format!("/api/traces/{id}")).await;
    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2, "{trace}");
    assert_eq!(spans[0]["kind"], "client");
    assert_eq!(spans[0]["depth"], 0);
    assert_eq!(spans[1]["kind"], "server");
    assert_eq!(spans[1]["parent_id"], spans[0]["span_id"]);
    assert_eq!(spans[1]["depth"], 1);
    assert_eq!(spans[1]["attributes"]["mesh.route"], "default");
    // A 403 is not a failure, in traces as in the metrics.
    assert!(v.items("/api/traces?errors=1&limit=100").await.is_empty());
    assert!(v.items("/api/traces?service=nobody").await.is_empty());
    for (path, status) in [
        ("/api/traces/0123", 400),
        (&*format!("/api/traces/{}", "f".repeat(32)), 404),
        ("/api/traces?limit=0", 400),
        ("/api/traces?limit=lots", 400),
    ] {
        let rsp = client::get(v.addr, "viz", path).await;
        assert_eq!(rsp.status.as_u16(), status, "{path}: {}", rsp.text());
    }

    // web over time: one-second points, the newest with its traffic.
    let series = v
        .get("/api/series?kind=workload&namespace=shop&name=web&points=10&step=1s")
        .await;
    let points = series["items"].as_array().expect("items");
    assert_eq!(points.len(), 10, "{series}");
    assert!(
        points.iter().any(|p| p["rps"].as_f64() > Some(0.0)),
        "{series}"
    );
    let edge = v
        .get("/api/series?kind=edge&namespace=shop&src=load&dst=web&points=5&step=2s")
        .await;
    assert!(
        edge["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|p| p["success"].as_f64().is_some())),
        "{edge}"
    );
    for bad in [
        "/api/series?kind=pods&namespace=shop&name=web",
        "/api/series?kind=workload&namespace=shop",
        "/api/series?kind=workload&namespace=shop&name=web&points=1",
        "/api/series?kind=workload&namespace=shop&name=web&points=100&step=1h",
    ] {
        let rsp = client::get(v.addr, "viz", bad).await;
        assert_eq!(rsp.status.as_u16(), 400, "{bad}: {}", rsp.text());
    }

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let screenshot = shots.join("viz-dashboard.png");
    let url = format!(
        "http://{}/#trace={id}&chart=workload&namespace=shop&name=web&tap=shop/web&tappath=/tapped&taplimit=2",
        v.addr
    );
    let browser = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect("chromium is installed (Debian: apt-get install chromium)");
    let run = move |extra: &[&str]| {
        let out = std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .args(["--virtual-time-budget=5000", "--window-size=1200,2600"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Calls keep coming while the page taps web (the page's tap ends after two).
    let outbound = load.proxy.outbound;
    let traffic = tokio::spawn(async move {
        let mut tx = client::h1(outbound).await;
        for _ in 0..600 {
            let _ = client::get_on(&mut tx, WEB, "/tapped/1").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let dom = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking({
            let run = run.clone();
            move || run(&["--dump-dom"])
        }),
    )
    .await
    .expect("chromium finished within 60s")
    .expect("chromium ran");
    traffic.abort();
    for needle in [
        "data-workload=\"shop/web\"",
        "data-workload=\"shop/load\"",
        "data-edge=\"load-&gt;web\"",
        // web refused a request: marked on the graph, and in the table.
        "class=\"node denied\" data-workload=\"shop/web\"",
        "refused</text>",
        "AuthorizationPolicy shop/no-secrets",
        // The trace list, the edge's link to its traces, and the waterfall of the
        // trace the address names: both spans, the server's under the client's.
        &format!("data-trace=\"{id}\""),
        "data-filter=\"service=load&amp;dst=web\"",
        &format!("<div id=\"waterfall\" data-trace=\"{id}\">"),
        &format!(
            "data-span=\"{}\" data-parent=\"{}\"",
            spans[1]["span_id"].as_str().expect("id"),
            spans[0]["span_id"].as_str().expect("id")
        ),
        "load.shop · client · GET",
        "web.shop · server · GET",
        // web's charts, drawn with data; every row links to its own.
        "<section id=\"series-section\" class=\"open\" data-chart=\"workload\">",
        "data-series=\"rps\" data-points=\"",
        "data-series=\"p99_ms\"",
        "data-chart=\"kind=edge&amp;namespace=shop&amp;src=load&amp;dst=web\"",
        // The live calls the page tapped: two of web's, under /tapped.
        "<section id=\"tap-section\" data-tap=\"shop/web\" data-ended=\"1\">",
        "tap ended (2 calls)",
        "<td>/tapped/1</td><td>200</td>",
    ] {
        assert!(
            dom.contains(needle) || dom.contains(&needle.replace("&gt;", ">")),
            "{needle} not drawn:\n{dom}"
        );
    }
    assert!(
        !dom.contains("data-series=\"rps\" data-points=\"0\""),
        "web's rps chart has no data:\n{dom}"
    );
    run(&[&format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot kept at {}",
        screenshot.display()
    );
    eprintln!("dashboard screenshot: {}", screenshot.display());
}

/// `mesh viz tap ARGS --viz-addr ADDR`, started; its stdout's lines as they come.
fn tap_cli(
    v: &viz::Viz,
    args: &[&str],
) -> (tokio::process::Child, tokio::sync::mpsc::Receiver<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(mesh_test::bin_path("mesh"))
        .args(["viz", "tap"])
        .args(args)
        .arg("--viz-addr")
        .arg(v.addr.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mesh viz tap");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::channel(100);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).await.is_err() {
                return;
            }
        }
    });
    (child, rx)
}

async fn line(rx: &mut tokio::sync::mpsc::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a line within 15s")
        .expect("mesh viz tap ended early")
}

#[tokio::test]
async fn mesh_viz_tap_streams_a_workloads_live_calls() {
    let world = tmp();
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let web = Pod::start(PodSpec {
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), "web", "shop")
    })
    .await;
    let load = Pod::start(PodSpec {
        destination: Some(ctl.destination),
        ..PodSpec::new(pod_ip(), "load", "shop")
    })
    .await;
    mesh::write(world.path(), "svc", &mesh::service_yaml("web", "shop"));
    for (name, app, ip) in [("web-0", "web", web.ip), ("load-0", "load", load.ip)] {
        mesh::write(
            world.path(),
            name,
            &mesh::pod_yaml(name, "shop", app, app, ip),
        );
    }
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;
    let v = viz::start(world.path(), "300ms").await;
    v.scraped(&["web-0", "load-0"], 1).await;
    for (path, status) in [
        ("/api/tap", 400),
        ("/api/tap?namespace=shop&workload=nobody", 404),
    ] {
        let rsp = client::get(v.addr, "viz", path).await;
        assert_eq!(rsp.status.as_u16(), status, "{path}: {}", rsp.text());
    }

    // web's inbound calls under /status/, two of them.
    let (mut inbound, mut rx) = tap_cli(
        &v,
        &[
            "deploy/web",
            "-n",
            "shop",
            "--path",
            "/status/",
            "--max-calls",
            "2",
        ],
    );
    assert_eq!(line(&mut rx).await, "tapping web-0");
    // Outbound calls of load answered by web, as JSON.
    let (mut outbound, mut out_rx) = tap_cli(
        &v,
        &[
            "deploy/load",
            "-n",
            "shop",
            "--to",
            "deploy/web",
            "-o",
            "json",
            "--max-calls",
            "1",
        ],
    );
    assert!(line(&mut out_rx).await.contains("load-0"));
    // The proxies' watchers are in place once viz relays: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = client::h1(load.proxy.outbound).await;
    for path in ["/status/201", "/", "/status/202"] {
        let _ = client::get_on(&mut tx, WEB, path).await;
    }
    let first = line(&mut rx).await;
    let second = line(&mut rx).await;
    for (l, status) in [(&first, 201), (&second, 202)] {
        assert!(l.starts_with("in  pod=web-0 "), "{l}");
        assert!(
            l.contains(&format!(":path=/status/{status} :status={status} ")),
            "{l}"
        );
        assert!(l.contains(&format!(":authority={WEB}")), "{l}");
    }
    let status = tokio::time::timeout(Duration::from_secs(10), inbound.wait())
        .await
        .expect("tap stops after --max-calls")
        .expect("wait");
    assert!(status.success());
    let call: Value = serde_json::from_str(&line(&mut out_rx).await).expect("json");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["pod"], "load-0");
    assert_eq!(call["dst_workload"], "web");
    // Meshed: the endpoint is the pod's proxy.
    assert_eq!(call["endpoint"], format!("{}:4143", web.ip));
    let status = tokio::time::timeout(Duration::from_secs(10), outbound.wait())
        .await
        .expect("tap stops after --max-calls")
        .expect("wait");
    assert!(status.success());
    // Bad input is refused before anything streams.
    let out = std::process::Command::new(mesh_test::bin_path("mesh"))
        .args(["viz", "tap", "svc/web", "--viz-addr", &v.addr.to_string()])
        .output()
        .expect("mesh");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deploy/NAME"));
    // Once the watchers are gone, the proxies stop tapping.
    mesh_test::eventually("the taps ended", Duration::from_secs(10), || async {
        let m = web.proxy.metrics().await;
        m.contains("tap_watchers 0").then_some(())
    })
    .await;
}

#[tokio::test]
async fn viz_taps_proxies_over_mtls_as_its_own_identity() {
    let (ca, work, world) = (tmp(), tmp(), tmp());
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "24h", work.path()).await;
    let ctl = controller::start(world.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let ip = pod_ip();
    // Strict, with its tap port on the pod's address, as the injector sets it.
    let web = Pod::start(PodSpec {
        identity: Some(&id),
        mode: "strict",
        env: vec![("TAP_ADDR", SocketAddr::new(ip, 4190).to_string())],
        ..PodSpec::new(ip, "web", "shop")
    })
    .await;
    mesh::write(world.path(), "svc", &mesh::service_yaml("web", "shop"));
    mesh::write(
        world.path(),
        "web-0",
        &mesh::pod_yaml("web-0", "shop", "web", "web", web.ip),
    );
    ctl.wait_for_endpoints(&format!("{WEB}:80")).await;
    let load = id
        .proxy(proxy::new(), "load", "shop")
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    load.wait_ready().await;
    // viz with its own certificate: it taps over mTLS, not the admin port.
    let (_, token) = id.token("mesh-viz", "mesh", false);
    let v = viz::start_with(
        world.path(),
        "300ms",
        &[
            ("MESH_VIZ_IDENTITY_ADDR", id.addr.to_string()),
            ("MESH_VIZ_TRUST_ANCHORS", id.anchors.display().to_string()),
            ("MESH_VIZ_TOKEN_PATH", token.display().to_string()),
            ("MESH_VIZ_PROXY_TAP_PORT", "4190".to_string()),
        ],
    )
    .await;
    v.scraped(&["web-0"], 1).await;
    // Calls keep coming while viz taps.
    let outbound = load.outbound;
    let traffic = tokio::spawn(async move {
        let mut tx = client::h1(outbound).await;
        for _ in 0..300 {
            let _ = client::get_on(&mut tx, WEB, "/over-mtls").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let call = mesh_test::eventually(
        "a call tapped over mTLS",
        Duration::from_secs(15),
        || async {
            let (mut child, mut rx) = tap_cli(
                &v,
                &["deploy/web", "-n", "shop", "-o", "json", "--max-calls", "1"],
            );
            let mut found = None;
            while let Ok(Some(l)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                let Ok(v) = serde_json::from_str::<Value>(&l) else {
                    continue;
                };
                if v.get("error").is_some() {
                    // viz's certificate may not be there yet: tap again.
                    eprintln!("tap: {v}");
                    break;
                }
                if v.get("status").is_some() {
                    found = Some(v);
                    break;
                }
            }
            let _ = child.kill().await;
            found
        },
    )
    .await;
    traffic.abort();
    assert_eq!(call["pod"], "web-0");
    assert_eq!(call["path"], "/over-mtls");
    assert_eq!(call["tls"], "true");
    assert_eq!(
        call["client_id"].as_str(),
        Some(mesh_api::identity::dns_name("load", "shop").as_str())
    );
}
