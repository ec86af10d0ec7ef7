//! HTTP proxying: the per-direction stacks of tower layers, request normalisation, and
//! the forwarding service at the bottom of each stack.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::balance::p2c;
use crate::body::{self, BoxBody};
use crate::client::{Endpoints, Version};
use crate::discover::Dst;
use crate::error::{self, BoxError, ProxyError};
use crate::metrics::{Class, Direction, Metrics, Peer, RequestLabels, Tls};
use crate::profile::{DEFAULT_ROUTE, Profile, Route};
use crate::resolve::{NameAddr, Resolve};

/// The header with which an outbound proxy tells a peer's inbound proxy which port of
/// its pod a request is for, when no iptables redirect carries that (local mode).
pub const TARGET_PORT_HEADER: &str = "mesh-target-port";

/// The header with which an outbound proxy marks an HTTP/1 request it carries to a
/// peer over HTTP/2; the peer's inbound proxy restores HTTP/1 for the application.
pub const ORIG_PROTO_HEADER: &str = "mesh-orig-proto";

/// The header carrying the verified identity of the client to the application; never
/// taken from the client itself.
pub const CLIENT_ID_HEADER: &str = "mesh-client-id";

/// Endpoints a request may try to connect to before it fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A boxed HTTP service that never fails: errors have become responses.
pub type HttpService = BoxCloneService<Request<BoxBody>, Response<BoxBody>, Infallible>;
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// What a request's connection tells the stack; set once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// Where the connection was going: the original destination of a redirected
    /// connection, or, inbound, the application's address.
    pub target: Option<SocketAddr>,
    /// Whether iptables redirected the connection (then `target` is exact).
    pub redirected: bool,
    /// The proxy's own address on this connection (the pod's IP).
    pub local: SocketAddr,
    /// Whether the client is a meshed peer authenticated by mTLS, and as whom.
    pub peer: Peer,
    /// The connection's slot: kept by whatever still serves the connection, so that an
    /// upgraded tunnel outliving its HTTP connection still counts against the
    /// connection limit and is waited for on shutdown.
    pub hold: Arc<Hold>,
}

