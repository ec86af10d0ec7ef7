//! Golden metrics for every request: counted once, its response counted and timed
//! when its body ends, labelled with its route and its peer.
//!
//! Where the peer is known decides where the request is counted. Inbound the peer is
//! the client, known from the connection: the request counts as it comes in.
//! Outbound it is the server, known only once an endpoint is connected: the endpoint
//! level counts the request then ([`crate::outbound::concrete`]) and marks the
//! response (or error) with the [`Peer`]; a request answered before it reached any
//! endpoint is counted here with its response. Labels flow down as a
//! [`RequestLabels`] extension, the peer comes back up with the response: nothing is
//! written back into a request.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tower::{Layer, Service};

use super::{BoxFuture, ConnInfo, classify, grpc_status, request_authority};
use crate::access_log::AccessLog;
use crate::body::{self, BoxBody};
use crate::error::BoxError;
use crate::metrics::{Metrics, RequestLabels};
use crate::profile::{DEFAULT_ROUTE, Route, RouteInfo};
use crate::tap::{Call, Taps};
use crate::trace::{Span, Traced, Tracer, Value};
use crate::vocab::{Class, Direction, Peer};

/// The endpoint that answered an outbound request (a response extension, set when
/// tracing is on), for its span.
#[derive(Clone, Copy, Debug)]
pub struct Answered(pub std::net::SocketAddr);

/// How many attempts an outbound request took, when it took more than one (a
/// response extension the retry layer sets), for its span.
#[derive(Clone, Copy, Debug)]
pub struct Attempts(pub u32);

/// Where a direction learns a request's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAt {
    /// From the connection the request came in on (inbound: the client).
    Connection,
    /// From the endpoint that answers (outbound: the server), named by the response.
    Endpoint,
}

/// Makes [`Metered`] services.
#[derive(Clone, Debug)]
pub struct MeteredLayer {
    metrics: Arc<Metrics>,
    direction: Direction,
    mtls: bool,
    peer_at: PeerAt,
    access_log: Option<Arc<AccessLog>>,
    tracer: Option<Arc<Tracer>>,
    taps: Option<Arc<Taps>>,
    /// This proxy's identity: the client outbound, the server inbound.
    identity: Option<Arc<str>>,
}

impl MeteredLayer {
    /// Records `direction`'s requests in `metrics`; `mtls` tells whether this proxy
    /// has an identity (plaintext peers are then `no_identity`).
    pub fn new(metrics: Arc<Metrics>, direction: Direction, mtls: bool, peer_at: PeerAt) -> Self {
        Self {
            metrics,
            direction,
            mtls,
            peer_at,
            access_log: None,
            tracer: None,
            taps: None,
            identity: None,
        }
    }

    /// Names this proxy's identity in what it logs, taps and traces.
    pub fn identified(mut self, identity: Option<&str>) -> Self {
        self.identity = identity.map(Arc::from);
        self
    }

    /// Hands each finished request to whoever taps `taps`.
    pub fn tapping(mut self, taps: Arc<Taps>) -> Self {
        self.taps = Some(taps);
        self
    }

    /// Joins each request's trace and records its span with `tracer`, when there is
    /// one.
    pub fn tracing(mut self, tracer: Option<Arc<Tracer>>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Writes a line per request to `log`, when there is one.
    pub fn logging(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            layer: self.clone(),
        }
    }
}

/// Counts and times every request of a direction, including the ones the proxy
/// answers itself, so that clients and metrics agree.
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    layer: MeteredLayer,
}

