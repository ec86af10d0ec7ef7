//! The logical level's first layer: the service a request is for, and the route of
//! that service's profile it matches.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::default_port;
use crate::body::BoxBody;
use crate::http::{BoxFuture, ConnInfo, Shared, request_authority};
use crate::profile::RouteInfo;
use crate::resolve::NameAddr;

/// The service a request names, parsed once (an extension for the levels below).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logical(pub NameAddr);

/// Makes [`Route`] services.
#[derive(Clone, Debug)]
pub struct LogicalLayer {
    shared: Arc<Shared>,
    max_path_bytes: usize,
}

impl LogicalLayer {
    /// Looks profiles up through `shared`; paths longer than `max_path_bytes` are not
    /// matched (they are refused further down).
    pub fn new(shared: Arc<Shared>, max_path_bytes: usize) -> Self {
        Self {
            shared,
            max_path_bytes,
        }
    }
}

impl<S> Layer<S> for LogicalLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            layer: self.clone(),
        }
    }
}

/// Tags each request with its [`Logical`] service and its [`RouteInfo`].
#[derive(Clone, Debug)]
pub struct Route<S> {
    inner: S,
    layer: LogicalLayer,
}

impl<S, B> Service<Request<B>> for Route<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = BoxFuture<Response<BoxBody>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A name that does not parse is refused further down, where errors become
        // responses (see `split`).
        let conn = req.extensions().get::<ConnInfo>();
        let names = &self.layer.shared.resolve.names;
        let Some(name) =
            request_authority(&req).and_then(|a| names.parse(a, default_port(conn)).ok())
        else {
            return Box::pin(self.inner.call(req));
        };
        req.extensions_mut().insert(Logical(name.clone()));
        // Without a destination service no profile applies: nothing to look up.
        let shared = &self.layer.shared;
        if !shared.resolve.has_discovery() || req.uri().path().len() > self.layer.max_path_bytes {
            return Box::pin(self.inner.call(req));
        }
        let shared = shared.clone();
        // The inner service was made ready for this call: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let profile = shared.resolve.profile(&name).await;
            // Matched after the await: the body need not be Sync, so no borrow of the
            // request may be held across one.
            let route = profile.route(&req);
            req.extensions_mut().insert(RouteInfo { profile, route });
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn requests_carry_the_service_they_name() {
        let shared = crate::outbound::concrete::tests::shared();
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(2);
        let mut svc = LogicalLayer::new(shared, 8192).layer(mock);
        let call = svc.ready().await.expect("ready").call(
            Request::get("/")
                .header("host", "Web.NS")
                .body(())
                .expect("req"),
        );
        let (req, send) = handle.next_request().await.expect("request");
        let name = NameAddr::parse("web.ns:80", 80).expect("name");
        assert_eq!(req.extensions().get::<Logical>(), Some(&Logical(name)));
        // No destination service: no profile, no route.
        assert!(req.extensions().get::<RouteInfo>().is_none());
        send.send_response(Response::new(body::empty()));
        call.await.expect("rsp");

        let call = svc.ready().await.expect("ready").call(
            Request::get("/")
                .header("host", "web:nope")
                .body(())
                .expect("req"),
        );
        let (req, send) = handle.next_request().await.expect("request");
        assert!(req.extensions().get::<Logical>().is_none(), "refused below");
        send.send_response(Response::new(body::empty()));
        call.await.expect("rsp");
    }
}
