//! The concrete level: one backend's endpoints and the balancer over them, at the
//! bottom of the outbound stack. It picks an endpoint (power of two choices over
//! peak-EWMA load), connects (mTLS when the endpoint is meshed), and tries another
//! endpoint when a connect fails, since nothing was sent. Once connected, the request
//! is counted against the endpoint and sent by the endpoint level
//! ([`crate::http::upstream`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version as HttpVersion};
use tower::Service;

use super::split::Concrete;
use crate::backend::{BackendPolicy, HashOn, Lb, by_hash, key_hash};
use crate::balance::p2c;
use crate::body::BoxBody;
use crate::client::Version;
use crate::discover::Dst;
use crate::error::{AtPeer, BoxError, ProxyError};
use crate::http::timeout::Deadline;
use crate::http::{
    BoxFuture, ConnInfo, ORIG_PROTO_HEADER, Shared, TARGET_PORT_HEADER, is_upgrade,
    request_authority, upstream,
};
use crate::metrics::RequestLabels;
use crate::vocab::{Direction, Peer};

/// The consistent-hash key `on` takes from `req`, if it has one; and, when the key is
/// a cookie the client lacks and the policy makes one, the `Set-Cookie` for it.
fn hash_key(
    on: &HashOn,
    req: &Request<BoxBody>,
    conn: Option<&ConnInfo>,
) -> (Option<u64>, Option<HeaderValue>) {
    match on {
        HashOn::Header(name) => (
            req.headers().get(name).map(|v| key_hash(v.as_bytes())),
            None,
        ),
        HashOn::Query(name) => (
            crate::profile::query_param(req.uri().query(), name).map(|v| key_hash(v.as_bytes())),
            None,
        ),
        HashOn::SourceIp => (
            conn.map(|c| match c.client.ip() {
                std::net::IpAddr::V4(ip) => key_hash(&ip.octets()),
                std::net::IpAddr::V6(ip) => key_hash(&ip.octets()),
            }),
            None,
        ),
        HashOn::Cookie { name, path, ttl } => match (crate::backend::cookie(req, name), ttl) {
            (Some(v), _) => (Some(key_hash(v.trim_matches('"').as_bytes())), None),
            (None, Some(ttl)) => {
                let value = crate::backend::new_cookie_value();
                let set = crate::backend::set_cookie(name, &value, path, *ttl);
                (
                    Some(key_hash(value.as_bytes())),
                    HeaderValue::try_from(set).ok(),
                )
            }
            (None, None) => (None, None),
        },
    }
}

/// Endpoints a request may try to connect to before it fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Marks an attempt whose request was already counted against an endpoint by an
/// earlier attempt (set by [`super::retry`]): a retry is not a new request.
#[derive(Clone, Copy, Debug)]
pub struct Counted;

/// Balances each request over its [`Concrete`] backend's endpoints.
#[derive(Clone, Debug)]
pub struct Balance {
    shared: Arc<Shared>,
}

