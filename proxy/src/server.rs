//! The proxy's listeners and connection lifecycle: accept, detect the protocol, serve,
//! and drain gracefully on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::authz::PortPolicy;
use crate::client::{ClientConfig, Endpoints};
use crate::config::Config;
use crate::detect::{Protocol, detect};
use crate::discover::Discover;
use crate::http::{ConnInfo, Hold, HttpService, Shared};
use crate::identity::{ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, Identity};
use crate::idle::{Streams, Tracked};
use crate::io::{PrefixedIo, original_dst};
use crate::metrics::Metrics;
use crate::origins::Origins;
use crate::resolve::Resolve;
use crate::tcp::{self, CountingIo};
use crate::vocab::{Direction, Peer, Tls};

/// The largest connection or request limit honoured (tokio's semaphores cap lower).
const MAX_LIMIT: usize = 1 << 24;

/// The addresses a running proxy listens on.
#[derive(Copy, Clone, Debug)]
pub struct Listening {
    /// The inbound listener.
    pub inbound: SocketAddr,
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The admin server.
    pub admin: SocketAddr,
    /// The tap server (mTLS), when there is one.
    pub tap: Option<SocketAddr>,
}

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        /// Which listener.
        name: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// The destination service's address is unusable.
    #[error("invalid destination service address: {0}")]
    Destination(String),
    /// The trace collector's address is unusable.
    #[error("{0}")]
    Tracing(String),
    /// The DNS resolver could not be built.
    #[error("cannot start the DNS resolver: {0}")]
    Resolver(#[from] crate::error::ProxyError),
    /// The identity settings are incomplete or invalid.
    #[error("identity: {0}")]
    Identity(String),
}

/// Everything a connection needs, shared by all of them.
struct Ctx {
    config: Config,
    identity_settings: Option<crate::identity::Settings>,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
    listening: Listening,
}

impl Ctx {
    /// Whether inbound traffic to application port `port` must be mTLS: strict when
    /// the proxy's own setting says so (a remote decision cannot loosen it), else as
    /// the port's policy says, else permissive.
    fn strict_port(&self, port: Option<u16>, policy: Option<&PortPolicy>) -> bool {
        self.config.strict_port(port)
            || policy.is_some_and(|p| p.mtls == mesh_api::policy::MtlsMode::Strict)
    }

    fn listening_on(&self, direction: Direction) -> SocketAddr {
        match direction {
            Direction::Inbound => self.listening.inbound,
            Direction::Outbound => self.listening.outbound,
        }
    }
}

/// A proxy whose listeners are bound; `run` serves until shutdown.
pub struct Proxy {
    ctx: Arc<Ctx>,
    listeners: [(Direction, TcpListener, HttpService); 2],
    /// The other workers' inbound and outbound sockets on the same addresses.
    workers: Vec<[std::net::TcpListener; 2]>,
    admin: TcpListener,
    tap: Option<TcpListener>,
    drain_tx: watch::Sender<bool>,
    listening: Listening,
}

async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { name, addr, source })
}

/// A listener that `workers` sockets share (one is plain when there is one worker).
async fn bind_shared(
    name: &'static str,
    addr: SocketAddr,
    workers: u16,
) -> Result<TcpListener, StartError> {
    if workers <= 1 {
        return bind(name, addr).await;
    }
    let err = |source| StartError::Bind { name, addr, source };
    TcpListener::from_std(crate::worker::shared_listener(addr).map_err(err)?).map_err(err)
}

