//! mesh-scale: the control plane at scale. For each cluster size it writes N services ×
//! M pods into a folder, starts the release `mesh-controller` over it, opens W watches
//! (each service's endpoints and client policy) over the real gRPC API — as proxies do,
//! on `Discovery.Watch` streams of `--watches-per-stream` services each, or with
//! `--api single` a `Destination.Get` and an `OutboundPolicies.Watch` per service — then changes one pod at a time and times how long each change
//! takes to reach the watchers of its service. A `mesh-proxy` then sends one request to
//! each of P services, so that its cost per watched authority shows, and must drop
//! those watches once they go unused. With `--viz-pods`, mesh-viz follows that many
//! meshed pods whose admin endpoints this process serves, and its cost per scrape
//! round shows.
//!
//! `cargo build --profile dist -p mesh-controller -p mesh-proxy -p mesh-viz -p mesh-test`
//! then `target/dist/mesh-scale --help`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use mesh_api::destination::GetDestination;
use mesh_api::destination::destination_client::DestinationClient;
use mesh_api::policy::OutboundPolicyRequest;
use mesh_api::policy::outbound_policies_client::OutboundPoliciesClient;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Measures the controller (and a proxy, and viz) against clusters of several sizes.
#[derive(Parser, Debug)]
struct Args {
    /// Cluster sizes to run, in services, comma-separated.
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    services: Vec<usize>,
    /// Pods per service.
    #[arg(long, default_value_t = 5)]
    pods: usize,
    /// Services watched (a Destination and a policy stream each); all by default.
    #[arg(long)]
    watches: Option<usize>,
    /// Pod changes made and timed per size.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// How the watches are opened: `discovery` (many per stream, as proxies do) or
    /// `single` (two streams per service).
    #[arg(long, default_value = "discovery")]
    api: Api,
    /// Services per `Discovery.Watch` stream (one proxy's worth), each stream on its
    /// own connection.
    #[arg(long, default_value_t = 100)]
    watches_per_stream: usize,
    /// First answers asked for at once while the watches open.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Distinct services one mesh-proxy sends a request to (0: no proxy phase).
    #[arg(long, default_value_t = 1000)]
    proxy_authorities: usize,
    /// Meshed pods mesh-viz follows (0: no viz phase).
    #[arg(long, default_value_t = 0)]
    viz_pods: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The API the watches use.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Api {
    Discovery,
    Single,
}

/// Namespaces the services are spread over.
const NAMESPACES: usize = 10;

#[derive(Serialize, Debug, Default)]
struct Row {
    services: usize,
    pods: usize,
    watches: usize,
    load_s: f64,
    first_p50_ms: f64,
    first_p99_ms: f64,
    change_p50_ms: f64,
    change_p99_ms: f64,
    change_max_ms: f64,
    cpu_ms_per_change: f64,
    /// Messages to watchers of services that did not change (should be none).
    stray_updates: u64,
    rss_loaded_mb: f64,
    rss_watched_mb: f64,
    proxy_rss_kb_per_authority: Option<f64>,
    proxy_watches_after_idle: Option<u64>,
}

fn authority(i: usize) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local:80", i % NAMESPACES)
}

/// A loopback address for pod `k` (nothing listens there: a proxy's request fails fast).
fn pod_ip(k: usize) -> Ipv4Addr {
    let k = k as u32 + 1;
    Ipv4Addr::new(127, 1 + (k >> 16) as u8, (k >> 8) as u8, k as u8)
}

/// Service `i` with `pods` pods, as one file.
fn service_file(i: usize, pods: usize, per: usize) -> String {
    let ns = i % NAMESPACES;
    let ip = Ipv4Addr::new(10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns-{ns}}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    );
    for j in 0..pods {
        // Room for one extra pod per service.
        let ip = pod_ip(i * (per + 1) + j);
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{i}-{j}\n  namespace: ns-{ns}\n  labels: {{app: svc-{i}, version: v1, pod-template-hash: abc}}\nspec:\n  serviceAccountName: svc-{i}\n  containers: [{{name: app, image: app, ports: [{{name: http, containerPort: 8080}}]}}]\nstatus: {{podIP: \"{ip}\", phase: Running}}\n"
        ));
    }
    out
}

fn write_cluster(dir: &Path, services: usize, pods: usize) -> anyhow::Result<()> {
    let mut ns = String::new();
    for n in 0..NAMESPACES {
        ns.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{n}\n  annotations: {{mesh.io/inject: enabled}}\n"
        ));
    }
    std::fs::write(dir.join("namespaces.yaml"), ns)?;
    for i in 0..services {
        std::fs::write(
            dir.join(format!("svc-{i}.yaml")),
            service_file(i, pods, pods),
        )?;
    }
    Ok(())
}

