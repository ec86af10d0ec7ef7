//! The one place errors become responses: a layer above which nothing fails, and the
//! responses the proxy makes itself, each with a `mesh-proxy-error` header.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service};

use crate::body::BoxBody;
use crate::error::{AtPeer, BoxError, PROXY_ERROR_HEADER, ProxyError};

/// Makes [`Rescue`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner }
    }
}

/// Answers every error of `S` with the response it stands for; never fails itself.
#[derive(Clone, Debug)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = Rescued<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness errors (load shedding) surface from `call` instead, as responses.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = super::is_grpc(&req);
        Rescued {
            fut: self.inner.call(req),
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Rescue`]'s future: the inner one's response, or the response its error stands
    /// for (named, not boxed: no allocation per request).
    pub struct Rescued<F> {
        #[pin]
        fut: F,
        grpc: bool,
    }
}

impl<F, E> Future for Rescued<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.fut.poll(cx));
        Poll::Ready(Ok(rsp.unwrap_or_else(|e| rescue(e.into(), *this.grpc))))
    }
}

/// Turns any error from the stack into the response the client sees. An error met at
/// an endpoint keeps that endpoint (a [`crate::vocab::Peer`] extension), for metrics.
pub fn rescue(error: BoxError, is_grpc: bool) -> Response<BoxBody> {
    let (error, peer) = match error.downcast::<ProxyError>() {
        Ok(e) => (*e, None),
        Err(other) => match other.downcast::<AtPeer>() {
            Ok(at) => (at.error, Some(at.peer)),
            Err(other) if other.is::<tower::load_shed::error::Overloaded>() => {
                (ProxyError::Overloaded, None)
            }
            Err(other) => {
                tracing::warn!(error = %other, "unexpected proxy error");
                return error_response(StatusCode::BAD_GATEWAY, &other.to_string(), is_grpc);
            }
        },
    };
    tracing::debug!(%error, "proxy error");
    let mut rsp = error_response(error.status(), &error.to_string(), is_grpc);
    if let ProxyError::RateLimited(wait) = error {
        // Whole seconds, rounded up: a client that waits that long finds a token.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        rsp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if let Some(peer) = peer {
        rsp.extensions_mut().insert(peer);
    }
    rsp
}

/// A response the proxy makes itself, carrying the `mesh-proxy-error` header.
pub fn error_response(status: StatusCode, message: &str, is_grpc: bool) -> Response<BoxBody> {
    let header = header_value(message);
    let mut builder = Response::builder().header(PROXY_ERROR_HEADER, header.clone());
    if is_grpc {
        // gRPC clients read the outcome from grpc-status; a "trailers-only" response
        // carries it in the headers with HTTP 200, as the gRPC spec asks.
        builder = builder
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .header(super::headers::GRPC_STATUS, grpc_code(status))
            .header("grpc-message", header);
        return builder
            .body(crate::body::empty())
            .unwrap_or_else(|_| Response::new(crate::body::empty()));
    }
    builder
        .status(status)
        .header("content-type", "text/plain")
        .body(
            Full::new(Bytes::from(format!("{message}\n")))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| Response::new(crate::body::empty()))
}

/// The gRPC status code that corresponds to a proxy-made HTTP status.
fn grpc_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::GATEWAY_TIMEOUT => "4",      // DEADLINE_EXCEEDED
        StatusCode::SERVICE_UNAVAILABLE => "14", // UNAVAILABLE
        StatusCode::BAD_REQUEST => "3",          // INVALID_ARGUMENT
        StatusCode::BAD_GATEWAY => "14",         // UNAVAILABLE
        StatusCode::UNAUTHORIZED => "16",        // UNAUTHENTICATED
        StatusCode::FORBIDDEN => "7",            // PERMISSION_DENIED
        StatusCode::TOO_MANY_REQUESTS => "8",    // RESOURCE_EXHAUSTED
        StatusCode::NOT_FOUND => "12",           // UNIMPLEMENTED
        _ => "2",                                // UNKNOWN
    }
}

/// A header value made from free text: control characters are replaced.
fn header_value(message: &str) -> HeaderValue {
    let cleaned: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn rescue_maps_load_shed_to_503_with_header() {
        let rsp = rescue(Box::new(tower::load_shed::error::Overloaded::new()), false);
        assert_eq!(rsp.status(), 503);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "proxy overloaded");
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let rsp = error_response(StatusCode::GATEWAY_TIMEOUT, "timeout", true);
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["grpc-status"], "4");
    }

    #[test]
    fn header_values_are_sanitised() {
        assert_eq!(header_value("a\r\nb"), "a??b");
    }

    #[tokio::test]
    async fn errors_become_responses_and_keep_their_endpoint() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(3);
        let mut rescue = RescueLayer.layer(mock);
        let call = rescue.ready().await.expect("ready").call(Request::new(()));
        let (_, send) = handle.next_request().await.expect("request");
        send.send_error(ProxyError::Timeout);
        let rsp = call.await.expect("infallible");
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "timeout");
        assert!(rsp.extensions().get::<crate::vocab::Peer>().is_none());

        let call = rescue.ready().await.expect("ready").call(Request::new(()));
        let (_, send) = handle.next_request().await.expect("request");
        let peer = crate::vocab::Peer::secured("web.ns.serviceaccount.identity.mesh.cluster.local");
        send.send_error(AtPeer {
            peer: peer.clone(),
            error: ProxyError::Timeout,
        });
        let rsp = call.await.expect("infallible");
        assert_eq!(rsp.status(), 504);
        assert_eq!(rsp.extensions().get::<crate::vocab::Peer>(), Some(&peer));

        let grpc = Request::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("req");
        let call = rescue.ready().await.expect("ready").call(grpc);
        let (_, send) = handle.next_request().await.expect("request");
        send.send_error(ProxyError::NoAuthority);
        let rsp = call.await.expect("infallible");
        assert_eq!(
            (rsp.status(), &rsp.headers()["grpc-status"]),
            (StatusCode::OK, &HeaderValue::from_static("3"))
        );
    }
}
