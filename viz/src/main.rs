//! The `mesh-viz` binary: follows the mesh's pods, scrapes their proxies, serves the
//! API and dashboard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_controller::Index;
use mesh_viz::store::Store;

/// mesh-viz: golden metrics per edge, workload and route.
#[derive(Debug, Parser)]
#[command(name = "mesh-viz", version, about)]
struct Config {
    /// API and dashboard address.
    #[arg(long, env = "MESH_VIZ_ADDR", default_value = "0.0.0.0:8084")]
    addr: SocketAddr,
    /// Where pods come from: `kubernetes` or `dir:PATH` (the controller's folder).
    #[arg(long, env = "MESH_VIZ_SOURCE", default_value = "kubernetes")]
    source: String,
    /// How often proxies are scraped.
    #[arg(long, env = "MESH_VIZ_SCRAPE_INTERVAL", default_value = "2s", value_parser = duration)]
    scrape_interval: Duration,
    /// How long history is kept: the longest window a query may ask for.
    #[arg(long, env = "MESH_VIZ_RETENTION", default_value = "10m", value_parser = duration)]
    retention: Duration,
    /// Where the proxies' spans arrive (OTLP gRPC).
    #[arg(long, env = "MESH_VIZ_OTLP_ADDR", default_value = "0.0.0.0:4317")]
    otlp_addr: SocketAddr,
    /// Recent traces kept in memory at most (the oldest go first).
    #[arg(long, env = "MESH_VIZ_MAX_TRACES", default_value_t = 1000)]
    max_traces: usize,
    /// viz's identity service (`host:port`): with it, viz gets a certificate as
    /// `MESH_VIZ_IDENTITY_NAME` and taps proxies over mTLS on their tap port; without,
    /// on their admin port (from the pods' loopback only, as in `mesh demo`).
    #[arg(long, env = "MESH_VIZ_IDENTITY_ADDR")]
    identity_addr: Option<String>,
    /// viz's identity, which proxies admit to their tap (`MESH_PROXY_TAP_CLIENTS`).
    #[arg(
        long,
        env = "MESH_VIZ_IDENTITY_NAME",
        default_value = "mesh-viz.mesh.serviceaccount.identity.mesh.cluster.local"
    )]
    identity_name: String,
    /// The identity service's own identity.
    #[arg(
        long,
        env = "MESH_VIZ_IDENTITY_SVC_NAME",
        default_value = "mesh-identity.mesh.serviceaccount.identity.mesh.cluster.local"
    )]
    identity_svc_name: String,
    /// Trust anchors: PEM text, or a PEM file's path.
    #[arg(long, env = "MESH_VIZ_TRUST_ANCHORS")]
    trust_anchors: Option<String>,
    /// The service-account token presented to the identity service.
    #[arg(
        long,
        env = "MESH_VIZ_TOKEN_PATH",
        default_value = "/var/run/secrets/tokens/mesh-identity-token"
    )]
    token_path: PathBuf,
    /// The proxies' tap port (mTLS).
    #[arg(long, env = "MESH_VIZ_PROXY_TAP_PORT", default_value_t = 4190)]
    proxy_tap_port: u16,
    /// The proxies' admin port.
    #[arg(long, env = "MESH_VIZ_PROXY_ADMIN_PORT", default_value_t = 4191)]
    proxy_admin_port: u16,
    /// Log filter.
    #[arg(long, env = "MESH_VIZ_LOG", default_value = "info")]
    log: String,
}

/// A positive duration flag in the mesh's grammar ([`mesh_api::duration`]).
fn duration(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(s, Duration::from_millis(1)..=Duration::MAX)
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    mesh_api::start::start(
        &config.log,
        "MESH_VIZ_LOG",
        mesh_api::start::Runtime::Workers(2),
    )?
    .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let index = match config.source.as_str() {
        "kubernetes" => {
            let index = Arc::new(Index::for_cluster());
            let client = kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API")?;
            let (synced, _) = tokio::sync::watch::channel(0);
            // viz only follows the cluster: the controller records Events for refused
            // objects, not viz.
            tokio::spawn(mesh_controller::kubernetes::run(
                client,
                index.clone(),
                synced,
                None,
            ));
            index
        }
        other => {
            let Some(dir) = other.strip_prefix("dir:").filter(|d| !d.is_empty()) else {
                anyhow::bail!("invalid --source {other:?}: use kubernetes or dir:PATH");
            };
            let index = Arc::new(Index::default());
            let (synced, _) = tokio::sync::watch::channel(false);
            let dir = PathBuf::from(dir);
            let idx = index.clone();
            tokio::spawn(async move {
                if let Err(error) = mesh_controller::dir::watch(dir, idx, synced).await {
                    tracing::error!(%error, "cannot watch the folder");
                }
            });
            index
        }
    };
    let store = Arc::new(Mutex::new(Store::new(
        config.retention,
        config.scrape_interval,
    )));
    tokio::spawn(mesh_viz::scrape::run(
        index,
        store.clone(),
        config.scrape_interval,
        config.proxy_admin_port,
    ));
    let via = match &config.identity_addr {
        None => mesh_viz::tap::Via::Admin(config.proxy_admin_port),
        Some(addr) => {
            let anchors = config
                .trust_anchors
                .as_deref()
                .context("MESH_VIZ_IDENTITY_ADDR is set but MESH_VIZ_TRUST_ANCHORS is not")?;
            let trust_anchors =
                mesh_proxy::identity::read_anchors(anchors, "MESH_VIZ_TRUST_ANCHORS")
                    .map_err(anyhow::Error::msg)?;
            let identity = Arc::new(
                mesh_proxy::identity::Identity::new(&config.identity_name, &trust_anchors)
                    .context("viz's identity")?,
            );
            tokio::spawn(identity.clone().run(mesh_proxy::identity::Settings {
                addr: addr.clone(),
                name: config.identity_name.clone(),
                service_name: config.identity_svc_name.clone(),
                trust_anchors,
                token_path: config.token_path.clone(),
            }));
            tracing::info!(identity = %config.identity_name, "tapping proxies over mTLS");
            mesh_viz::tap::Via::Tls {
                identity,
                port: config.proxy_tap_port,
            }
        }
    };
    let traces = Arc::new(Mutex::new(mesh_viz::traces::Traces::new(config.max_traces)));
    let otlp = tokio::net::TcpListener::bind(config.otlp_addr)
        .await
        .with_context(|| format!("cannot listen on {} (OTLP)", config.otlp_addr))?;
    let otlp_addr = otlp.local_addr()?;
    tokio::spawn(mesh_viz::traces::serve(otlp, traces.clone()));
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(api = %addr, otlp = %otlp_addr, interval = ?config.scrape_interval, "listening");
    tokio::select! {
        () = mesh_viz::server::serve(listener, mesh_viz::server::Sources {
            store,
            traces,
            via,
            relays: Default::default(),
        }) => {}
        _ = tokio::signal::ctrl_c() => {}
        () = terminate() => {}
    }
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