fn cpu_s(pid: u32) -> f64 {
    mesh_test::procfs::cpu_seconds(pid)
}

fn rss_kb(pid: u32) -> f64 {
    mesh_test::procfs::status_kb(pid, "VmRSS").unwrap_or(0) as f64
}

/// Starts workspace binary `name` with only `env` and waits for its "listening" line.
async fn spawn_listening(name: &'static str, env: &[(&str, String)]) -> (Child, String) {
    let mut cmd = Command::new(mesh_test::bin_path(name));
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    mesh_test::spawn_listening(cmd, name).await
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Watches opened: first-answer latencies, and every later message as (service, when).
struct Watches {
    first: Histogram<u64>,
    updates: tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
    /// What keeps `Discovery.Watch` streams open (dropped, a stream ends).
    _subscribe: Vec<tokio::sync::mpsc::UnboundedSender<mesh_api::discovery::Subscription>>,
}

async fn open_watches(args: &Args, addr: SocketAddr, count: usize) -> anyhow::Result<Watches> {
    match args.api {
        Api::Single => open_single_watches(addr, count, args.in_flight).await,
        Api::Discovery => {
            open_discovery_watches(addr, count, args.watches_per_stream, args.in_flight).await
        }
    }
}

/// The first-answer latencies of `count` watches, as they report them (`None`: no
/// answer).
async fn first_answers(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Option<Duration>>,
    count: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut first = Histogram::<u64>::new(3)?;
    for _ in 0..count {
        match rx.recv().await {
            Some(Some(latency)) => first.record(latency.as_micros() as u64)?,
            _ => bail!("a watch got no first answer"),
        }
    }
    Ok(first)
}

/// Watches on `Discovery.Watch` streams of `per_stream` services each (ids `2i` for
/// service `i`'s endpoints, `2i + 1` for its policy).
async fn open_discovery_watches(
    addr: SocketAddr,
    count: usize,
    per_stream: usize,
    in_flight: usize,
) -> anyhow::Result<Watches> {
    use mesh_api::discovery::discovery_client::DiscoveryClient;
    use mesh_api::discovery::subscription::Target;
    use mesh_api::discovery::{Subscription, notice::Notice};
    type Pending = HashMap<usize, (Instant, u8, tokio::sync::OwnedSemaphorePermit)>;
    let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut streams = Vec::new();
    for _ in 0..count.div_ceil(per_stream.max(1)) {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let (out, rx) = tokio::sync::mpsc::unbounded_channel::<Subscription>();
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|s| (s, rx)) },
            );
        let mut notices = DiscoveryClient::new(channel)
            .watch(outgoing)
            .await?
            .into_inner();
        let pending: Arc<std::sync::Mutex<Pending>> = Arc::default();
        let (tx, first_tx, waiting) = (tx.clone(), first_tx.clone(), pending.clone());
        tokio::spawn(async move {
            while let Ok(Some(n)) = notices.message().await {
                let i = (n.id / 2) as usize;
                if matches!(n.notice, Some(Notice::Refused(_))) {
                    let _ = first_tx.send(None);
                    continue;
                }
                let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((start, seen, _)) = waiting.get_mut(&i) {
                    *seen |= 1 << (n.id % 2);
                    if *seen == 3 {
                        let _ = first_tx.send(Some(start.elapsed()));
                        waiting.remove(&i);
                    }
                } else if n.id % 2 == 0 && tx.send((i, Instant::now())).is_err() {
                    return;
                }
            }
        });
        streams.push((out, pending));
    }
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let (out, pending) = &streams[i / per_stream.max(1)];
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i, (Instant::now(), 0, permit));
        let endpoints = Target::Endpoints(GetDestination {
            authority: authority(i),
            namespace: "ns-0".into(),
            ..Default::default()
        });
        let policy = Target::Outbound(OutboundPolicyRequest {
            authority: authority(i),
            namespace: "ns-0".into(),
        });
        for (id, target) in [(2 * i, endpoints), (2 * i + 1, policy)] {
            out.send(Subscription {
                id: id as u64,
                target: Some(target),
            })?;
        }
    }
    let first = first_answers(&mut first_rx, count).await?;
    Ok(Watches {
        first,
        updates,
        _subscribe: streams.into_iter().map(|(out, _)| out).collect(),
    })
}

