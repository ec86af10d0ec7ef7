//! `mesh demo`: a whole mesh on this machine. The control plane in local mode
//! (mesh-identity with a fresh CA, mesh-controller over manifests the demo writes,
//! mesh-viz), six workloads each behind its own strict mTLS proxy on its own loopback
//! address, and traffic; a live summary until `--duration` passes or Ctrl-C.

pub mod app;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The demo's fixed addresses: the ports of ARCHITECTURE.md on loopback.
const IDENTITY: &str = "127.0.0.1:8080";
const DESTINATION: &str = "127.0.0.1:8086";
const VIZ: &str = "127.0.0.1:8084";
/// Where viz receives the proxies' spans (OTLP gRPC).
const VIZ_OTLP: &str = "127.0.0.1:4317";
/// The share of new traces the demo's proxies record: a few a second at 20 rps.
const TRACE_SAMPLING: &str = "0.2";
const NAMESPACE: &str = "demo";

/// A workload of the demo app: its pod's address and how to run it.
struct Workload {
    name: &'static str,
    ip: IpAddr,
    /// Pod labels: `app` names the workload, `svc` groups the books (and reviews)
    /// versions, `api` the replicas behind the Gateway API route's `books-api`,
    /// `version` the reviews subsets.
    labels: &'static str,
    /// `mesh demo-app` arguments; `{ip}` and `{proxy}` are filled in.
    args: &'static [&'static str],
}

/// Whether a workload only calls others (it starts once every server is ready).
fn is_caller(name: &str) -> bool {
    matches!(
        name,
        "traffic" | "intruder" | "scraper" | "reader" | "jason"
    )
}

fn pod_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "web",
            ip: pod_ip(1),
            labels: "{app: web}",
            args: &["web", "--listen", "{ip}:8080", "--proxy", "{proxy}"],
        },
        Workload {
            name: "books-v1",
            ip: pod_ip(2),
            labels: "{app: books-v1, svc: books, api: books}",
            args: &["books", "--listen", "{ip}:8080", "--version", "v1"],
        },
        Workload {
            name: "books-v2",
            ip: pod_ip(3),
            labels: "{app: books-v2, svc: books, api: books}",
            args: &["books", "--listen", "{ip}:8080", "--version", "v2"],
        },
        // A replica of books-api that fails for 10 s of every 30: the circuit breaker
        // (failure accrual) takes it out, retries hide it from callers.
        Workload {
            name: "books-v1-b",
            ip: pod_ip(6),
            labels: "{app: books-v1-b, api: books}",
            args: &[
                "books",
                "--listen",
                "{ip}:8080",
                "--version",
                "v1",
                "--fail-cycle",
                "30s",
            ],
        },
        Workload {
            name: "authors",
            ip: pod_ip(4),
            labels: "{app: authors}",
            args: &["authors", "--listen", "{ip}:8080"],
        },
        // reviews, through Istio's VirtualService: two versions (a DestinationRule's
        // subsets); reader's calls split 75/25 and its /books/flaky ones meet an
        // injected fault; jason's (`end-user: jason`) all go to v2.
        Workload {
            name: "reviews-v1",
            ip: pod_ip(9),
            labels: "{app: reviews-v1, svc: reviews, version: v1}",
            args: &["books", "--listen", "{ip}:8080", "--version", "v1"],
        },
        Workload {
            name: "reviews-v2",
            ip: pod_ip(10),
            labels: "{app: reviews-v2, svc: reviews, version: v2}",
            args: &["books", "--listen", "{ip}:8080", "--version", "v2"],
        },
        Workload {
            name: "traffic",
            ip: pod_ip(5),
            labels: "{app: traffic}",
            args: &["traffic", "--proxy", "{proxy}", "--rps", "20"],
        },
        // Not among books' clients (its Server's AuthorizationPolicy): every call 403.
        Workload {
            name: "intruder",
            ip: pod_ip(7),
            labels: "{app: intruder}",
            args: &[
                "caller",
                "--proxy",
                "{proxy}",
                "--target",
                "books.demo.svc.cluster.local:80",
                "--path",
                "/books",
                "--rps",
                "2",
            ],
        },
        // reader and jason read reviews (see reviews-v1 above).
        Workload {
            name: "reader",
            ip: pod_ip(11),
            labels: "{app: reader}",
            args: &[
                "caller",
                "--proxy",
                "{proxy}",
                "--target",
                "reviews.demo.svc.cluster.local:80",
                "--path",
                "/books",
                "--path",
                "/books/flaky",
                "--rps",
                "10",
            ],
        },
        Workload {
            name: "jason",
            ip: pod_ip(12),
            labels: "{app: jason}",
            args: &[
                "caller",
                "--proxy",
                "{proxy}",
                "--target",
                "reviews.demo.svc.cluster.local:80",
                "--path",
                "/books",
                "--header",
                "end-user: jason",
                "--rps",
                "4",
            ],
        },
        // Among books' clients, but over its per-identity rate limit (5 per second per
        // pod): most calls 429.
        Workload {
            name: "scraper",
            ip: pod_ip(8),
            labels: "{app: scraper}",
            args: &[
                "caller",
                "--proxy",
                "{proxy}",
                "--target",
                "books.demo.svc.cluster.local:80",
                "--path",
                "/books",
                "--rps",
                "15",
            ],
        },
    ]
}