impl<S, B> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Response<BoxBody>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let MeteredLayer {
            metrics,
            direction,
            mtls,
            peer_at,
            access_log,
            tracer,
            taps,
            identity,
        } = &self.layer;
        // Only a traced request changes its headers, and only a logged or recorded one
        // pays for its method, authority and path.
        let traced = tracer.as_ref().map(|t| (t, t.start(req.headers_mut())));
        let trace_id = match &traced {
            Some((_, t)) => Some(t.out.trace_id),
            None if access_log.is_some() => crate::trace::context::extract(req.headers())
                .and_then(|c| c.ids)
                .map(|(t, _)| t),
            None => None,
        };
        let recorded = traced.filter(|(_, t)| t.out.sampled);
        // Nobody tapping costs one load.
        let tapped = taps.as_ref().filter(|t| t.active()).cloned();
        let described =
            (access_log.is_some() || recorded.is_some() || tapped.is_some()).then(|| {
                Box::new(Described {
                    log: access_log.clone(),
                    span: recorded.map(|(tracer, t)| (tracer.clone(), t)),
                    client_addr: tapped
                        .as_ref()
                        .and_then(|_| req.extensions().get::<ConnInfo>())
                        .map(|c| c.client),
                    tap: tapped,
                    identity: identity.clone(),
                    trace_id,
                    at: std::time::SystemTime::now(),
                    method: req.method().clone(),
                    authority: request_authority(&req).unwrap_or("").into(),
                    path: req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .into(),
                    outbound: (None, None),
                })
            });
        let route = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.clone());
        let route_name = route.as_ref().map_or(DEFAULT_ROUTE, |r| &r.name);
        let peer = match (peer_at, req.extensions().get::<ConnInfo>()) {
            (PeerAt::Connection, Some(conn)) => conn.peer.clone(),
            _ => Peer::plaintext(*mtls),
        };
        let labels = metrics.labels(
            *direction,
            request_authority(&req).unwrap_or(""),
            route_name,
            &peer,
        );
        if *peer_at == PeerAt::Connection {
            metrics.request(&labels);
        }
        req.extensions_mut().insert(labels.clone());
        let (metrics, peer_at) = (metrics.clone(), *peer_at);
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let rsp = fut.await?;
            let labels = match (peer_at, rsp.extensions().get::<Peer>()) {
                (PeerAt::Connection, _) => labels,
                // Counted by the endpoint that answered, or that the proxy answered
                // for (a timeout while waiting on it).
                (PeerAt::Endpoint, Some(peer)) => metrics.with_peer(&labels, peer),
                // Answered before reaching any endpoint: counted now.
                (PeerAt::Endpoint, None) => {
                    metrics.request(&labels);
                    labels
                }
            };
            let latency = start.elapsed();
            let status = rsp.status().as_u16();
            let mut described = described;
            if let Some(d) = described
                .as_mut()
                .filter(|d| d.span.is_some() || d.tap.is_some())
            {
                d.outbound = (
                    rsp.extensions().get::<Answered>().map(|a| a.0),
                    rsp.extensions().get::<Attempts>().map(|a| a.0),
                );
            }
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
                        described,
                    }),
                    grpc_status,
                    bytes: 0,
                };
                body::boxed(metered)
            }))
        })
    }
}

#[derive(Debug)]
struct Done {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    status: u16,
    latency: Duration,
    route: Option<Arc<Route>>,
    described: Option<Box<Described>>,
}

/// What the access log and the request's span say of it beyond its labels.
#[derive(Debug)]
struct Described {
    log: Option<Arc<AccessLog>>,
    /// The tracer and the request's place in its trace, when it is recorded.
    span: Option<(Arc<Tracer>, Traced)>,
    /// The tap, when someone watches.
    tap: Option<Arc<Taps>>,
    /// The client's address, for the tap.
    client_addr: Option<std::net::SocketAddr>,
    /// This proxy's identity.
    identity: Option<Arc<str>>,
    trace_id: Option<[u8; 16]>,
    at: std::time::SystemTime,
    method: http::Method,
    authority: Box<str>,
    path: Box<str>,
    /// Outbound: the endpoint that answered, and the attempts it took.
    outbound: (Option<std::net::SocketAddr>, Option<u32>),
}