impl Proxy {
    /// Binds the inbound, outbound and admin listeners.
    pub async fn bind(mut config: Config) -> Result<Self, StartError> {
        config.workers = crate::worker::usable(config.workers);
        let inbound = bind_shared("inbound", config.inbound_addr, config.workers).await?;
        let outbound = bind_shared("outbound", config.outbound_addr, config.workers).await?;
        let admin = bind("admin", config.admin_addr).await?;
        // Tap over mTLS needs an identity to present.
        let tap = match (config.tap_addr, &config.identity_addr) {
            (Some(addr), Some(_)) => Some(bind("tap", addr).await?),
            _ => None,
        };
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let listening = Listening {
            inbound: local(&inbound, config.inbound_addr),
            outbound: local(&outbound, config.outbound_addr),
            admin: local(&admin, config.admin_addr),
            tap: tap
                .as_ref()
                .zip(config.tap_addr)
                .map(|(l, addr)| local(l, addr)),
        };
        // The other workers' sockets, on the addresses the first one got.
        let mut workers = Vec::new();
        for _ in 1..config.workers {
            let shared = |name, addr| {
                crate::worker::shared_listener(addr).map_err(|source| StartError::Bind {
                    name,
                    addr,
                    source,
                })
            };
            workers.push([
                shared("inbound", listening.inbound)?,
                shared("outbound", listening.outbound)?,
            ]);
        }
        let identity_settings = config.identity().map_err(StartError::Identity)?;
        let identity = match &identity_settings {
            Some(s) => Some(Arc::new(
                Identity::new(&s.name, &s.trust_anchors)
                    .map_err(|e| StartError::Identity(e.to_string()))?,
            )),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        // Fixed now: counts in /stats start from here.
        let _ = (
            crate::metrics::instance(),
            crate::metrics::started_unix_ms(),
        );
        let mut resolve = Resolve::from_system()?;
        if let Some(addr) = &config.destination_addr {
            let mut discover = Discover::new(addr, &config.namespace)
                .map_err(|e| StartError::Destination(e.to_string()))?
                .with_metrics(metrics.clone());
            if let Some(pod) = &config.pod_name {
                discover = discover.with_workload(pod);
            }
            resolve = resolve.with_discovery(discover);
        }
        let client = ClientConfig {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_pooled_per_endpoint: 64,
        };
        let origins = Arc::new(Origins::default());
        let dropped = metrics.access_log_dropped.clone();
        let tracer = match config.tracing() {
            Some(settings) => {
                let (tracer, exporter) = crate::trace::Tracer::new(
                    &settings,
                    config.identity_name.as_deref(),
                    metrics.traces.clone(),
                )
                .map_err(|e| StartError::Tracing(e.to_string()))?;
                tracing::info!(
                    collector = %settings.collector,
                    protocol = ?settings.protocol,
                    sampling = settings.sampling,
                    "tracing on"
                );
                tokio::spawn(exporter.run());
                Some(tracer)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            resolve,
            endpoints: Endpoints::new(client, metrics.clone(), origins.clone(), identity.clone()),
            metrics,
            own_addrs: vec![listening.inbound, listening.outbound, listening.admin],
            identity,
            origins,
            backends: Default::default(),
            access_log: config
                .access_log
                .map(|f| crate::access_log::AccessLog::stdout(f, dropped.clone())),
            tracer,
        });
        let (drain_tx, drain) = watch::channel(false);
        let limits = crate::http::Limits {
            in_flight: config.max_in_flight_requests.clamp(1, MAX_LIMIT),
            in_flight_per_destination: config.max_in_flight_per_destination.clamp(1, MAX_LIMIT),
            response_headers_timeout: (!config.response_headers_timeout.is_zero())
                .then_some(config.response_headers_timeout),
            max_path_bytes: config.max_path_bytes,
        };
        let listeners = [
            (
                Direction::Inbound,
                inbound,
                crate::inbound::stack(shared.clone(), &limits),
            ),
            (
                Direction::Outbound,
                outbound,
                crate::outbound::stack(shared.clone(), &limits),
            ),
        ];
        let ctx = Arc::new(Ctx {
            config,
            identity_settings,
            shared,
            drain,
            listening,
        });
        Ok(Self {
            ctx,
            listeners,
            workers,
            admin,
            tap,
            drain_tx,
            listening,
        })
    }

    /// The bound addresses.
    pub fn listening(&self) -> Listening {
        self.listening
    }

    /// Serves until `shutdown` resolves or `POST /shutdown` arrives, then stops
    /// accepting, lets in-flight work finish within the grace period, and returns.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Self {
            ctx,
            listeners,
            workers,
            admin,
            tap,
            drain_tx,
            listening,
        } = self;
        // Each connection holds a clone of `done`; when all are dropped, draining is over.
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let (admin_shutdown_tx, mut admin_shutdown) = mpsc::channel::<()>(1);
        // One connection limit per direction, whichever worker accepts.
        let max = ctx.config.max_connections.clamp(1, MAX_LIMIT);
        let limits = [Arc::new(Semaphore::new(max)), Arc::new(Semaphore::new(max))];
        let stacks = [listeners[0].2.clone(), listeners[1].2.clone()];
        for (i, sockets) in workers.into_iter().enumerate() {
            let index = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let (ctx, done, limits, stacks) =
                (ctx.clone(), done.clone(), limits.clone(), stacks.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("mesh-worker-{index}"))
                .spawn(move || worker(index, sockets, stacks, limits, ctx, done));
            if let Err(error) = spawned {
                tracing::warn!(%error, index, "cannot start a worker: serving with fewer");
            }
        }
        for ((direction, listener, stack), limit) in listeners.into_iter().zip(limits) {
            tokio::spawn(accept_loop(
                listener,
                direction,
                stack,
                ctx.clone(),
                limit,
                done.clone(),
            ));
        }
        let identity_task = match (&ctx.shared.identity, &ctx.identity_settings) {
            (Some(identity), Some(settings)) => {
                tracing::info!(
                    identity = identity.name(),
                    "mTLS on: requesting a certificate"
                );
                Some(tokio::spawn(identity.clone().run(settings.clone())))
            }
            _ => {
                tracing::warn!(
                    "no identity service (MESH_PROXY_IDENTITY_ADDR): mTLS is off and traffic between proxies is plaintext"
                );
                None
            }
        };
        let sweeper = (!ctx.config.discovery_idle_timeout.is_zero()).then(|| {
            tokio::spawn(sweep(
                Arc::downgrade(&ctx.shared),
                ctx.config.discovery_idle_timeout,
            ))
        });
        let tap_task = match (tap, &ctx.shared.identity) {
            (Some(listener), Some(identity)) => Some(tokio::spawn(crate::tap::serve_tls(
                listener,
                identity.clone(),
                ctx.shared.metrics.taps.clone(),
                ctx.config.tap_clients.clone().into(),
            ))),
            _ => None,
        };
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            crate::admin::Admin {
                identity: ctx.shared.identity.clone(),
                metrics: ctx.shared.metrics.clone(),
                origins: ctx.shared.origins.clone(),
                drain: ctx.drain.clone(),
                shutdown: ctx
                    .config
                    .shutdown_endpoint_enabled
                    .then_some(admin_shutdown_tx),
            },
        ));
        tracing::info!(
            inbound = %listening.inbound,
            outbound = %listening.outbound,
            admin = %listening.admin,
            tap = %listening.tap.map_or("-".to_string(), |t| t.to_string()),
            "listening"
        );

        tokio::select! {
            () = shutdown => tracing::info!("signal received; draining"),
            Some(()) = admin_shutdown.recv() => tracing::info!("shutdown requested; draining"),
        }
        let _ = drain_tx.send(true);
        drop(done);
        let grace = ctx.config.shutdown_grace_period;
        match tokio::time::timeout(grace, all_done.recv()).await {
            Ok(_) => tracing::info!("drained"),
            Err(_) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
        }
        admin_task.abort();
        if let Some(task) = tap_task {
            task.abort();
        }
        if let Some(task) = identity_task {
            task.abort();
        }
        if let Some(task) = sweeper {
            task.abort();
        }
    }
}