/// What `mesh demo` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// The state folder (CA, tokens, manifests, logs); a fresh temporary one if `None`.
    pub state: Option<PathBuf>,
    /// Keep the state folder on exit.
    pub keep_state: bool,
}

/// Where the mesh's binaries are: beside this `mesh` (an install, or `target/…/`),
/// else on `PATH`.
fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the mesh executable")?;
    if let Some(dir) = exe.parent() {
        let sibling = dir.join(name);
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find {name} beside {} or on PATH: build everything with `cargo build --release --workspace --bins`",
        exe.display()
    )
}

/// Every process the demo started, stopped when it ends (or is dropped).
struct Children {
    logs: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &str, cmd: &mut Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        // Marks every process as this demo's, so that a leftover can be found.
        if let Some(state) = self.logs.parent() {
            cmd.env("MESH_DEMO_STATE", state);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.push((name.to_owned(), child));
        Ok(())
    }

    /// Fails, naming the process and the end of its log, if any child has exited.
    fn check(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.logs.join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{name} exited ({status}):\n  {}", tail.join("\n  "));
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.start_kill();
        }
        for (_, child) in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.procs.clear();
    }
}

/// Refuses to start when an address the demo needs is taken.
fn check_free(addrs: &[(SocketAddr, String)]) -> anyhow::Result<()> {
    for (addr, what) in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "{addr} ({what}) is not available: {e}. Is another `mesh demo` (or something else on that port) running? Stop it and try again."
            );
        }
    }
    Ok(())
}

