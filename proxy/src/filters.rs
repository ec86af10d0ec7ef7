//! Route filters as the proxy applies them (the Gateway API's, compiled by the
//! controller into the policy model): request and response header changes, redirects
//! answered by the proxy, rewrites of the host and path sent upstream, and mirrors
//! that send a copy of a request elsewhere and drop its answer. The layer that applies
//! a route's filters is [`crate::outbound::filter`]; a backend's own are applied by
//! the split ([`crate::outbound::split`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use mesh_api::policy as pb;
use tower::Service;
use tower::util::BoxCloneService;

use crate::body::{self, BoxBody};
use crate::error::{BoxError, ProxyError};
use crate::http::headers::request_authority;

/// The levels below the filters, type-erased so that a mirror's future is plainly
/// `Send`: where mirrored copies are sent.
pub type Below = BoxCloneService<Request<BoxBody>, Response<BoxBody>, BoxError>;

/// Why a filter cannot be applied (the policy is then refused whole).
pub type Invalid = &'static str;

/// One compiled filter.
#[derive(Debug)]
pub enum Filter {
    /// Changes the request's headers.
    RequestHeaders(HeaderMod),
    /// Changes the response's headers.
    ResponseHeaders(HeaderMod),
    /// Answers with a redirect.
    Redirect(Redirect),
    /// Rewrites the host or path sent upstream.
    Rewrite(Rewrite),
    /// Sends a copy of a share of the requests elsewhere.
    Mirror(Mirror),
    /// Delays a share of the requests (fault injection).
    Delay(Delay),
    /// Answers a share of the requests with a failure (fault injection).
    Abort(Abort),
}

/// A share of requests: `numerator / denominator`.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    numerator: u32,
    denominator: u32,
}

impl Share {
    fn of(f: Option<&pb::Fraction>) -> Self {
        match f {
            None => Self {
                numerator: 1,
                denominator: 1,
            },
            Some(f) => Self {
                numerator: f.numerator,
                denominator: if f.denominator == 0 {
                    100
                } else {
                    f.denominator
                },
            },
        }
    }

    /// Whether this request is in the share (drawn at random).
    fn draw(self) -> bool {
        self.numerator > 0 && fastrand::u32(0..self.denominator.max(1)) < self.numerator
    }
}

/// An injected delay.
#[derive(Debug)]
pub struct Delay {
    delay: std::time::Duration,
    share: Share,
}

/// An injected failure.
#[derive(Debug)]
pub struct Abort {
    status: StatusCode,
    /// The gRPC status gRPC requests are answered with, if any.
    grpc: Option<u32>,
    share: Share,
}

/// Where a mirrored copy goes: an extension the split reads instead of routing the
/// copy by its (shadow) host.
#[derive(Debug, Clone)]
pub struct MirrorTo {
    /// The mirror service's authority.
    pub authority: Authority,
    /// Only the endpoints whose pods carry these labels (a subset), if set.
    pub labels: Option<Arc<crate::vocab::Labels>>,
}

/// Header changes, in the order set, add, remove.
#[derive(Debug, Default)]
pub struct HeaderMod {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// A redirect; unset parts keep the request's.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<Scheme>,
    host: Option<String>,
    path: Option<PathMod>,
    port: Option<u16>,
    status: StatusCode,
}

/// A change to the path.
#[derive(Debug, Clone)]
pub enum PathMod {
    /// The whole path becomes this.
    Full(String),
    /// The route's matched prefix becomes this.
    Prefix(String),
}

/// A rewrite of the request sent upstream.
#[derive(Debug)]
pub struct Rewrite {
    host: Option<Authority>,
    path: Option<PathMod>,
}

/// Copies of a share of the requests, to another service.
#[derive(Debug)]
pub struct Mirror {
    /// Where copies go (`name.ns.svc.cluster.local:port`, perhaps a subset).
    to: MirrorTo,
    /// The share copied.
    share: Share,
    /// The copy keeps the request's host with `-shadow` appended, as Istio's do.
    shadow: bool,
}

fn bad(_: impl std::fmt::Debug) -> Invalid {
    "a filter with an invalid header, host or path"
}

