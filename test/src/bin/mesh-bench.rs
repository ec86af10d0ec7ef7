//! mesh-bench: the same HTTP/1 load, in one run, against a backend directly, through
//! one mesh-proxy, through two (outbound → inbound, the meshed hop), and through nginx,
//! haproxy and Envoy when they are installed. Prints latency percentiles at a fixed
//! rate, the latency each row adds over direct, maximum throughput at a fixed
//! concurrency, and each proxy's peak RSS and CPU seconds per 10,000 requests.
//!
//! `cargo run --profile dist -p mesh-test --bin mesh-bench -- --help`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use mesh_test::load::{self, Target};
use serde::Serialize;

/// Benchmarks mesh-proxy against a direct connection and other proxies.
#[derive(Parser, Debug)]
struct Args {
    /// Length of each measured phase (fixed rate, then max throughput) per row.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Requests per second in the fixed-rate (latency) phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Keep-alive connections used in the fixed-rate phase.
    #[arg(long, default_value_t = 10)]
    connections: u32,
    /// Requests in flight in the max-throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Rows to run, comma-separated: direct, mesh, mesh2, nginx, haproxy, envoy;
    /// mesh-tls (the meshed hop as users run it: two proxies with mTLS from the identity
    /// service, strict inbound, HTTP/1 over HTTP/2 between them);
    /// mesh-in (one proxy on its inbound side) and mesh-in-authz (the same, with the
    /// controller's policy: Istio ALLOW and DENY rules, a Linkerd Server and its rate
    /// limit, all decided per request).
    #[arg(
        long,
        default_value = "direct,mesh,mesh2,nginx,haproxy,envoy",
        value_delimiter = ','
    )]
    rows: Vec<String>,
    /// Worker threads or processes for every proxy (mesh-proxy, nginx, haproxy, Envoy),
    /// so that each row gets the same CPU budget.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A positive duration in the mesh's grammar ([`mesh_api::duration`]).
fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(s, Duration::from_millis(1)..=Duration::MAX)
}

#[derive(Serialize, Debug)]
struct Row {
    name: String,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    added_p50_us: Option<i64>,
    /// What the row adds over `direct` at p90, p99 and p99.9 (as Istio reports its
    /// data plane's cost: the hop minus a direct baseline).
    added_p90_us: Option<i64>,
    added_p99_us: Option<i64>,
    added_p999_us: Option<i64>,
    max_rps: f64,
    peak_rss_mb: Option<f64>,
    cpu_s_per_10k: Option<f64>,
    errors: u64,
}

/// Processes that make up a proxy under test (measured), and one that serves it (not
/// measured: the controller); killed on drop.
struct Procs(Vec<Child>, Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        // Kill the workers too: nginx's workers outlive a SIGKILLed master.
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        for c in self.0.iter_mut().chain(self.1.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// Every pid of the proxies and their children (nginx and haproxy fork workers).
    fn pids(&self) -> Vec<u32> {
        let roots: Vec<u32> = self.0.iter().map(|c| c.id()).collect();
        let mut all = roots.clone();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(ppid) = mesh_test::procfs::stat_field(pid, 1)
                    && roots.contains(&(ppid as u32))
                {
                    all.push(pid);
                }
            }
        }
        all
    }

    fn cpu_seconds(&self) -> f64 {
        // utime + stime, in clock ticks of 1/100 s (Linux's USER_HZ).
        self.pids()
            .iter()
            .map(|&p| mesh_test::procfs::cpu_seconds(p))
            .sum()
    }

    fn peak_rss_mb(&self) -> f64 {
        self.pids()
            .iter()
            .map(|&p| mesh_test::procfs::status_kb(p, "VmHWM").unwrap_or(0) as f64 / 1024.0)
            .sum()
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr} after 15 s")
}

fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    spawn_quiet(cmd, false)
}

/// Starts `cmd`, its stderr shown when `loud`.
fn spawn_quiet(cmd: &mut Command, loud: bool) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if loud {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))
}

fn mesh_proxy(
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    app: Option<SocketAddr>,
    workers: u32,
) -> anyhow::Result<Child> {
    mesh_proxy_with(inbound, outbound, admin, app, workers, &[])
}