fn random_token() -> String {
    (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect()
}

/// Writes the demo's cluster: namespace, services, pods, the books profile and split.
fn write_manifests(dir: &Path, workloads: &[Workload]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ns = NAMESPACE;
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, annotations: {{mesh.io/inject: enabled}}}}\n"
    )];
    // books-api: the Gateway API's way in — a header-routed canary, retries and a
    // circuit breaker, from Linkerd's annotations.
    let api = "{retry.linkerd.io/http: 5xx, retry.linkerd.io/limit: \"2\", \
               balancer.linkerd.io/failure-accrual: consecutive, \
               balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"3\", \
               balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 2s, \
               balancer.linkerd.io/failure-accrual-consecutive-max-penalty: 20s}";
    for (name, selector, annotations) in [
        ("web", "{app: web}", "{}"),
        ("books", "{svc: books}", "{}"),
        ("books-v1", "{app: books-v1}", "{}"),
        ("books-v2", "{app: books-v2}", "{}"),
        ("books-api", "{api: books}", api),
        ("authors", "{app: authors}", "{}"),
        ("reviews", "{svc: reviews}", "{}"),
    ] {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, annotations: {annotations}}}\n\
             spec: {{selector: {selector}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        ));
    }
    for w in workloads {
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-0, namespace: {ns}, labels: {labels}}}\n\
             spec: {{serviceAccountName: {name}, containers: [{{name: app, image: mesh-demo}}]}}\n\
             status: {{podIP: \"{ip}\", phase: Running}}\n",
            name = w.name,
            labels = w.labels,
            ip = w.ip
        ));
    }
    std::fs::write(dir.join("demo.yaml"), docs.join("---\n"))?;
    std::fs::write(
        dir.join("books-profile.yaml"),
        format!(
            "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n\
             metadata: {{name: books.{ns}.svc.cluster.local, namespace: {ns}}}\n\
             spec:\n\
             \x20 routes:\n\
             \x20 - name: GET /books\n\
             \x20   condition: {{method: GET, pathRegex: /books}}\n\
             \x20 - name: GET /books/flaky\n\
             \x20   condition: {{method: GET, pathRegex: /books/flaky}}\n\
             \x20   isRetryable: true\n\
             \x20 - name: GET /books/slow\n\
             \x20   condition: {{method: GET, pathRegex: /books/slow}}\n\
             \x20   timeout: 250ms\n\
             \x20 retryBudget: {{retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("books-api-route.yaml"),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: books-api, namespace: {ns}}}\n\
             spec:\n\
             \x20 parentRefs: [{{group: \"\", kind: Service, name: books-api, port: 80}}]\n\
             \x20 rules:\n\
             \x20 - name: canary\n\
             \x20   matches: [{{headers: [{{name: x-canary, value: \"true\"}}]}}]\n\
             \x20   backendRefs: [{{name: books-v2, port: 80}}]\n\
             \x20 - name: all\n\
             \x20   backendRefs: [{{name: books-api, port: 80}}]\n"
        ),
    )?;
    // Who may call books (Linkerd's policy kinds): web and scraper, by service account;
    // anyone else is denied (the Server's default access policy). Each client identity
    // but web gets 5 requests a second per books pod.
    std::fs::write(
        dir.join("books-policy.yaml"),
        format!(
            "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\n\
             metadata: {{name: books, namespace: {ns}}}\n\
             spec: {{podSelector: {{matchLabels: {{svc: books}}}}, port: 8080, proxyProtocol: HTTP/1}}\n\
             ---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\n\
             metadata: {{name: books-clients, namespace: {ns}}}\n\
             spec: {{identityRefs: [{{kind: ServiceAccount, name: web}}, {{kind: ServiceAccount, name: scraper}}]}}\n\
             ---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: books, namespace: {ns}}}\n\
             spec:\n  targetRef: {{group: policy.linkerd.io, kind: Server, name: books}}\n\
             \x20 requiredAuthenticationRefs: [{{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: books-clients}}]\n\
             ---\napiVersion: policy.linkerd.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\n\
             metadata: {{name: books, namespace: {ns}}}\n\
             spec:\n  targetRef: {{group: policy.linkerd.io, kind: Server, name: books}}\n\
             \x20 identity: {{requestsPerSecond: 5}}\n\
             \x20 overrides: [{{requestsPerSecond: 1000, clientRefs: [{{kind: ServiceAccount, name: web}}]}}]\n"
        ),
    )?;
    // Istio's traffic API, as the examples write it: jason to v2, a fault on the
    // flaky path (no retries or timeout on a faulted route), the rest 75/25.
    std::fs::write(
        dir.join("reviews-istio.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: reviews, namespace: {ns}}}\n\
             spec:\n\
             \x20 hosts: [reviews]\n\
             \x20 http:\n\
             \x20 - name: jason\n\
             \x20   match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n\
             \x20   route: [{{destination: {{host: reviews, subset: v2}}}}]\n\
             \x20 - name: fault\n\
             \x20   match: [{{uri: {{prefix: /books/flaky}}}}]\n\
             \x20   fault:\n\
             \x20     abort: {{httpStatus: 503, percentage: {{value: 20}}}}\n\
             \x20     delay: {{fixedDelay: 100ms, percentage: {{value: 30}}}}\n\
             \x20   route: [{{destination: {{host: reviews, subset: v1}}}}]\n\
             \x20 - name: split\n\
             \x20   route:\n\
             \x20   - {{destination: {{host: reviews, subset: v1}}, weight: 75}}\n\
             \x20   - {{destination: {{host: reviews, subset: v2}}, weight: 25}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: reviews, namespace: {ns}}}\n\
             spec:\n\
             \x20 host: reviews\n\
             \x20 subsets:\n\
             \x20 - {{name: v1, labels: {{version: v1}}}}\n\
             \x20 - {{name: v2, labels: {{version: v2}}}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("books-split.yaml"),
        format!(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n\
             metadata: {{name: books-canary, namespace: {ns}}}\n\
             spec:\n  service: books\n  backends:\n  - service: books-v1\n    weight: 80\n  - service: books-v2\n    weight: 20\n"
        ),
    )?;
    Ok(())
}

