//! Refuses request heads that hyper's parser lets through but no server should act on.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use futures_util::future::{Either, MapErr, TryFutureExt};
use http::header;
use http::{Request, Response, Version as HttpVersion};
use tower::{Layer, Service};

use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};

/// Makes [`Validate`] services.
#[derive(Clone, Copy, Debug)]
pub struct ValidateLayer {
    max_path_bytes: usize,
}

impl ValidateLayer {
    /// Refuses paths longer than `max_path_bytes`, besides malformed heads.
    pub fn new(max_path_bytes: usize) -> Self {
        Self { max_path_bytes }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Validate {
            inner,
            max_path_bytes: self.max_path_bytes,
        }
    }
}

/// Passes on only the requests [`invalid`] finds nothing wrong with.
#[derive(Clone, Debug)]
pub struct Validate<S> {
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
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    // Named, not boxed: a pass-through costs no allocation per request.
    #[allow(clippy::type_complexity)]
    type Future = Either<
        Ready<Result<Response<BoxBody>, BoxError>>,
        MapErr<S::Future, fn(S::Error) -> BoxError>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(e) = invalid(&req, self.max_path_bytes) {
            return Either::Left(ready(Err(e.into())));
        }
        Either::Right(
            self.inner
                .call(req)
                .map_err(Into::into as fn(S::Error) -> BoxError),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn heads_hyper_lets_through_are_refused() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(10);
        let mut validate = ValidateLayer::new(16).layer(mock);
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
}