impl HeaderMod {
    fn compile(m: &pb::HeaderModifier) -> Result<Self, Invalid> {
        let pairs = |hs: &[pb::Header]| {
            hs.iter()
                .map(|h| {
                    Ok((
                        HeaderName::from_bytes(h.name.as_bytes()).map_err(bad)?,
                        HeaderValue::from_str(&h.value).map_err(bad)?,
                    ))
                })
                .collect::<Result<Vec<_>, Invalid>>()
        };
        Ok(Self {
            set: pairs(&m.set)?,
            add: pairs(&m.add)?,
            remove: m
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(bad))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

fn path_mod(p: Option<&pb::PathModifier>) -> Option<PathMod> {
    use pb::path_modifier::Kind;
    match p?.kind.as_ref()? {
        Kind::ReplaceFullPath(f) => Some(PathMod::Full(f.clone())),
        Kind::ReplacePrefixMatch(p) => Some(PathMod::Prefix(p.clone())),
    }
}

impl PathMod {
    /// The path `path` becomes, `prefix` being the route's matched prefix.
    fn apply(&self, path: &str, prefix: &str) -> String {
        match self {
            Self::Full(p) => p.clone(),
            Self::Prefix(with) => {
                let prefix = prefix.trim_end_matches('/');
                // The route matched the prefix (perhaps ignoring case: Istio's
                // `ignoreUriCase`), so its length is what is replaced.
                let rest = path
                    .get(..prefix.len())
                    .filter(|head| head.eq_ignore_ascii_case(prefix))
                    .map_or(path, |_| &path[prefix.len()..]);
                let out = format!("{}{rest}", with.trim_end_matches('/'));
                if out.is_empty() { "/".into() } else { out }
            }
        }
    }
}

/// `uri`'s path changed by `m`, its query kept.
fn with_path(uri: &Uri, m: &PathMod, prefix: &str) -> Result<PathAndQuery, ProxyError> {
    let path = m.apply(uri.path(), prefix);
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    PathAndQuery::try_from(pq).map_err(|_| ProxyError::Malformed("a rewritten path is invalid"))
}

impl Filter {
    /// Compiles a policy's filter; fault injection is not done here yet.
    pub fn compile(f: &pb::Filter) -> Result<Self, Invalid> {
        use pb::filter::Kind;
        Ok(match f.kind.as_ref() {
            Some(Kind::RequestHeaders(m)) => Self::RequestHeaders(HeaderMod::compile(m)?),
            Some(Kind::ResponseHeaders(m)) => Self::ResponseHeaders(HeaderMod::compile(m)?),
            Some(Kind::Redirect(r)) => Self::Redirect(Redirect {
                scheme: match r.scheme.as_str() {
                    "" => None,
                    s => Some(Scheme::try_from(s).map_err(bad)?),
                },
                host: (!r.hostname.is_empty()).then(|| r.hostname.clone()),
                path: path_mod(r.path.as_ref()),
                port: u16::try_from(r.port).ok().filter(|p| *p != 0),
                status: match r.status {
                    0 => StatusCode::FOUND,
                    s @ (301 | 302 | 303 | 307 | 308) => {
                        StatusCode::from_u16(s as u16).map_err(bad)?
                    }
                    _ => return Err("a redirect status other than 301-308"),
                },
            }),
            Some(Kind::Rewrite(r)) => Self::Rewrite(Rewrite {
                host: match r.hostname.as_str() {
                    "" => None,
                    h => Some(Authority::try_from(h).map_err(bad)?),
                },
                path: path_mod(r.path.as_ref()),
            }),
            Some(Kind::Mirror(m)) => {
                let (authority, labels) = match m.backend.as_ref().and_then(|b| b.kind.as_ref()) {
                    Some(pb::backend::Kind::Authority(a)) => (a, None),
                    Some(pb::backend::Kind::Subset(s)) => (
                        &s.authority,
                        Some(Arc::new(s.labels.clone().into_iter().collect())),
                    ),
                    _ => return Err("a mirror to anything but a service"),
                };
                Self::Mirror(Mirror {
                    to: MirrorTo {
                        authority: Authority::try_from(authority.as_str()).map_err(bad)?,
                        labels,
                    },
                    share: Share::of(m.fraction.as_ref()),
                    shadow: m.shadow_host,
                })
            }
            Some(Kind::FaultDelay(d)) => Self::Delay(Delay {
                delay: std::time::Duration::from_millis(d.delay_ms),
                share: Share::of(d.fraction.as_ref()),
            }),
            Some(Kind::FaultAbort(a)) => Self::Abort(Abort {
                status: u16::try_from(a.http_status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.as_u16() >= 200)
                    .ok_or("an abort status outside 200-599")?,
                grpc: (a.grpc_status > 0).then_some(a.grpc_status),
                share: Share::of(a.fraction.as_ref()),
            }),
            None => return Err("an empty filter"),
        })
    }
}

/// Applies the request side of `filters` to `req`: headers changed, host and path
/// rewritten, copies sent through `mirror`. Returns the redirect to answer, if one
/// applies. `prefix` is the route's matched path prefix.
pub fn request(
    filters: &[Filter],
    req: &mut Request<BoxBody>,
    prefix: &str,
    mirror: &Below,
) -> Result<Option<Response<BoxBody>>, ProxyError> {
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
            Filter::ResponseHeaders(_) => {}
            Filter::Redirect(r) => return r.answer(req, prefix).map(Some),
            Filter::Rewrite(r) => r.apply(req, prefix)?,
            Filter::Mirror(m) => {
                if m.share.draw() {
                    m.send(req, mirror.clone());
                }
            }
            // Faults act before the others: see [`faults`].
            Filter::Delay(_) | Filter::Abort(_) => {}
        }
    }
    Ok(None)
}

/// The faults `filters` inject into this request, drawn now: how long to delay it,
/// and the failure to answer it with (after the delay), as Envoy's fault filter does
/// before the router: neither the route's timeout nor its retries see them.
pub fn faults<B>(
    filters: &[Filter],
    req: &Request<B>,
) -> (Option<std::time::Duration>, Option<Response<BoxBody>>) {
    let mut delay = None;
    let mut abort = None;
    for f in filters {
        match f {
            Filter::Delay(d) if delay.is_none() && d.share.draw() => delay = Some(d.delay),
            Filter::Abort(a) if abort.is_none() && a.share.draw() => abort = Some(a.answer(req)),
            _ => {}
        }
    }
    (delay, abort)
}

impl Abort {
    /// The injected failure: gRPC requests get a trailers-only answer with the gRPC
    /// status when one is set; others the HTTP status.
    fn answer<B>(&self, req: &Request<B>) -> Response<BoxBody> {
        let grpc_request = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut rsp = Response::new(body::empty());
        match self.grpc {
            Some(code) if grpc_request => {
                *rsp.status_mut() = StatusCode::OK;
                let headers = rsp.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert(crate::http::headers::GRPC_STATUS, HeaderValue::from(code));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("fault filter abort"),
                );
            }
            _ => {
                *rsp.status_mut() = self.status;
                let text = Bytes::from_static(b"fault filter abort");
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
                *rsp.body_mut() = body::full(text);
            }
        }
        rsp
    }
}