/// Polls `check` every 100 ms for at most `patience`, failing early if a child died.
async fn wait_for<F, Fut>(
    what: &str,
    patience: Duration,
    children: &mut Children,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    loop {
        children.check()?;
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not come up within {patience:?}; see the logs in {}",
                children.logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    use http_body_util::Empty;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let Ok(uri) = format!("http://{addr}{path}").parse::<http::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await,
        Ok(Ok(rsp)) if rsp.status().is_success()
    )
}

async fn listening(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Runs the demo.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let bins = [
        ("mesh-proxy", find_binary("mesh-proxy")?),
        ("mesh-controller", find_binary("mesh-controller")?),
        ("mesh-identity", find_binary("mesh-identity")?),
        ("mesh-viz", find_binary("mesh-viz")?),
    ];
    let bin = |name: &str| {
        bins.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    let mesh = std::env::current_exe()?;
    let workloads = workloads();
    let parse = |s: &str| -> anyhow::Result<SocketAddr> { Ok(s.parse()?) };
    let (identity_addr, destination, viz) = (parse(IDENTITY)?, parse(DESTINATION)?, parse(VIZ)?);
    let mut needed = vec![
        (identity_addr, "mesh-identity".to_owned()),
        (destination, "mesh-controller".to_owned()),
        (viz, "mesh-viz".to_owned()),
        (parse(VIZ_OTLP)?, "mesh-viz OTLP".to_owned()),
    ];
    for w in &workloads {
        for (port, what) in [
            (8080, "app"),
            (4143, "proxy inbound"),
            (4140, "proxy outbound"),
            (4191, "proxy admin"),
        ] {
            needed.push((SocketAddr::new(w.ip, port), format!("{} {what}", w.name)));
        }
    }
    check_free(&needed)?;

    let (state, temporary) = match &options.state {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id())),
            true,
        ),
    };
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create the state folder {}", state.display()))?;
    let mut children = Children {
        logs: logs.clone(),
        procs: Vec::new(),
    };
    // Signals are watched from before the first child starts until the last is stopped:
    // an interrupt during startup stops everything too.
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let result = tokio::select! {
        r = run_in(&options, &state, &mesh, &bin, &workloads, &mut children) => r,
        _ = interrupt.recv() => { eprintln!("\ninterrupted"); Ok(()) }
        _ = terminate.recv() => { eprintln!("terminated"); Ok(()) }
        _ = hangup.recv() => { eprintln!("hung up"); Ok(()) }
    };
    eprintln!("stopping every demo process");
    children.stop().await;
    if temporary && !options.keep_state {
        let _ = std::fs::remove_dir_all(&state);
    } else {
        eprintln!("state kept in {}", state.display());
    }
    result
}