impl Balance {
    /// Balances over endpoints resolved and pooled by `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn send(self, mut req: Request<BoxBody>) -> Result<Response<BoxBody>, BoxError> {
        let shared = &self.shared;
        let conn = req.extensions_mut().remove::<ConnInfo>();
        // The backend's policy: balancing, bounds, ejection (the split's pick's, or
        // the service's own).
        let own = req.extensions_mut().remove::<Arc<BackendPolicy>>();
        // Most requests' backends set nothing: the default, without an allocation.
        static DEFAULT: std::sync::LazyLock<BackendPolicy> =
            std::sync::LazyLock::new(BackendPolicy::default);
        let policy: &BackendPolicy = own.as_deref().unwrap_or(&DEFAULT);
        let passthrough = match (&policy.lb, conn.as_ref().and_then(|c| c.target)) {
            (Lb::Passthrough, Some(target)) => Some(target),
            _ => None,
        };
        // The backend's name keys its policy's state: only a policy with some pays for it.
        let keyed = policy.limits.is_some()
            || policy.accrual.is_some()
            || matches!(policy.lb, Lb::RoundRobin);
        let (mut dsts, backend) = match req.extensions_mut().remove::<Concrete>() {
            // PASSTHROUGH: where the connection was going, whatever the name says; a
            // meshed endpoint of the service there is still reached through its proxy.
            Some(Concrete::Service(name) | Concrete::Subset(name, _))
                if let Some(target) = passthrough =>
            {
                let known = shared.resolve.endpoints(&name).await.unwrap_or_default();
                let dst = known
                    .into_iter()
                    .find(|d| {
                        d.connect.ip() == target.ip()
                            && d.target_port.unwrap_or(d.connect.port()) == target.port()
                    })
                    .unwrap_or_else(|| Dst::direct(target));
                (vec![dst], keyed.then(|| name.to_string()))
            }
            Some(Concrete::Service(name)) => (
                shared.resolve.endpoints(&name).await?,
                keyed.then(|| name.to_string()),
            ),
            Some(Concrete::Subset(name, labels)) => {
                let key = keyed.then(|| {
                    let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{name}{{{}}}", key.join(","))
                });
                (shared.resolve.subset_endpoints(&name, &labels).await?, key)
            }
            Some(Concrete::Addr(addr)) => (vec![Dst::direct(addr)], None),
            None => return Err(ProxyError::NoAuthority.into()),
        };
        if policy.disable_mtls {
            // Plaintext to the application's port: the pod's own proxy (which the
            // pod's iptables send it to) sees plaintext, as Istio's DISABLE does.
            for d in &mut dsts {
                if d.identity.take().is_some()
                    && let Some(port) = d.target_port.take()
                {
                    d.connect.set_port(port);
                }
            }
        }
        // Bounds on the backend's requests: over them, refused at once.
        let _admitted = match (&policy.limits, &backend) {
            (Some(limits), Some(key)) => Some(shared.backends.admit(key, limits).await?),
            _ => None,
        };
        // Failure accrual, when the policy asks for it: per backend.
        let accrual = policy.accrual.as_ref().zip(backend.as_deref());
        let accrued = &shared.metrics.accrual;
        if dsts.iter().any(|d| shared.is_own(d.connect)) {
            return Err(ProxyError::Loop.into());
        }
        // Only this proxy may mark a request's original protocol or name a peer's
        // target port.
        req.headers_mut().remove(ORIG_PROTO_HEADER);
        req.headers_mut().remove(TARGET_PORT_HEADER);
        let mtls = shared.endpoints.mtls();
        let version = if req.version() == HttpVersion::HTTP_2 {
            Version::Http2
        } else {
            Version::Http1
        };
        let upgrading = version == Version::Http1 && is_upgrade(req.headers());
        let endpoints: Vec<_> = dsts
            .iter()
            .map(|d| {
                // Between meshed proxies HTTP/1 rides HTTP/2 (upgrades cannot).
                let meshed = mtls && d.identity.is_some();
                let version = if meshed && !upgrading {
                    Version::Http2
                } else {
                    version
                };
                let endpoint = shared.endpoints.get(
                    d.connect,
                    version,
                    Direction::Outbound,
                    d.identity.as_deref(),
                );
                (endpoint, d)
            })
            .collect();
        let authority = request_authority(&req).map(str::to_owned);
        // Only a policy with failure accrual pays for the lookup.
        let available = accrual.map(|(policy, backend)| {
            let addrs: Vec<SocketAddr> = endpoints.iter().map(|(e, _)| e.addr).collect();
            accrued.available(backend, &addrs, policy, tokio::time::Instant::now())
        });
        if !endpoints.is_empty() && available.as_ref().is_some_and(|a| !a.contains(&true)) {
            return Err(ProxyError::Unavailable.into());
        }
        let size = endpoints.len();
        let outcome = |addr: SocketAddr, failed: bool, gateway: bool| {
            if let Some((policy, backend)) = accrual {
                let now = tokio::time::Instant::now();
                if failed || gateway {
                    accrued.failure(backend, addr, size, policy, gateway, now);
                } else {
                    accrued.success(backend, addr, policy, now);
                }
            }
        };
        // A consistent hash's key, once for every endpoint tried; a cookie made for
        // a client that had none is set on its response.
        let (hash, made_cookie) = match &policy.lb {
            Lb::Hash(on) => hash_key(on, &req, conn.as_ref()),
            _ => (None, None),
        };
        let turn = match (&policy.lb, &backend) {
            (Lb::RoundRobin, Some(key)) => shared.backends.turn(key),
            _ => 0,
        };
        // A failed connect sent nothing, so another endpoint may be tried: a pod that
        // went away before discovery said so costs a retry, not a failed request.
        let mut failed: Vec<SocketAddr> = Vec::new();
        let (endpoint, dst, connection, in_flight) = loop {
            let now = std::time::Instant::now();
            let candidates: Vec<_> = endpoints
                .iter()
                .enumerate()
                .filter(|(i, (e, _))| {
                    available.as_ref().is_none_or(|a| a.get(*i) == Some(&true))
                        && !failed.contains(&e.addr)
                })
                .map(|(_, e)| e)
                .collect();
            let picked = match (&policy.lb, hash) {
                (Lb::Hash(_), Some(key)) => {
                    let addrs: Vec<SocketAddr> = candidates.iter().map(|(e, _)| e.addr).collect();
                    by_hash(key, &addrs).and_then(|i| candidates.get(i).copied())
                }
                (Lb::RoundRobin, _) if !candidates.is_empty() => candidates
                    .get((turn + failed.len()) % candidates.len())
                    .copied(),
                // RANDOM, and a hash with no key in the request (as Envoy does).
                (Lb::Random | Lb::Hash(_), _) if !candidates.is_empty() => {
                    candidates.get(fastrand::usize(..candidates.len())).copied()
                }
                _ => p2c(&candidates, |(e, _)| e.load.load(now)).copied(),
            };
            let Some((endpoint, dst)) = picked else {
                return Err(ProxyError::NoEndpoints(authority.unwrap_or_default()).into());
            };
            let in_flight = endpoint.load.start();
            let connecting = endpoint.connection_with(policy.connections.max_requests);
            // The backend's own connect timeout, when it sets a tighter one.
            let connected = match policy.connections.connect_timeout {
                Some(t) => tokio::time::timeout(t, connecting)
                    .await
                    .unwrap_or(Err(ProxyError::ConnectTimeout(endpoint.addr))),
                None => connecting.await,
            };
            match connected {
                Ok(c) => break (endpoint, dst, c, in_flight),
                Err(e) => {
                    in_flight.fail();
                    outcome(endpoint.addr, true, true);
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
                    return Err(e.into());
                }
            }
        };
        // Counted once connected (and authenticated): the labels say who answers.
        let peer = match &endpoint.identity {
            Some(id) => Peer::secured(id),
            None => Peer::plaintext(mtls),
        }
        .with_dst(dst.labels.clone());
        if req.extensions().get::<Counted>().is_none()
            && let Some(labels) = req.extensions().get::<RequestLabels>()
        {
            shared
                .metrics
                .request(&shared.metrics.with_peer(labels, &peer));
        }
        if let Some(port) = dst.target_port {
            req.headers_mut()
                .insert(TARGET_PORT_HEADER, HeaderValue::from(port));
        }
        // The deadline passing while the endpoint is working on the request is the
        // endpoint's timeout.
        let deadline = req.extensions().get::<Deadline>().copied();
        let hold = conn.map(|c| c.hold);
        let sent = Deadline::run(
            deadline,
            upstream::send(endpoint, connection, req, authority.as_deref(), hold),
            || ProxyError::Timeout,
        )
        .await;
        let addr = endpoint.addr;
        // Istio's outlier detection counts 5xx; Linkerd's accrual gRPC failures too.
        let linear = accrual.is_some_and(|(p, _)| p.linear);
        match sent {
            Ok(mut rsp) => {
                in_flight.complete();
                let status = rsp.status();
                let gateway = matches!(status.as_u16(), 502..=504);
                let failure = status.is_server_error()
                    || (!linear && crate::http::grpc_status(rsp.headers()).is_some_and(|c| c != 0));
                let gateway_only = accrual.is_some_and(|(p, _)| p.gateway_only());
                outcome(addr, failure && !gateway_only, gateway);
                if let Some(cookie) = made_cookie {
                    rsp.headers_mut().append(http::header::SET_COOKIE, cookie);
                }
                rsp.extensions_mut().insert(peer);
                if shared.tracer.is_some() || shared.metrics.taps.active() {
                    rsp.extensions_mut()
                        .insert(crate::http::metered::Answered(addr));
                }
                Ok(rsp)
            }
            Err(error) => {
                // A client's own bad request says nothing about the endpoint, nor does
                // a deadline the client's route set, for the load estimate.
                if !matches!(error, ProxyError::BadRequest(_) | ProxyError::Timeout) {
                    in_flight.fail();
                }
                // Failure accrual counts a timeout (the endpoint was the one waited on:
                // a hung endpoint is what circuit breaking is for); counting gateway
                // errors only, what stands for a 502 or a 504.
                let gateway = matches!(error, ProxyError::Timeout | ProxyError::Upstream { .. });
                let failure = !matches!(error, ProxyError::BadRequest(_));
                if failure {
                    outcome(addr, true, gateway);
                }
                Err(AtPeer { peer, error }.into())
            }
        }
    }
}

