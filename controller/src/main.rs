//! The `mesh-controller` binary: the destination and policy services over a source of
//! cluster state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use mesh_controller::{Index, destination, dir, discovery, kubernetes, policy};

/// The mesh controller: destination service (and, later, the proxy injector).
#[derive(Parser, Debug)]
#[command(name = "mesh-controller", version, about)]
struct Args {
    /// Where cluster state comes from: `kubernetes`, or `dir:PATH` for a folder of YAML.
    #[arg(long, env = "MESH_CONTROLLER_SOURCE", default_value = "kubernetes")]
    source: String,
    /// The destination service's gRPC address.
    #[arg(
        long,
        env = "MESH_CONTROLLER_DESTINATION_ADDR",
        default_value = "0.0.0.0:8086"
    )]
    destination_addr: SocketAddr,
    /// The proxy-injector webhook's HTTPS address (served when a certificate is given).
    #[arg(
        long,
        env = "MESH_CONTROLLER_WEBHOOK_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    webhook_addr: SocketAddr,
    /// The webhook's TLS certificate (PEM), e.g. from its mounted Secret.
    #[arg(long, env = "MESH_CONTROLLER_WEBHOOK_CERT", requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// The webhook's TLS key (PEM).
    #[arg(long, env = "MESH_CONTROLLER_WEBHOOK_KEY", requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// The trust anchors (PEM file) the webhook writes into each sidecar.
    #[arg(long, env = "MESH_CONTROLLER_TRUST_ANCHORS")]
    trust_anchors: Option<PathBuf>,
    /// The mesh's namespace (never injected; where identity and destination run).
    #[arg(long, env = "MESH_CONTROLLER_MESH_NAMESPACE", default_value = "mesh")]
    mesh_namespace: String,
    /// The proxy image the webhook injects (without tag).
    #[arg(
        long,
        env = "MESH_CONTROLLER_PROXY_IMAGE",
        default_value = "ghcr.io/mesh/proxy"
    )]
    proxy_image: String,
    /// The proxy version (image tag) the webhook injects.
    #[arg(long, env = "MESH_CONTROLLER_PROXY_VERSION", default_value = env!("CARGO_PKG_VERSION"))]
    proxy_version: String,
    /// Where injected proxies export spans by default (`host:port`, OTLP unless
    /// `--trace-protocol` says zipkin); unset: no tracing unless a pod's
    /// `config.mesh.io/trace-collector` or an Istio `Telemetry` asks for it.
    #[arg(long, env = "MESH_CONTROLLER_TRACE_COLLECTOR")]
    trace_collector: Option<String>,
    /// How injected proxies export spans: `otlp` or `zipkin`.
    #[arg(long, env = "MESH_CONTROLLER_TRACE_PROTOCOL", default_value = "otlp")]
    trace_protocol: String,
    /// The share (0 to 1) of new traces injected proxies record.
    #[arg(long, env = "MESH_CONTROLLER_TRACE_SAMPLING", default_value = "0.01")]
    trace_sampling: String,
    /// The collector an Istio `Telemetry`'s `zipkin` tracing provider means.
    #[arg(long, env = "MESH_CONTROLLER_ZIPKIN_COLLECTOR", default_value = mesh_controller::inject::ISTIO_ZIPKIN)]
    zipkin_collector: String,
    /// The injected proxy's default log level.
    #[arg(long, env = "MESH_CONTROLLER_PROXY_LOG_LEVEL", default_value = "info")]
    proxy_log_level: String,
    /// The injected proxy's default CPU request.
    #[arg(
        long,
        env = "MESH_CONTROLLER_PROXY_CPU_REQUEST",
        default_value = "100m"
    )]
    proxy_cpu_request: String,
    /// The injected proxy's default CPU limit (none by default).
    #[arg(long, env = "MESH_CONTROLLER_PROXY_CPU_LIMIT")]
    proxy_cpu_limit: Option<String>,
    /// The injected proxy's default memory request.
    #[arg(
        long,
        env = "MESH_CONTROLLER_PROXY_MEMORY_REQUEST",
        default_value = "20Mi"
    )]
    proxy_memory_request: String,
    /// The injected proxy's default memory limit.
    #[arg(
        long,
        env = "MESH_CONTROLLER_PROXY_MEMORY_LIMIT",
        default_value = "250Mi"
    )]
    proxy_memory_limit: String,
    /// Inject the proxy among the containers instead of as a native sidecar (for
    /// clusters older than Kubernetes 1.29).
    #[arg(long, env = "MESH_CONTROLLER_CLASSIC_SIDECAR")]
    classic_sidecar: bool,
    /// What admits requests to ports no policy decides, for pods and namespaces that
    /// set no default-inbound-policy annotation: all-unauthenticated,
    /// all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit.
    #[arg(
        long,
        env = "MESH_CONTROLLER_DEFAULT_INBOUND_POLICY",
        default_value = "all-unauthenticated"
    )]
    default_inbound_policy: String,
    /// Extra trust roots (PEM) for fetching RequestAuthentications' `jwksUri`, beside
    /// the system's.
    #[arg(long, env = "MESH_CONTROLLER_JWKS_ROOTS")]
    jwks_roots: Option<PathBuf>,
    /// `HOST:PORT=ADDRESS`: fetch JWKS documents of HOST:PORT from ADDRESS instead of
    /// resolving HOST (as curl's `--resolve`); repeatable, or comma-separated.
    #[arg(long, env = "MESH_CONTROLLER_JWKS_RESOLVE", value_delimiter = ',')]
    jwks_resolve: Vec<String>,
    /// How often fetched JWKS documents are fetched again.
    #[arg(long, env = "MESH_CONTROLLER_JWKS_REFRESH", default_value = "20m")]
    jwks_refresh: String,
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "MESH_CONTROLLER_LOG", default_value = "info")]
    log: String,
}

