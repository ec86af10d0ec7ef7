//! HTTP as both directions serve it: what a connection tells its requests, what the
//! two stacks share, and the layers both use, one per file. The stacks themselves are
//! built in [`crate::inbound`] and [`crate::outbound`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tower::ServiceExt;
use tower::util::BoxCloneService;

use crate::body::{self, BoxBody};
use crate::client::Endpoints;
use crate::metrics::Metrics;
use crate::profile::Route;
use crate::resolve::Resolve;
use crate::vocab::{Class, Peer};

pub mod dst_limit;
pub mod headers;
pub mod hop_by_hop;
pub mod metered;
pub mod rescue;
pub mod timeout;
pub mod upstream;
pub mod validate;

pub use headers::{
    CLIENT_ID_HEADER, ORIG_PROTO_HEADER, TARGET_PORT_HEADER, grpc_status, is_grpc, is_upgrade,
    normalize_request, request_authority, strip_hop_by_hop, target_port,
};
pub use validate::invalid;

/// A boxed HTTP service that never fails: errors have become responses.
pub type HttpService = BoxCloneService<Request<BoxBody>, Response<BoxBody>, Infallible>;
/// A boxed, sendable future, as the layers return them.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

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
    /// Per-backend state of backend policies (round-robin turns, pool counts).
    pub backends: Arc<crate::backend::Backends>,
    /// The access log, when one is kept.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The tracer, when spans are exported.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
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

/// Whether a response is a failure: the route's response classes decide first; a
/// response none covers is a failure when 5xx, or by a non-zero `grpc-status`.
pub fn classify(route: Option<&Route>, status: u16, grpc_status: Option<u32>) -> Class {
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
}
