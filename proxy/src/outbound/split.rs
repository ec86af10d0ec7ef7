//! The logical level's last layer: the backend an attempt goes to. A route with
//! backends of its own (the Gateway API's `backendRefs`), else a profile with weighted
//! backends (a TrafficSplit, `dstOverrides`), picks one by weight per attempt;
//! otherwise the service itself. A request that names no service goes where its
//! connection was going. The backend's own filters and the route's per-attempt
//! timeout (`backendRequest`) apply here, once per attempt.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::default_port;
use super::logical::Logical;
use crate::body::BoxBody;
use crate::error::{BoxError, ProxyError};
use crate::filters::Filter;
use crate::http::timeout::Deadline;
use crate::http::{BoxFuture, ConnInfo, request_authority};
use crate::profile::{Backend, RouteInfo, Target, pick};
use crate::resolve::NameAddr;
use crate::vocab::Labels;

/// Where an attempt goes: an extension for the concrete level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concrete {
    /// A backend service, resolved to its endpoints.
    Service(NameAddr),
    /// The endpoints of a backend service whose pods carry these labels (a subset).
    Subset(NameAddr, Arc<Labels>),
    /// An address, when the request named no service (its original destination).
    Addr(SocketAddr),
}

/// Makes [`Split`] services.
#[derive(Clone, Copy, Debug, Default)]
pub struct SplitLayer;

impl<S> Layer<S> for SplitLayer {
    type Service = Split<S>;

    fn layer(&self, inner: S) -> Split<S> {
        Split { inner }
    }
}

/// Tags each attempt with its [`Concrete`] backend.
#[derive(Clone, Debug)]
pub struct Split<S> {
    inner: S,
}

/// The backend of one attempt of `req`, and the backend policy picked, if any.
pub fn concrete<B>(req: &Request<B>) -> Result<(Concrete, Option<Backend>), ProxyError> {
    // A mirrored copy goes where its mirror says, whatever its host.
    if let Some(to) = req.extensions().get::<crate::filters::MirrorTo>() {
        let name = NameAddr::parse(to.authority.as_str(), 80)?;
        return Ok((
            match &to.labels {
                Some(labels) => Concrete::Subset(name, labels.clone()),
                None => Concrete::Service(name),
            },
            None,
        ));
    }
    let Some(Logical(name)) = req.extensions().get::<Logical>() else {
        let conn = req.extensions().get::<ConnInfo>();
        return match request_authority(req) {
            // Not a name: refused with the reason.
            Some(a) => NameAddr::parse(a, default_port(conn)).map(|n| (Concrete::Service(n), None)),
            None => conn
                .and_then(|c| c.target)
                .map(|a| (Concrete::Addr(a), None))
                .ok_or(ProxyError::NoAuthority),
        };
    };
    let info = req.extensions().get::<RouteInfo>();
    let backends = info
        .map(|i| match &i.route {
            Some(r) if !r.backends.is_empty() => &r.backends[..],
            _ => &i.profile.backends[..],
        })
        .unwrap_or_default();
    if backends.is_empty() {
        return Ok((Concrete::Service(name.clone()), None));
    }
    let backend = pick(backends).ok_or_else(|| ProxyError::NoEndpoints(name.to_string()))?;
    match &backend.target {
        Target::Authority(a) => {
            NameAddr::parse(a, name.port).map(|n| (Concrete::Service(n), Some(backend.clone())))
        }
        Target::Subset(a, labels) => NameAddr::parse(a, name.port)
            .map(|n| (Concrete::Subset(n, labels.clone()), Some(backend.clone()))),
        Target::Fail(status, why) => Err(ProxyError::Refused(*status, why.clone())),
    }
}

impl<S, B> Service<Request<B>> for Split<S>
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
        let (c, backend) = match concrete(&req) {
            Ok(picked) => picked,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        };
        req.extensions_mut().insert(c);
        // The backend's own policy, else the service's.
        let policy = backend.as_ref().and_then(|b| b.policy.clone()).or_else(|| {
            req.extensions()
                .get::<RouteInfo>()
                .map(|i| i.profile.policy.clone())
        });
        if let Some(policy) = policy {
            req.extensions_mut().insert(policy);
        }
        let filters = backend.map(|b| b.filters).filter(|f| !f.is_empty());
        if let Some(filters) = &filters {
            for f in filters.iter() {
                if let Filter::RequestHeaders(m) = f {
                    m.apply(req.headers_mut());
                }
            }
        }
        // Each attempt within its own timeout, inside the request's: the tighter
        // deadline travels down.
        let per_try = req
            .extensions()
            .get::<RouteInfo>()
            .and_then(|i| i.route.as_ref()?.per_try)
            .and_then(|t| Deadline::tighten(&mut req, Some(Deadline::after(t))));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut rsp = Deadline::run(per_try, async { fut.await.map_err(Into::into) }, || {
                ProxyError::Timeout.into()
            })
            .await?;
            if let Some(filters) = &filters {
                crate::filters::response(filters, &mut rsp);
            }
            Ok(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use crate::profile::Profile;
    use std::sync::Arc;
    use tower::ServiceExt;

    fn req(host: Option<&str>, backends: Option<Vec<Backend>>) -> Request<()> {
        let mut b = Request::get("/");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let mut req = b.body(()).expect("req");
        if let Some(h) = host
            && let Ok(name) = NameAddr::parse(h, 80)
        {
            req.extensions_mut().insert(Logical(name));
        }
        if let Some(backends) = backends {
            req.extensions_mut().insert(RouteInfo {
                profile: Arc::new(Profile::with_backends(backends)),
                route: None,
            });
        }
        req
    }

    fn backend(authority: &str, weight: u64) -> Backend {
        Backend::service(authority, weight)
    }

    #[tokio::test]
    async fn each_attempt_gets_its_backend() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<BoxBody>>();
        handle.allow(1);
        let mut split = SplitLayer.layer(mock);
        let call = split.ready().await.expect("ready").call(req(
            Some("web:8080"),
            Some(vec![backend("web-v1", 0), backend("web-v2", 1000)]),
        ));
        let (r, send) = handle.next_request().await.expect("request");
        let v2 = NameAddr::parse("web-v2:8080", 80).expect("name");
        assert_eq!(
            r.extensions().get::<Concrete>(),
            Some(&Concrete::Service(v2))
        );
        send.send_response(Response::new(body::empty()));
        call.await.expect("rsp");

        let svc = |r| concrete(&r).map(|(c, _)| c);
        assert_eq!(
            svc(req(Some("web"), None)).expect("service"),
            Concrete::Service(NameAddr::parse("web:80", 80).expect("name"))
        );
        let none = svc(req(Some("web"), Some(vec![backend("v1", 0)])));
        assert_eq!(
            none.expect_err("no weight").to_string(),
            "no endpoints for web:80"
        );
        let bad = svc(req(Some("web:x"), None));
        assert!(matches!(bad, Err(ProxyError::BadAuthority(_))), "{bad:?}");
        assert!(matches!(svc(req(None, None)), Err(ProxyError::NoAuthority)));
    }
}