/// Applies the response side of `filters` to `rsp`.
pub fn response(filters: &[Filter], rsp: &mut Response<BoxBody>) {
    for f in filters {
        if let Filter::ResponseHeaders(m) = f {
            m.apply(rsp.headers_mut());
        }
    }
}

impl Redirect {
    fn answer(
        &self,
        req: &Request<BoxBody>,
        prefix: &str,
    ) -> Result<Response<BoxBody>, ProxyError> {
        let authority = request_authority(req)
            .and_then(|a| a.parse::<Authority>().ok())
            .ok_or(ProxyError::NoAuthority)?;
        let (host, port) = (authority.host(), authority.port_u16());
        let scheme = self
            .scheme
            .clone()
            .or_else(|| req.uri().scheme().cloned())
            .unwrap_or(Scheme::HTTP);
        // A port given is kept; a scheme given takes its own well-known port; else the
        // request's port stays.
        let port = self
            .port
            .or(if self.scheme.is_some() { None } else { port })
            .filter(|p| !matches!((scheme.as_str(), *p), ("http", 80) | ("https", 443)));
        let host = self.host.as_deref().unwrap_or(host);
        let path = match &self.path {
            Some(m) => with_path(req.uri(), m, prefix)?,
            None => req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let location = match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        };
        let location = HeaderValue::try_from(location)
            .map_err(|_| ProxyError::Malformed("a redirect's location is invalid"))?;
        let mut rsp = Response::new(body::empty());
        *rsp.status_mut() = self.status;
        rsp.headers_mut().insert(LOCATION, location);
        Ok(rsp)
    }
}

