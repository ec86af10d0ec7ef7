//! Removes hop-by-hop headers from requests and responses (RFC 9110 §7.6.1), first of
//! all, so that a `Connection` header cannot name (and so remove) the headers the proxy
//! adds further down. An upgrade keeps what it needs to be carried on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode, Version as HttpVersion};
use tower::{Layer, Service};

use super::headers::{is_upgrade, strip_hop_by_hop};
use crate::body::BoxBody;

/// Makes [`HopByHop`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct HopByHopLayer;

impl<S> Layer<S> for HopByHopLayer {
    type Service = HopByHop<S>;

    fn layer(&self, inner: S) -> HopByHop<S> {
        HopByHop { inner }
    }
}

/// Strips hop-by-hop headers both ways.
#[derive(Clone, Debug)]
pub struct HopByHop<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for HopByHop<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = Stripped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let upgrading = req.version() != HttpVersion::HTTP_2 && is_upgrade(req.headers());
        strip_hop_by_hop(req.headers_mut(), upgrading, true);
        Stripped {
            fut: self.inner.call(req),
            upgrading,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`HopByHop`]'s future: the response with its hop-by-hop headers stripped (named,
    /// not boxed: no allocation per request).
    pub struct Stripped<F> {
        #[pin]
        fut: F,
        upgrading: bool,
    }
}

impl<F, E> Future for Stripped<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut rsp = ready!(this.fut.poll(cx))?;
        // A switched connection is carried as it is (see crate::http::upstream).
        if !(*this.upgrading && rsp.status() == StatusCode::SWITCHING_PROTOCOLS) {
            strip_hop_by_hop(rsp.headers_mut(), false, false);
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http::header;
    use tower::ServiceExt;

    #[tokio::test]
    async fn both_ways_but_an_upgrade_keeps_its_headers() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(2);
        let mut svc = HopByHopLayer.layer(mock);
        let req = Request::get("/")
            .header(header::CONNECTION, "x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "5")
            .header("x-app", "kept")
            .body(())
            .expect("req");
        let call = svc.ready().await.expect("ready").call(req);
        let (req, send) = handle.next_request().await.expect("request");
        assert_eq!(req.headers().len(), 1, "{:?}", req.headers());
        send.send_response(
            Response::builder()
                .header(header::CONNECTION, "close")
                .header("x-app", "kept")
                .body(body::empty())
                .expect("rsp"),
        );
        let rsp = call.await.expect("rsp");
        assert_eq!(rsp.headers().len(), 1, "{:?}", rsp.headers());

        let upgrade = Request::get("/")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .expect("req");
        let call = svc.ready().await.expect("ready").call(upgrade);
        let (req, send) = handle.next_request().await.expect("request");
        assert_eq!(req.headers()[header::UPGRADE], "websocket");
        send.send_response(
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .body(body::empty())
                .expect("rsp"),
        );
        let rsp = call.await.expect("rsp");
        assert_eq!(rsp.headers()[header::UPGRADE], "websocket");
    }
}