fn mesh_proxy_with(
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    app: Option<SocketAddr>,
    workers: u32,
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    let mut cmd = Command::new(mesh_test::bin_path("mesh-proxy"));
    cmd.env_clear()
        .env("MESH_PROXY_INBOUND_ADDR", inbound.to_string())
        .env("MESH_PROXY_OUTBOUND_ADDR", outbound.to_string())
        .env("MESH_PROXY_ADMIN_ADDR", admin.to_string())
        .env("MESH_PROXY_LOG", "warn")
        .env("MESH_PROXY_WORKERS", workers.to_string());
    if let Some(app) = app {
        cmd.env("MESH_PROXY_INBOUND_APP_ADDR", app.to_string());
    }
    cmd.envs(extra.iter().map(|(k, v)| (*k, v)));
    let mut child = spawn_quiet(&mut cmd, false)?;
    if std::env::var_os("MESH_BENCH_DEBUG").is_some() {
        // The proxies' logs, for a row that fails.
        let _ = child.kill();
        cmd.env("MESH_PROXY_LOG", "info");
        child = spawn_quiet(&mut cmd, true)?;
    }
    Ok(child)
}

/// Starts the controller over the folder `objects`, serving on `destination`.
fn controller(objects: &Path, destination: SocketAddr) -> anyhow::Result<Child> {
    let mut ctl = Command::new(mesh_test::bin_path("mesh-controller"));
    ctl.env_clear()
        .env(
            "MESH_CONTROLLER_SOURCE",
            format!("dir:{}", objects.display()),
        )
        .env("MESH_CONTROLLER_DESTINATION_ADDR", destination.to_string())
        .env("MESH_CONTROLLER_LOG", "warn");
    spawn(&mut ctl)
}

