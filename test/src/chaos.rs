//! The chaos soak: steady load through meshed mTLS proxies while everything around
//! them changes. Leaves live one minute (so every proxy renews during a run), a pod's
//! endpoints churn every second, the split between two versions is reweighted, one
//! pod's proxy is killed and restarted, and the controller and the identity service
//! are restarted. Every request is accounted for: it succeeded, or it failed while in
//! flight to the endpoint that was being killed, naming it. Anything else is a defect.
//!
//! `test/tests/chaos.rs` runs about a minute of it; `mesh-chaos --duration 10m` runs it
//! for as long as asked (the long run is recorded in `docs/chaos.md`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::identity::Identity;
use crate::mesh::{self, Pod, PodSpec};
use crate::{controller, identity, proxy};

/// How a soak runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long load runs (the chaos repeats on a fixed schedule within it).
    pub duration: Duration,
    /// Requests a second, open loop.
    pub rate: u32,
}

/// What a soak saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 200 by the app.
    pub ok: u64,
    /// Failures of requests in flight to an endpoint while it was killed.
    pub excused: Vec<String>,
    /// Every other failure: each a defect.
    pub unexpected: Vec<String>,
    /// Requests answered by each version (v1, v2).
    pub by_version: [u64; 2],
    /// What the chaos did, in order: `(seconds into the run, what)`.
    pub events: Vec<(f64, String)>,
    /// Certificates the identity service issued (start-up and renewals).
    pub certificates_issued: u64,
}

impl Report {
    /// Whether every request is accounted for and none failed without an excuse.
    pub fn clean(&self) -> bool {
        self.unexpected.is_empty() && self.sent == self.ok + self.excused.len() as u64
    }
}

/// A pod being killed, from just before its proxy dies until its replacement is ready
/// (plus a margin for failures that surface a moment later).
#[derive(Clone, Debug)]
struct Killing {
    ip: IpAddr,
    from: Instant,
    until: Option<Instant>,
}

struct Pods<'a> {
    pods: Vec<(Pod, PodSpec<'a>, &'static str)>,
}

const NS: &str = "shop";
const AUTHORITY: &str = "web.shop.svc.cluster.local:80";

fn split_yaml(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\n\
         metadata: {{name: web-split, namespace: {NS}}}\n\
         spec:\n  service: web\n  backends:\n  - service: web-v1\n    weight: {v1}\n  - service: web-v2\n    weight: {v2}\n"
    )
}

/// Runs a soak and reports what happened.
pub async fn run(settings: Settings) -> Report {
    let dirs = [tempdir(), tempdir(), tempdir()];
    let [ca, work, world] = &dirs;
    identity::new_ca(ca.path());
    let id = identity::start(ca.path(), None, "1m", work.path()).await;
    let ids: &Identity = &id;
    let mut pods = Pods { pods: Vec::new() };
    for (version, count) in [("web-v1", 2), ("web-v2", 2)] {
        for _ in 0..count {
            let spec = PodSpec {
                identity: Some(ids),
                mode: "strict",
                ..PodSpec::new(mesh::pod_ip(), "web", NS)
            };
            let pod = Pod::start(spec.clone()).await;
            pods.pods.push((pod, spec, version));
        }
    }
    let world_dir = world.path();
    mesh::write(world_dir, "web", &mesh::service_yaml("web", NS));
    for v in ["web-v1", "web-v2"] {
        mesh::write(world_dir, v, &mesh::service_yaml(v, NS));
    }
    for (i, (pod, _, version)) in pods.pods.iter().enumerate() {
        mesh::write(
            world_dir,
            &format!("pod-{i}"),
            &mesh::pod_yaml(&format!("{version}-{i}"), NS, version, "web", pod.ip),
        );
    }
    mesh::write(world_dir, "split", &split_yaml(50, 50));
    let mut ctl = controller::start(world_dir, "127.0.0.1:0".parse().expect("addr")).await;
    ctl.wait_for_endpoints("web-v1.shop.svc.cluster.local:80")
        .await;
    ctl.wait_for_endpoints("web-v2.shop.svc.cluster.local:80")
        .await;
    let client = id
        .proxy(proxy::new(), "client", NS)
        .env("DESTINATION_ADDR", ctl.destination)
        .run()
        .await;
    client.wait_ready().await;

    let start = Instant::now();
    let report = Arc::new(Mutex::new(Report::default()));
    let killing: Arc<Mutex<Vec<Killing>>> = Arc::default();
    let ip_version: Vec<(IpAddr, usize)> = pods
        .pods
        .iter()
        .map(|(p, _, v)| (p.ip, usize::from(*v == "web-v2")))
        .collect();
    let load = tokio::spawn(load(
        client.outbound,
        settings.clone(),
        report.clone(),
        killing.clone(),
        ip_version,
    ));
    let event = |what: String| {
        let at = start.elapsed().as_secs_f64();
        tracing_free_log(&what, at);
        report.lock().expect("lock").events.push((at, what));
    };

    // The schedule, one step a second: churn always; the rest on their seconds.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut second = 0u64;
    let mut churned: Option<usize> = None;
    let mut issued_before = 0;
    while start.elapsed() < settings.duration {
        tick.tick().await;
        second += 1;
        // Endpoint churn: one pod leaves discovery, the one that left comes back.
        let n = pods.pods.len();
        if let Some(i) = churned.take() {
            let (pod, _, version) = &pods.pods[i];
            mesh::write(
                world_dir,
                &format!("pod-{i}"),
                &mesh::pod_yaml(&format!("{version}-{i}"), NS, version, "web", pod.ip),
            );
        } else {
            let i = (second as usize) % n;
            let _ = std::fs::remove_file(world_dir.join(format!("pod-{i}.yaml")));
            churned = Some(i);
        }
        match second % 20 {
            5 => {
                let (v1, v2) = if second % 40 == 5 { (90, 10) } else { (20, 80) };
                mesh::write(world_dir, "split", &split_yaml(v1, v2));
                event(format!("split reweighted to {v1}/{v2}"));
            }
            9 => {
                event("controller restarting".into());
                ctl.restart().await;
                event("controller restarted".into());
            }
            13 => {
                // A pod's proxy killed: what is in flight to it may fail, nothing else.
                let i = (second as usize / 20) % n;
                let (pod, spec, _) = &mut pods.pods[i];
                let ip = pod.ip;
                killing.lock().expect("lock").push(Killing {
                    ip,
                    from: Instant::now(),
                    until: None,
                });
                event(format!("killing the proxy of the pod at {ip}"));
                pod.restart_proxy(spec.clone()).await;
                if let Some(k) = killing.lock().expect("lock").last_mut() {
                    k.until = Some(Instant::now() + Duration::from_secs(2));
                }
                event(format!("the pod at {ip} is back"));
            }
            17 => {
                event("identity restarting".into());
                // Its counters start again at zero: keep what it issued so far.
                issued_before += issued(ids).await;
                id.restart().await;
                event("identity restarted".into());
            }
            _ => {}
        }
    }
    load.await.expect("load task");
    let issued = issued_before + issued(ids).await;
    drop(client);
    drop(pods);
    let mut report = Arc::try_unwrap(report)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_default();
    report.certificates_issued = issued;
    drop(ctl);
    drop(dirs);
    report
}

