//! The logical level's filter layer: a request's route's filters
//! ([`crate::filters`]) applied on the way up and down, and 404 for requests no route
//! of a Gateway API policy matches.

use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{Layer, Service};

use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};
use crate::filters::{Below, faults, request, response};
use crate::http::BoxFuture;
use crate::profile::RouteInfo;

/// Makes [`Filters`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct FilterLayer;

impl<S> Layer<S> for FilterLayer
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Filters;

    fn layer(&self, inner: S) -> Filters {
        Filters {
            inner: BoxCloneService::new(inner),
        }
    }
}

/// Applies each request's route's filters; answers 404 for requests no route of a
/// policy that says so matches.
#[derive(Clone)]
pub struct Filters {
    inner: Below,
}

impl Filters {
    /// Applies `route`'s request filters and sends `req` on (or answers its redirect);
    /// the response filters on the way back.
    fn forward(
        &mut self,
        route: std::sync::Arc<crate::profile::Route>,
        mut req: Request<BoxBody>,
    ) -> BoxFuture<Response<BoxBody>, BoxError> {
        // Mirrors go through a clone of the levels below (taken before `inner` is
        // used: it was made ready for the request itself).
        match request(&route.filters, &mut req, &route.prefix, &self.inner) {
            Ok(None) => {}
            Ok(Some(redirect)) => return Box::pin(std::future::ready(Ok(redirect))),
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut rsp = fut.await?;
            response(&route.filters, &mut rsp);
            Ok(rsp)
        })
    }
}

impl Service<Request<BoxBody>> for Filters {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let info = req.extensions().get::<RouteInfo>();
        let route = match info {
            Some(RouteInfo { route: Some(r), .. }) if !r.filters.is_empty() => r.clone(),
            Some(RouteInfo {
                route: None,
                profile,
            }) if profile.not_found => {
                return Box::pin(std::future::ready(Err(ProxyError::Refused(
                    StatusCode::NOT_FOUND,
                    "no route matches the request".into(),
                )
                .into())));
            }
            _ => return self.inner.call(req),
        };
        // Injected faults first, as Envoy's fault filter runs before the router: an
        // injected delay is outside the route's timeout, an injected failure is
        // never retried.
        let (delay, abort) = faults(&route.filters, &req);
        if delay.is_none() {
            if let Some(abort) = abort {
                return Box::pin(std::future::ready(Ok(abort)));
            }
            return self.forward(route, req);
        }
        // The levels below were made ready for this request: a clone waits with it.
        let clone = self.inner.clone();
        let mut me = Self {
            inner: std::mem::replace(&mut self.inner, clone),
        };
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            match abort {
                Some(abort) => Ok(abort),
                None => me.forward(route, req).await,
            }
        })
    }
}
