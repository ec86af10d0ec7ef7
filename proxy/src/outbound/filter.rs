//! The logical level's filter layer: a request's route's filters
//! ([`crate::filters`]) applied on the way up and down, and 404 for requests no route
//! of a Gateway API policy matches.

use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{Layer, Service};

use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};
use crate::filters::{Below, request, response};
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

impl Service<Request<BoxBody>> for Filters {
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = BoxFuture<Response<BoxBody>, BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
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