/// Every quarter of `idle`, drops what the proxy holds for destinations unused for
/// `idle`: controller watches and endpoints' connection pools. A proxy that talked to
/// many names once holds nothing for them a minute later.
async fn sweep(shared: std::sync::Weak<Shared>, idle: std::time::Duration) {
    let mut tick = tokio::time::interval((idle / 4).max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let watches = shared.resolve.discovery().map(|d| d.sweep(idle));
        let endpoints = shared.endpoints.sweep(idle);
        tracing::trace!(?watches, endpoints, "idle destinations dropped");
    }
}

/// Worker `index` (above 0): its own single-threaded runtime accepting on its inbound
/// and outbound sockets until the proxy drains, then serving what it accepted to the
/// end (`done` held until then, so the proxy waits for it).
fn worker(
    index: u16,
    sockets: [std::net::TcpListener; 2],
    stacks: [HttpService; 2],
    limits: [Arc<Semaphore>; 2],
    ctx: Arc<Ctx>,
    done: mpsc::Sender<()>,
) {
    crate::worker::enter(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::warn!(%error, index, "cannot start a worker's runtime: serving with fewer");
            return;
        }
    };
    runtime.block_on(async move {
        // This worker's connections hold `mine`; when they are all gone, so is it.
        let (mine, mut all_mine) = mpsc::channel::<()>(1);
        let mut loops = Vec::new();
        for (((socket, stack), limit), direction) in sockets
            .into_iter()
            .zip(stacks)
            .zip(limits)
            .zip([Direction::Inbound, Direction::Outbound])
        {
            match TcpListener::from_std(socket) {
                Ok(listener) => loops.push(tokio::spawn(accept_loop(
                    listener,
                    direction,
                    stack,
                    ctx.clone(),
                    limit,
                    mine.clone(),
                ))),
                Err(error) => tracing::warn!(%error, index, ?direction, "a worker cannot listen"),
            }
        }
        drop(mine);
        for l in loops {
            let _ = l.await;
        }
        let _ = all_mine.recv().await;
        drop(done);
    });
}

