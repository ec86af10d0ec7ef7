//! The `mesh-identity` binary: the CA service, serving `Certify` over TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_api::identity_api::identity_server::IdentityServer;
use mesh_identity::limit::Limits;
use mesh_identity::server::{self, IssuerSource};
use mesh_identity::service::{Metrics, Service, Settings};
use mesh_identity::tokens::Authenticator;
use tokio::sync::watch;

/// mesh-identity: issues short-lived mTLS certificates to proxies.
#[derive(Debug, Parser)]
#[command(name = "mesh-identity", version, about)]
struct Config {
    /// The gRPC (TLS) address.
    #[arg(long, env = "MESH_IDENTITY_ADDR", default_value = "0.0.0.0:8080")]
    addr: SocketAddr,

    /// The admin address: /metrics, /live, /ready.
    #[arg(long, env = "MESH_IDENTITY_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,

    /// The issuer folder: `tls.crt` and `tls.key` (a mounted TLS Secret) and, unless
    /// --trust-anchors is given, `ca.crt`. Checked for changes every few seconds.
    #[arg(long, env = "MESH_IDENTITY_ISSUER_DIR")]
    issuer_dir: PathBuf,

    /// The trust-anchor bundle (PEM; may hold old and new anchors while rotating).
    #[arg(long, env = "MESH_IDENTITY_TRUST_ANCHORS")]
    trust_anchors: Option<PathBuf>,

    /// How tokens are checked: `kubernetes` (TokenReview) or `file:PATH` (local mode).
    #[arg(long, env = "MESH_IDENTITY_TOKENS", default_value = "kubernetes")]
    tokens: String,

    /// The namespace the service runs in (its own identity is mesh-identity.NS).
    #[arg(long, env = "MESH_IDENTITY_NAMESPACE", default_value = "mesh")]
    namespace: String,

    /// Leaf certificate lifetime (at least 10s).
    #[arg(long, env = "MESH_IDENTITY_CERT_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    cert_lifetime: Duration,

    /// How long before now a leaf's validity starts, for clocks that lag.
    #[arg(long, env = "MESH_IDENTITY_CLOCK_SKEW", default_value = "20s", value_parser = parse_duration)]
    clock_skew: Duration,

    /// How often the issuer files are checked for changes.
    #[arg(long, env = "MESH_IDENTITY_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,

    /// Certificate requests a minute one source address may make (a burst too).
    #[arg(long, env = "MESH_IDENTITY_RATE_PER_SOURCE", default_value = "600")]
    rate_per_source: std::num::NonZeroU32,

    /// Certificate requests a minute one service-account token may make (a burst too):
    /// a proxy needs one at start and one per renewal.
    #[arg(long, env = "MESH_IDENTITY_RATE_PER_TOKEN", default_value = "30")]
    rate_per_token: std::num::NonZeroU32,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "MESH_IDENTITY_LOG", default_value = "info")]
    log: String,
}

/// A duration flag in the mesh's grammar ([`mesh_api::duration`]), up to a year.
fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(s, Duration::ZERO..=Duration::from_secs(365 * 86_400))
}

/// A certificate lifetime: 10 s to 365 d.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    mesh_api::duration::parse_in(
        s,
        Duration::from_secs(10)..=Duration::from_secs(365 * 86_400),
    )
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    mesh_api::start::start(
        &config.log,
        "MESH_IDENTITY_LOG",
        mesh_api::start::Runtime::Workers(2),
    )?
    .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let auth = match config.tokens.as_str() {
        "kubernetes" => Authenticator::Kubernetes(
            kube::Client::try_default()
                .await
                .context("cannot reach the Kubernetes API for TokenReviews")?,
        ),
        other => match other.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Authenticator::File(PathBuf::from(path)),
            _ => anyhow::bail!("invalid --tokens {other:?}: use kubernetes or file:PATH"),
        },
    };
    let source = IssuerSource {
        dir: config.issuer_dir.clone(),
        anchors: config.trust_anchors.clone(),
        interval: config.reload_interval,
    };
    let issuer = source.load().with_context(|| {
        format!(
            "cannot load the issuer from {}",
            config.issuer_dir.display()
        )
    })?;
    let metrics = Arc::new(Metrics::default());
    metrics.issuer_loaded(&issuer);
    let (issuer_tx, issuer_rx) = watch::channel(Arc::new(issuer));
    tokio::spawn(source.watch(issuer_tx, {
        let metrics = metrics.clone();
        move |i| metrics.issuer_loaded(i)
    }));

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let admin = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin_addr))?;
    let admin_addr = admin.local_addr()?;
    tokio::spawn(server::admin(admin, Arc::new(registry)));

    let tls = server::tls_config(issuer_rx.clone(), config.namespace.clone())?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (identity)", config.addr))?;
    let addr = listener.local_addr()?;
    let limits = Arc::new(Limits::new(config.rate_per_source, config.rate_per_token));
    tokio::spawn({
        let limits = limits.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limits.prune();
            }
        }
    });
    let service = Service::new(
        issuer_rx,
        auth,
        Settings {
            lifetime: config.cert_lifetime,
            clock_skew: config.clock_skew,
        },
        metrics,
        limits,
    );
    tracing::info!(identity = %addr, admin = %admin_addr, lifetime = ?config.cert_lifetime, "listening");
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(service))
        .serve_with_incoming_shutdown(server::tls_incoming(listener, tls), shutdown())
        .await
        .context("identity server failed")?;
    Ok(())
}

async fn shutdown() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
