//! `mesh demo` end to end: the whole mesh on this machine for about 20 seconds, checked
//! through `mesh viz … -o json`: every edge mTLS with the expected identities, the
//! canary near 80/20, retries visible on the flaky route, timeouts on the slow one, the
//! Gateway API route's header canary; whole traces in viz across four workloads;
//! then Ctrl-C leaves no process and no port behind.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_api::identity::dns_name;
use serde_json::Value;

fn mesh(args: &[&str]) -> Value {
    let out = std::process::Command::new(mesh_test::bin_path("mesh"))
        .args(args)
        .output()
        .expect("run mesh");
    assert!(
        out.status.success(),
        "mesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `GET path` from viz's API, as JSON.
fn http_json(path: &str) -> Value {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect("127.0.0.1:8084").expect("connect to viz");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(c, "GET {path} HTTP/1.0\r\nhost: viz\r\n\r\n").expect("write");
    let mut rsp = String::new();
    c.read_to_string(&mut rsp).expect("read");
    let body = rsp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {rsp}"))
}

fn edge<'a>(edges: &'a [Value], src: &str, dst: &str) -> Option<&'a Value> {
    edges.iter().find(|e| e["src"] == src && e["dst"] == dst)
}

/// Addresses the demo uses; all must be free again after it stops.
const ADDRS: [&str; 8] = [
    "127.0.0.1:8080",
    "127.0.0.1:8084",
    "127.0.0.1:4317",
    "127.0.0.1:8086",
    "127.0.1.1:4143",
    "127.0.1.1:8080",
    "127.0.1.3:4191",
    "127.0.1.5:4140",
];

