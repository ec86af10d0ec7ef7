//! The outbound stack: requests from the pod's application to services.
//!
//! Read top to bottom, [`stack`] is the path every outbound request takes, in three
//! levels:
//!
//! * **logical** — the service the application asked for: its route ([`logical`]),
//!   metrics, validation, the route's filters and mirrors ([`filter`]), limits, the
//!   deadline, retries, and the split that picks a backend for each attempt
//!   ([`split`]).
//! * **concrete** — one backend service: its endpoints and the balancer that picks one
//!   and connects, trying another when a connect fails ([`concrete`]). Connection
//!   pool limits and outlier detection belong here.
//! * **endpoint** — one endpoint: the connection (mTLS when meshed), the protocol it
//!   speaks, the request sent ([`crate::http::upstream`], [`crate::client`]).

use std::sync::Arc;

use http::Request;
use tower::ServiceBuilder;
use tower::util::BoxCloneService;

use crate::http::dst_limit::{DstKey, DstLimitLayer};
use crate::http::hop_by_hop::HopByHopLayer;
use crate::http::metered::{MeteredLayer, PeerAt};
use crate::http::rescue::RescueLayer;
use crate::http::timeout::TimeoutLayer;
use crate::http::validate::ValidateLayer;
use crate::http::{ConnInfo, HttpService, Limits, Shared, request_authority};
use crate::vocab::Direction;

pub mod concrete;
pub mod filter;
pub mod logical;
pub mod retry;
pub mod split;

/// Builds the stack outbound requests flow through, top to bottom.
pub fn stack(shared: Arc<Shared>, limits: &Limits) -> HttpService {
    let mtls = shared.endpoints.mtls();
    let svc = ServiceBuilder::new()
        // Logical: find the service's profile and the request's route first: metrics
        // are labelled by route, and the route decides the timeout and retries. A path
        // too long to be served is not matched at all (matching costs grow with it).
        .layer(logical::LogicalLayer::new(
            shared.clone(),
            limits.max_path_bytes,
        ))
        // Count every request and time it to its response, the ones the proxy answers
        // itself included. The server is known only once an endpoint is connected:
        // the concrete level counts the request then and names the peer upward.
        .layer(
            MeteredLayer::new(
                shared.metrics.clone(),
                Direction::Outbound,
                mtls,
                PeerAt::Endpoint,
            )
            .logging(shared.access_log.clone())
            .tracing(shared.tracer.clone())
            .tapping(shared.metrics.taps.clone())
            .identified(shared.identity.as_ref().map(|i| i.name())),
        )
        // The one place errors become responses with `mesh-proxy-error`; every layer
        // below returns errors.
        .layer(RescueLayer)
        // Refuse what hyper's parser lets through but no server should act on, before
        // anything is sent on.
        .layer(ValidateLayer::new(limits.max_path_bytes))
        // Hop-by-hop headers go before any header is added below.
        .layer(HopByHopLayer)
        // The route's filters: header changes, redirects, rewrites, mirrors; and 404
        // for requests no route of a Gateway API policy matches.
        .layer(filter::FilterLayer)
        // One destination may hold only its share of the in-flight slots: a hung
        // backend gets 503s of its own instead of starving every other destination.
        .layer(DstLimitLayer::new(
            limits.in_flight_per_destination,
            Authority,
        ))
        // The route's timeout (else the default) covers everything below, retries
        // included; its deadline goes down with the request.
        .layer(TimeoutLayer::new(limits.response_headers_timeout))
        // Retry failures of retryable routes while the route's budget allows.
        .layer(retry::RetryLayer::new(
            shared.metrics.clone(),
            shared.backends.clone(),
        ))
        // Shed load instead of queueing when too many requests are in flight: a fast
        // 503 lets the caller's balancer pick another replica.
        .load_shed()
        .concurrency_limit(limits.in_flight)
        // Each attempt picks its backend: a split shifts retries too.
        .layer(split::SplitLayer)
        // Concrete: the backend's endpoints, balanced; the endpoint level below it.
        .service(concrete::Balance::new(shared));
    BoxCloneService::new(svc)
}

/// Outbound requests count against the authority they name (else their original
/// destination), case-insensitively.
#[derive(Clone, Copy, Debug)]
pub struct Authority;

impl DstKey for Authority {
    fn key<B>(&self, req: &Request<B>) -> Box<str> {
        match request_authority(req) {
            Some(a) => a.to_ascii_lowercase().into(),
            None => req
                .extensions()
                .get::<ConnInfo>()
                .and_then(|c| c.target)
                .map(|t| t.to_string())
                .unwrap_or_default()
                .into(),
        }
    }
}

/// The port of a `Host` without one: the original destination's on a redirected
/// connection, else 80.
pub fn default_port(conn: Option<&ConnInfo>) -> u16 {
    conn.filter(|c| c.redirected)
        .and_then(|c| c.target)
        .map_or(80, |t| t.port())
}
