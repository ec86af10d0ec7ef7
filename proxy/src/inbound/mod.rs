//! The inbound stack: requests from peers (meshed or not) to the pod's application.
//!
//! Read top to bottom, [`stack`] is the path every inbound request takes; each layer
//! says why it sits where it does. The bottom, [`app`], sends the request to the
//! application on the port it was meant for.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use tower::ServiceBuilder;
use tower::util::BoxCloneService;

use crate::authz::{Client, PortPolicy};
use crate::http::dst_limit::{DstKey, DstLimitLayer};
use crate::http::hop_by_hop::HopByHopLayer;
use crate::http::metered::{MeteredLayer, PeerAt};
use crate::http::rescue::RescueLayer;
use crate::http::timeout::TimeoutLayer;
use crate::http::validate::ValidateLayer;
use crate::http::{ConnInfo, HttpService, Limits, Shared, target_port};
use crate::vocab::{Direction, Tls};

pub mod app;
pub mod authorize;

/// Builds the stack inbound requests flow through, top to bottom.
pub fn stack(shared: Arc<Shared>, limits: &Limits) -> HttpService {
    let mtls = shared.endpoints.mtls();
    let svc = ServiceBuilder::new()
        // Count every request and time it to its response, the ones the proxy answers
        // itself included; the client is known from the connection, so the request
        // counts at once, labelled with who sent it.
        .layer(
            MeteredLayer::new(
                shared.metrics.clone(),
                Direction::Inbound,
                mtls,
                PeerAt::Connection,
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
        // Who may ask what, before anything is spent on the request: the port's
        // routes (404), its JWTs (401), its authorizations (403), its rate limits
        // (429). Denials are still counted and timed above, as responses.
        .layer(authorize::AuthorizeLayer::new(shared.clone()))
        // One application port may hold only its share of the in-flight slots.
        .layer(DstLimitLayer::new(
            limits.in_flight_per_destination,
            AppPort { mtls },
        ))
        // The default response-headers timeout covers everything below.
        .layer(TimeoutLayer::new(limits.response_headers_timeout))
        // Shed load instead of queueing when too many requests are in flight: a fast
        // 503 lets the caller's balancer pick another replica.
        .load_shed()
        .concurrency_limit(limits.in_flight)
        .service(app::App::new(shared));
    BoxCloneService::new(svc)
}

/// The port of this pod a peer proxy named for a request (local mode, where no
/// iptables redirect tells): honoured only from a meshed peer, or from anyone when the
/// mesh runs without mTLS, and never on a redirected connection.
pub fn named_port<B>(conn: &ConnInfo, req: &Request<B>, mtls: bool) -> Option<u16> {
    (!conn.redirected && (conn.peer.tls == Tls::Secured || !mtls))
        .then(|| target_port(req.headers()))
        .flatten()
}

/// Inbound requests count against the application port they go to.
#[derive(Clone, Copy, Debug)]
pub struct AppPort {
    /// Whether this proxy speaks mTLS (then only meshed peers may name a port).
    pub mtls: bool,
}

impl DstKey for AppPort {
    fn key<B>(&self, req: &Request<B>) -> Box<str> {
        let conn = req.extensions().get::<ConnInfo>();
        let named = conn.and_then(|c| named_port(c, req, self.mtls));
        named
            .or(conn.and_then(|c| c.target).map(|t| t.port()))
            .map(|p| p.to_string())
            .unwrap_or_default()
            .into()
    }
}

/// The controller's policy for application port `port`, if it has one (else the
/// proxy's own settings apply and everyone is admitted).
pub async fn port_policy(shared: &Shared, port: u16) -> Option<Arc<PortPolicy>> {
    shared.resolve.discovery()?.inbound_policy(port).await
}

/// Decides a connection to an opaque port by the port's policy, counting the outcome;
/// `false`: it is to be closed at once.
pub async fn authorize_connection(shared: &Shared, conn: &ConnInfo, target: SocketAddr) -> bool {
    let Some(policy) = port_policy(shared, target.port()).await else {
        return true;
    };
    let client = Client {
        addr: conn.client.ip(),
        identity: conn.peer.id.as_deref(),
        dst: SocketAddr::new(conn.local.ip(), target.port()),
    };
    let (decision, audits) = policy.decide::<()>(&client, None);
    authorize::record(
        shared,
        &policy,
        &client,
        conn.peer.id.as_ref(),
        false,
        &decision,
        &audits,
    );
    if !decision.allowed() {
        tracing::info!(client = %conn.client, client_id = ?conn.peer.id, port = target.port(), by = %decision.label(), "connection denied");
    }
    decision.allowed()
}