/// The demo process, interrupted if the test fails midway (so that its ports are free
/// for the next run).
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_demo_runs_a_secured_mesh_and_cleans_up() {
    // A taken port is a clear refusal, before anything starts.
    {
        let _taken = TcpListener::bind("127.0.0.1:8084").expect("8084 free for the test");
        let out = std::process::Command::new(mesh_test::bin_path("mesh"))
            .args(["demo", "--duration", "5s"])
            .output()
            .expect("run mesh demo");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("127.0.0.1:8084") && err.contains("mesh-viz"),
            "{err}"
        );
    }

    let state = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo(
        std::process::Command::new(mesh_test::bin_path("mesh"))
            .args(["demo", "--duration", "120s", "--state"])
            .arg(state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mesh demo"),
    );
    let started = Instant::now();
    let viz = ["--viz-addr", "127.0.0.1:8084"];
    let edges_cmd = [
        &["viz", "edges", "deployment", "-n", "demo", "-o", "json"][..],
        &viz,
    ]
    .concat();
    // Wait for traffic on every edge, then let it run to about 20 seconds.
    let edges = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo never showed all its edges"
        );
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!("mesh demo exited early: {status}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let out = std::process::Command::new(mesh_test::bin_path("mesh"))
            .args(&edges_cmd)
            .output()
            .expect("run mesh");
        let Ok(edges) = serde_json::from_slice::<Value>(&out.stdout) else {
            continue;
        };
        let edges = edges.as_array().cloned().unwrap_or_default();
        let all = [
            ("traffic", "web"),
            ("web", "books-v1"),
            ("web", "books-v2"),
            ("web", "authors"),
            ("jason", "reviews-v2"),
            ("reader", "reviews-v1"),
            ("reader", "reviews-v2"),
        ]
        .iter()
        .all(|(s, d)| edge(&edges, s, d).is_some_and(|e| e["requests"].as_u64() > Some(0)));
        if all && started.elapsed() > Duration::from_secs(20) {
            break edges;
        }
    };

    // Every edge is mTLS with both identities verified. (The faults reader's proxy
    // injects are answered by that proxy: they reach no workload, and show as an
    // edge to the authority itself.)
    let injected = |e: &Value| {
        e["src"] == "reader"
            && e["dst"] == "reviews.demo.svc.cluster.local"
            && e["dst_namespace"].as_str().unwrap_or_default().is_empty()
    };
    assert!(
        edges.iter().any(injected),
        "the injected aborts: {edges:#?}"
    );
    for e in edges.iter().filter(|e| !injected(e)) {
        assert_eq!(e["secured"], true, "{e:#}");
        let (src, dst) = (
            e["src"].as_str().expect("src"),
            e["dst"].as_str().expect("dst"),
        );
        assert_eq!(e["src_identity"], dns_name(src, "demo"), "{e:#}");
        assert_eq!(e["dst_identity"], dns_name(dst, "demo"), "{e:#}");
    }
    // The canary: about 80/20.
    let n = |d: &str| {
        edge(&edges, "web", d)
            .and_then(|e| e["requests"].as_u64())
            .unwrap_or(0) as f64
    };
    let v1 = n("books-v1") / (n("books-v1") + n("books-v2"));
    assert!(
        (0.7..=0.9).contains(&v1),
        "books-v1 got {v1:.2} of the books traffic"
    );

    // Retries on the flaky route: more attempts than requests, effective success above
    // actual. Timeouts on the slow route.
    let routes = mesh(
        &[
            &["viz", "routes", "svc/books", "-n", "demo", "-o", "json"][..],
            &viz,
        ]
        .concat(),
    );
    let routes = routes.as_array().expect("routes");
    let route = |name: &str| {
        routes
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("no route {name}: {routes:#?}"))
    };
    let flaky = route("GET /books/flaky");
    assert!(
        flaky["actual_requests"].as_u64() > flaky["requests"].as_u64(),
        "{flaky:#}"
    );
    assert!(
        flaky["effective_success"].as_f64() > flaky["actual_success"].as_f64(),
        "{flaky:#}"
    );
    let slow = route("GET /books/slow");
    assert!(slow["timeouts"].as_u64() > Some(0), "{slow:#}");

    // The Gateway API route: its rules are routes of their own; the header canary is
    // answered (by books-v2).
    let api = mesh(
        &[
            &["viz", "routes", "svc/books-api", "-n", "demo", "-o", "json"][..],
            &viz,
        ]
        .concat(),
    );
    let api = api.as_array().expect("routes");
    let canary = api
        .iter()
        .find(|r| r["route"] == "books-api/canary")
        .unwrap_or_else(|| panic!("no canary route: {api:#?}"));
    assert!(canary["requests"].as_u64() > Some(0), "{canary:#}");
    assert_eq!(
        canary["effective_success"].as_f64(),
        Some(1.0),
        "{canary:#}"
    );

    // Istio's VirtualService: jason's route goes to reviews-v2 only; the fault route
    // answers some requests 503 itself; the split's route reaches both versions.
    let reviews = mesh(
        &[
            &["viz", "routes", "svc/reviews", "-n", "demo", "-o", "json"][..],
            &viz,
        ]
        .concat(),
    );
    let reviews = reviews.as_array().expect("routes");
    let vs_route = |name: &str| {
        reviews
            .iter()
            .find(|r| r["route"] == name)
            .unwrap_or_else(|| panic!("no route {name}: {reviews:#?}"))
    };
    let jason = vs_route("reviews/jason");
    assert!(jason["requests"].as_u64() > Some(0), "{jason:#}");
    assert_eq!(jason["effective_success"].as_f64(), Some(1.0), "{jason:#}");
    let fault = vs_route("reviews/fault");
    assert!(
        fault["effective_success"].as_f64().is_some_and(|s| s < 1.0),
        "the injected aborts: {fault:#}"
    );
    assert!(vs_route("reviews/split")["requests"].as_u64() > Some(0));
    let to = |src: &str, dst: &str| {
        edge(&edges, src, dst)
            .and_then(|e| e["requests"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        to("jason", "reviews-v2") > 0 && to("jason", "reviews-v1") == 0,
        "{edges:#?}"
    );
    assert!(
        to("reader", "reviews-v1") > 0 && to("reader", "reviews-v2") > 0,
        "{edges:#?}"
    );

    // Who may call books: intruder is denied (403), scraper rate limited (429), web
    // admitted, as `mesh viz authz` tells.
    let authz = mesh(
        &[
            &[
                "viz",
                "authz",
                "deploy/books-v1",
                "-n",
                "demo",
                "-o",
                "json",
            ][..],
            &viz,
        ]
        .concat(),
    );
    let authz = authz.as_array().expect("authz");
    let refused_by = |field: &str, client: &str| {
        authz.iter().any(|a| {
            a[field].as_u64() > Some(0)
                && a["denied_clients"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c[0] == dns_name(client, "demo")))
        })
    };
    assert!(refused_by("denied", "intruder"), "{authz:#?}");
    assert!(refused_by("rate_limited", "scraper"), "{authz:#?}");
    assert!(
        authz
            .iter()
            .any(|a| a["name"] == "demo/books" && a["allowed"].as_u64() > Some(0)),
        "{authz:#?}"
    );

    // Traces in viz: traffic → web → books and authors, one trace, each proxy's span
    // the child of the span before it (web passes the context on).
    let whole = |t: &Value| {
        let services: Vec<&str> = t["services"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        ["traffic.demo", "web.demo", "authors.demo"]
            .iter()
            .all(|s| services.contains(s))
            && services.iter().any(|s| s.starts_with("books-v"))
    };
    let trace = loop {
        let list = http_json("/api/traces?service=traffic&dst=web&limit=200");
        if let Some(t) = list["items"]
            .as_array()
            .and_then(|l| l.iter().find(|t| whole(t)))
        {
            break http_json(&format!(
                "/api/traces/{}",
                t["trace_id"].as_str().expect("id")
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no whole trace in viz: {list:#}"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let spans = trace["spans"].as_array().expect("spans");
    assert!(spans.len() >= 6, "{trace:#}");
    let ids: Vec<&Value> = spans.iter().map(|s| &s["span_id"]).collect();
    let roots: Vec<&Value> = spans.iter().filter(|s| s["parent_id"].is_null()).collect();
    assert_eq!(roots.len(), 1, "one root, traffic's client span: {trace:#}");
    assert_eq!(roots[0]["service"], "traffic.demo");
    assert!(
        spans
            .iter()
            .filter(|s| !s["parent_id"].is_null())
            .all(|s| ids.contains(&&s["parent_id"])),
        "every parent in the trace: {trace:#}"
    );
    assert!(
        spans.iter().all(|s| s["attributes"]["mesh.tls"] == "true"),
        "every hop mTLS: {trace:#}"
    );

    // Strict: a plaintext client reaches no app through a pod's proxy.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect("127.0.1.1:4143").expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
            .expect("write");
        let mut buf = [0u8; 64];
        assert!(
            matches!(c.read(&mut buf), Ok(0) | Err(_)),
            "plaintext got an answer"
        );
    }

    // Ctrl-C: the demo stops everything and exits.
    let pid = demo.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "mesh demo did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let mut out = String::new();
    use std::io::Read as _;
    demo.0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(
        out.contains("http://127.0.0.1:8084/") && out.contains("LATENCY_P99"),
        "{out}"
    );
    // Nothing left running from this demo (each child carries MESH_DEMO_STATE), and
    // nothing left listening.
    let marker = format!("MESH_DEMO_STATE={}", state.path().display());
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        leftovers.is_empty(),
        "demo processes left running: {leftovers:?}"
    );
    for addr in ADDRS {
        let addr: SocketAddr = addr.parse().expect("addr");
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still taken: {e}"));
    }
}