/// Watches on two streams per service.
async fn open_single_watches(
    addr: SocketAddr,
    count: usize,
    in_flight: usize,
) -> anyhow::Result<Watches> {
    // A connection per 2,000 services (4,000 streams), as many proxies would bring.
    let mut channels = Vec::new();
    for _ in 0..count.div_ceil(2000).max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
    // A few first answers in flight at once: latency, not queueing, is measured.
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    for i in 0..count {
        let channel: Channel = channels[i % channels.len()].clone();
        let permit = permits.clone().acquire_owned().await?;
        let (tx, first_tx) = (tx.clone(), first_tx.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut dst = DestinationClient::new(channel.clone());
            let mut policy = OutboundPoliciesClient::new(channel);
            let (d, p) = tokio::join!(
                dst.get(GetDestination {
                    authority: authority(i),
                    namespace: "ns-0".into(),
                    ..Default::default()
                }),
                policy.watch(OutboundPolicyRequest {
                    authority: authority(i),
                    namespace: "ns-0".into(),
                })
            );
            let (Ok(d), Ok(p)) = (d, p) else {
                let _ = first_tx.send(None);
                return;
            };
            let (mut d, mut p) = (d.into_inner(), p.into_inner());
            let (a, b) = tokio::join!(d.message(), p.message());
            let ok = matches!((a, b), (Ok(Some(_)), Ok(Some(_))));
            let _ = first_tx.send(ok.then(|| start.elapsed()));
            drop(permit);
            tokio::spawn(async move { while let Ok(Some(_)) = p.message().await {} });
            while let Ok(Some(_)) = d.message().await {
                if tx.send((i, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    let first = first_answers(&mut first_rx, count).await?;
    Ok(Watches {
        first,
        updates,
        _subscribe: Vec::new(),
    })
}

async fn measure(args: &Args, services: usize) -> anyhow::Result<Row> {
    let dir = std::env::temp_dir().join(format!("mesh-scale-{}-{services}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    write_cluster(&dir, services, args.pods)?;
    let started = Instant::now();
    let (controller, line) = spawn_listening(
        "mesh-controller",
        &[
            ("MESH_CONTROLLER_SOURCE", format!("dir:{}", dir.display())),
            ("MESH_CONTROLLER_DESTINATION_ADDR", "127.0.0.1:0".into()),
            ("MESH_CONTROLLER_LOG", "warn,mesh_controller=info".into()),
        ],
    )
    .await;
    let load_s = started.elapsed().as_secs_f64();
    let addr = mesh_test::field(&line, "destination");
    let pid = controller.id().context("controller pid")?;
    let rss_loaded_mb = rss_kb(pid) / 1024.0;
    let watched = args.watches.unwrap_or(services).min(services);
    eprintln!("{services} services: loaded in {load_s:.1} s; opening {watched} watches …");
    let mut w = open_watches(args, addr, watched).await?;
    let rss_watched_mb = rss_kb(pid) / 1024.0;
    // Settle: nothing is pending before changes are timed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while w.updates.try_recv().is_ok() {}
    eprintln!("changing {} pods …", args.changes);
    let mut change = Histogram::<u64>::new(3)?;
    let mut stray = 0;
    let mut grown: HashMap<usize, bool> = HashMap::new();
    let cpu_before = cpu_s(pid);
    for _ in 0..args.changes {
        let i = fastrand::usize(..watched);
        let g = grown.entry(i).or_default();
        *g = !*g;
        let pods = args.pods + usize::from(*g);
        let text = service_file(i, pods, args.pods);
        let at = Instant::now();
        std::fs::write(dir.join(format!("svc-{i}.yaml")), text)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            match tokio::time::timeout_at(deadline, w.updates.recv()).await {
                Ok(Some((j, when))) if j == i => {
                    change.record(when.duration_since(at).as_micros() as u64)?;
                    break;
                }
                Ok(Some(_)) => stray += 1,
                Ok(None) => bail!("the watches ended"),
                Err(_) => bail!("a change to svc-{i} did not reach its watcher in 300 s"),
            }
        }
        // The folder source waits for quiet before reading: let it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        while let Ok((j, _)) = w.updates.try_recv() {
            if j != i {
                stray += 1;
            }
        }
    }
    let cpu_ms_per_change = (cpu_s(pid) - cpu_before) * 1000.0 / args.changes.max(1) as f64;
    let mut row = Row {
        services,
        pods: services * args.pods,
        watches: watched,
        load_s,
        first_p50_ms: quantile_ms(&w.first, 0.5),
        first_p99_ms: quantile_ms(&w.first, 0.99),
        change_p50_ms: quantile_ms(&change, 0.5),
        change_p99_ms: quantile_ms(&change, 0.99),
        change_max_ms: change.max() as f64 / 1000.0,
        cpu_ms_per_change,
        stray_updates: stray,
        rss_loaded_mb,
        rss_watched_mb,
        ..Row::default()
    };
    if args.proxy_authorities > 0 {
        let (per, after) = proxy_phase(addr, args.proxy_authorities.min(services)).await?;
        row.proxy_rss_kb_per_authority = Some(per);
        row.proxy_watches_after_idle = after;
    }
    drop(controller);
    Ok(row)
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Destination watches the proxy with admin address `admin` holds.
async fn destination_watches(admin: SocketAddr) -> u64 {
    let text = mesh_test::client::get(admin, "admin", "/metrics")
        .await
        .text();
    mesh_test::proxy::sum_metric(&text, "discovery_watches", &[("kind", "destination")])
}

/// A proxy sends one request to each of `n` services: its RSS per authority watched,
/// and how many watches it still holds once they have been idle.
async fn proxy_phase(controller: SocketAddr, n: usize) -> anyhow::Result<(f64, Option<u64>)> {
    eprintln!("one proxy, {n} authorities …");
    let idle = Duration::from_secs(3);
    let (proxy, line) = spawn_listening(
        "mesh-proxy",
        &[
            ("MESH_PROXY_INBOUND_ADDR", "127.0.0.1:0".into()),
            ("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:0".into()),
            ("MESH_PROXY_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("MESH_PROXY_DESTINATION_ADDR", controller.to_string()),
            ("MESH_PROXY_NAMESPACE", "ns-0".into()),
            ("MESH_PROXY_LOG", "warn,mesh_proxy::server=info".into()),
            (
                "MESH_PROXY_DISCOVERY_IDLE_TIMEOUT",
                format!("{}s", idle.as_secs()),
            ),
        ],
    )
    .await;
    let outbound = mesh_test::field(&line, "outbound");
    let admin = mesh_test::field(&line, "admin");
    let pid = proxy.id().context("proxy pid")?;
    // Warm up: one authority, so the baseline has the runtime, TLS and client in it.
    mesh_test::client::get(outbound, &authority(0), "/").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = rss_kb(pid);
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 1..n {
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            mesh_test::client::get(outbound, &authority(i), "/").await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per = (rss_kb(pid) - base) / (n.max(2) - 1) as f64;
    let held = destination_watches(admin).await;
    eprintln!("proxy holds {held} destination watches; waiting for them to go idle …");
    tokio::time::sleep(idle * 3).await;
    let after = Some(destination_watches(admin).await);
    drop(proxy);
    Ok((per, after))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &n in &args.services {
        rows.push(rt.block_on(measure(&args, n))?);
    }
    let viz = if args.viz_pods > 0 {
        Some(rt.block_on(viz_phase(args.viz_pods))?)
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"controller": rows, "viz": viz}))?
        );
        return Ok(());
    }
    println!(
        "{:>8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6} {:>8} {:>8} {:>10} {:>6}",
        "SERVICES",
        "PODS",
        "WATCHES",
        "LOAD_S",
        "FIRST_P50",
        "FIRST_P99",
        "CHG_P50",
        "CHG_P99",
        "CHG_MAX",
        "CPU_MS/CHG",
        "STRAY",
        "RSS_MB",
        "RSS_W_MB",
        "PROXY_KB/A",
        "IDLE_W"
    );
    for r in &rows {
        println!(
            "{:>8} {:>7} {:>7} {:>7.1} {:>9.2} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>10.2} {:>6} {:>8.1} {:>8.1} {:>10} {:>6}",
            r.services,
            r.pods,
            r.watches,
            r.load_s,
            r.first_p50_ms,
            r.first_p99_ms,
            r.change_p50_ms,
            r.change_p99_ms,
            r.change_max_ms,
            r.cpu_ms_per_change,
            r.stray_updates,
            r.rss_loaded_mb,
            r.rss_watched_mb,
            r.proxy_rss_kb_per_authority
                .map_or("-".into(), |v| format!("{v:.1}")),
            r.proxy_watches_after_idle
                .map_or("-".into(), |v| v.to_string()),
        );
    }
    if let Some(v) = viz {
        println!(
            "viz: {} pods, {:.1} ms CPU per scrape round, RSS {:.1} MB",
            v.pods, v.cpu_ms_per_round, v.rss_mb
        );
    }
    Ok(())
}

#[derive(Serialize, Debug)]
struct VizRow {
    pods: usize,
    rounds: usize,
    cpu_ms_per_round: f64,
    rss_mb: f64,
}

/// mesh-viz following `pods` meshed pods: each pod's admin endpoint is served here, on
/// its own loopback address, with a real proxy's metrics.
async fn viz_phase(pods: usize) -> anyhow::Result<VizRow> {
    eprintln!("viz following {pods} pods …");
    let dir = std::env::temp_dir().join(format!("mesh-scale-viz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let admin_port = 14191;
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {mesh.io/inject: enabled}}\n",
    );
    for k in 0..pods {
        let ip = pod_ip(200_000 + k);
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), admin_port))
            .await
            .with_context(|| format!("bind {ip}:{admin_port}"))?;
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let scrapes = scrapes.clone();
                // Keep-alive, as a proxy's admin server is: viz reuses its connections.
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    loop {
                        let mut line = String::new();
                        let mut ended = false;
                        // The request head: lines up to an empty one.
                        loop {
                            line.clear();
                            match s.read_line(&mut line).await {
                                Ok(0) | Err(_) => {
                                    ended = true;
                                    break;
                                }
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        if ended {
                            return;
                        }
                        let n = scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            / pods as u64
                            + 1;
                        let body = viz_stats(n);
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        let s = s.get_mut();
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(body.as_bytes()).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web-{k}\n  namespace: shop\n  labels: {{app: web-{}}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-{}-abc12, uid: u, controller: true}}]\nspec: {{serviceAccountName: web, containers: [{{name: app, image: x}}]}}\nstatus: {{podIP: \"{ip}\", phase: Running}}\n",
            k % 50,
            k % 50
        ));
    }
    std::fs::write(dir.join("pods.yaml"), yaml)?;
    let (viz, _line) = spawn_listening(
        "mesh-viz",
        &[
            ("MESH_VIZ_SOURCE", format!("dir:{}", dir.display())),
            ("MESH_VIZ_ADDR", "127.0.0.1:0".into()),
            ("MESH_VIZ_SCRAPE_INTERVAL", "1s".into()),
            ("MESH_VIZ_PROXY_ADMIN_PORT", admin_port.to_string()),
            ("MESH_VIZ_LOG", "warn,mesh_viz=info".into()),
        ],
    )
    .await;
    let pid = viz.id().context("viz pid")?;
    // Let the store fill (the first rounds have no rates to keep yet).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rounds = 20;
    let before = cpu_s(pid);
    tokio::time::sleep(Duration::from_secs(rounds as u64)).await;
    let cpu_ms_per_round = (cpu_s(pid) - before) * 1000.0 / rounds as f64;
    let row = VizRow {
        pods,
        rounds,
        cpu_ms_per_round,
        rss_mb: rss_kb(pid) / 1024.0,
    };
    drop(viz);
    Ok(row)
}

/// A busy proxy's `/stats` after `n` scrapes: inbound and outbound series for five
/// peers, with counters and HDR latency buckets that grow with every scrape.
fn viz_stats(n: u64) -> String {
    use mesh_api::stats::{Count, Labels, Latency, Stats, Tcp};
    let mut stats = Stats {
        instance: "bench".into(),
        ..Stats::default()
    };
    for peer in 0..5 {
        for dir in ["inbound", "outbound"] {
            let labels = Labels {
                direction: dir.into(),
                authority: format!("web-{peer}.shop.svc.cluster.local:80"),
                route: "default".into(),
                tls: "true".into(),
                peer_id: Some(format!(
                    "web-{peer}.shop.serviceaccount.identity.mesh.cluster.local"
                )),
                dst_namespace: (dir == "outbound").then(|| "shop".into()),
                dst_workload: (dir == "outbound").then(|| format!("web-{peer}")),
                dst_service: (dir == "outbound").then(|| format!("web-{peer}")),
            };
            stats.requests.push(Count {
                labels: labels.clone(),
                count: 100 * n,
                ..Count::default()
            });
            for (status, class) in [(200, "success"), (500, "failure")] {
                let count = Count {
                    labels: labels.clone(),
                    status: Some(status),
                    class: Some(class.into()),
                    count: 50 * n,
                };
                stats.responses.push(count.clone());
                stats.actual_responses.push(count);
                stats.latency.push(Latency {
                    labels: labels.clone(),
                    status_class: status / 100,
                    sum_us: 50 * n * 900,
                    buckets: [300, 500, 700, 1000, 2000, 5000, 10_000]
                        .iter()
                        .map(|b| (*b, 7 * n))
                        .collect(),
                });
            }
        }
    }
    stats.tcp.push(Tcp {
        direction: "inbound".into(),
        peer: "src".into(),
        tls: "true".into(),
        open: n,
        close: n.saturating_sub(1),
    });
    serde_json::to_string(&stats).unwrap_or_default()
}
