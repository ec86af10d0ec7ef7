//! Retries of a retryable route's failures, while the route's budget allows: the
//! request body is kept (up to a size) so that it can be sent again, each attempt
//! goes through the split and the balancer anew, and every attempt is counted
//! (`actual` metrics) besides the request itself.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Frame;
use tower::util::BoxCloneService;
use tower::{Layer, Service};

use super::concrete::Counted;
use crate::body::{self, BoxBody};
use crate::error::{AtPeer, BoxError, ProxyError};
use crate::http::timeout::Deadline;
use crate::http::{BoxFuture, classify, grpc_status, is_upgrade};
use crate::metrics::{Metrics, RequestLabels, Skipped};
use crate::profile::RouteInfo;
use crate::vocab::{Class, Peer};

/// Request bodies up to this size are kept so that a request can be sent again.
const MAX_REPLAY_BYTES: usize = 64 * 1024;

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
    body::full(b)
}

/// The pause before retry `n` (1 for the first): a random share of
/// `base × 2^(n-1)`, at most `max` (full jitter).
fn backoff(base: std::time::Duration, max: std::time::Duration, n: usize) -> std::time::Duration {
    let ceiling = base
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    std::time::Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The services below the retry layer, type-erased so that the retry loop's future is
/// plainly `Send`.
type Attempts = BoxCloneService<Request<BoxBody>, Response<BoxBody>, BoxError>;

/// Makes [`Retry`] services.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    metrics: Arc<Metrics>,
    backends: Arc<crate::backend::Backends>,
}

impl RetryLayer {
    /// Counts attempts and skipped retries in `metrics`; bounds retries in flight per
    /// service (a DestinationRule's `maxRetries`) in `backends`.
    pub fn new(metrics: Arc<Metrics>, backends: Arc<crate::backend::Backends>) -> Self {
        Self { metrics, backends }
    }
}

impl<S> Layer<S> for RetryLayer
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Retry;

    fn layer(&self, inner: S) -> Retry {
        Retry {
            inner: BoxCloneService::new(inner),
            metrics: self.metrics.clone(),
            backends: self.backends.clone(),
        }
    }
}

/// Sends a request of a retryable route again when it fails.
#[derive(Clone)]
pub struct Retry {
    inner: Attempts,
    metrics: Arc<Metrics>,
    backends: Arc<crate::backend::Backends>,
}

/// The endpoint an attempt's outcome names: it reached that endpoint, which counted it.
fn reached(result: &Result<Response<BoxBody>, BoxError>) -> Option<Peer> {
    match result {
        Ok(rsp) => rsp.extensions().get::<Peer>().cloned(),
        Err(e) => e.downcast_ref::<AtPeer>().map(|a| a.peer.clone()),
    }
}

/// A response that took more than one attempt says how many (for its span).
fn attempted(
    result: Result<Response<BoxBody>, BoxError>,
    attempt: usize,
) -> Result<Response<BoxBody>, BoxError> {
    match result {
        Ok(mut rsp) if attempt > 1 => {
            let n = u32::try_from(attempt).unwrap_or(u32::MAX);
            rsp.extensions_mut()
                .insert(crate::http::metered::Attempts(n));
            Ok(rsp)
        }
        other => other,
    }
}

/// The outcome of the last attempt, named after the endpoint an earlier one reached
/// when it reached none itself: the request was counted there.
fn attribute(
    result: Result<Response<BoxBody>, BoxError>,
    peer: Option<Peer>,
) -> Result<Response<BoxBody>, BoxError> {
    let Some(peer) = peer else { return result };
    match result {
        Ok(mut rsp) => {
            if rsp.extensions().get::<Peer>().is_none() {
                rsp.extensions_mut().insert(peer);
            }
            Ok(rsp)
        }
        Err(e) if e.is::<AtPeer>() => Err(e),
        // A retry shed for load: still the counted endpoint's request.
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => Err(AtPeer {
            peer,
            error: ProxyError::Overloaded,
        }
        .into()),
        Err(e) => match e.downcast::<ProxyError>() {
            Ok(error) => Err(AtPeer {
                peer,
                error: *error,
            }
            .into()),
            Err(e) => Err(e),
        },
    }
}