/// Starts the proxy of `row` in front of `backend`; returns where to send requests.
async fn start(
    row: &str,
    backend: SocketAddr,
    dir: &Path,
    workers: u32,
) -> anyhow::Result<Option<(Target, Procs)>> {
    let path = "/".to_string();
    let host = backend.to_string();
    let (addr, procs) = match row {
        "direct" => {
            return Ok(Some((
                Target {
                    addr: backend,
                    host,
                    path,
                },
                Procs(vec![], vec![]),
            )));
        }
        "mesh" => {
            let out = free_port()?;
            let child = mesh_proxy(free_port()?, out, free_port()?, None, workers)?;
            (out, Procs(vec![child], vec![]))
        }
        "mesh-in" => {
            let inb = free_port()?;
            let child = mesh_proxy(inb, free_port()?, free_port()?, Some(backend), workers)?;
            (inb, Procs(vec![child], vec![]))
        }
        "mesh-in-authz" => {
            // The controller over a folder: the bench pod, Istio's ALLOW and DENY, a
            // Linkerd Server admitting loopback, with a rate limit that never bites.
            let objects = dir.join("authz");
            std::fs::create_dir_all(&objects)?;
            std::fs::write(objects.join("bench.yaml"), authz_objects(backend.port()))?;
            let destination = free_port()?;
            let controller = controller(&objects, destination)?;
            wait_listening(destination).await?;
            let inb = free_port()?;
            let child = mesh_proxy_with(
                inb,
                free_port()?,
                free_port()?,
                Some(backend),
                workers,
                &[
                    ("MESH_PROXY_DESTINATION_ADDR", destination.to_string()),
                    ("MESH_PROXY_NAMESPACE", "bench".into()),
                    ("MESH_PROXY_POD_NAME", "bench-0".into()),
                ],
            )?;
            wait_listening(inb).await?;
            // The proxy's measured; the controller only answers once, but must live.
            let target = Target {
                addr: inb,
                host: backend.to_string(),
                path,
            };
            let mut procs = Procs(vec![child], vec![]);
            procs.1 = vec![controller];
            return Ok(Some((target, procs)));
        }
        "mesh2" => {
            // Client → outbound proxy → inbound proxy → backend: the meshed hop.
            let (out, inb) = (free_port()?, free_port()?);
            let server_side = mesh_proxy(inb, free_port()?, free_port()?, Some(backend), workers)?;
            let client_side = mesh_proxy(free_port()?, out, free_port()?, None, workers)?;
            wait_listening(inb).await?;
            wait_listening(out).await?;
            let target = Target {
                addr: out,
                host: inb.to_string(),
                path,
            };
            return Ok(Some((
                target,
                Procs(vec![client_side, server_side], vec![]),
            )));
        }
        "mesh-tls" => return mesh_tls(backend, dir, workers).await.map(Some),
        "nginx" => {
            let Some(bin) = which("nginx") else {
                return Ok(None);
            };
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes {workers}; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
                       upstream b {{ server {backend}; keepalive 64; keepalive_requests 100000000; }}\n\
                       server {{ listen {port}; keepalive_requests 100000000; location / {{ proxy_pass http://b;\n\
                         proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
                    d = dir.display()
                ),
            )?;
            (
                port,
                Procs(
                    vec![spawn(
                        Command::new(bin).arg("-c").arg(&conf).arg("-p").arg(dir),
                    )?],
                    vec![],
                ),
            )
        }
        "haproxy" => {
            let Some(bin) = which("haproxy") else {
                return Ok(None);
            };
            let port = free_port()?;
            let conf = dir.join("haproxy.cfg");
            std::fs::write(
                &conf,
                format!(
                    "global\n  nbthread {workers}\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
                     timeout server 30s\n  http-reuse always\nfrontend f\n  bind {port}\n  default_backend b\n\
                     backend b\n  server s1 {backend}\n"
                ),
            )?;
            (
                port,
                Procs(
                    vec![spawn(Command::new(bin).arg("-db").arg("-f").arg(&conf))?],
                    vec![],
                ),
            )
        }
        "envoy" => {
            let Some(bin) = which("envoy") else {
                return Ok(None);
            };
            let port = free_port()?;
            let conf = dir.join("envoy.yaml");
            std::fs::write(&conf, envoy_config(port, backend))?;
            let mut cmd = Command::new(bin);
            cmd.arg("-c").arg(&conf).args([
                "--concurrency",
                &workers.to_string(),
                "-l",
                "error",
                "--base-id",
            ]);
            cmd.arg(std::process::id().to_string());
            (port, Procs(vec![spawn(&mut cmd)?], vec![]))
        }
        other => bail!("unknown row {other:?}: use direct, mesh, mesh2, nginx, haproxy or envoy"),
    };
    wait_listening(addr).await?;
    Ok(Some((Target { addr, host, path }, procs)))
}

/// The meshed hop as users run it: the identity service issuing both proxies their
/// certificates, the controller over a folder that names the backend's pod as meshed,
/// the client's proxy sending HTTP/1 over HTTP/2 with mTLS to the server's proxy,
/// strict inbound, in front of `backend`.
async fn mesh_tls(
    backend: SocketAddr,
    dir: &Path,
    workers: u32,
) -> anyhow::Result<(Target, Procs)> {
    let state = dir.join("mesh-tls");
    let ca = state.join("ca");
    std::fs::create_dir_all(&ca)?;
    let generated = mesh_identity::ca::generate(
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(2 * 86_400),
    )?;
    mesh_identity::ca::write(&ca, &generated)?;
    let mut tokens = String::from("tokens:\n");
    for sa in ["client", "server"] {
        let token = format!("bench-token-{sa}-{}", std::process::id());
        std::fs::write(state.join(format!("{sa}.token")), &token)?;
        tokens.push_str(&format!(
            "- token: {token}\n  namespace: bench\n  serviceAccount: {sa}\n"
        ));
    }
    std::fs::write(state.join("tokens.yaml"), tokens)?;
    // The backend's pod is the backend's address: its proxy takes peers on 4143 there
    // and forwards to the port they name (the pod's IP, as in a pod).
    let pod_ip = backend.ip();
    let objects = state.join("cluster");
    std::fs::create_dir_all(&objects)?;
    std::fs::write(
        objects.join("bench.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench, annotations: {{mesh.io/inject: enabled}}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: bench}}\n\
             spec: {{selector: {{app: backend}}, ports: [{{port: 80, targetPort: {port}}}]}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: backend-0, namespace: bench, labels: {{app: backend}}}}\n\
             spec: {{serviceAccountName: server, containers: [{{name: app, image: x}}]}}\n\
             status: {{podIP: \"{pod_ip}\", phase: Running}}\n",
            port = backend.port()
        ),
    )?;
    let (identity, destination) = (free_port()?, free_port()?);
    let mut id = Command::new(mesh_test::bin_path("mesh-identity"));
    id.env_clear()
        .env("MESH_IDENTITY_ADDR", identity.to_string())
        .env("MESH_IDENTITY_ADMIN_ADDR", "127.0.0.1:0")
        .env("MESH_IDENTITY_ISSUER_DIR", &ca)
        .env(
            "MESH_IDENTITY_TOKENS",
            format!("file:{}", state.join("tokens.yaml").display()),
        )
        .env("MESH_IDENTITY_NAMESPACE", "mesh")
        .env("MESH_IDENTITY_CERT_LIFETIME", "1h");
    let identity_proc = spawn(&mut id)?;
    let controller = controller(&objects, destination)?;
    wait_listening(identity).await?;
    wait_listening(destination).await?;
    let anchors = ca.join(mesh_identity::ca::TRUST_ANCHORS_FILE);
    let meshed = |sa: &str| -> Vec<(&'static str, String)> {
        vec![
            ("MESH_PROXY_IDENTITY_ADDR", identity.to_string()),
            (
                "MESH_PROXY_IDENTITY_NAME",
                mesh_api::identity::dns_name(sa, "bench"),
            ),
            ("MESH_PROXY_TRUST_ANCHORS", anchors.display().to_string()),
            (
                "MESH_PROXY_TOKEN_PATH",
                state.join(format!("{sa}.token")).display().to_string(),
            ),
            ("MESH_PROXY_DESTINATION_ADDR", destination.to_string()),
            ("MESH_PROXY_NAMESPACE", "bench".into()),
        ]
    };
    let inbound: SocketAddr = format!("{pod_ip}:4143").parse()?;
    let (server_admin, client_admin, out) = (free_port()?, free_port()?, free_port()?);
    let mut server_env = meshed("server");
    server_env.push(("MESH_PROXY_INBOUND_TLS", "strict".into()));
    server_env.push(("MESH_PROXY_POD_NAME", "backend-0".into()));
    let server_side = mesh_proxy_with(
        inbound,
        free_port()?,
        server_admin,
        Some(backend),
        workers,
        &server_env,
    )?;
    let client_side = mesh_proxy_with(
        free_port()?,
        out,
        client_admin,
        None,
        workers,
        &meshed("client"),
    )?;
    for admin in [server_admin, client_admin] {
        wait_ready(admin).await?;
    }
    let target = Target {
        addr: out,
        host: "backend.bench.svc.cluster.local:80".into(),
        path: "/".into(),
    };
    Ok((
        target,
        Procs(
            vec![client_side, server_side],
            vec![controller, identity_proc],
        ),
    ))
}

/// Waits until a proxy's admin server says it is ready (it has its certificate).
async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tcp
                .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = tcp.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the proxy at {admin} was not ready after 20 s")
}

fn envoy_config(port: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: {ip}, port_value: {lp}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: backend}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {bip}, port_value: {bp}}}}}}}
"#,
        ip = port.ip(),
        lp = port.port(),
        bip = backend.ip(),
        bp = backend.port()
    )
}

