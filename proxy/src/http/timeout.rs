//! The request's deadline: its route's timeout, else the default response-headers
//! timeout. The deadline flows down with the request (a [`Deadline`] extension), so
//! that whichever level holds the request when it passes answers for it: an endpoint
//! the request was waiting on is named in the metrics of the timeout.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use std::future::Future;

use super::BoxFuture;
use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};
use crate::profile::RouteInfo;

/// How much later than the deadline [`Timeout`] itself gives up (see `call`).
const BACKSTOP_DELAY: Duration = Duration::from_millis(1);

/// When a request must have its response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    /// The earlier of two deadlines, either of which may be unset.
    pub fn earlier(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Puts on `req` the earlier of its deadline and `other`, for the levels below;
    /// returns it.
    pub fn tighten<B>(req: &mut Request<B>, other: Option<Self>) -> Option<Self> {
        let tighter = Self::earlier(req.extensions().get::<Self>().copied(), other);
        if let Some(t) = tighter {
            req.extensions_mut().insert(t);
        }
        tighter
    }

    /// Runs `fut` until the deadline of `deadline`, if any; past it, `on_timeout`.
    pub async fn run<T, E>(
        deadline: Option<Self>,
        fut: impl std::future::Future<Output = Result<T, E>>,
        on_timeout: impl FnOnce() -> E,
    ) -> Result<T, E> {
        match deadline {
            Some(Self(at)) => match tokio::time::timeout_at(at, fut).await {
                Ok(r) => r,
                Err(_) => Err(on_timeout()),
            },
            None => fut.await,
        }
    }
}

/// Makes [`Timeout`] services.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    default: Option<Duration>,
}

impl TimeoutLayer {
    /// Requests whose route names no timeout get `default` (gRPC excepted).
    pub fn new(default: Option<Duration>) -> Self {
        Self { default }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            default: self.default,
        }
    }
}

/// Gives each request its deadline and fails it with [`ProxyError::Timeout`] when the
/// levels below have not answered by then; dropping the request cancels it upstream.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S, B> Service<Request<B>> for Timeout<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // gRPC is exempt from the default: servers send a stream's headers with its
        // first message, which may be long in coming, and clients set their own
        // deadlines (`grpc-timeout`).
        let default = self.default.filter(|_| !super::is_grpc(&req));
        let timeout = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.as_ref()?.timeout)
            .or(default);
        if let Some(t) = timeout {
            req.extensions_mut().insert(Deadline::after(t));
        }
        let idle = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.as_ref()?.idle);
        // Waiting for the headers is idle too: an idle timeout bounds it.
        let deadline = Deadline::tighten(&mut req, idle.map(Deadline::after));
        let fut = self.inner.call(req);
        // The levels below enforce the deadline itself, naming the endpoint they were
        // waiting on; this one is the backstop for time spent elsewhere (reading a body
        // to replay). A millisecond later, so that a level below that was not polled
        // at the very instant (tokio's budget) still answers first.
        let backstop = deadline.map(|Deadline(at)| Deadline(at + BACKSTOP_DELAY));
        let rsp = Deadline::run(
            backstop,
            async move { fut.await.map_err(Into::into) },
            || ProxyError::Timeout.into(),
        );
        match idle {
            None => Box::pin(rsp),
            Some(idle) => Box::pin(async move {
                let rsp = rsp.await?;
                Ok(rsp.map(|b| crate::body::boxed(Idle::new(b, idle))))
            }),
        }
    }
}

/// A response body that fails when no frame comes for `idle` (Linkerd's idle
/// timeout): a stalled stream is reset instead of holding its connection forever.
struct Idle {
    inner: BoxBody,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(inner: BoxBody, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl http_body::Body for Idle {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ProxyError::Timeout.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_goes_down_and_fails_a_late_answer() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(3);
        let mut timeout = TimeoutLayer::new(Some(Duration::from_secs(2))).layer(mock);
        let started = Instant::now();
        let call = timeout.ready().await.expect("ready").call(Request::new(()));
        let (req, _send) = handle.next_request().await.expect("request");
        assert_eq!(
            req.extensions().get::<Deadline>(),
            Some(&Deadline(started + Duration::from_secs(2)))
        );
        let e = call.await.expect_err("late");
        assert_eq!(e.to_string(), "timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(2) + BACKSTOP_DELAY);

        // gRPC gets no default deadline.
        let grpc = Request::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("req");
        let call = timeout.ready().await.expect("ready").call(grpc);
        let (req, send) = handle.next_request().await.expect("request");
        assert!(req.extensions().get::<Deadline>().is_none());
        tokio::time::sleep(Duration::from_secs(10)).await;
        send.send_response(Response::new(body::empty()));
        assert_eq!(call.await.expect("in time").status(), 200);

        // An answer in time passes through.
        let call = timeout.ready().await.expect("ready").call(Request::new(()));
        let (_, send) = handle.next_request().await.expect("request");
        send.send_response(Response::new(body::empty()));
        assert_eq!(call.await.expect("in time").status(), 200);
    }
}