async fn run_in(
    options: &Options,
    state: &Path,
    mesh: &Path,
    bin: &dyn Fn(&str) -> PathBuf,
    workloads: &[Workload],
    children: &mut Children,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // A fresh CA, and a token per service account (the local control plane's job).
    let ca = state.join("ca");
    let generated = mesh_identity::ca::generate(
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(2 * 86_400),
    )?;
    mesh_identity::ca::write(&ca, &generated)?;
    let tokens_dir = state.join("tokens");
    std::fs::create_dir_all(&tokens_dir)?;
    let mut tokens = String::from("tokens:\n");
    for w in workloads {
        let token = random_token();
        std::fs::write(tokens_dir.join(w.name), &token)?;
        tokens.push_str(&format!(
            "- token: {token}\n  namespace: {NAMESPACE}\n  serviceAccount: {}\n",
            w.name
        ));
    }
    let tokens_file = state.join("tokens.yaml");
    std::fs::write(&tokens_file, tokens)?;
    let cluster = state.join("cluster");
    write_manifests(&cluster, workloads)?;

    eprintln!("starting the control plane (state in {})", state.display());
    children.spawn(
        "mesh-identity",
        Command::new(bin("mesh-identity"))
            .env("MESH_IDENTITY_ADDR", IDENTITY)
            .env("MESH_IDENTITY_ADMIN_ADDR", "127.0.0.1:0")
            .env("MESH_IDENTITY_ISSUER_DIR", &ca)
            .env(
                "MESH_IDENTITY_TOKENS",
                format!("file:{}", tokens_file.display()),
            )
            .env("MESH_IDENTITY_NAMESPACE", "mesh")
            .env("MESH_IDENTITY_CERT_LIFETIME", "1h"),
    )?;
    children.spawn(
        "mesh-controller",
        Command::new(bin("mesh-controller"))
            .env(
                "MESH_CONTROLLER_SOURCE",
                format!("dir:{}", cluster.display()),
            )
            .env("MESH_CONTROLLER_DESTINATION_ADDR", DESTINATION),
    )?;
    children.spawn(
        "mesh-viz",
        Command::new(bin("mesh-viz"))
            .env("MESH_VIZ_SOURCE", format!("dir:{}", cluster.display()))
            .env("MESH_VIZ_ADDR", VIZ)
            .env("MESH_VIZ_OTLP_ADDR", VIZ_OTLP)
            .env("MESH_VIZ_SCRAPE_INTERVAL", "1s"),
    )?;
    let patience = Duration::from_secs(30);
    for (what, addr) in [
        ("mesh-identity", IDENTITY),
        ("mesh-controller", DESTINATION),
        ("mesh-viz", VIZ),
    ] {
        let addr: SocketAddr = addr.parse()?;
        wait_for(what, patience, children, || listening(addr)).await?;
    }

    eprintln!(
        "starting {} workloads, each behind its own strict mTLS proxy",
        workloads.len()
    );
    let anchors = ca.join(mesh_identity::ca::TRUST_ANCHORS_FILE);
    for w in workloads {
        let proxy_outbound = SocketAddr::new(w.ip, 4140);
        let args: Vec<String> = w
            .args
            .iter()
            .map(|a| {
                a.replace("{ip}", &w.ip.to_string())
                    .replace("{proxy}", &proxy_outbound.to_string())
            })
            .collect();
        children.spawn(
            &format!("{}-proxy", w.name),
            Command::new(bin("mesh-proxy"))
                .env(
                    "MESH_PROXY_INBOUND_ADDR",
                    SocketAddr::new(w.ip, 4143).to_string(),
                )
                .env("MESH_PROXY_OUTBOUND_ADDR", proxy_outbound.to_string())
                .env(
                    "MESH_PROXY_ADMIN_ADDR",
                    SocketAddr::new(w.ip, 4191).to_string(),
                )
                .env(
                    "MESH_PROXY_INBOUND_APP_ADDR",
                    SocketAddr::new(w.ip, 8080).to_string(),
                )
                .env("MESH_PROXY_DESTINATION_ADDR", DESTINATION)
                .env("MESH_PROXY_NAMESPACE", NAMESPACE)
                .env("MESH_PROXY_IDENTITY_ADDR", IDENTITY)
                .env("MESH_PROXY_IDENTITY_NAME", mesh_api_name(w.name))
                .env("MESH_PROXY_TRUST_ANCHORS", &anchors)
                .env("MESH_PROXY_TOKEN_PATH", state.join("tokens").join(w.name))
                .env("MESH_PROXY_POD_NAME", format!("{}-0", w.name))
                .env("MESH_PROXY_INBOUND_TLS", "strict")
                .env("MESH_PROXY_TRACE_COLLECTOR", VIZ_OTLP)
                .env("MESH_PROXY_TRACE_SAMPLING", TRACE_SAMPLING)
                .env(
                    "MESH_PROXY_TRACE_SERVICE_NAME",
                    format!("{}.{NAMESPACE}", w.name),
                ),
        )?;
        if !is_caller(w.name) {
            children.spawn(w.name, Command::new(mesh).arg("demo-app").args(&args))?;
        } else {
            // Callers start once every serving workload is ready.
            let admin = SocketAddr::new(w.ip, 4191);
            for other in workloads.iter().filter(|o| !is_caller(o.name)) {
                let (admin, app) = (
                    SocketAddr::new(other.ip, 4191),
                    SocketAddr::new(other.ip, 8080),
                );
                wait_for(other.name, patience, children, || async move {
                    http_ok(admin, "/ready").await && listening(app).await
                })
                .await?;
            }
            wait_for(&format!("the {} proxy", w.name), patience, children, || {
                http_ok(admin, "/ready")
            })
            .await?;
            children.spawn(w.name, Command::new(mesh).arg("demo-app").args(&args))?;
        }
    }

    println!();
    println!(
        "mesh demo is running ({:.1}s to start):",
        started.elapsed().as_secs_f64()
    );
    println!("  dashboard   http://{VIZ}/");
    println!(
        "  traces      {}% of requests traced by every proxy into viz (OTLP on {VIZ_OTLP}): the dashboard's Traces, or curl http://{VIZ}/api/traces",
        (TRACE_SAMPLING.parse::<f64>().unwrap_or(0.0) * 100.0).round()
    );
    println!("  edges       mesh viz edges deployment -n {NAMESPACE}");
    println!("  routes      mesh viz routes svc/books -n {NAMESPACE} -o wide");
    println!("              mesh viz routes svc/books-api -n {NAMESPACE} -o wide");
    println!("              mesh viz routes svc/reviews -n {NAMESPACE} -o wide");
    println!(
        "  workloads   web → books (HTTP/1, canary 80/20 to books-v1/books-v2; flaky route retried, slow route 250ms timeout) and web → authors (gRPC); traffic → web at 20 rps"
    );
    println!("  authz       mesh viz authz deploy/books-v1 -n {NAMESPACE}");
    println!(
        "  policy      books' Server admits web and scraper only (a MeshTLSAuthentication): intruder's calls are 403; scraper's are cut to 5 a second per books pod (HTTPLocalRateLimitPolicy), the rest 429"
    );
    println!(
        "  books-api   an HTTPRoute: `x-canary: true` goes to books-v2, the rest to books-v1, books-v2 and books-v1-b, which fails 10 s of every 30: failure accrual ejects it (outbound_endpoint_ejections_total at web's proxy) and retries hide it"
    );
    println!(
        "  reviews     Istio's VirtualService and DestinationRule: jason's calls (`end-user: jason`) go to reviews-v2, reader's split 75/25 over v1 and v2; /books/flaky gets an injected fault (20% 503, 30% 100 ms late)"
    );
    // Exact, not more: each app's own port stands for its pod's localhost, which on one
    // machine without network namespaces any local process can reach.
    println!(
        "  every pod   strict mTLS on its inbound port (127.0.1.N:4143): a client without a mesh certificate is refused there; the apps' own ports (127.0.1.N:8080) stand for each pod's localhost and are not guarded"
    );
    match options.duration {
        Some(d) => println!("  stopping in {}s (Ctrl-C stops sooner)", d.as_secs()),
        None => println!("  Ctrl-C stops it"),
    }
    println!();

    let stop = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = tick.tick() => {
                children.check()?;
                summary(started).await;
            }
        }
    }
}

fn mesh_api_name(sa: &str) -> String {
    mesh_api::identity::dns_name(sa, NAMESPACE)
}

/// Prints viz's per-workload stats, compactly.
async fn summary(started: Instant) {
    let Ok(viz) = VIZ.parse::<SocketAddr>() else {
        return;
    };
    match crate::viz::stat_table(viz, NAMESPACE, "30s").await {
        Ok(table) => {
            println!(
                "── {:>4.0}s ── mesh viz stat deploy -n {NAMESPACE} (last 30s)",
                started.elapsed().as_secs_f64()
            );
            print!("{table}");
        }
        Err(e) => eprintln!("viz: {e}"),
    }
}