async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    stack: HttpService,
    ctx: Arc<Ctx>,
    limit: Arc<Semaphore>,
    done: mpsc::Sender<()>,
) {
    let mut drain = ctx.drain.clone();
    loop {
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = drained(&mut drain) => return,
        };
        // At the connection limit, the connection waits unserved and nothing more is
        // accepted: new clients wait in the backlog. The slot is taken after the
        // accept, so that a worker waiting for connections holds none (every worker's
        // accepts share the limit).
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = drained(&mut drain) => return,
        };
        ctx.shared.metrics.accepted();
        let (ctx, stack, done) = (ctx.clone(), stack.clone(), done.clone());
        tokio::spawn(async move {
            handle(
                stream,
                client,
                direction,
                stack,
                &ctx,
                Hold::new((permit, done)),
            )
            .await;
        });
    }
}

/// Resolves once the proxy starts draining.
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

async fn handle(
    mut stream: TcpStream,
    client: SocketAddr,
    direction: Direction,
    stack: HttpService,
    ctx: &Ctx,
    hold: Arc<Hold>,
) {
    let _ = stream.set_nodelay(true);
    let plaintext = Peer::plaintext(ctx.shared.identity.is_some()).tls;
    // A connection that ends before it is served still counts as opened and closed.
    let unserved = || {
        ctx.shared
            .metrics
            .tcp_open(direction, "src", plaintext)
            .closed()
    };
    // A connection this proxy opened itself has come back to it: a request routed to
    // one of its listeners by an address it does not know as its own. Serving it
    // would recurse until every slot is taken.
    let local = stream.local_addr().unwrap_or(ctx.listening_on(direction));
    let looped = || {
        let looped = ctx.shared.origins.contains(client, local);
        if looped {
            tracing::warn!(%client, ?direction, "connection from this proxy itself refused: a loop");
            unserved();
        }
        looped
    };
    if looped() {
        return;
    }
    let orig_dst = original_dst(&stream);
    let target = match direction {
        Direction::Inbound => orig_dst.or(ctx.config.inbound_app_addr),
        Direction::Outbound => orig_dst,
    };
    let mut drain = ctx.drain.clone();
    // Ports declared opaque skip detection (server-speaks-first protocols need not wait),
    // except where the mesh's mTLS must be recognised first.
    let port = target.map(|t| t.port());
    let policy = match (direction, port) {
        (Direction::Inbound, Some(p)) => crate::inbound::port_policy(&ctx.shared, p).await,
        _ => None,
    };
    let strict = ctx.shared.identity.is_some()
        && direction == Direction::Inbound
        && ctx.strict_port(port, policy.as_deref());
    let opaque = ctx.config.opaque_port(port)
        || policy.as_ref().is_some_and(|p| p.opaque)
        || match (direction, orig_dst) {
            // A redirected connection: discovery may say its destination is opaque.
            (Direction::Outbound, Some(t)) => opaque_target(t, ctx).await,
            _ => false,
        };
    let detect_first = !opaque || strict;
    let detected = if detect_first {
        tokio::select! {
            d = detect(&mut stream, ctx.config.detect_timeout) => match d {
                Ok(d) => d,
                Err(error) => {
                    tracing::debug!(%error, %client, "connection closed during protocol detection");
                    unserved();
                    return;
                }
            },
            // A client that has sent nothing yet has nothing in flight: close it at once.
            () = drained(&mut drain) => {
                unserved();
                return;
            }
        }
    } else {
        crate::detect::Detected {
            protocol: Some(Protocol::Opaque),
            prefix: bytes::BytesMut::new(),
        }
    };
    let Some(protocol) = detected.protocol else {
        unserved();
        return;
    };
    // Checked again now that bytes arrived: on a multi-threaded runtime the accept
    // can run before the connecting task has recorded its connection, but not before
    // that task has written to it.
    if looped() {
        return;
    }
    let mut prefix = detected.prefix;
    let conn = ConnInfo {
        client,
        target,
        redirected: orig_dst.is_some(),
        local,
        hold,
        peer: Peer::plaintext(ctx.shared.identity.is_some()),
    };
    if direction == Direction::Inbound {
        if let (Protocol::Tls, Some(identity)) = (protocol, &ctx.shared.identity) {
            let sni = match crate::tls::client_hello_sni(
                &mut stream,
                &mut prefix,
                ctx.config.detect_timeout,
            )
            .await
            {
                Ok(sni) => sni,
                Err(error) => {
                    tracing::debug!(%error, %client, "connection failed during the TLS hello");
                    unserved();
                    return;
                }
            };
            // The mesh's mTLS names a mesh identity: normally this proxy's. Another
            // one (stale discovery, say, with the address now another pod's) is
            // answered with this proxy's certificate too, so that the client sees
            // whom it reached and reports the mismatch. Any other TLS is the app's own.
            if sni
                .as_deref()
                .is_some_and(|n| mesh_api::identity::parse_dns_name(n).is_some())
            {
                let io = PrefixedIo::new(prefix, stream);
                return serve_mtls(io, identity, conn, stack, ctx).await;
            }
        }
        if strict {
            tracing::info!(%client, ?target, "connection refused: inbound is strict and the client did not use the mesh's mTLS");
            unserved();
            return;
        }
    }
    let io = CountingIo::new(
        PrefixedIo::new(prefix, stream),
        ctx.shared.metrics.tcp_open(direction, "src", conn.peer.tls),
    );
    serve(io, protocol, conn, direction, stack, ctx).await;
}