impl Rewrite {
    fn apply(&self, req: &mut Request<BoxBody>, prefix: &str) -> Result<(), ProxyError> {
        let mut parts = req.uri().clone().into_parts();
        if let Some(path) = &self.path {
            parts.path_and_query = Some(with_path(req.uri(), path, prefix)?);
        }
        if let Some(host) = &self.host {
            // The port the request named is kept.
            let port = request_authority(req)
                .and_then(|a| a.parse::<Authority>().ok())
                .and_then(|a| a.port_u16());
            let authority = match port {
                Some(p) if host.port().is_none() => Authority::try_from(format!("{host}:{p}"))
                    .map_err(|_| ProxyError::Malformed("a rewritten host is invalid"))?,
                _ => host.clone(),
            };
            if parts.authority.is_some() {
                parts.authority = Some(authority.clone());
            }
            if req.headers().contains_key(HOST) || req.uri().authority().is_none() {
                let value = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| ProxyError::Malformed("a rewritten host is invalid"))?;
                req.headers_mut().insert(HOST, value);
            }
        }
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|_| ProxyError::Malformed("a rewritten request is invalid"))?;
        Ok(())
    }
}

/// How many body frames a mirror may fall behind the request before its copy is
/// given up (the request itself never waits for a mirror).
const MIRROR_FRAMES: usize = 64;

impl Mirror {
    /// Sends a copy of `req` (its body teed as the original is read) through `svc`,
    /// and forgets it: its answer and failures never reach the caller.
    fn send(&self, req: &mut Request<BoxBody>, svc: Below) {
        let body = if req.body().is_end_stream() {
            body::empty()
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(MIRROR_FRAMES);
            let aborted = Arc::new(AtomicBool::new(false));
            let original = std::mem::replace(req.body_mut(), body::empty());
            *req.body_mut() = body::boxed(Tee {
                inner: original,
                tx: Some(tx),
                aborted: aborted.clone(),
            });
            body::boxed(Copy { rx, aborted })
        };
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        // Addressed to the mirror (or, as Istio's, to the request's own host with
        // `-shadow`): the levels below route it to the mirror either way.
        let host = if self.shadow {
            request_authority(req)
                .and_then(shadow_of)
                .unwrap_or_else(|| self.to.authority.clone())
        } else {
            self.to.authority.clone()
        };
        let mut parts = req.uri().clone().into_parts();
        if parts.authority.is_some() {
            parts.authority = Some(host.clone());
        }
        let Ok(uri) = Uri::from_parts(parts) else {
            return;
        };
        *copy.uri_mut() = uri;
        if let Ok(host) = HeaderValue::from_str(host.as_str()) {
            copy.headers_mut().insert(HOST, host);
        }
        copy.extensions_mut().insert(self.to.clone());
        let to = self.to.authority.clone();
        let mut svc = svc;
        let sent: Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>> =
            Box::pin(async move {
                tower::ServiceExt::ready(&mut svc).await?;
                svc.call(copy).await
            });
        tokio::spawn(async move {
            match sent.await {
                Ok(rsp) => {
                    tracing::trace!(%to, status = %rsp.status(), "mirrored");
                    // The answer is read to its end so the connection can be reused.
                    let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
                }
                Err(e) => tracing::debug!(%to, error = %e, "mirror failed"),
            }
        });
    }
}

/// `authority` with `-shadow` appended to its host (`reviews:9080` →
/// `reviews-shadow:9080`), as Envoy names a mirrored request's host.
fn shadow_of(authority: &str) -> Option<Authority> {
    let a = authority.parse::<Authority>().ok()?;
    let shadow = match a.port() {
        Some(p) => format!("{}-shadow:{p}", a.host()),
        None => format!("{}-shadow", a.host()),
    };
    Authority::try_from(shadow).ok()
}

