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
    p99_us: u64,
    p999_us: u64,
    added_p50_us: Option<i64>,
    max_rps: f64,
    peak_rss_mb: Option<f64>,
    cpu_s_per_10k: Option<f64>,
    errors: u64,
}

/// Processes that make up a proxy under test (measured), and one that serves it (not
/// measured: the controller); killed on drop.
struct Procs(Vec<Child>, Option<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        // Kill the workers too: nginx's workers outlive a SIGKILLed master.
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        for c in self.0.iter_mut().chain(self.1.as_mut()) {
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
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
    spawn(&mut cmd)
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
                Procs(vec![], None),
            )));
        }
        "mesh" => {
            let out = free_port()?;
            let child = mesh_proxy(free_port()?, out, free_port()?, None, workers)?;
            (out, Procs(vec![child], None))
        }
        "mesh-in" => {
            let inb = free_port()?;
            let child = mesh_proxy(inb, free_port()?, free_port()?, Some(backend), workers)?;
            (inb, Procs(vec![child], None))
        }
        "mesh-in-authz" => {
            // The controller over a folder: the bench pod, Istio's ALLOW and DENY, a
            // Linkerd Server admitting loopback, with a rate limit that never bites.
            let objects = dir.join("authz");
            std::fs::create_dir_all(&objects)?;
            std::fs::write(objects.join("bench.yaml"), authz_objects(backend.port()))?;
            let destination = free_port()?;
            let mut ctl = Command::new(mesh_test::bin_path("mesh-controller"));
            ctl.env_clear()
                .env(
                    "MESH_CONTROLLER_SOURCE",
                    format!("dir:{}", objects.display()),
                )
                .env("MESH_CONTROLLER_DESTINATION_ADDR", destination.to_string())
                .env("MESH_CONTROLLER_LOG", "warn");
            let controller = spawn(&mut ctl)?;
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
            let mut procs = Procs(vec![child], None);
            procs.1 = Some(controller);
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
            return Ok(Some((target, Procs(vec![client_side, server_side], None))));
        }
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
                    None,
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
                    None,
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
            (port, Procs(vec![spawn(&mut cmd)?], None))
        }
        other => bail!("unknown row {other:?}: use direct, mesh, mesh2, nginx, haproxy or envoy"),
    };
    wait_listening(addr).await?;
    Ok(Some((Target { addr, host, path }, procs)))
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
        p99_us: fixed.latency.value_at_quantile(0.99),
        p999_us: fixed.latency.value_at_quantile(0.999),
        added_p50_us: None,
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
        .map(|r| r.p50_us as i64);
    for r in &mut rows {
        r.added_p50_us = direct.map(|d| r.p50_us as i64 - d);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<8} {:>8} {:>8} {:>8} {:>10} {:>9} {:>8} {:>12} {:>6}",
            "ROW",
            "P50_US",
            "P99_US",
            "P999_US",
            "ADDED_P50",
            "MAX_RPS",
            "RSS_MB",
            "CPU_S/10K",
            "ERRORS"
        );
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
        for r in &rows {
            println!(
                "{:<8} {:>8} {:>8} {:>8} {:>10} {:>9.0} {:>8} {:>12} {:>6}",
                r.name,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.added_p50_us.map_or("-".into(), |v| v.to_string()),
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
