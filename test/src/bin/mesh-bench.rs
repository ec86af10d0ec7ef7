//! mesh-bench: the same load, in one run, against a backend directly, through one
//! mesh-proxy, through two (outbound → inbound, the meshed hop, plaintext and with
//! mTLS), and through nginx, haproxy, Envoy and two Envoys with mutual TLS (Istio's
//! data plane) when they are installed; HTTP/1 rows and HTTP/2 (gRPC-like) rows. Prints
//! latency percentiles at a fixed rate, the latency each row adds over its direct
//! baseline, maximum throughput at a fixed concurrency, and each proxy's peak RSS and
//! CPU seconds per 10,000 requests. Where the machine has more than one core, the load
//! generator and backend run on the first and the proxies on the rest (`taskset`), so
//! that tails measure the proxies.
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
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Requests in flight in the max-throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
    /// Rows to run, comma-separated: direct, mesh, mesh2, nginx, haproxy, envoy;
    /// mesh-tls (the meshed hop as users run it: two proxies with mTLS from the identity
    /// service, strict inbound, HTTP/1 over HTTP/2 between them) and envoy-tls (two
    /// Envoys with mutual TLS between them, as Istio's sidecars); direct-h2, mesh-tls-h2
    /// and envoy-tls-h2 (the same with HTTP/2 clients and backend, gRPC's shape,
    /// measured against direct-h2); mesh-in (one proxy on its inbound side) and
    /// mesh-in-authz (the same, with the controller's policy: Istio ALLOW and DENY
    /// rules, a Linkerd Server and its rate limit, all decided per request).
    #[arg(
        long,
        default_value = "direct,mesh,mesh2,nginx,haproxy,envoy,mesh-tls,envoy-tls,direct-h2,mesh-tls-h2,envoy-tls-h2",
        value_delimiter = ','
    )]
    rows: Vec<String>,
    /// The path requested: by default 1 KiB responses, as Istio measures.
    #[arg(long, default_value = "/size/1024")]
    path: String,
    /// Do not pin: by default, with two cores or more and one worker, the load
    /// generator and backend run on CPU 0 and every proxy on the other CPUs.
    #[arg(long)]
    no_pin: bool,
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

    /// Pins every thread of the proxies to `cpus` and what serves them (the controller,
    /// the identity service) to CPU 0, beside the load.
    fn pin(&self, cpus: &str) {
        for pid in self.pids() {
            pin(pid, cpus);
        }
        for c in &self.1 {
            pin(c.id(), "0");
        }
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

/// Pins every thread of `pid` to `cpus` (a `taskset` list); a machine without
/// `taskset` runs unpinned, said once.
fn pin(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("cannot pin with taskset: running unpinned"));
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
    args: &Args,
) -> anyhow::Result<Option<(Target, Procs)>> {
    let workers = args.workers;
    let path = args.path.clone();
    let host = backend.to_string();
    let (addr, procs) = match row {
        "direct" | "direct-h2" => {
            return Ok(Some((
                Target {
                    addr: backend,
                    host,
                    path,
                    h2: row == "direct-h2",
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
                h2: false,
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
                h2: false,
            };
            return Ok(Some((
                target,
                Procs(vec![client_side, server_side], vec![]),
            )));
        }
        "mesh-tls" | "mesh-tls-h2" => {
            return mesh_tls(backend, dir, args, row == "mesh-tls-h2")
                .await
                .map(Some);
        }
        "envoy-tls" | "envoy-tls-h2" => {
            let Some(bin) = which("envoy") else {
                return Ok(None);
            };
            return envoy_tls(&bin, backend, dir, args, row == "envoy-tls-h2")
                .await
                .map(Some);
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
            std::fs::write(&conf, envoy_config(port, None, backend, None))?;
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
        other => bail!("unknown row {other:?} (see --help for the rows)"),
    };
    wait_listening(addr).await?;
    let h2 = false;
    Ok(Some((
        Target {
            addr,
            host,
            path,
            h2,
        },
        procs,
    )))
}

/// The meshed hop as users run it: the identity service issuing both proxies their
/// certificates, the controller over a folder that names the backend's pod as meshed,
/// the client's proxy sending HTTP/1 over HTTP/2 with mTLS to the server's proxy,
/// strict inbound, in front of `backend`.
async fn mesh_tls(
    backend: SocketAddr,
    dir: &Path,
    args: &Args,
    h2: bool,
) -> anyhow::Result<(Target, Procs)> {
    let workers = args.workers;
    let state = dir.join(if h2 { "mesh-tls-h2" } else { "mesh-tls" });
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
        path: args.path.clone(),
        h2,
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

/// One Envoy: an HTTP listener on `port` (TLS when `listen_tls`, requiring a client
/// certificate from the trust anchors) routing everything to `upstream` (over TLS when
/// `upstream_tls`, checking the server's name), speaking to it whatever protocol the
/// client spoke, as Istio's sidecars do.
fn envoy_config(
    port: SocketAddr,
    listen_tls: Option<&EnvoyTls>,
    upstream: SocketAddr,
    upstream_tls: Option<&EnvoyTls>,
) -> String {
    let context = |t: &EnvoyTls, indent: &str| {
        format!(
            "{indent}common_tls_context:\n\
             {indent}  tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]\n\
             {indent}  validation_context:\n\
             {indent}    trusted_ca: {{filename: {ca}}}\n{san}",
            cert = t.cert.display(),
            key = t.key.display(),
            ca = t.ca.display(),
            san = t.peer.as_ref().map_or(String::new(), |name| format!(
                "{indent}    match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: \"{name}\"}}}}]\n"
            )),
        )
    };
    let listener_tls = listen_tls.map_or(String::new(), |t| {
        format!(
            "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \
             \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
             require_client_certificate: true\n{}",
            context(t, "          ")
        )
    });
    let cluster_tls = upstream_tls.map_or(String::new(), |t| {
        format!(
            "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \
             \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{sni}{}",
            context(t, "        "),
            sni = t.peer.as_ref().map_or(String::new(), |n| format!("        sni: \"{n}\"\n")),
        )
    });
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
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: upstream}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{listener_tls}  clusters:
  - name: upstream
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {{http_protocol_options: {{}}, http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {bip}, port_value: {bp}}}}}}}
{cluster_tls}"#,
        ip = port.ip(),
        lp = port.port(),
        bip = upstream.ip(),
        bp = upstream.port()
    )
}