/// The original request's body, copying each frame to a mirror as it is read.
struct Tee {
    inner: BoxBody,
    tx: Option<tokio::sync::mpsc::Sender<Frame<Bytes>>>,
    aborted: Arc<AtomicBool>,
}

impl Tee {
    fn give_up(&mut self) {
        self.aborted.store(true, Ordering::Release);
        self.tx = None;
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let copy = match frame.data_ref() {
                    Some(d) => Some(Frame::data(d.clone())),
                    None => frame.trailers_ref().map(|t| Frame::trailers(t.clone())),
                };
                if let (Some(tx), Some(copy)) = (&self.tx, copy)
                    && tx.try_send(copy).is_err()
                {
                    // The mirror is slow or gone: its copy is given up, never waited for.
                    self.give_up();
                }
                // The last frame (hyper stops polling a body that says so): the copy
                // ends complete.
                if self.inner.is_end_stream() {
                    self.tx = None;
                }
            }
            Poll::Ready(Some(Err(_))) => self.give_up(),
            // The end: the mirror's copy ends complete.
            Poll::Ready(None) => self.tx = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end (the request failed or was cancelled): the copy is
        // incomplete.
        if self.tx.is_some() && !self.inner.is_end_stream() {
            self.give_up();
        }
    }
}

/// The mirror's copy of a body.
struct Copy {
    rx: tokio::sync::mpsc::Receiver<Frame<Bytes>>,
    aborted: Arc<AtomicBool>,
}