/// Terminates a peer's mTLS, verifying its certificate, then serves what it carries
/// (by ALPN, else detected) with the peer's identity attached.
async fn serve_mtls(
    io: PrefixedIo<TcpStream>,
    identity: &Arc<Identity>,
    mut conn: ConnInfo,
    stack: HttpService,
    ctx: &Ctx,
) {
    let client = conn.client;
    let metrics = &ctx.shared.metrics;
    // Until the handshake succeeds the connection is not secured: a failed one counts
    // as plaintext.
    let failed = conn.peer.tls;
    let unserved = || metrics.tcp_open(Direction::Inbound, "src", failed).closed();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let tls = match tokio::time::timeout(ctx.config.detect_timeout, acceptor.accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::info!(%error, %client, "mTLS handshake refused");
            unserved();
            return;
        }
        Err(_) => {
            tracing::debug!(%client, "mTLS handshake timed out");
            unserved();
            return;
        }
    };
    let (_, session) = tls.get_ref();
    // The verifier required a certificate chaining to the trust anchors.
    let Some(peer) = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(crate::identity::peer_identity)
    else {
        tracing::info!(%client, "mTLS peer certificate names no identity; closing");
        unserved();
        return;
    };
    // A meshed peer says what it carries with the mesh's own signalling (ALPN), never
    // by what its first bytes look like: sniffing would let any meshed workload pass
    // bytes to the app raw, with whatever headers they spell.
    let protocol = match session.alpn_protocol() {
        Some(ALPN_H2) => Protocol::Http2,
        Some(ALPN_HTTP1) => Protocol::Http1,
        Some(ALPN_OPAQUE) => Protocol::Opaque,
        other => {
            tracing::info!(%client, %peer, alpn = ?other.map(String::from_utf8_lossy), "mTLS peer negotiated no mesh protocol (ALPN); closing");
            unserved();
            return;
        }
    };
    conn.peer = Peer::secured(&peer);
    // Counted above TLS: the bytes of the peer's requests and responses.
    let mut tls = CountingIo::new(
        tls,
        metrics.tcp_open(Direction::Inbound, "src", Tls::Secured),
    );
    if protocol == Protocol::Opaque {
        // A peer's opaque connection names the application port it is for.
        let port = match crate::tcp::read_transport_header(&mut tls, ctx.config.detect_timeout)
            .await
        {
            Ok(port) => port,
            Err(error) => {
                tracing::info!(%error, %client, %peer, "opaque mTLS connection without a valid transport header; closing");
                return;
            }
        };
        let target = SocketAddr::new(conn.local.ip(), port);
        if ctx.shared.own_addrs.iter().any(|o| o.port() == port) || ctx.shared.is_own(target) {
            tracing::info!(%client, %peer, port, "opaque connection to the proxy's own port refused");
            return;
        }
        conn.target = Some(target);
    }
    serve(
        PrefixedIo::new(bytes::BytesMut::new(), tls),
        protocol,
        conn,
        Direction::Inbound,
        stack,
        ctx,
    )
    .await;
}