impl Done {
    fn record(self, grpc_status: Option<u32>, failed: bool, bytes: u64) {
        let class = if failed {
            Class::Failure
        } else {
            classify(self.route.as_deref(), self.status, grpc_status)
        };
        self.metrics
            .response(&self.labels, self.status, class, self.latency);
        let Some(d) = self.described else { return };
        let end = std::time::SystemTime::now();
        // To the response's end, as Envoy's duration is.
        let latency = end.duration_since(d.at).unwrap_or(self.latency);
        let trace_id = d.trace_id.map(|t| crate::trace::context::hex(&t));
        let labels = &self.labels;
        let (client_id, server_id) = match labels.direction {
            Direction::Inbound => (labels.peer.id.as_deref(), d.identity.as_deref()),
            Direction::Outbound => (d.identity.as_deref(), labels.peer.id.as_deref()),
        };
        // One description of the call, for the tap, the log and the span.
        let call = Call {
            at: d.at,
            direction: labels.direction,
            method: d.method.as_str(),
            authority: &d.authority,
            path: &d.path,
            status: self.status,
            grpc_status,
            latency,
            bytes,
            route: &labels.route,
            client_id,
            server_id,
            tls: labels.peer.tls.as_str(),
            client_addr: d.client_addr,
            endpoint: d.outbound.0,
            dst_workload: labels.peer.dst.as_ref().map(|d| &*d.workload),
            trace_id: trace_id.as_deref(),
        };
        if let Some(taps) = &d.tap {
            taps.publish(&call);
        }
        if let Some(log) = &d.log {
            log.log(&call);
        }
        if let Some((tracer, traced)) = &d.span {
            let mut attributes = vec![
                ("http.request.method", Value::Str(call.method.into())),
                ("server.address", Value::Str(call.authority.into())),
                ("url.path", Value::Str(call.path.into())),
                ("http.response.status_code", Value::Int(self.status.into())),
                (
                    "mesh.direction",
                    Value::Str(labels.direction.as_str().into()),
                ),
                ("mesh.route", Value::Str(labels.route.to_string())),
                ("mesh.tls", Value::Str(labels.peer.tls.as_str().into())),
                (
                    "mesh.classification",
                    Value::Str(
                        if class == Class::Failure {
                            "failure"
                        } else {
                            "success"
                        }
                        .into(),
                    ),
                ),
            ];
            if let Some(code) = grpc_status {
                attributes.push(("rpc.grpc.status_code", Value::Int(code.into())));
            }
            if let Some(id) = call.client_id {
                attributes.push(("mesh.client.id", Value::Str(id.into())));
            }
            if let Some(id) = call.server_id {
                attributes.push(("mesh.server.id", Value::Str(id.into())));
            }
            if let Some(dst) = &labels.peer.dst {
                attributes.push(("mesh.dst.workload", Value::Str(dst.workload.to_string())));
                attributes.push(("mesh.dst.namespace", Value::Str(dst.namespace.to_string())));
            }
            if let Some(addr) = call.endpoint {
                attributes.push(("mesh.endpoint", Value::Str(addr.to_string())));
            }
            if labels.direction == Direction::Outbound {
                let retries = d.outbound.1.map_or(0, |n| n.saturating_sub(1));
                attributes.push(("mesh.retries", Value::Int(retries.into())));
            }
            if let Some(id) = &traced.request_id {
                attributes.push(("mesh.request_id", Value::Str(id.to_string())));
            }
            let name = if labels.route.as_ref() == DEFAULT_ROUTE {
                d.method.as_str().to_string()
            } else {
                format!("{} {}", d.method, labels.route)
            };
            tracer.finish(Span {
                trace_id: traced.out.trace_id,
                span_id: traced.out.span_id,
                parent: traced.out.parent,
                direction: labels.direction,
                name,
                start: traced.start,
                end,
                attributes,
                error: class == Class::Failure,
                trace_state: traced.trace_state.as_deref().unwrap_or_default().into(),
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the response once its stream ends.
    struct MeteredBody {
        #[pin]
        inner: BoxBody,
        done: Option<Done>,
        grpc_status: Option<u32>,
        bytes: u64,
    }

    impl PinnedDrop for MeteredBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                // Dropped before its end: fine if nothing was left to send (HEAD, 204),
                // a failure if the stream was cut short.
                let failed = !this.inner.is_end_stream();
                done.record(*this.grpc_status, failed, *this.bytes);
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
                if let Some(data) = f.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if let Some(t) = f.trailers_ref() {
                    *this.grpc_status = grpc_status(t).or(*this.grpc_status);
                }
            }
            Some(Err(_)) => {
                if let Some(done) = this.done.take() {
                    done.record(*this.grpc_status, true, *this.bytes);
                }
            }
            None => {
                if let Some(done) = this.done.take() {
                    done.record(*this.grpc_status, false, *this.bytes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::DstLabels;
    use tower::ServiceExt;

    fn conn(peer: Peer) -> ConnInfo {
        ConnInfo {
            client: ([127, 0, 0, 1], 1).into(),
            target: None,
            redirected: false,
            local: ([127, 0, 0, 1], 4143).into(),
            peer,
            hold: super::super::Hold::new(()),
        }
    }

    fn req(conn: ConnInfo) -> Request<()> {
        let mut req = Request::get("/")
            .header("host", "web:80")
            .body(())
            .expect("req");
        req.extensions_mut().insert(conn);
        req
    }

    /// The sum of the samples of `series` whose line contains `needle`.
    fn count(metrics: &Arc<Metrics>, series: &str, needle: &str) -> u64 {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(series) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    async fn read(rsp: Response<BoxBody>) {
        use http_body_util::BodyExt;
        rsp.into_body().collect().await.expect("body");
    }

    fn rescued(
        mock: tower_test::mock::Mock<Request<()>, Response<BoxBody>>,
    ) -> crate::http::rescue::Rescue<tower_test::mock::Mock<Request<()>, Response<BoxBody>>> {
        crate::http::rescue::RescueLayer.layer(mock)
    }

    #[tokio::test]
    async fn inbound_requests_count_at_once_with_their_client() {
        let metrics = Arc::new(Metrics::default());
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(1);
        let layer = MeteredLayer::new(
            metrics.clone(),
            Direction::Inbound,
            true,
            PeerAt::Connection,
        );
        let mut svc = layer.layer(rescued(mock));
        let client = Peer::secured("load.ns.serviceaccount.identity.mesh.cluster.local");
        let call = svc
            .ready()
            .await
            .expect("ready")
            .call(req(conn(client.clone())));
        let (sent, send) = handle.next_request().await.expect("request");
        // Counted while in flight, and the labels go down with the request.
        let id = r#"client_id="load.ns.serviceaccount.identity.mesh.cluster.local""#;
        assert_eq!(count(&metrics, "request_total{", id), 1);
        assert_eq!(
            sent.extensions().get::<RequestLabels>().map(|l| &l.peer),
            Some(&client)
        );
        send.send_response(
            Response::builder()
                .status(503)
                .body(body::empty())
                .expect("rsp"),
        );
        read(call.await.expect("rsp")).await;
        assert_eq!(count(&metrics, "request_total{", id), 1);
        assert_eq!(
            count(&metrics, "response_total{", r#"classification="failure""#),
            1
        );
    }

    #[tokio::test]
    async fn outbound_requests_count_where_the_endpoint_is_known() {
        let metrics = Arc::new(Metrics::default());
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(2);
        let layer = MeteredLayer::new(metrics.clone(), Direction::Outbound, true, PeerAt::Endpoint);
        let mut svc = layer.layer(rescued(mock));
        let plain = Peer::plaintext(true);

        // Reached an endpoint: the level below counted it and names the peer.
        let call = svc
            .ready()
            .await
            .expect("ready")
            .call(req(conn(plain.clone())));
        let (sent, send) = handle.next_request().await.expect("request");
        assert_eq!(count(&metrics, "request_total{", ""), 0, "not counted here");
        let labels = sent
            .extensions()
            .get::<RequestLabels>()
            .cloned()
            .expect("labels");
        let server = Peer::secured("web.ns.serviceaccount.identity.mesh.cluster.local").with_dst(
            Some(Arc::new(DstLabels {
                namespace: "ns".into(),
                workload: "web".into(),
                service: "web".into(),
            })),
        );
        metrics.request(&metrics.with_peer(&labels, &server));
        let mut rsp = Response::new(body::empty());
        rsp.extensions_mut().insert(server.clone());
        send.send_response(rsp);
        read(call.await.expect("rsp")).await;

        // Answered before any endpoint: counted here, once.
        let call = svc.ready().await.expect("ready").call(req(conn(plain)));
        let (_, send) = handle.next_request().await.expect("request");
        send.send_error(crate::error::ProxyError::NoAuthority);
        read(call.await.expect("rsp")).await;

        let web = r#"dst_deployment="web""#;
        assert_eq!(count(&metrics, "request_total{", web), 1);
        assert_eq!(count(&metrics, "response_total{", web), 1);
        let plain = r#"tls="no_identity""#;
        assert_eq!(count(&metrics, "request_total{", plain), 1);
        assert_eq!(
            count(&metrics, "response_total{", r#"status_code="400""#),
            1
        );
    }
}