async fn measure(name: &str, target: &Target, procs: &Procs, args: &Args) -> Row {
    // Warm up: open connections, fill pools and caches.
    let _ = load::max_throughput(target, args.concurrency, Duration::from_millis(500)).await;
    let cpu_before = procs.cpu_seconds();
    let fixed = load::fixed_rate(target, args.rate, args.duration, args.connections).await;
    let max = load::max_throughput(target, args.concurrency, args.duration).await;
    let cpu = procs.cpu_seconds() - cpu_before;
    let requests = (fixed.ok + max.ok).max(1) as f64;
    let is_proxy = !procs.0.is_empty();
    Row {
        name: name.to_string(),
        p50_us: fixed.latency.value_at_quantile(0.5),
        p90_us: fixed.latency.value_at_quantile(0.9),
        p99_us: fixed.latency.value_at_quantile(0.99),
        p999_us: fixed.latency.value_at_quantile(0.999),
        added_p50_us: None,
        added_p90_us: None,
        added_p99_us: None,
        added_p999_us: None,
        max_rps: max.rps(),
        peak_rss_mb: is_proxy.then(|| procs.peak_rss_mb()),
        cpu_s_per_10k: is_proxy.then(|| cpu / requests * 10_000.0),
        errors: fixed.errors + max.errors,
    }
}