async fn serve<I>(
    io: I,
    protocol: Protocol,
    conn: ConnInfo,
    direction: Direction,
    stack: HttpService,
    ctx: &Ctx,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match protocol {
        Protocol::Http1 | Protocol::Http2 => serve_http(io, protocol, conn, stack, ctx).await,
        // TLS that is not the mesh's is the application's own: bytes, passed through.
        Protocol::Opaque | Protocol::Tls => match conn.target {
            Some(target) if !ctx.shared.is_own(target) => {
                if direction == Direction::Inbound
                    && !crate::inbound::authorize_connection(&ctx.shared, &conn, target).await
                {
                    // Denied: closed at once, nothing forwarded.
                    return;
                }
                let result = if direction == Direction::Outbound {
                    forward_outbound(io, target, ctx).await
                } else {
                    let tls = Peer::plaintext(ctx.shared.identity.is_some()).tls;
                    tcp::forward(
                        io,
                        target,
                        ctx.config.connect_timeout,
                        &ctx.shared.metrics,
                        &ctx.shared.origins,
                        direction,
                        tls,
                    )
                    .await
                };
                if let Err(error) = result {
                    tracing::debug!(%error, client = %conn.client, %target, "opaque connection ended");
                }
            }
            _ => {
                tracing::debug!(client = %conn.client, "opaque connection with no known destination; closing")
            }
        },
    }
}