impl Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) if self.aborted.load(Ordering::Acquire) => Poll::Ready(Some(Err(
                "the mirrored request's body was not copied whole".into(),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(kind: pb::filter::Kind) -> Filter {
        Filter::compile(&pb::Filter { kind: Some(kind) }).expect("compiles")
    }

    #[test]
    fn faults_draw_their_share_and_grpc_requests_get_a_grpc_status() {
        let all = Some(pb::Fraction {
            numerator: 1_000_000,
            denominator: 1_000_000,
        });
        let none = Some(pb::Fraction {
            numerator: 0,
            denominator: 1_000_000,
        });
        let delay = filter(pb::filter::Kind::FaultDelay(pb::FaultDelay {
            delay_ms: 5_000,
            fraction: all,
        }));
        let abort = |grpc_status, fraction| {
            filter(pb::filter::Kind::FaultAbort(pb::FaultAbort {
                http_status: 503,
                grpc_status,
                fraction,
            }))
        };
        let plain = Request::get("/").body(()).expect("request");
        let (d, a) = faults(&[delay, abort(14, all)], &plain);
        assert_eq!(d, Some(std::time::Duration::from_secs(5)));
        assert_eq!(
            a.expect("aborted").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (d, a) = faults(&[abort(0, none)], &plain);
        assert!(d.is_none() && a.is_none(), "a share of 0 injects nothing");
        let grpc = Request::post("/pkg.Svc/M")
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        let rsp = faults(&[abort(14, all)], &grpc).1.expect("aborted");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        // About half of 10,000 draws of a half share.
        let half = Share {
            numerator: 500_000,
            denominator: 1_000_000,
        };
        let hits = (0..10_000).filter(|_| half.draw()).count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
        let bad = Filter::compile(&pb::Filter {
            kind: Some(pb::filter::Kind::FaultAbort(pb::FaultAbort {
                http_status: 42,
                ..Default::default()
            })),
        });
        assert!(bad.is_err());
    }

    #[test]
    fn mirrored_hosts_get_istios_shadow_suffix() {
        let s = |a: &str| shadow_of(a).map(|a| a.to_string());
        assert_eq!(s("reviews:9080").as_deref(), Some("reviews-shadow:9080"));
        assert_eq!(
            s("reviews.default.svc.cluster.local").as_deref(),
            Some("reviews.default.svc.cluster.local-shadow")
        );
        assert_eq!(s("not a host"), None);
    }

    #[test]
    fn prefixes_are_replaced_as_the_gateway_api_says() {
        let p =
            |with: &str, prefix: &str, path: &str| PathMod::Prefix(with.into()).apply(path, prefix);
        assert_eq!(p("/xyz", "/foo", "/foo/bar"), "/xyz/bar");
        assert_eq!(p("/xyz", "/foo", "/foo"), "/xyz");
        assert_eq!(p("/xyz", "/foo/", "/foo/bar"), "/xyz/bar");
        assert_eq!(p("/xyz/", "/foo", "/foo/bar"), "/xyz/bar");
        assert_eq!(p("/", "/foo", "/foo/bar"), "/bar");
        assert_eq!(p("/", "/foo", "/foo"), "/");
        assert_eq!(p("/", "/", "/a"), "/a");
        assert_eq!(PathMod::Full("/new".into()).apply("/old/x", "/old"), "/new");
    }

    fn get(uri: &str, host: &str) -> Request<BoxBody> {
        Request::get(uri)
            .header(HOST, host)
            .body(body::empty())
            .expect("request")
    }

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let redirect = |scheme: &str, host: &str, port: u32, path: Option<PathMod>| Redirect {
            scheme: (!scheme.is_empty()).then(|| Scheme::try_from(scheme).expect("scheme")),
            host: (!host.is_empty()).then(|| host.to_string()),
            path,
            port: u16::try_from(port).ok().filter(|p| *p != 0),
            status: StatusCode::MOVED_PERMANENTLY,
        };
        let location = |r: Redirect, req: Request<BoxBody>| {
            let rsp = r.answer(&req, "/old").expect("redirect");
            assert_eq!(rsp.status(), 301);
            rsp.headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string)
                .expect("location")
        };
        assert_eq!(
            location(redirect("", "", 0, None), get("/a?q=1", "web:8080")),
            "http://web:8080/a?q=1"
        );
        assert_eq!(
            location(redirect("https", "", 0, None), get("/a", "web:8080")),
            "https://web/a",
            "a scheme given takes its own port"
        );
        assert_eq!(
            location(
                redirect(
                    "",
                    "other.example",
                    9090,
                    Some(PathMod::Prefix("/new".into()))
                ),
                get("/old/x?y", "web")
            ),
            "http://other.example:9090/new/x?y"
        );
        assert_eq!(
            location(redirect("http", "", 80, None), get("/", "web:8080")),
            "http://web/"
        );
    }

    #[test]
    fn rewrites_change_host_and_path_upstream() {
        let r = Rewrite {
            host: Some(Authority::from_static("books-v2")),
            path: Some(PathMod::Prefix("/".into())),
        };
        let mut req = get("/v2/list?x=1", "books:8080");
        r.apply(&mut req, "/v2").expect("rewrite");
        assert_eq!(
            req.uri().path_and_query().map(|p| p.as_str()),
            Some("/list?x=1")
        );
        assert_eq!(request_authority(&req), Some("books-v2:8080"));
        // HTTP/2 style: the authority is in the URI.
        let mut req = Request::get("http://books/v2")
            .body(body::empty())
            .expect("request");
        r.apply(&mut req, "/v2").expect("rewrite");
        assert_eq!(req.uri().to_string(), "http://books-v2/");
    }

    #[test]
    fn header_changes_set_add_and_remove() {
        let m = HeaderMod::compile(&pb::HeaderModifier {
            set: vec![pb::Header {
                name: "x-set".into(),
                value: "1".into(),
            }],
            add: vec![pb::Header {
                name: "x-add".into(),
                value: "2".into(),
            }],
            remove: vec!["x-gone".into()],
        })
        .expect("valid");
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("0"));
        h.insert("x-add", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        m.apply(&mut h);
        assert_eq!(h.get_all("x-set").iter().count(), 1);
        assert_eq!(h.get("x-set"), Some(&HeaderValue::from_static("1")));
        assert_eq!(h.get_all("x-add").iter().count(), 2);
        assert!(!h.contains_key("x-gone"));
        let bad = HeaderMod::compile(&pb::HeaderModifier {
            remove: vec!["bad name".into()],
            ..Default::default()
        });
        assert!(bad.is_err());
    }
}