/// Certificates the identity service issued since it started.
async fn issued(id: &Identity) -> u64 {
    crate::proxy::sum_metric(&id.metrics().await, "identity_cert_issued_total", &[])
}

fn tracing_free_log(what: &str, at: f64) {
    eprintln!("[chaos {at:6.1}s] {what}");
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Sends `settings.rate` requests a second for `settings.duration`, each on its own
/// connection (so that no request waits behind another), and accounts for each.
async fn load(
    outbound: SocketAddr,
    settings: Settings,
    report: Arc<Mutex<Report>>,
    killing: Arc<Mutex<Vec<Killing>>>,
    ip_version: Vec<(IpAddr, usize)>,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(settings.rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + settings.duration;
    let mut inflight = tokio::task::JoinSet::new();
    let ip_version = Arc::new(ip_version);
    while Instant::now() < end {
        tick.tick().await;
        report.lock().expect("lock").sent += 1;
        let (report, killing, ip_version) = (report.clone(), killing.clone(), ip_version.clone());
        inflight.spawn(async move {
            let began = Instant::now();
            let outcome = tokio::time::timeout(Duration::from_secs(15), request(outbound)).await;
            let ended = Instant::now();
            let mut r = report.lock().expect("lock");
            match outcome {
                Ok(Ok(answered_by)) => {
                    r.ok += 1;
                    if let Some((_, v)) = ip_version.iter().find(|(ip, _)| *ip == answered_by) {
                        r.by_version[*v] += 1;
                    }
                }
                Ok(Err(why)) => {
                    let excused = killing.lock().expect("lock").iter().any(|k| {
                        why.contains(&k.ip.to_string())
                            && began <= k.until.unwrap_or(ended)
                            && ended >= k.from
                    });
                    if excused {
                        r.excused.push(why);
                    } else {
                        r.unexpected.push(why);
                    }
                }
                Err(_) => r.unexpected.push("no answer within 15 s".into()),
            }
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// One request through the client's proxy; the address of the pod that answered, or
/// why it failed (the proxy's `mesh-proxy-error` names the endpoint).
async fn request(outbound: SocketAddr) -> Result<IpAddr, String> {
    let tcp = tokio::net::TcpStream::connect(outbound)
        .await
        .map_err(|e| format!("connect to the client proxy: {e}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake with the client proxy: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", AUTHORITY)
        .body(crate::client::body(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let rsp = tx
        .send_request(req)
        .await
        .map_err(|e| format!("client proxy connection: {e}"))?;
    let status = rsp.status();
    let header = |name: &str| {
        rsp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (error, served_by) = (header("mesh-proxy-error"), header("x-served-by"));
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{status} body cut short: {e}"))?
        .to_bytes();
    if status != 200 {
        return Err(format!("{status}: {error}"));
    }
    // The sample app says which address it served on.
    served_by
        .parse()
        .map_err(|_| format!("200 without x-served-by ({} bytes)", body.len()))
}