/// Where discovery says an outbound connection to `target` goes: the endpoint that is
/// `target` itself (a pod's address), else one of the service's (a cluster IP), picked
/// at random. `None`: discovery knows nothing of it.
async fn discovered(target: SocketAddr, ctx: &Ctx) -> Option<crate::discover::Dst> {
    let discover = ctx.shared.resolve.discovery()?;
    let crate::discover::Answer::Endpoints(list) = discover.resolve(&target.to_string()).await
    else {
        return None;
    };
    let app = |d: &crate::discover::Dst| match d.target_port {
        Some(p) => SocketAddr::new(d.connect.ip(), p),
        None => d.connect,
    };
    list.iter()
        .find(|d| app(d) == target)
        .or_else(|| list.get(fastrand::usize(..list.len().max(1))))
        .cloned()
}

/// Whether discovery marks `target`'s port opaque (then no detection waits for a
/// client that speaks first).
async fn opaque_target(target: SocketAddr, ctx: &Ctx) -> bool {
    discovered(target, ctx).await.is_some_and(|d| d.opaque)
}

/// Forwards an outbound opaque connection: over mTLS to the peer's proxy when discovery
/// says `target` is (or is a service of) a meshed pod, else to the endpoint (or
/// `target`) in plaintext.
async fn forward_outbound<I>(io: I, target: SocketAddr, ctx: &Ctx) -> std::io::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let shared = &ctx.shared;
    let dst = discovered(target, ctx).await;
    if let (Some(tls), Some(d)) = (&shared.identity, &dst)
        && let (Some(id), Some(port)) = (&d.identity, d.target_port)
    {
        if shared.is_own(d.connect) {
            return Err(std::io::Error::other("discovery points back at this proxy"));
        }
        return tcp::forward_mtls(
            io,
            d.connect,
            id,
            port,
            tls,
            ctx.config.connect_timeout,
            &shared.metrics,
            &shared.origins,
        )
        .await;
    }
    let to = match &dst {
        Some(d) if d.target_port.is_none() => d.connect,
        _ => target,
    };
    let tls = Peer::plaintext(shared.identity.is_some()).tls;
    tcp::forward(
        io,
        to,
        ctx.config.connect_timeout,
        &shared.metrics,
        &shared.origins,
        Direction::Outbound,
        tls,
    )
    .await
}

async fn serve_http<I>(io: I, protocol: Protocol, conn: ConnInfo, stack: HttpService, ctx: &Ctx)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let mut drain = ctx.drain.clone();
    let cfg = &ctx.config;
    let result = if protocol == Protocol::Http2 {
        // Each stream counts as open until its response ends, for the idle timeout.
        let streams = Arc::new(Streams::default());
        let svc = {
            let streams = streams.clone();
            hyper::service::service_fn(move |req| {
                let open = streams.open();
                let rsp = crate::http::serve(stack.clone(), conn.clone(), req);
                async move {
                    let rsp = rsp.await?;
                    Ok::<_, std::convert::Infallible>(rsp.map(|b| Tracked::new(b, open)))
                }
            })
        };
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = drained(&mut drain) => {
                // GOAWAY: in-flight streams finish, new ones are refused.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            () = streams.idle(cfg.http2_idle_timeout) => {
                // Idle since its handshake or its last stream: GOAWAY, then close.
                // A client that opens a stream meanwhile has it served.
                tracing::debug!("closing an idle HTTP/2 connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let svc = hyper::service::service_fn(move |req| {
            crate::http::serve(stack.clone(), conn.clone(), req)
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_buf_size(cfg.max_header_bytes.max(8192))
            .max_header_size(cfg.max_header_bytes);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = drained(&mut drain) => {
                // Finish the request in flight, then close instead of keeping alive.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}