/// The policy of the `mesh-in-authz` row, for the application port `port`: Istio's
/// DENY and ALLOW rules (checked for every request), a Linkerd Server with a total rate
/// limit that never bites (its bucket taken for every request).
fn authz_objects(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: bench-0, namespace: bench, labels: {{app: bench}}}}\n\
         spec: {{containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: 127.0.0.1}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: bench}}\n\
         spec: {{selector: {{matchLabels: {{app: bench}}}}, action: DENY, rules: [{{to: [{{operation: {{paths: [\"/admin*\"]}}}}]}}]}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: reads, namespace: bench}}\n\
         spec: {{selector: {{matchLabels: {{app: bench}}}}, action: ALLOW, rules: [{{from: [{{source: {{ipBlocks: [127.0.0.0/8]}}}}], \
         to: [{{operation: {{methods: [GET], paths: [\"/*\"]}}}}]}}]}}\n---\n\
         apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {{name: bench, namespace: bench}}\n\
         spec: {{podSelector: {{matchLabels: {{app: bench}}}}, port: {port}, accessPolicy: all-unauthenticated}}\n---\n\
         apiVersion: policy.linkerd.io/v1alpha1\nkind: HTTPLocalRateLimitPolicy\nmetadata: {{name: bench, namespace: bench}}\n\
         spec: {{targetRef: {{group: policy.linkerd.io, kind: Server, name: bench}}, total: {{requestsPerSecond: 10000000}}}}\n"
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The backend gets a runtime of its own so that the load generator cannot starve it.
    let backend_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let backend = backend_rt.block_on(mesh_test::backend::http()).addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("mesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rows = rt.block_on(async {
        let mut rows: Vec<Row> = Vec::new();
        for name in &args.rows {
            match start(name, backend, &dir, args.workers).await {
                Ok(Some((target, procs))) => {
                    eprintln!("measuring {name} …");
                    rows.push(measure(name, &target, &procs, &args).await);
                }
                Ok(None) => eprintln!("skipping {name}: not installed"),
                Err(e) => eprintln!("skipping {name}: {e:#}"),
            }
        }
        rows
    });
    let _ = std::fs::remove_dir_all(&dir);
    let mut rows = rows;
    let direct = rows
        .iter()
        .find(|r| r.name == "direct")
        .map(|r| (r.p50_us, r.p90_us, r.p99_us, r.p999_us));
    for r in &mut rows {
        let minus = |v: u64, d: u64| v as i64 - d as i64;
        r.added_p50_us = direct.map(|d| minus(r.p50_us, d.0));
        r.added_p90_us = direct.map(|d| minus(r.p90_us, d.1));
        r.added_p99_us = direct.map(|d| minus(r.p99_us, d.2));
        r.added_p999_us = direct.map(|d| minus(r.p999_us, d.3));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11} {:>9} {:>8} {:>12} {:>6}",
            "ROW",
            "P50_US",
            "P90_US",
            "P99_US",
            "P999_US",
            "ADDED_P50",
            "ADDED_P90",
            "ADDED_P99",
            "ADDED_P999",
            "MAX_RPS",
            "RSS_MB",
            "CPU_S/10K",
            "ERRORS"
        );
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        let added = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        for r in &rows {
            println!(
                "{:<8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11} {:>9.0} {:>8} {:>12} {:>6}",
                r.name,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                added(r.added_p50_us),
                added(r.added_p90_us),
                added(r.added_p99_us),
                added(r.added_p999_us),
                r.max_rps,
                opt(r.peak_rss_mb, 1),
                opt(r.cpu_s_per_10k, 3),
                r.errors
            );
        }
        println!(
            "rate {} rps over {} connections, {} in flight for max rps, {:?} per phase, {} worker(s) per proxy",
            args.rate, args.connections, args.concurrency, args.duration, args.workers
        );
    }
    Ok(())
}