/// Something kept alive for as long as a connection is served (see [`ConnInfo::hold`]).
pub struct Hold(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl Hold {
    /// Holds `value` until the last clone of the returned handle is dropped.
    pub fn new(value: impl std::any::Any + Send + Sync) -> Arc<Self> {
        Arc::new(Self(Box::new(value)))
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

/// What both stacks share: name resolution, endpoints and their pools, metrics.
#[derive(Debug)]
pub struct Shared {
    /// Resolves authorities to endpoints.
    pub resolve: Resolve,
    /// Pools of upstream connections.
    pub endpoints: Endpoints,
    /// Metrics for every request.
    pub metrics: Arc<Metrics>,
    /// The proxy's own listening addresses: a request routed to one of them would loop.
    pub own_addrs: Vec<SocketAddr>,
    /// The proxy's mTLS identity, when an identity service is configured.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The proxy's own open upstream connections: one accepted from them is a loop.
    pub origins: Arc<crate::origins::Origins>,
}

/// The bounds every request is held to.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests in flight in one direction.
    pub in_flight: usize,
    /// Requests in flight to one destination.
    pub in_flight_per_destination: usize,
    /// How long a request waits for response headers when its route says nothing.
    pub response_headers_timeout: Option<Duration>,
    /// The longest request path accepted (and matched against routes).
    pub max_path_bytes: usize,
}

/// Builds the stack one direction's requests flow through, top to bottom.
pub fn stack(shared: Arc<Shared>, direction: Direction, limits: &Limits) -> HttpService {
    let svc = ServiceBuilder::new()
        // Find the destination's profile and the request's route first: metrics are
        // labelled by route, and the route decides the timeout. A path too long to be
        // served is not matched at all (matching costs grow with its length).
        .layer_fn(|inner| Classify {
            inner,
            shared: shared.clone(),
            direction,
            max_path_bytes: limits.max_path_bytes,
        })
        // Count every request and time it to its response headers, including the
        // requests the proxy answers itself, so clients and metrics agree.
        .layer_fn(|inner| Metered {
            inner,
            metrics: shared.metrics.clone(),
            direction,
            mtls: shared.endpoints.mtls(),
        })
        // The one place errors become responses with `mesh-proxy-error`; every layer
        // below returns errors.
        .layer_fn(|inner| Rescue { inner })
        // Refuse what hyper's parser lets through but no server should act on, before
        // anything is sent on.
        .layer_fn(|inner| Validate {
            inner,
            max_path_bytes: limits.max_path_bytes,
        })
        // One destination may hold only its share of the in-flight slots: a hung
        // backend gets 503s of its own instead of starving every other destination.
        .layer_fn(|inner| DstLimit {
            inner,
            direction,
            mtls: shared.endpoints.mtls(),
            max: limits.in_flight_per_destination,
            in_flight: Arc::default(),
        })
        // The route's timeout (else the default) covers everything below, retries
        // included; when it fires, dropping the request cancels it upstream.
        .layer_fn(|inner| RouteTimeout {
            inner,
            default: limits.response_headers_timeout,
        })
        // Retry failures of retryable routes while the route's budget allows.
        .layer_fn(|inner| Retry {
            inner: BoxCloneService::new(inner),
            metrics: shared.metrics.clone(),
            direction,
            mtls: shared.endpoints.mtls(),
        })
        // Shed load instead of queueing when too many requests are in flight: a fast
        // 503 lets the caller's balancer pick another replica.
        .load_shed()
        .concurrency_limit(limits.in_flight)
        .service(Forward {
            shared: shared.clone(),
            direction,
        });
    BoxCloneService::new(svc)
}

/// Whether sending to `addr` reaches one of the listeners `own` (see [`Shared::is_own`]).
pub fn is_own(own: &[SocketAddr], addr: SocketAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    // Linux connects a socket aimed at the unspecified address to loopback.
    let ip = match crate::origins::canonical(addr).ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    own.iter()
        .map(|o| crate::origins::canonical(*o))
        .any(|own| {
            own.port() == addr.port()
                && (own.ip() == ip || (own.ip().is_unspecified() && ip.is_loopback()))
        })
}

/// The port a peer proxy named in [`TARGET_PORT_HEADER`]: exactly one header, a
/// decimal port (no sign, no spaces), or none.
pub fn target_port(headers: &HeaderMap) -> Option<u16> {
    let mut values = headers.get_all(TARGET_PORT_HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The request's authority: the URI's (absolute-form or `:authority`), else `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

// === Forward: the bottom of the stack ===

/// Sends a request to an endpoint of its destination and returns the response.
#[derive(Clone, Debug)]
struct Forward {
    shared: Arc<Shared>,
    direction: Direction,
}

impl Service<Request<BoxBody>> for Forward {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response, BoxError>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.forward(req).await.map_err(Into::into) })
    }
}

impl Shared {
    /// Whether `addr` is one of the proxy's own listeners, so sending there would loop.
    /// Addresses are compared as the kernel routes them: an IPv4-mapped IPv6 address is
    /// its IPv4 address, connecting to the unspecified address reaches loopback, and a
    /// listener on a wildcard address owns its port on every loopback address. (A
    /// listener reached by another local address, the pod's IP say, is caught when the
    /// connection arrives: see [`crate::origins`].)
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        is_own(&self.own_addrs, addr)
    }
}

impl Forward {
    async fn forward(self, mut req: Request<BoxBody>) -> Result<Response<BoxBody>, ProxyError> {
        let conn = req.extensions_mut().remove::<ConnInfo>();
        let target = conn.as_ref().and_then(|c| c.target);
        let mtls = self.shared.endpoints.mtls();
        // Hop-by-hop headers go first, so that a `Connection` header cannot name (and so
        // remove) the headers the proxy adds below.
        let upgrading = req.version() != HttpVersion::HTTP_2 && is_upgrade(req.headers());
        strip_hop_by_hop(req.headers_mut(), upgrading, true);
        if self.direction == Direction::Inbound {
            // The application learns the client's identity from us alone.
            req.headers_mut().remove(CLIENT_ID_HEADER);
            if let Some(id) = conn.as_ref().and_then(|c| c.peer.id.as_deref())
                && let Ok(v) = HeaderValue::from_str(id)
            {
                req.headers_mut().insert(CLIENT_ID_HEADER, v);
            }
            // An HTTP/1 request a peer carried over HTTP/2 goes to the app as HTTP/1.
            if req.headers_mut().remove(ORIG_PROTO_HEADER).is_some()
                && req.version() == HttpVersion::HTTP_2
            {
                *req.version_mut() = HttpVersion::HTTP_11;
            }
        } else {
            // Only this proxy may mark a request's original protocol.
            req.headers_mut().remove(ORIG_PROTO_HEADER);
        }
        let version = if req.version() == HttpVersion::HTTP_2 {
            Version::Http2
        } else {
            Version::Http1
        };
        let authority = request_authority(&req).map(str::to_owned);

        let dsts = match self.direction {
            // Inbound traffic always goes to the local application: the redirect's
            // original destination, else the port a peer proxy named on this pod's
            // address, else the configured application address.
            Direction::Inbound => {
                let named = target_port(req.headers());
                req.headers_mut().remove(TARGET_PORT_HEADER);
                let addr = match (&conn, named) {
                    // Only a meshed peer (or anyone, when the mesh runs without mTLS)
                    // may name a port of this pod.
                    (Some(c), Some(port))
                        if !c.redirected && (c.peer.tls == Tls::Secured || !mtls) =>
                    {
                        // Never one of the proxy's own ports (admin, say), on any of
                        // its addresses.
                        if self.shared.own_addrs.iter().any(|o| o.port() == port) {
                            return Err(ProxyError::Loop);
                        }
                        Some(SocketAddr::new(c.local.ip(), port))
                    }
                    _ => target,
                };
                vec![Dst::direct(addr.ok_or_else(|| {
                    ProxyError::NoEndpoints("application".into())
                })?)]
            }
            Direction::Outbound => {
                // Only this proxy may name a peer's target port.
                req.headers_mut().remove(TARGET_PORT_HEADER);
                match &authority {
                    Some(a) => {
                        let name = NameAddr::parse(a, default_port(conn.as_ref()))?;
                        // Classify looked the profile up already; look again only for a
                        // request that skipped it.
                        let profile = match req.extensions().get::<RouteInfo>() {
                            Some(info) => info.profile.clone(),
                            None => self.shared.resolve.profile(&name).await,
                        };
                        self.shared.resolve.route(&name, &profile).await?
                    }
                    None => vec![Dst::direct(target.ok_or(ProxyError::NoAuthority)?)],
                }
            }
        };
        if dsts.iter().any(|d| self.shared.is_own(d.connect)) {
            return Err(ProxyError::Loop);
        }
        let upgrade = (version == Version::Http1 && is_upgrade(req.headers()))
            .then(|| hyper::upgrade::on(&mut req));
        let endpoints: Vec<_> = dsts
            .iter()
            .map(|d| {
                // Between meshed proxies HTTP/1 rides HTTP/2 (upgrades cannot).
                let meshed = mtls && d.identity.is_some();
                let version = if meshed && version == Version::Http1 && upgrade.is_none() {
                    Version::Http2
                } else {
                    version
                };
                let endpoint = self.shared.endpoints.get(
                    d.connect,
                    version,
                    self.direction,
                    d.identity.as_deref(),
                );
                (endpoint, d)
            })
            .collect();
        // A failed connect sent nothing, so another endpoint may be tried: a pod that
        // went away before discovery said so costs a retry, not a failed request.
        let mut failed: Vec<SocketAddr> = Vec::new();
        let mut rsp = loop {
            let now = Instant::now();
            let candidates: Vec<_> = endpoints
                .iter()
                .filter(|(e, _)| !failed.contains(&e.addr))
                .collect();
            let Some((endpoint, dst)) =
                p2c(&candidates, |(e, _)| e.load.load(now)).map(|c| (c.0.clone(), c.1))
            else {
                return Err(ProxyError::NoEndpoints(
                    authority.clone().unwrap_or_default(),
                ));
            };
            let in_flight = endpoint.load.start();
            let conn = match endpoint.connection().await {
                Ok(conn) => conn,
                Err(e) => {
                    in_flight.fail();
                    failed.push(endpoint.addr);
                    // A TLS failure sent nothing either: an address that now belongs
                    // to another pod (stale discovery) presents the wrong identity.
                    let retryable = matches!(
                        e,
                        ProxyError::Connect { .. }
                            | ProxyError::ConnectTimeout(_)
                            | ProxyError::Tls { .. }
                    );
                    if retryable && failed.len() < endpoints.len().min(MAX_CONNECT_ATTEMPTS) {
                        tracing::debug!(error = %e, "trying another endpoint");
                        continue;
                    }
                    return Err(e);
                }
            };
            // Counted once connected (and authenticated): the labels say who answers.
            let peer = match &endpoint.identity {
                Some(id) => Peer::secured(id),
                None => Peer::plaintext(mtls),
            }
            .with_dst(dst.labels.clone());
            if let Some(uncounted) = req.extensions().get::<Uncounted>() {
                uncounted.count(&peer);
            }
            if let Some(port) = dst.target_port {
                req.headers_mut()
                    .insert(TARGET_PORT_HEADER, HeaderValue::from(port));
            }
            let carried = version == Version::Http1 && endpoint.version() == Version::Http2;
            if carried {
                *req.version_mut() = HttpVersion::HTTP_2;
                req.headers_mut()
                    .insert(ORIG_PROTO_HEADER, HeaderValue::from_static("HTTP/1.1"));
            }
            normalize_request(&mut req, authority.as_deref(), endpoint.addr);
            let sent = endpoint.send(conn, req).await;
            match sent {
                Ok(mut rsp) => {
                    in_flight.complete();
                    if carried {
                        *rsp.version_mut() = HttpVersion::HTTP_11;
                    }
                    rsp.extensions_mut().insert(peer);
                    break rsp;
                }
                Err(e) => {
                    // A client's own bad request says nothing about the endpoint.
                    if !matches!(e, ProxyError::BadRequest(_)) {
                        in_flight.fail();
                    }
                    return Err(e);
                }
            }
        };

        match upgrade {
            Some(client) if rsp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let server = hyper::upgrade::on(&mut rsp);
                let hold = conn.map(|c| c.hold);
                tokio::spawn(async move {
                    tunnel(client, server).await;
                    drop(hold);
                });
            }
            _ => strip_hop_by_hop(rsp.headers_mut(), false, false),
        }
        Ok(rsp.map(body::boxed))
    }
}

/// Carries the bytes of an upgraded connection (e.g. a WebSocket) both ways.
async fn tunnel(client: hyper::upgrade::OnUpgrade, server: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, server) {
        Ok((client, server)) => {
            let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tracing::debug!(%error, "upgraded connection closed");
            }
        }
        Err(error) => tracing::debug!(%error, "upgrade failed"),
    }
}

/// Whether a request asks to upgrade its connection (WebSocket, say).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed set and any named in
/// `Connection`. An upgrade keeps `Upgrade` and `Connection: upgrade`. Requests keep
/// `te: trailers`: the proxy forwards trailers, so it may ask for them on the client's
/// behalf (gRPC needs it, and HTTP/1 servers only send trailers when asked).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // `Trailer` is end to end: hyper only sends HTTP/1 trailers that it names.
    for name in [
        header::TE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Makes a request fit to send upstream (its hop-by-hop headers already removed): the
/// URI in the form the upstream protocol needs, and `Host` consistent with the target
/// authority.
pub fn normalize_request<B>(req: &mut Request<B>, authority: Option<&str>, endpoint: SocketAddr) {
    let h2 = req.version() == HttpVersion::HTTP_2;
    let authority = authority
        .map(str::to_owned)
        .unwrap_or_else(|| endpoint.to_string());
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    if h2 {
        // HTTP/2 carries the authority in `:authority`, taken from the URI.
        req.headers_mut().remove(header::HOST);
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
    } else {
        if req.uri().authority().is_some() {
            // Absolute-form (the app used us as an HTTP proxy): the URI's authority
            // wins over any Host header (RFC 9112 §3.2.2), and upstream gets origin-form.
            if let Ok(host) = HeaderValue::from_str(&authority) {
                req.headers_mut().insert(header::HOST, host);
            }
            if let Ok(uri) = path.parse() {
                *req.uri_mut() = uri;
            }
        } else if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&authority)
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}

/// The profile and route a request was classified under (outbound only).
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// The destination's profile.
    pub profile: Arc<Profile>,
    /// The matching route, if any.
    pub route: Option<Arc<Route>>,
}

/// The port of a `Host` without one: the original destination's on a redirected
/// connection, else 80.
fn default_port(conn: Option<&ConnInfo>) -> u16 {
    conn.filter(|c| c.redirected)
        .and_then(|c| c.target)
        .map_or(80, |t| t.port())
}

// === Classify: profile and route ===

#[derive(Clone, Debug)]
struct Classify<S> {
    inner: S,
    shared: Arc<Shared>,
    direction: Direction,
    max_path_bytes: usize,
}

impl<S, B> Service<Request<B>> for Classify<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Response<BoxBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let (shared, direction) = (self.shared.clone(), self.direction);
        // What the lookup needs, taken before awaiting: the body is not Sync, so no
        // borrow of the request may be held across an await. Without a destination
        // service no profile applies: nothing to look up.
        let lookup = (direction == Direction::Outbound
            && shared.resolve.has_discovery()
            && req.uri().path().len() <= self.max_path_bytes)
            .then(|| {
                let conn = req.extensions().get::<ConnInfo>();
                let name = request_authority(&req)
                    .and_then(|a| NameAddr::parse(a, default_port(conn)).ok())?;
                Some((name, req.method().clone(), req.uri().path().to_owned()))
            })
            .flatten();
        let Some((name, method, path)) = lookup else {
            return Box::pin(self.inner.call(req));
        };
        // The inner service was made ready for this call: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let profile = shared.resolve.profile(&name).await;
            let route = profile.route(&method, &path);
            req.extensions_mut().insert(RouteInfo { profile, route });
            inner.call(req).await
        })
    }
}

// === RouteTimeout ===

#[derive(Clone, Debug)]
struct RouteTimeout<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S, B> Service<Request<B>> for RouteTimeout<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // gRPC is exempt from the default: servers send a stream's headers with its
        // first message, which may be long in coming, and clients set their own
        // deadlines (`grpc-timeout`).
        let default = self.default.filter(|_| !is_grpc(&req));
        let timeout = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.as_ref()?.timeout)
            .or(default);
        let fut = self.inner.call(req);
        Box::pin(async move {
            match timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(ProxyError::Timeout.into()),
                },
                None => fut.await.map_err(Into::into),
            }
        })
    }
}

// === Validate: heads hyper lets through ===

#[derive(Clone, Debug)]
struct Validate<S> {
    inner: S,
    max_path_bytes: usize,
}

/// Why a request head must be refused, if it must: two `Host` headers (RFC 9112 §3.2,
/// 400), an HTTP/2 `Host` naming another authority than `:authority` (RFC 9113
/// §8.3.1), a path longer than `max_path_bytes` (414).
pub fn invalid<B>(req: &Request<B>, max_path_bytes: usize) -> Option<ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(ProxyError::Malformed("more than one Host header"));
    }
    if req.version() == HttpVersion::HTTP_2
        && let (Some(host), Some(authority)) = (host, req.uri().authority())
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Some(ProxyError::Malformed("Host differs from :authority"));
    }
    let path = req.uri().path().len();
    (path > max_path_bytes).then_some(ProxyError::PathTooLong(path))
}

impl<S, B> Service<Request<B>> for Validate<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(e) = invalid(&req, self.max_path_bytes) {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

// === DstLimit: in-flight requests per destination ===

/// Requests in flight per destination; a destination with none has no entry, so the
/// map is never larger than the number of requests in flight.
type InFlight = Arc<std::sync::Mutex<std::collections::HashMap<Box<str>, usize>>>;

#[derive(Clone, Debug)]
struct DstLimit<S> {
    inner: S,
    direction: Direction,
    /// Whether this proxy speaks mTLS (then only meshed peers may name a port).
    mtls: bool,
    max: usize,
    in_flight: InFlight,
}

/// A request's slot in its destination's share; given back when dropped.
struct DstSlot {
    in_flight: InFlight,
    key: Box<str>,
}

impl Drop for DstSlot {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The destination a request counts against: outbound its authority (else its
/// original destination), inbound the application port it goes to, by the same rule
/// as [`Forward`] (a named port only from whom it is honoured).
fn destination_key<B>(req: &Request<B>, direction: Direction, mtls: bool) -> Box<str> {
    let conn = req.extensions().get::<ConnInfo>();
    let target = conn.and_then(|c| c.target);
    match direction {
        Direction::Outbound => match request_authority(req) {
            Some(a) => a.to_ascii_lowercase().into(),
            None => target.map(|t| t.to_string()).unwrap_or_default().into(),
        },
        Direction::Inbound => {
            let named = conn
                .filter(|c| !c.redirected && (c.peer.tls == Tls::Secured || !mtls))
                .and_then(|_| target_port(req.headers()));
            named
                .or(target.map(|t| t.port()))
                .map(|p| p.to_string())
                .unwrap_or_default()
                .into()
        }
    }
}

impl<S, B> Service<Request<B>> for DstLimit<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let key = destination_key(&req, self.direction, self.mtls);
        {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get_mut(&key) {
                Some(n) if *n >= self.max => {
                    let e = ProxyError::DestinationOverloaded(key.into());
                    return Box::pin(std::future::ready(Err(e.into())));
                }
                Some(n) => *n += 1,
                None => {
                    map.insert(key.clone(), 1);
                }
            }
        }
        let slot = DstSlot {
            in_flight: self.in_flight.clone(),
            key,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await.map_err(Into::into);
            drop(slot);
            rsp
        })
    }
}

/// Whether a response is a failure: the route's response classes decide first; a
/// response none covers is a failure when 5xx, or by a non-zero `grpc-status`.
fn classify(route: Option<&Route>, status: u16, grpc_status: Option<u32>) -> Class {
    if let Some(code) = grpc_status {
        return if code == 0 {
            Class::Success
        } else {
            Class::Failure
        };
    }
    let by_route =
        route.and_then(|r| r.is_failure(StatusCode::from_u16(status).unwrap_or(StatusCode::OK)));
    match by_route {
        Some(true) => Class::Failure,
        Some(false) => Class::Success,
        None if status >= 500 => Class::Failure,
        None => Class::Success,
    }
}

// === Retry: within the route's budget ===

/// Request bodies up to this size are kept so that a request can be sent again.
const MAX_REPLAY_BYTES: usize = 64 * 1024;
/// Attempts per request, the first included: one request cannot drain a budget.
const MAX_ATTEMPTS: usize = 3;

/// The services below the retry layer, type-erased so that the retry loop's future is
/// plainly `Send`.
type Attempts = BoxCloneService<Request<BoxBody>, Response<BoxBody>, BoxError>;

#[derive(Clone)]
struct Retry {
    inner: Attempts,
    metrics: Arc<Metrics>,
    direction: Direction,
    mtls: bool,
}

/// What buffering a request body gave.
enum Replay {
    /// The whole body, small enough to send again.
    Buffered(bytes::Bytes),
    /// Too large (or with trailers): sent once, as it is.
    Once(BoxBody),
}

/// Reads up to [`MAX_REPLAY_BYTES`] of `body`; a larger body is rebuilt from what was
/// read and the rest, to be sent once.
async fn buffer(mut body: BoxBody) -> Result<Replay, BoxError> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                if buf.len() > MAX_REPLAY_BYTES {
                    let head =
                        http_body_util::Full::new(buf.freeze()).map_err(|never| match never {});
                    let rest = futures_util::stream::unfold(body, |mut b| async move {
                        b.frame().await.map(|f| (f, b))
                    });
                    let head = futures_util::stream::once(async move {
                        let mut head = head;
                        head.frame()
                            .await
                            .unwrap_or_else(|| Ok(Frame::data(bytes::Bytes::new())))
                    });
                    use futures_util::StreamExt;
                    let stream = head.map(|f| f.map_err(BoxError::from)).chain(rest);
                    return Ok(Replay::Once(body::boxed(http_body_util::StreamBody::new(
                        stream,
                    ))));
                }
            }
            Err(frame) => {
                // Trailers: rare in requests; such a request is sent once.
                let head = http_body_util::Full::new(buf.freeze()).map_err(|never| match never {});
                let trailers = frame.into_trailers().ok();
                let body =
                    http_body_util::BodyExt::with_trailers(head, async move { trailers.map(Ok) });
                return Ok(Replay::Once(body::boxed(body)));
            }
        }
    }
    Ok(Replay::Buffered(buf.freeze()))
}

fn rebuild(parts: &http::request::Parts, body: BoxBody) -> Request<BoxBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

fn full(b: bytes::Bytes) -> BoxBody {
    use http_body_util::BodyExt;
    body::boxed(http_body_util::Full::new(b).map_err(|never| match never {}))
}

impl Service<Request<BoxBody>> for Retry {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let route = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.clone());
        let retryable =
            route.as_ref().is_some_and(|r| r.budget.is_some()) && !is_upgrade(req.headers());
        let Some(route) = route.filter(|_| retryable) else {
            // Already a boxed future: no second box.
            return self.inner.call(req);
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let labels = self.metrics.labels(
            self.direction,
            request_authority(&req).unwrap_or(""),
            &route.name,
            &Peer::plaintext(self.mtls),
        );
        let metrics = self.metrics.clone();
        let mut last = labels.clone();
        Box::pin(async move {
            let Some(budget) = route.budget.clone() else {
                return inner.call(req).await;
            };
            tower::retry::budget::Budget::deposit(&*budget);
            let (parts, body) = req.into_parts();
            let body = match buffer(body).await {
                Ok(Replay::Buffered(bytes)) => bytes,
                Ok(Replay::Once(body)) => return inner.call(rebuild(&parts, body)).await,
                Err(e) => return Err(e),
            };
            let mut attempt = 1;
            loop {
                let result = inner.call(rebuild(&parts, full(body.clone()))).await;
                // Failures worth retrying: failure responses, and endpoints that could
                // not be reached at all (the request never got to the app).
                let failed = match &result {
                    Ok(rsp) => {
                        let class = classify(
                            Some(&route),
                            rsp.status().as_u16(),
                            grpc_status(rsp.headers()),
                        );
                        // Every attempt, the last included: actual minus effective
                        // (Metered's count) is the number of retries.
                        last = match rsp.extensions().get::<Peer>() {
                            Some(peer) => metrics.with_peer(&labels, peer),
                            None => labels.clone(),
                        };
                        metrics.attempt(&last, rsp.status().as_u16(), class);
                        class == Class::Failure
                    }
                    Err(e) => e.downcast_ref::<ProxyError>().is_some_and(|e| {
                        matches!(
                            e,
                            ProxyError::Connect { .. }
                                | ProxyError::ConnectTimeout(_)
                                | ProxyError::NoEndpoints(_)
                        )
                    }),
                };
                if !failed || attempt >= MAX_ATTEMPTS {
                    return result;
                }
                if !tower::retry::budget::Budget::withdraw(&*budget) {
                    metrics.retry_skipped(&last);
                    return result;
                }
                attempt += 1;
                inner = match tower::ServiceExt::ready(&mut inner).await {
                    Ok(_) => inner,
                    Err(e) => return Err(e),
                };
            }
        })
    }
}

// === Rescue: errors become responses ===

#[derive(Clone, Debug)]
struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Response<BoxBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness errors (load shedding) surface from `call` instead, as responses.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(&req);
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(fut.await.unwrap_or_else(|e| error::rescue(e.into(), grpc))) })
    }
}

// === Metered: golden metrics ===

#[derive(Clone, Debug)]
struct Metered<S> {
    inner: S,
    metrics: Arc<Metrics>,
    direction: Direction,
    mtls: bool,
}

/// An outbound request not yet counted: its labels include the server's identity,
/// known once an endpoint is picked. Forward counts it then (the first attempt only);
/// a request that never reaches an endpoint counts when its response is made, or,
/// dropped first (the client went away), with the labels known so far.
#[derive(Clone, Debug)]
pub struct Uncounted(Arc<Slot>);

#[derive(Debug)]
struct Slot {
    uncounted: std::sync::Mutex<Option<(Arc<Metrics>, RequestLabels)>>,
    /// The endpoint the latest attempt went to: a response the proxy makes itself (a
    /// route timeout, say) is labelled with it.
    peer: std::sync::Mutex<Option<Peer>>,
}

impl Uncounted {
    fn new(metrics: Arc<Metrics>, labels: RequestLabels) -> Self {
        Self(Arc::new(Slot {
            uncounted: std::sync::Mutex::new(Some((metrics, labels))),
            peer: std::sync::Mutex::new(None),
        }))
    }

    /// Counts the request with `peer` as the server, unless it was counted already,
    /// and remembers `peer` as the latest endpoint.
    pub fn count(&self, peer: &Peer) {
        *self.0.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer.clone());
        let taken = self
            .0
            .uncounted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((metrics, labels)) = taken {
            metrics.request(&metrics.with_peer(&labels, peer));
        }
    }

    fn last_peer(&self) -> Option<Peer> {
        self.0
            .peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let taken = self
            .uncounted
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((metrics, labels)) = taken {
            metrics.request(&labels);
        }
    }
}

impl<S, B> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Response<BoxBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.clone());
        let route_name = route.as_ref().map_or(DEFAULT_ROUTE, |r| &r.name);
        // Inbound, the client's TLS state is known now; outbound, the server's only
        // once an endpoint answers.
        let peer = match (self.direction, req.extensions().get::<ConnInfo>()) {
            (Direction::Inbound, Some(conn)) => conn.peer.clone(),
            _ => Peer::plaintext(self.mtls),
        };
        let labels = self.metrics.labels(
            self.direction,
            request_authority(&req).unwrap_or(""),
            route_name,
            &peer,
        );
        let uncounted = match self.direction {
            Direction::Inbound => {
                self.metrics.request(&labels);
                None
            }
            Direction::Outbound => {
                let uncounted = Uncounted::new(self.metrics.clone(), labels.clone());
                req.extensions_mut().insert(uncounted.clone());
                Some(uncounted)
            }
        };
        let metrics = self.metrics.clone();
        let direction = self.direction;
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            // The endpoint that answered; else, for a response the proxy made itself
            // after reaching one (a timeout), the endpoint it was waiting for.
            // Inbound, the peer is the client, known from the connection all along.
            let peer = match direction {
                Direction::Inbound => None,
                Direction::Outbound => rsp
                    .extensions()
                    .get::<Peer>()
                    .cloned()
                    .or_else(|| uncounted.as_ref().and_then(Uncounted::last_peer)),
            };
            let labels = match peer {
                Some(peer) => metrics.with_peer(&labels, &peer),
                None => labels,
            };
            if let Some(uncounted) = uncounted {
                uncounted.count(&labels.peer);
            }
            let latency = start.elapsed();
            let status = rsp.status().as_u16();
            // A trailers-only gRPC response carries its status in the headers.
            let grpc_status = grpc_status(rsp.headers());
            Ok(rsp.map(|inner| {
                let metered = MeteredBody {
                    inner,
                    done: Some(Done {
                        metrics,
                        labels,
                        status,
                        latency,
                        route,
                    }),
                    grpc_status,
                };
                body::boxed(metered)
            }))
        })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug)]
struct Done {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    status: u16,
    latency: Duration,
    route: Option<Arc<Route>>,
}

impl Done {
    fn record(self, grpc_status: Option<u32>, failed: bool) {
        let class = if failed {
            Class::Failure
        } else {
            classify(self.route.as_deref(), self.status, grpc_status)
        };
        self.metrics
            .response(&self.labels, self.status, class, self.latency);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the response once its stream ends.
    struct MeteredBody {
        #[pin]
        inner: BoxBody,
        done: Option<Done>,
        grpc_status: Option<u32>,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                // Dropped before its end: fine if nothing was left to send (HEAD, 204),
                // a failure if the stream was cut short.
                let failed = !this.inner.is_end_stream();
                done.record(*this.grpc_status, failed);
            }
        }
    }
}

impl http_body::Body for MeteredBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(f) => f,
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref() {
                    *this.grpc_status = grpc_status(t).or(*this.grpc_status);
                }
            }
            Some(Err(_)) => {
                if let Some(done) = this.done.take() {
                    done.record(*this.grpc_status, true);
                }
            }
            None => {
                if let Some(done) = this.done.take() {
                    done.record(*this.grpc_status, false);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one request with `stack`, tagging it with its connection's details.
pub fn serve(
    stack: HttpService,
    conn: ConnInfo,
    mut req: Request<Incoming>,
) -> BoxFuture<Response<BoxBody>, Infallible> {
    req.extensions_mut().insert(conn);
    Box::pin(stack.oneshot(req.map(body::boxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_destination_holds_at_most_its_share() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        let mut limit = DstLimit {
            inner: mock,
            direction: Direction::Outbound,
            mtls: false,
            max: 2,
            in_flight: Arc::default(),
        };
        let req = |host: &str| {
            Request::get("/")
                .header("host", host)
                .body(())
                .expect("req")
        };
        handle.allow(10);
        let first = limit.ready().await.expect("ready").call(req("hung:80"));
        let second = limit.ready().await.expect("ready").call(req("HUNG:80"));
        let third = limit.ready().await.expect("ready").call(req("hung:80"));
        let e = third.await.expect_err("over the share");
        assert_eq!(e.to_string(), "too many requests in flight to hung:80");
        // Another destination is not affected.
        let other = tokio::spawn(limit.ready().await.expect("ready").call(req("other:80")));
        for _ in 0..3 {
            let (r, send) = handle.next_request().await.expect("request");
            let status = if r.headers()[header::HOST] == "other:80" {
                200
            } else {
                504
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(body::empty())
                    .expect("rsp"),
            );
        }
        assert_eq!(other.await.expect("join").expect("other").status(), 200);
        assert_eq!(first.await.expect("first").status(), 504);
        drop(second);
        // Both slots are back once the requests ended (or were dropped).
        assert!(limit.in_flight.lock().expect("lock").is_empty());
        let again = tokio::spawn(limit.ready().await.expect("ready").call(req("hung:80")));
        let (_, send) = handle.next_request().await.expect("request");
        send.send_response(Response::new(body::empty()));
        assert_eq!(again.await.expect("join").expect("again").status(), 200);
    }

    #[tokio::test]
    async fn heads_hyper_lets_through_are_refused() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(10);
        let mut validate = Validate {
            inner: mock,
            max_path_bytes: 16,
        };
        let two_hosts = Request::get("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .expect("req");
        let e = validate
            .ready()
            .await
            .expect("ready")
            .call(two_hosts)
            .await
            .expect_err("refused");
        assert_eq!(
            e.to_string(),
            "malformed request: more than one Host header"
        );
        let long = Request::get("/0123456789abcdefg").body(()).expect("req");
        let e = validate
            .ready()
            .await
            .expect("ready")
            .call(long)
            .await
            .expect_err("refused");
        assert_eq!(e.to_string(), "request path of 18 bytes is too long");
        let h2 = Request::get("http://a/")
            .version(HttpVersion::HTTP_2)
            .header("host", "b")
            .body(())
            .expect("req");
        assert!(
            validate
                .ready()
                .await
                .expect("ready")
                .call(h2)
                .await
                .is_err()
        );
        let fine = validate.ready().await.expect("ready").call(
            Request::get("/ok")
                .header("host", "a")
                .body(())
                .expect("req"),
        );
        let (_, send) = handle.next_request().await.expect("passed on");
        send.send_response(Response::new(body::empty()));
        assert_eq!(fine.await.expect("fine").status(), 200);
    }

    #[test]
    fn every_spelling_of_an_own_address_is_a_loop() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:4140".parse().expect("addr"),
            "0.0.0.0:4191".parse().expect("addr"),
            "127.0.1.3:4143".parse().expect("addr"),
        ];
        for addr in [
            "127.0.0.1:4140",
            "0.0.0.0:4140",
            "[::ffff:127.0.0.1]:4140",
            "[::ffff:0.0.0.0]:4140",
            "0.0.0.0:4191",
            "127.0.0.1:4191",
            "127.9.9.9:4191",
            "[::1]:4191",
            "[::]:4191",
            "[::ffff:127.0.0.1]:4191",
            "127.0.1.3:4143",
            "[::ffff:127.0.1.3]:4143",
        ] {
            let addr: SocketAddr = addr.parse().expect("addr");
            assert!(is_own(&own, addr), "{addr} loops");
        }
        for addr in [
            "127.0.0.2:4140",
            "10.0.0.1:4140",
            "127.0.1.4:4143",
            "0.0.0.0:4143",
        ] {
            let addr: SocketAddr = addr.parse().expect("addr");
            assert!(!is_own(&own, addr), "{addr} does not loop");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true, false);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        let mut req = Request::get("http://web.default:8080/a?b=1")
            .header("host", "wrong")
            .body(())
            .expect("req");
        let ep: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let authority = request_authority(&req).map(str::to_owned);
        normalize_request(&mut req, authority.as_deref(), ep);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "web.default:8080");
    }

    #[test]
    fn h2_requests_keep_their_authority() {
        let mut req = Request::post("/pkg.Svc/M")
            .version(HttpVersion::HTTP_2)
            .body(())
            .expect("req");
        normalize_request(
            &mut req,
            Some("grpc.default:50051"),
            ([127, 0, 0, 1], 1).into(),
        );
        assert_eq!(req.uri(), "http://grpc.default:50051/pkg.Svc/M");
    }
}