/// The deadline passing between endpoints (resolving, connecting, waiting for a slot):
/// a timeout of the endpoint an earlier attempt reached, if one did.
fn timed_out(counted: &Option<Peer>) -> BoxError {
    match counted {
        Some(peer) => AtPeer {
            peer: peer.clone(),
            error: ProxyError::Timeout,
        }
        .into(),
        None => ProxyError::Timeout.into(),
    }
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
        let budget = route.as_ref().and_then(|r| r.budget.clone());
        let on = route.as_ref().and_then(|r| r.retry.clone());
        let (Some(route), Some(budget), Some(on)) = (route, budget, on) else {
            // Already a boxed future: no second box.
            return self.inner.call(req);
        };
        if is_upgrade(req.headers()) {
            return self.inner.call(req);
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        // The service's bound on retries in flight, if its policy sets one.
        let bound = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.profile.policy.connections.max_retries)
            .zip(
                req.extensions()
                    .get::<super::logical::Logical>()
                    .map(|l| l.0.to_string()),
            );
        let backends = self.backends.clone();
        let labels = req.extensions().get::<RequestLabels>().cloned();
        let deadline = req.extensions().get::<Deadline>().copied();
        Box::pin(async move {
            tower::retry::budget::Budget::deposit(&*budget);
            let (mut parts, body) = req.into_parts();
            let body = match buffer(body).await {
                Ok(Replay::Buffered(bytes)) => bytes,
                Ok(Replay::Once(body)) => {
                    // Sent once, but still within its attempt's timeout.
                    let mut req = rebuild(&parts, body);
                    let tighter =
                        Deadline::tighten(&mut req, on.attempt_timeout.map(Deadline::after));
                    return Deadline::run(tighter, inner.call(req), || ProxyError::Timeout.into())
                        .await;
                }
                Err(e) => return Err(e),
            };
            // The endpoint the latest attempt reached, which counted the request.
            let mut counted: Option<Peer> = None;
            let mut attempt = 1;
            // The retry in flight, within the service's bound.
            let mut _retrying = None;
            loop {
                // Each attempt within its own timeout, if the route sets one, inside the
                // request's deadline.
                let attempt_at = on.attempt_timeout.map(Deadline::after);
                let mut req = rebuild(&parts, full(body.clone()));
                let tighter = Deadline::tighten(&mut req, attempt_at);
                let call = inner.call(req);
                let result = Deadline::run(tighter, call, || timed_out(&counted)).await;
                // The attempt's own timeout passed (not the request's, nor a shorter
                // per-backend timeout, which is not retried): worth retrying.
                let now = tokio::time::Instant::now();
                let attempt_timed_out = attempt_at.is_some_and(|a| now >= a.0)
                    && deadline.is_none_or(|d| now < d.0)
                    && matches!(&result, Err(e) if matches!(crate::error::cause(e), Some(ProxyError::Timeout)));
                let peer = reached(&result);
                // Failures worth retrying: failure responses, and endpoints that could
                // not be reached at all (the request never got to the app).
                let failed = match &result {
                    Ok(rsp) => {
                        let status = rsp.status().as_u16();
                        let grpc = grpc_status(rsp.headers());
                        let class = classify(Some(&route), status, grpc);
                        // Every attempt, the last included: actual minus effective
                        // (Metered's count) is the number of retries.
                        if let Some(labels) = &labels {
                            let labels = match &peer {
                                Some(peer) => metrics.with_peer(labels, peer),
                                None => labels.clone(),
                            };
                            metrics.attempt(&labels, status, class);
                        }
                        (on.failure_class && class == Class::Failure)
                            || on
                                .statuses
                                .iter()
                                .any(|(lo, hi)| (*lo..=*hi).contains(&status))
                            || grpc.is_some_and(|code| on.grpc_codes.contains(&code))
                    }
                    Err(_) if attempt_timed_out => true,
                    Err(e) => match crate::error::cause(e) {
                        Some(
                            ProxyError::Connect { .. }
                            | ProxyError::ConnectTimeout(_)
                            | ProxyError::NoEndpoints(_),
                        ) => on.connect_failure,
                        // The endpoint dropped the request before answering (a
                        // reset or refused stream, a closed connection).
                        Some(ProxyError::Upstream { .. }) => on.reset,
                        _ => false,
                    },
                };
                if peer.is_some() {
                    counted = peer;
                    parts.extensions.insert(Counted);
                }
                if !failed || attempt >= on.max_attempts {
                    return attribute(attempted(result, attempt), counted);
                }
                let within = match &bound {
                    Some((max, service)) => {
                        // The retry just finished is no longer in flight: release
                        // its slot before taking the next one.
                        _retrying = None;
                        _retrying = backends.retry(service, *max);
                        _retrying.is_some()
                    }
                    None => true,
                };
                let skipped = if !within {
                    Some(Skipped::MaxRetries)
                } else if !tower::retry::budget::Budget::withdraw(&*budget) {
                    Some(Skipped::Budget)
                } else {
                    None
                };
                if let Some(why) = skipped {
                    if let Some(labels) = &labels {
                        let last = match &counted {
                            Some(peer) => metrics.with_peer(labels, peer),
                            None => labels.clone(),
                        };
                        metrics.retry_skipped(&last, why);
                    }
                    return attribute(attempted(result, attempt), counted);
                }
                if let Some((base, max)) = on.backoff {
                    let pause = backoff(base, max, attempt);
                    let slept = async {
                        tokio::time::sleep(pause).await;
                        Ok::<(), BoxError>(())
                    };
                    if let Err(e) = Deadline::run(deadline, slept, || timed_out(&counted)).await {
                        return attribute(Err(e), counted);
                    }
                }
                attempt += 1;
                let ready = async { tower::ServiceExt::ready(&mut inner).await.map(|_| ()) };
                if let Err(e) = Deadline::run(deadline, ready, || timed_out(&counted)).await {
                    return attribute(Err(e), counted);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use crate::vocab::Direction;
    use mesh_api::policy as pb;
    use tower::ServiceExt;

    #[test]
    fn backoff_grows_with_jitter_up_to_its_ceiling() {
        let (base, max) = (
            std::time::Duration::from_millis(25),
            std::time::Duration::from_millis(250),
        );
        for n in 1..12 {
            let ceiling = (base * (1 << (n - 1).min(16))).min(max);
            for _ in 0..50 {
                assert!(backoff(base, max, n) <= ceiling);
            }
        }
        let late: Vec<_> = (0..200).map(|_| backoff(base, max, 8)).collect();
        assert!(
            late.iter().any(|d| *d > base * 2),
            "jittered over the whole range"
        );
    }

    fn retryable() -> RouteInfo {
        let profile = Profile::compile(&pb::OutboundPolicy {
            routes: vec![pb::HttpRoute {
                name: "flaky".into(),
                matches: vec![pb::RouteMatch {
                    method: "GET".into(),
                    ..Default::default()
                }],
                retry: Some(pb::Retry {
                    conditions: Some(pb::RetryConditions {
                        failure_class: true,
                        connect_failure: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("supported");
        let route = profile.route(&http::Request::new(()));
        RouteInfo {
            profile: Arc::new(profile),
            route,
        }
    }

    fn status(code: u16, peer: Option<&Peer>) -> Response<BoxBody> {
        let mut rsp = Response::builder()
            .status(code)
            .body(body::empty())
            .expect("rsp");
        if let Some(p) = peer {
            rsp.extensions_mut().insert(p.clone());
        }
        rsp
    }

    fn service() -> (
        Retry,
        tower_test::mock::Handle<Request<BoxBody>, Response<BoxBody>>,
        Arc<Metrics>,
    ) {
        let (mock, handle) = tower_test::mock::pair::<Request<BoxBody>, Response<BoxBody>>();
        let metrics = Arc::new(Metrics::default());
        let mock = tower::ServiceBuilder::new()
            .map_err(|e: BoxError| e)
            .service(mock);
        (
            RetryLayer::new(metrics.clone(), Default::default()).layer(mock),
            handle,
            metrics,
        )
    }

    fn request(metrics: &Metrics, route: Option<RouteInfo>) -> Request<BoxBody> {
        let mut req = Request::get("/").body(full("hi".into())).expect("req");
        let labels = metrics.labels(
            Direction::Outbound,
            "web:80",
            "flaky",
            &Peer::plaintext(true),
        );
        req.extensions_mut().insert(labels);
        if let Some(r) = route {
            req.extensions_mut().insert(r);
        }
        req
    }

    type Call = tokio::task::JoinHandle<Result<Response<BoxBody>, BoxError>>;

    /// One request through the retry layer (on `route`, if any), with
    /// `attempts` attempts allowed through to the mock below.
    async fn calling(
        route: Option<RouteInfo>,
        attempts: usize,
    ) -> (
        Call,
        tower_test::mock::Handle<Request<BoxBody>, Response<BoxBody>>,
        Arc<Metrics>,
    ) {
        let (mut service, mut handle, metrics) = service();
        handle.allow(attempts as u64);
        let req = request(&metrics, route);
        let call = tokio::spawn(service.ready().await.expect("ready").call(req));
        (call, handle, metrics)
    }

    #[tokio::test]
    async fn failures_are_sent_again_and_counted_once() {
        let (call, mut handle, metrics) = calling(Some(retryable()), 5).await;
        let web = Peer::secured("web.ns.serviceaccount.identity.mesh.cluster.local");
        let (first, send) = handle.next_request().await.expect("first");
        assert!(first.extensions().get::<Counted>().is_none());
        send.send_response(status(500, Some(&web)));
        // The second attempt has the same body, and is known to be counted already.
        let (second, send) = handle.next_request().await.expect("second");
        assert!(second.extensions().get::<Counted>().is_some());
        use http_body_util::BodyExt;
        let bytes = second.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"hi");
        // No endpoint this time: the answer is still the counted endpoint's.
        send.send_error(ProxyError::NoEndpoints("web:80".into()));
        let (_, send) = handle.next_request().await.expect("third");
        send.send_error(ProxyError::NoEndpoints("web:80".into()));
        let e = call.await.expect("join").expect_err("failed thrice");
        let at = e.downcast_ref::<AtPeer>().expect("attributed");
        assert_eq!(at.peer, web);
        let text = metrics.render();
        assert!(text.contains("status_code=\"500\""), "{text}");
    }

    #[tokio::test]
    async fn a_retry_shed_for_load_is_still_the_counted_endpoints() {
        let (call, mut handle, _) = calling(Some(retryable()), 5).await;
        let web = Peer::secured("web.ns.serviceaccount.identity.mesh.cluster.local");
        let (_, send) = handle.next_request().await.expect("first");
        send.send_response(status(500, Some(&web)));
        let (_, send) = handle.next_request().await.expect("second");
        send.send_error(tower::load_shed::error::Overloaded::new());
        let e = call.await.expect("join").expect_err("shed");
        let at = e.downcast_ref::<AtPeer>().expect("attributed");
        assert_eq!(
            (&at.peer, at.error.to_string().as_str()),
            (&web, "proxy overloaded")
        );
    }

    #[tokio::test]
    async fn routes_without_retries_pass_through() {
        let (call, mut handle, metrics) = calling(None, 2).await;
        let (_, send) = handle.next_request().await.expect("once");
        send.send_response(status(500, None));
        assert_eq!(call.await.expect("join").expect("rsp").status(), 500);
        // Nothing is counted here: no attempts metric without retries.
        assert!(!metrics.render().contains("actual_response_total{"));
    }
}