impl Service<Request<BoxBody>> for Balance {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::body;
    use crate::client::{ClientConfig, Endpoints};
    use crate::metrics::Metrics;
    use crate::origins::Origins;
    use crate::resolve::Resolve;
    use std::time::Duration;
    use tower::ServiceExt;

    /// What the stacks share, without a destination service or mTLS.
    pub(crate) fn shared() -> Arc<Shared> {
        let metrics = Arc::new(Metrics::default());
        let origins = Arc::new(Origins::default());
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            max_pooled_per_endpoint: 4,
        };
        Arc::new(Shared {
            resolve: Resolve::from_system().expect("resolver"),
            endpoints: Endpoints::new(config, metrics.clone(), origins.clone(), None),
            metrics,
            own_addrs: vec![([127, 0, 0, 1], 4140).into()],
            identity: None,
            origins,
            backends: Default::default(),
            access_log: None,
            tracer: None,
        })
    }

    /// An HTTP/1 server on loopback that answers `/slow` after a second, else at once.
    async fn backend() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(body::empty()))
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        addr
    }

    fn request(shared: &Shared, to: SocketAddr, path: &str) -> Request<BoxBody> {
        let mut req = Request::get(path).body(body::empty()).expect("req");
        req.extensions_mut().insert(Concrete::Addr(to));
        let labels =
            shared
                .metrics
                .labels(Direction::Outbound, "", "default", &Peer::plaintext(false));
        req.extensions_mut().insert(labels);
        req
    }

    fn requests(shared: &Shared) -> usize {
        shared
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("request_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum()
    }

    #[tokio::test]
    async fn connected_requests_count_once_and_name_their_endpoint() {
        let shared = shared();
        let addr = backend().await;
        let mut balance = Balance::new(shared.clone());
        let rsp = balance
            .ready()
            .await
            .expect("ready")
            .call(request(&shared, addr, "/"))
            .await
            .expect("sent");
        assert_eq!(rsp.status(), 200);
        assert_eq!(
            rsp.extensions().get::<Peer>(),
            Some(&Peer::plaintext(false))
        );
        assert_eq!(requests(&shared), 1);

        // A retry of a counted request is not counted again.
        let mut again = request(&shared, addr, "/");
        again.extensions_mut().insert(Counted);
        balance
            .ready()
            .await
            .expect("ready")
            .call(again)
            .await
            .expect("sent");
        assert_eq!(requests(&shared), 1);

        // Nothing listening: nothing reached, nothing counted, nobody named.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        let e = balance
            .ready()
            .await
            .expect("ready")
            .call(request(&shared, gone, "/"))
            .await
            .expect_err("refused");
        assert!(
            matches!(crate::error::cause(&e), Some(ProxyError::Connect { .. })),
            "{e}"
        );
        assert!(e.downcast_ref::<AtPeer>().is_none());
        assert_eq!(requests(&shared), 1);

        // Looping back into the proxy is refused before connecting.
        let e = balance
            .ready()
            .await
            .expect("ready")
            .call(request(&shared, ([0, 0, 0, 0], 4140).into(), "/"))
            .await
            .expect_err("loop");
        assert!(
            matches!(crate::error::cause(&e), Some(ProxyError::Loop)),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_deadline_passing_at_the_endpoint_is_the_endpoints_timeout() {
        let shared = shared();
        let addr = backend().await;
        let mut req = request(&shared, addr, "/slow");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        req.extensions_mut().insert(Deadline(deadline));
        let e = Balance::new(shared.clone())
            .oneshot(req)
            .await
            .expect_err("late");
        let at = e.downcast_ref::<AtPeer>().expect("attributed");
        assert!(matches!(at.error, ProxyError::Timeout));
        assert_eq!(at.peer, Peer::plaintext(false));
        assert_eq!(requests(&shared), 1);
    }
}