/// One Envoy's certificate, key and trust anchors (PEM files), and the name it
/// requires of its peer (the client checks the server's; the server takes any
/// certificate the anchors sign, as Istio's inbound does before authorization).
struct EnvoyTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    peer: Option<String>,
}

/// `der` as PEM with `label`.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Istio's data plane for the same hop: a client Envoy taking plaintext HTTP and a
/// server Envoy in front of `backend`, mutual TLS between them with certificates from
/// the same kind of CA the mesh's proxies use (ECDSA P-256), each Envoy one worker.
async fn envoy_tls(
    bin: &Path,
    backend: SocketAddr,
    dir: &Path,
    args: &Args,
    h2: bool,
) -> anyhow::Result<(Target, Procs)> {
    let state = dir.join(if h2 { "envoy-tls-h2" } else { "envoy-tls" });
    let ca = state.join("ca");
    std::fs::create_dir_all(&ca)?;
    let generated = mesh_identity::ca::generate(
        Duration::from_secs(7 * 86_400),
        Duration::from_secs(2 * 86_400),
    )?;
    mesh_identity::ca::write(&ca, &generated)?;
    let anchors = ca.join(mesh_identity::ca::TRUST_ANCHORS_FILE);
    let server_name = mesh_api::identity::dns_name("server", "bench");
    let tls = |sa: &str, peer: Option<String>| -> anyhow::Result<EnvoyTls> {
        let issued = mesh_test::identity::client_cert(
            &ca,
            sa,
            "bench",
            std::time::SystemTime::now() - Duration::from_secs(60),
            Duration::from_secs(86_400),
        );
        let chain: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        let (cert, key) = (
            state.join(format!("{sa}.crt")),
            state.join(format!("{sa}.key")),
        );
        std::fs::write(&cert, chain)?;
        std::fs::write(&key, pem("PRIVATE KEY", issued.key.secret_der()))?;
        Ok(EnvoyTls {
            cert,
            key,
            ca: anchors.clone(),
            peer,
        })
    };
    let (client_tls, server_tls) = (tls("client", Some(server_name))?, tls("server", None)?);
    let (out, inb) = (free_port()?, free_port()?);
    let mut procs = Procs(vec![], vec![]);
    for (i, (name, conf)) in [
        (
            "server",
            envoy_config(inb, Some(&server_tls), backend, None),
        ),
        ("client", envoy_config(out, None, inb, Some(&client_tls))),
    ]
    .into_iter()
    .enumerate()
    {
        let path = state.join(format!("{name}.yaml"));
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&path).args([
            "--concurrency",
            &args.workers.to_string(),
            "-l",
            "error",
            "--base-id",
        ]);
        cmd.arg((std::process::id() * 4 + 1 + i as u32).to_string());
        procs.0.push(spawn_quiet(
            &mut cmd,
            std::env::var_os("MESH_BENCH_DEBUG").is_some(),
        )?);
    }
    wait_listening(inb).await?;
    wait_listening(out).await?;
    let target = Target {
        addr: out,
        host: "backend.bench.svc.cluster.local:80".into(),
        path: args.path.clone(),
        h2,
    };
    Ok((target, procs))
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
    // The load generator and backend on CPU 0 (their threads, made after this, inherit
    // it), the proxies on the others: tails measure the proxies, not the scheduler.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pinned = (!args.no_pin && cores >= 2 && args.workers == 1).then(|| {
        pin(std::process::id(), "0");
        format!("1-{}", cores - 1)
    });
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
            match start(name, backend, &dir, &args).await {
                Ok(Some((target, procs))) => {
                    if let Some(cpus) = &pinned {
                        procs.pin(cpus);
                    }
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
    let baseline = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| (r.p50_us, r.p90_us, r.p99_us, r.p999_us))
    };
    let (direct, direct_h2) = (baseline("direct"), baseline("direct-h2"));
    for r in &mut rows {
        let minus = |v: u64, d: u64| v as i64 - d as i64;
        // HTTP/2 rows against the HTTP/2 baseline.
        let direct = if r.name.ends_with("-h2") {
            direct_h2
        } else {
            direct
        };
        r.added_p50_us = direct.map(|d| minus(r.p50_us, d.0));
        r.added_p90_us = direct.map(|d| minus(r.p90_us, d.1));
        r.added_p99_us = direct.map(|d| minus(r.p99_us, d.2));
        r.added_p999_us = direct.map(|d| minus(r.p999_us, d.3));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<13} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11} {:>9} {:>8} {:>12} {:>6}",
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
                "{:<13} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11} {:>9.0} {:>8} {:>12} {:>6}",
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
            "rate {} rps over {} connections, {} in flight for max rps, {:?} per phase, GET {}, {} worker(s) per proxy, {}",
            args.rate,
            args.connections,
            args.concurrency,
            args.duration,
            args.path,
            args.workers,
            match &pinned {
                Some(cpus) => format!("load and backend on CPU 0, proxies on CPUs {cpus}"),
                None => "not pinned".into(),
            }
        );
    }
    Ok(())
}