/// How long to wait for the source's first full read before serving anyway.
const SYNC_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A future that resolves once `ready` holds for the watched value.
fn rx_ready<T: Send + Sync + 'static>(
    mut rx: tokio::sync::watch::Receiver<T>,
    ready: fn(&T) -> bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _ = rx.wait_for(ready).await;
    })
}

/// The JWKS fetcher the arguments describe.
fn jwks_fetcher(args: &Args) -> anyhow::Result<mesh_controller::jwks::Fetcher> {
    let roots = match &args.jwks_roots {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut resolve = std::collections::HashMap::new();
    for r in args.jwks_resolve.iter().filter(|r| !r.trim().is_empty()) {
        let (from, to) = r
            .trim()
            .split_once('=')
            .with_context(|| format!("--jwks-resolve {r:?}: expected HOST:PORT=ADDRESS"))?;
        let to: SocketAddr = to
            .parse()
            .with_context(|| format!("--jwks-resolve {r:?}: {to:?} is not IP:PORT"))?;
        anyhow::ensure!(
            from.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()),
            "--jwks-resolve {r:?}: expected HOST:PORT=ADDRESS"
        );
        resolve.insert(from.to_string(), to);
    }
    let refresh = mesh_api::duration::parse_in(
        &args.jwks_refresh,
        std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(86_400),
    )
    .map_err(|e| anyhow::anyhow!("--jwks-refresh: {e}"))?;
    mesh_controller::jwks::Fetcher::new(roots.as_deref(), resolve, refresh)
        .map_err(|e| anyhow::anyhow!(e))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    mesh_api::start::start(
        &args.log,
        "MESH_CONTROLLER_LOG",
        mesh_api::start::Runtime::Workers(workers),
    )?
    .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Proxies must not be told "unknown" (and fall back to DNS, without identities)
    // just because the controller has not read its source yet: listen only once every
    // kind has been listed, or after SYNC_PATIENCE with whatever is known by then.
    let default_policy = mesh_api::linkerd::DefaultPolicy::parse(&args.default_inbound_policy)
        .map_err(|e| anyhow::anyhow!("--default-inbound-policy {e}"))?;
    let mut api_client: Option<kube::Client> = None;
    let (index, source, mut synced) = match args.source.split_once(':') {
        Some(("dir", path)) => {
            let path = PathBuf::from(path);
            anyhow::ensure!(
                path.is_dir(),
                "--source dir:{}: not a folder",
                path.display()
            );
            let index = Arc::new(Index::default().with_default_inbound_policy(default_policy));
            let (tx, rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(dir::watch(path, index.clone(), tx));
            let synced = rx_ready(rx, |done| *done);
            (index, task, synced)
        }
        _ if args.source == "kubernetes" => {
            let client = kube::Client::try_default().await.context(
                "cannot reach the Kubernetes API: run in a pod, or set KUBECONFIG (or use --source dir:PATH)",
            )?;
            let index = Arc::new(Index::for_cluster().with_default_inbound_policy(default_policy));
            api_client = Some(client.clone());
            let (tx, rx) = tokio::sync::watch::channel(0usize);
            let task = {
                let index = index.clone();
                tokio::spawn(async move {
                    kubernetes::run(client, index, tx, Some("mesh-controller")).await;
                    Ok(())
                })
            };
            let synced = rx_ready(rx, |n| *n >= kubernetes::KINDS);
            (index, task, synced)
        }
        _ => bail!("--source {:?}: use `kubernetes` or `dir:PATH`", args.source),
    };
    if tokio::time::timeout(SYNC_PATIENCE, &mut synced)
        .await
        .is_err()
    {
        tracing::warn!(patience = ?SYNC_PATIENCE, "the source is not fully read yet; serving what is known");
    }
    let fetcher = jwks_fetcher(&args)?;
    tokio::spawn(mesh_controller::jwks::run(index.clone(), fetcher));
    // Each Gateway API route's conditions, into the log and (in a cluster) its status.
    tokio::spawn(mesh_controller::status::run(
        index.clone(),
        api_client.clone(),
    ));
    let webhook = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let tls = mesh_controller::webhook::tls_config(&read(cert)?, &read(key)?)
                .map_err(|e| anyhow::anyhow!(e))?;
            let listener = tokio::net::TcpListener::bind(args.webhook_addr)
                .await
                .with_context(|| format!("cannot listen on {} (webhook)", args.webhook_addr))?;
            tracing::info!(webhook = %listener.local_addr()?, "proxy injector listening");
            let webhook = mesh_controller::webhook::Webhook {
                index: index.clone(),
                config: mesh_controller::inject::Config {
                    image: args.proxy_image.clone(),
                    version: args.proxy_version.clone(),
                    mesh_namespace: args.mesh_namespace.clone(),
                    trust_anchors_pem: match &args.trust_anchors {
                        Some(p) => Some(
                            String::from_utf8(read(p)?)
                                .context("trust anchors are not PEM text")?,
                        ),
                        None => None,
                    },
                    defaults: mesh_controller::inject::ProxyDefaults {
                        log_level: args.proxy_log_level.clone(),
                        cpu_request: args.proxy_cpu_request.clone(),
                        cpu_limit: args.proxy_cpu_limit.clone(),
                        memory_request: args.proxy_memory_request.clone(),
                        memory_limit: args.proxy_memory_limit.clone(),
                        trace_collector: args.trace_collector.clone().filter(|c| !c.is_empty()),
                        trace_protocol: args.trace_protocol.clone(),
                        trace_sampling: args.trace_sampling.clone(),
                        zipkin_collector: args.zipkin_collector.clone(),
                    },
                    ..Default::default()
                },
                classic: args.classic_sidecar,
                client: api_client.clone(),
            };
            webhook
                .config
                .defaults
                .validate()
                .map_err(|e| anyhow::anyhow!("proxy defaults: {e}"))?;
            Some(tokio::spawn(mesh_controller::webhook::serve(
                listener, tls, webhook,
            )))
        }
        _ => None,
    };
    let _webhook = webhook;
    let listener = tokio::net::TcpListener::bind(args.destination_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.destination_addr))?;
    let addr = listener.local_addr()?;
    tracing::info!(destination = %addr, "listening");
    let server = tonic::transport::Server::builder()
        // Bounded streams per connection, and pings so that dead proxies are noticed.
        .max_concurrent_streams(Some(mesh_api::CONTROLLER_MAX_STREAMS))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        // The policy services share the destination port (ARCHITECTURE.md: 8086).
        .add_service(discovery::Service::new(index.clone()))
        .add_service(destination::Service::new(index.clone()))
        .add_service(policy::Service::outbound(index.clone()))
        .add_service(policy::Service::inbound(index))
        .serve_with_incoming_shutdown(
            // Small messages go out at once: without TCP_NODELAY a first answer can
            // wait for the client's delayed ACK (40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        );
    tokio::select! {
        r = server => r.context("destination server failed")?,
        r = source => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("source failed: {e}"),
            Err(e) => bail!("source task failed: {e}"),
        },
    }
    Ok(())
}
