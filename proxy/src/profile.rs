//! A service's client policy (`OutboundPolicy`) as the proxy applies it: compiled once
//! per update into routes matched against each request, each with its timeout, retry
//! conditions and response classes, and the service's weighted backends. A policy that
//! asks for what this proxy cannot do yet is refused whole ([`Unsupported`]).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mesh_api::policy as pb;
use tower::retry::budget::TpsBudget;

use crate::filters::Filter;

/// The route name of requests no route matches.
pub const DEFAULT_ROUTE: &str = "default";

/// A profile ready to match requests.
#[derive(Debug, Default)]
pub struct Profile {
    /// Routes as the policy lists them.
    pub routes: Vec<Arc<Route>>,
    /// Every match of every route, in the order they are tried (the policy's order,
    /// or most specific first), with the index of its route.
    order: Vec<(Match, usize)>,
    /// Weighted backends (TrafficSplit or dstOverrides).
    pub backends: Vec<Backend>,
    /// Whether a request no route matches is answered 404 (the Gateway API's routes)
    /// instead of going to the default backends.
    pub not_found: bool,
    /// How the service's own endpoints are balanced, bounded and ejected (its
    /// backends may have their own).
    pub policy: Arc<crate::backend::BackendPolicy>,
}

/// A weighted backend (from a TrafficSplit, `dstOverrides` or a route's rule).
#[derive(Clone, Debug)]
pub struct Backend {
    /// Where requests go.
    pub target: Target,
    /// Its weight relative to the others.
    pub weight: u64,
    /// Applied to the requests sent to it (header changes only).
    pub filters: Arc<[Filter]>,
    /// Its own balancing, bounds and ejection; `None`: the profile's.
    pub policy: Option<Arc<crate::backend::BackendPolicy>>,
}

/// Where a backend's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A service's authority.
    Authority(String),
    /// Some of a service's endpoints: those whose pods carry all these labels (a
    /// DestinationRule's subset).
    Subset(String, Arc<crate::vocab::Labels>),
    /// Nowhere: the proxy answers with this status (a backend that did not resolve).
    Fail(StatusCode, Arc<str>),
}

impl Backend {
    /// A service backend without filters.
    pub fn service(authority: &str, weight: u64) -> Self {
        Self {
            target: Target::Authority(authority.into()),
            weight,
            filters: Arc::new([]),
            policy: None,
        }
    }
}

/// Picks a backend with probability proportional to its weight; `None` when every
/// weight is zero.
pub fn pick(backends: &[Backend]) -> Option<&Backend> {
    let total: u64 = backends
        .iter()
        .fold(0u64, |t, b| t.saturating_add(b.weight));
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    backends.iter().find(|b| {
        if r < b.weight {
            return true;
        }
        r -= b.weight;
        false
    })
}

/// One compiled route.
#[derive(Debug, Default)]
pub struct Route {
    /// Its name, the `route` metric label.
    pub name: Arc<str>,
    classes: Vec<(StatusMatch, bool)>,
    /// Its timeout, covering the whole request.
    pub timeout: Option<Duration>,
    /// The timeout of each attempt (the Gateway API's `backendRequest`).
    pub per_try: Option<Duration>,
    /// How long a response may go without data before it is given up.
    pub idle: Option<Duration>,
    /// Its own backends; empty: the profile's.
    pub backends: Vec<Backend>,
    /// Its filters, applied in order.
    pub filters: Vec<Filter>,
    /// The path prefix its match took, which a `ReplacePrefixMatch` replaces.
    pub prefix: String,
    /// The retry budget, for retryable routes: the route's own or the profile's.
    pub budget: Option<Arc<TpsBudget>>,
    /// What is retried, for retryable routes.
    pub retry: Option<Arc<RetryOn>>,
}

/// The failures a route retries, and how often.
#[derive(Debug, Default)]
pub struct RetryOn {
    /// Responses the route's classes call failures.
    pub failure_class: bool,
    /// Responses with a status in one of these ranges.
    pub statuses: Vec<(u16, u16)>,
    /// gRPC responses with one of these codes.
    pub grpc_codes: Vec<u32>,
    /// Requests no endpoint could be connected to.
    pub connect_failure: bool,
    /// Attempts the endpoint reset (or refused) before answering.
    pub reset: bool,
    /// Backoff before each retry: exponential from the first up to the second, with
    /// full jitter; `None`: none.
    pub backoff: Option<(Duration, Duration)>,
    /// Attempts in all, the first included.
    pub max_attempts: usize,
    /// Each attempt's timeout: an attempt that takes longer is given up and retried.
    pub attempt_timeout: Option<Duration>,
}

/// Why a policy was not applied: it asks for something this proxy does not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported in this proxy: {0}")]
pub struct Unsupported(pub &'static str);

/// The profile and route a request was matched to (outbound), as an extension the
/// layers below read.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// The destination's profile.
    pub profile: Arc<Profile>,
    /// The matching route, if any.
    pub route: Option<Arc<Route>>,
}

/// Attempts per request when the route says nothing, the first included.
pub const DEFAULT_ATTEMPTS: usize = 3;
/// The most attempts any route may make: one request cannot drain a budget.
pub const MAX_ATTEMPTS: usize = 10;

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The first thing in `p` this proxy does not do yet, if any: the controller's later
/// front-ends fill these fields in as the proxy learns them.
fn unsupported(p: &pb::OutboundPolicy) -> Result<(), Unsupported> {
    let refuse = |what| Err(Unsupported(what));
    if pb::RouteOrder::try_from(p.route_order).is_err() {
        return refuse("an unknown route order");
    }
    if pb::Unmatched::try_from(p.unmatched).is_err() {
        return refuse("an unknown fate for unmatched requests");
    }
    if p.protocol != pb::Protocol::Detect as i32 {
        return refuse("a declared protocol");
    }
    let backends = |bs: &[pb::WeightedBackend]| {
        bs.iter().any(|b| {
            b.backend.as_ref().and_then(|b| b.kind.as_ref()).is_none()
                || b.filters.iter().any(|f| {
                    !matches!(
                        f.kind,
                        Some(
                            pb::filter::Kind::RequestHeaders(_)
                                | pb::filter::Kind::ResponseHeaders(_)
                        )
                    )
                })
        })
    };
    if backends(&p.backends) {
        return refuse("empty backends, or backend filters other than header changes");
    }
    if p.timeouts.as_ref().is_some_and(|t| t.per_try_ms > 0) {
        return refuse("a per-try timeout for the whole service");
    }
    for r in &p.routes {
        if backends(&r.backends) {
            return refuse("empty backends, or backend filters other than header changes");
        }
        for m in &r.matches {
            if m.path.as_ref().is_some_and(|p| p.kind.is_none()) {
                return refuse("an empty path match");
            }
        }
    }
    Ok(())
}

/// A retry budget as the proxy keeps it; out-of-range values (the controller refuses
/// them) are clamped rather than trusted, since tower's budget asserts on them.
pub fn budget(b: Option<&pb::RetryBudget>) -> Arc<TpsBudget> {
    let (ratio, min, ttl_ms) = b.map_or((0.2, 10, 10_000), |b| {
        (b.retry_ratio, b.min_retries_per_second, b.ttl_ms)
    });
    let ttl = Duration::from_millis(ttl_ms.clamp(1_000, 60_000));
    let ratio = if ratio.is_finite() {
        ratio.clamp(0.0, 1000.0)
    } else {
        0.2
    };
    Arc::new(TpsBudget::new(ttl, min, ratio as f32))
}

#[derive(Debug)]
enum Match {
    All(Vec<Match>),
    Any(Vec<Match>),
    Not(Box<Match>),
    Path(regex::bytes::Regex),
    /// The whole path, exactly.
    Exact(String),
    /// A path prefix, element-wise (kept without its trailing `/`).
    Prefix(String),
    /// A path's plain string prefix (Istio's `uri.prefix`).
    StringPrefix(String),
    /// The whole path, exactly, ASCII letters case-insensitively.
    ExactNoCase(String),
    /// A path's plain string prefix, ASCII letters case-insensitively.
    StringPrefixNoCase(String),
    Method(Method),
    /// The method's name (a regex over it, or an exact name with `:method`).
    MethodValue(Value),
    /// The request's authority (its URI's, else its `Host`).
    Authority(Value),
    /// A header: any of its values (case-insensitive name).
    Header(http::HeaderName, Value),
    /// A query parameter: its first occurrence (case-sensitive name, raw bytes as
    /// the request sent them).
    Query(String, Value),
    /// A condition that could not be compiled matches nothing (the controller
    /// validates, so this only guards against a newer controller's additions).
    Never,
    /// A gRPC call's service and method (the request's path `/service/method`).
    Grpc(Name, Name),
}

/// A gRPC service's or method's name condition.
#[derive(Debug)]
enum Name {
    Any,
    Exact(String),
    Regex(regex::bytes::Regex),
}

impl Name {
    fn compile(name: &str, regex: bool) -> Option<Self> {
        match (name, regex) {
            ("", _) => Some(Self::Any),
            (n, false) => Some(Self::Exact(n.into())),
            (re, true) => mesh_api::profile::compile_anchored(&mesh_api::profile::anchored(re))
                .ok()
                .map(Self::Regex),
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => e == v,
            Self::Regex(re) => re.is_match(v.as_bytes()),
        }
    }
}

/// How a header's or query parameter's value is matched.
#[derive(Debug)]
enum Value {
    Exact(Vec<u8>),
    Regex(regex::bytes::Regex),
    Present,
}

impl Value {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Self::Exact(e) => v == e.as_slice(),
            Self::Regex(re) => re.is_match(v),
            Self::Present => true,
        }
    }
}

#[derive(Debug)]
enum StatusMatch {
    All(Vec<StatusMatch>),
    Any(Vec<StatusMatch>),
    Not(Box<StatusMatch>),
    Range(u32, u32),
    Never,
}

impl Profile {
    /// Compiles a service's client policy, or refuses it whole.
    pub fn compile(p: &pb::OutboundPolicy) -> Result<Self, Unsupported> {
        unsupported(p)?;
        let shared = budget(p.retry_budget.as_ref());
        let default_timeout = p
            .timeouts
            .as_ref()
            .and_then(|t| (t.request_ms > 0).then(|| Duration::from_millis(t.request_ms)));
        let most_specific = p.route_order == pb::RouteOrder::MostSpecific as i32;
        let default_idle = p
            .timeouts
            .as_ref()
            .and_then(|t| (t.idle_ms > 0).then(|| Duration::from_millis(t.idle_ms)));
        let mut routes = Vec::with_capacity(p.routes.len());
        let mut order = Vec::new();
        for (i, r) in p.routes.iter().enumerate() {
            let retry = r.retry.as_ref().map(|retry| {
                let on = retry.conditions.clone().unwrap_or_default();
                Arc::new(RetryOn {
                    failure_class: on.failure_class,
                    statuses: on
                        .http_statuses
                        .iter()
                        .map(|s| (clamp16(s.min), clamp16(s.max)))
                        .collect(),
                    grpc_codes: on.grpc_codes.clone(),
                    connect_failure: on.connect_failure,
                    reset: on.reset,
                    backoff: (retry.backoff_base_ms > 0).then(|| {
                        let base = Duration::from_millis(retry.backoff_base_ms);
                        let max = Duration::from_millis(retry.backoff_max_ms).max(base);
                        (base, max)
                    }),
                    max_attempts: match retry.max_retries {
                        0 => DEFAULT_ATTEMPTS,
                        n => (n as usize).saturating_add(1).min(MAX_ATTEMPTS),
                    },
                    attempt_timeout: (retry.timeout_ms > 0)
                        .then(|| Duration::from_millis(retry.timeout_ms)),
                })
            });
            let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
            // A rule that rewrites a prefix has exactly one prefix match (checked by
            // the controller); none means the whole path.
            let prefix = r
                .matches
                .iter()
                .find_map(|m| match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                    Some(
                        pb::path_match::Kind::Prefix(p) | pb::path_match::Kind::StringPrefix(p),
                    ) => Some(p.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            routes.push(Arc::new(Route {
                name: Arc::from(r.name.as_str()),
                classes: r
                    .response_classes
                    .iter()
                    .map(|c| {
                        (
                            c.condition
                                .as_ref()
                                .map_or(StatusMatch::Never, status_match),
                            c.is_failure,
                        )
                    })
                    .collect(),
                timeout: r
                    .timeouts
                    .as_ref()
                    .and_then(|t| millis(t.request_ms))
                    .or(default_timeout),
                per_try: r.timeouts.as_ref().and_then(|t| millis(t.per_try_ms)),
                idle: r
                    .timeouts
                    .as_ref()
                    .and_then(|t| millis(t.idle_ms))
                    .or(default_idle),
                backends: weighted(&r.backends)?,
                filters: r
                    .filters
                    .iter()
                    .map(|f| Filter::compile(f).map_err(Unsupported))
                    .collect::<Result<_, _>>()?,
                prefix,
                budget: r.retry.as_ref().map(|retry| match &retry.budget {
                    Some(own) => budget(Some(own)),
                    None => shared.clone(),
                }),
                retry,
            }));
            if most_specific {
                // Each match on its own, ranked; ties keep the policy's order. No
                // match is every request: the least specific prefix, `/`.
                if r.matches.is_empty() {
                    let all = pb::RouteMatch {
                        path: Some(pb::PathMatch {
                            kind: Some(pb::path_match::Kind::Prefix("/".into())),
                            ignore_case: false,
                        }),
                        ..Default::default()
                    };
                    order.push((route_match(&all), i, rank(&all)));
                }
                order.extend(r.matches.iter().map(|m| (route_match(m), i, rank(m))));
            } else {
                // Any of the matches; none matches every request.
                let condition = if r.matches.is_empty() {
                    Match::All(vec![])
                } else {
                    Match::Any(r.matches.iter().map(route_match).collect())
                };
                order.push((condition, i, Rank::default()));
            }
        }
        // Stable: equal ranks stay in the policy's order (oldest route, then name,
        // then rule), as the Gateway API breaks ties.
        order.sort_by_key(|e| std::cmp::Reverse(e.2));
        Ok(Self {
            routes,
            order: order.into_iter().map(|(m, i, _)| (m, i)).collect(),
            backends: weighted(&p.backends)?,
            not_found: p.unmatched == pb::Unmatched::NotFound as i32,
            policy: Arc::new(
                crate::backend::BackendPolicy::compile(
                    p.load_balancer.as_ref(),
                    p.connection_pool.as_ref(),
                    p.outlier_detection.as_ref(),
                    p.disable_mtls,
                )
                .map_err(Unsupported)?,
            ),
        })
    }

    /// A profile with no routes that sends requests to `backends`.
    pub fn with_backends(backends: Vec<Backend>) -> Self {
        Self {
            backends,
            ..Self::default()
        }
    }

    /// The route a request takes, if any: the first of the matches, in order, that
    /// it meets.
    pub fn route<B>(&self, req: &http::Request<B>) -> Option<Arc<Route>> {
        self.order
            .iter()
            .find(|(m, _)| m.matches(req))
            .and_then(|(_, i)| self.routes.get(*i))
            .cloned()
    }
}

/// How specific a match is, as the Gateway API ranks them (greater wins): an exact
/// path, then a regex (where the Gateway API leaves it to implementations: a regex
/// over any prefix, as Envoy Gateway ranks it, so that a catch-all `/` never hides
/// one), then a prefix; a longer path over a shorter, then a method, then
/// more header matches, then more query-parameter matches. gRPC matches rank by the
/// length of their service, then of their method, then by header matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Rank(u8, usize, usize, usize, usize);

fn rank(m: &pb::RouteMatch) -> Rank {
    use pb::path_match::Kind;
    if let Some(g) = &m.grpc {
        return Rank(0, g.service.len(), g.method.len(), m.headers.len(), 0);
    }
    let (kind, len) = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Exact(p)) => (3, p.len()),
        Some(Kind::Regex(re)) => (2, re.len()),
        Some(Kind::Prefix(p)) => (1, p.trim_end_matches('/').len().max(1)),
        Some(Kind::StringPrefix(p)) => (1, p.len().max(1)),
        None => (1, 1),
    };
    Rank(
        kind,
        len,
        usize::from(!m.method.is_empty()),
        m.headers.len(),
        m.query_params.len(),
    )
}

/// A policy's weighted backends as the proxy keeps them.
fn weighted(backends: &[pb::WeightedBackend]) -> Result<Vec<Backend>, Unsupported> {
    backends
        .iter()
        .filter_map(|b| {
            let target = match b.backend.as_ref()?.kind.as_ref()? {
                pb::backend::Kind::Authority(a) => Target::Authority(a.clone()),
                pb::backend::Kind::Failure(f) => Target::Fail(
                    u16::try_from(f.status)
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .filter(|s| s.is_client_error() || s.is_server_error())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    Arc::from(f.message.as_str()),
                ),
                pb::backend::Kind::Subset(s) => Target::Subset(
                    s.authority.clone(),
                    Arc::new(s.labels.clone().into_iter().collect()),
                ),
            };
            let filters: Result<Vec<Filter>, _> = b
                .filters
                .iter()
                .map(|f| Filter::compile(f).map_err(Unsupported))
                .collect();
            let policy = b
                .policy
                .as_ref()
                .map(|p| {
                    crate::backend::BackendPolicy::of(p)
                        .map(Arc::new)
                        .map_err(Unsupported)
                })
                .transpose();
            Some(filters.and_then(|filters| {
                Ok(Backend {
                    target,
                    weight: b.weight,
                    filters: filters.into(),
                    policy: policy?,
                })
            }))
        })
        .collect()
}

impl Route {
    /// Whether a response with `status` is a failure, by the route's classes (first
    /// match wins); responses no class covers are failures when 5xx.
    pub fn is_failure(&self, status: StatusCode) -> Option<bool> {
        let code = u32::from(status.as_u16());
        self.classes
            .iter()
            .find(|(m, _)| m.matches(code))
            .map(|(_, failure)| *failure)
    }
}

impl Match {
    fn matches<B>(&self, req: &http::Request<B>) -> bool {
        let path = req.uri().path();
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(req)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Self::Not(m) => !m.matches(req),
            Self::Path(re) => re.is_match(path.as_bytes()),
            Self::Exact(p) => path == p,
            Self::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || p.is_empty()),
            Self::StringPrefix(p) => path.starts_with(p.as_str()),
            Self::ExactNoCase(p) => path.eq_ignore_ascii_case(p),
            Self::StringPrefixNoCase(p) => path
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            Self::Method(m) => m == req.method(),
            Self::MethodValue(v) => v.matches(req.method().as_str().as_bytes()),
            Self::Authority(v) => crate::http::headers::request_authority(req)
                .is_some_and(|a| v.matches(a.as_bytes())),
            Self::Header(name, value) => req
                .headers()
                .get_all(name)
                .iter()
                .any(|v| value.matches(v.as_bytes())),
            Self::Query(name, value) => {
                query_param(req.uri().query(), name).is_some_and(|v| value.matches(v.as_bytes()))
            }
            Self::Never => false,
            Self::Grpc(service, method) => path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(s, m)| !m.contains('/') && service.matches(s) && method.matches(m)),
        }
    }
}

/// The first value of parameter `name` in `query` (`a=1&b&c=3`; a parameter without
/// `=` has an empty value).
pub(crate) fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

impl StatusMatch {
    fn matches(&self, code: u32) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(code)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(code)),
            Self::Not(m) => !m.matches(code),
            Self::Range(min, max) => (*min..=*max).contains(&code),
            Self::Never => false,
        }
    }
}

/// A regex over the whole path, anchored here (the controller checked the same
/// anchored form against the size bounds).
fn path_regex(re: &str) -> Match {
    let anchored = mesh_api::profile::anchored(re);
    mesh_api::profile::compile_anchored(&anchored).map_or(Match::Never, Match::Path)
}

/// One compiled route match (path, method, headers, query parameters, gRPC method),
/// for other stages that match requests as routes do (inbound authorization).
#[derive(Debug)]
pub struct RequestMatcher(Match);

impl RequestMatcher {
    /// Compiles `m`; what cannot be compiled matches nothing.
    pub fn compile(m: &pb::RouteMatch) -> Self {
        Self(route_match(m))
    }

    /// Whether `req` meets every part of the match.
    pub fn matches<B>(&self, req: &http::Request<B>) -> bool {
        self.0.matches(req)
    }
}

/// One of a route's matches: all of its parts.
fn route_match(m: &pb::RouteMatch) -> Match {
    use pb::path_match::Kind;
    let mut all = Vec::new();
    let no_case = m.path.as_ref().is_some_and(|p| p.ignore_case);
    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Exact(p)) if no_case => all.push(Match::ExactNoCase(p.clone())),
        Some(Kind::Exact(p)) => all.push(Match::Exact(p.clone())),
        Some(Kind::Prefix(p)) => all.push(Match::Prefix(p.trim_end_matches('/').to_string())),
        Some(Kind::StringPrefix(p)) if no_case => all.push(Match::StringPrefixNoCase(p.clone())),
        Some(Kind::StringPrefix(p)) => all.push(Match::StringPrefix(p.clone())),
        Some(Kind::Regex(re)) => all.push(path_regex(re)),
        None => {}
    }
    if !m.method.is_empty() {
        all.push(Method::from_bytes(m.method.as_bytes()).map_or(Match::Never, Match::Method));
    }
    if let Some(g) = &m.grpc {
        all.push(
            match (
                Name::compile(&g.service, g.regex),
                Name::compile(&g.method, g.regex),
            ) {
                (Some(s), Some(m)) => Match::Grpc(s, m),
                _ => Match::Never,
            },
        );
    }
    all.extend(m.headers.iter().map(header_match));
    all.extend(m.query_params.iter().map(query_match));
    if let Some(c) = &m.condition {
        all.push(request_match(c));
    }
    Match::All(all)
}

/// A header's or query parameter's value condition, as either message writes it.
enum Spec<'a> {
    Exact(&'a str),
    Regex(&'a str),
    /// `false`: absent.
    Present(bool),
}

/// The value match of `spec` and whether it is negated (`present: false` is "absent");
/// a regex is anchored at both ends, as paths' are. `None` when it does not compile.
fn value(spec: Spec<'_>) -> Option<(Value, bool)> {
    match spec {
        Spec::Exact(e) => Some((Value::Exact(e.as_bytes().to_vec()), false)),
        Spec::Regex(re) => mesh_api::profile::compile_anchored(&mesh_api::profile::anchored(re))
            .ok()
            .map(|re| (Value::Regex(re), false)),
        Spec::Present(present) => Some((Value::Present, !present)),
    }
}

/// `m`, or its negation. What could not be compiled (`Never`) stays matching nothing.
fn negated(m: Match, negate: bool) -> Match {
    if negate { Match::Not(Box::new(m)) } else { m }
}

fn header_match(h: &pb::HeaderMatch) -> Match {
    use pb::header_match::Value as V;
    let spec = match &h.value {
        Some(V::Exact(e)) => Spec::Exact(e),
        Some(V::Regex(re)) => Spec::Regex(re),
        Some(V::Present(p)) => Spec::Present(*p),
        None => return Match::Never,
    };
    let pseudo = |v: Option<(Value, bool)>, m: fn(Value) -> Match| match v {
        Some((v, absent)) => negated(m(v), h.invert != absent),
        None => Match::Never,
    };
    match h.name.as_str() {
        ":authority" => return pseudo(value(spec), Match::Authority),
        ":method" => return pseudo(value(spec), Match::MethodValue),
        _ => {}
    }
    match (http::HeaderName::from_bytes(h.name.as_bytes()), value(spec)) {
        (Ok(name), Some((v, absent))) => negated(Match::Header(name, v), h.invert != absent),
        _ => Match::Never,
    }
}

fn query_match(q: &pb::QueryParamMatch) -> Match {
    use pb::query_param_match::Value as V;
    let spec = match &q.value {
        Some(V::Exact(e)) => Spec::Exact(e),
        Some(V::Regex(re)) => Spec::Regex(re),
        Some(V::Present(p)) => Spec::Present(*p),
        None => return Match::Never,
    };
    match value(spec) {
        Some((v, absent)) if !q.name.is_empty() => negated(Match::Query(q.name.clone(), v), absent),
        _ => Match::Never,
    }
}

fn request_match(m: &pb::RequestMatch) -> Match {
    use pb::request_match::Match as M;
    match &m.r#match {
        Some(M::All(seq)) => Match::All(seq.matches.iter().map(request_match).collect()),
        Some(M::Any(seq)) => Match::Any(seq.matches.iter().map(request_match).collect()),
        Some(M::Not(inner)) => Match::Not(Box::new(request_match(inner))),
        Some(M::PathRegex(re)) => path_regex(re),
        Some(M::Method(method)) => {
            Method::from_bytes(method.as_bytes()).map_or(Match::Never, Match::Method)
        }
        Some(M::Header(h)) => header_match(h),
        Some(M::QueryParam(q)) => query_match(q),
        None => Match::Never,
    }
}

fn status_match(m: &pb::ResponseMatch) -> StatusMatch {
    use pb::response_match::Match as M;
    match &m.r#match {
        Some(M::All(seq)) => StatusMatch::All(seq.matches.iter().map(status_match).collect()),
        Some(M::Any(seq)) => StatusMatch::Any(seq.matches.iter().map(status_match).collect()),
        Some(M::Not(inner)) => StatusMatch::Not(Box::new(status_match(inner))),
        Some(M::Status(r)) => StatusMatch::Range(r.min, r.max),
        None => StatusMatch::Never,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("request")
    }

    fn profile() -> Profile {
        use pb::request_match::{Match as M, Seq};
        let m = |x: M| pb::RequestMatch { r#match: Some(x) };
        let cond = |x: M| {
            vec![pb::RouteMatch {
                condition: Some(m(x)),
                ..Default::default()
            }]
        };
        let routes = vec![
            pb::HttpRoute {
                name: "POST /api".into(),
                matches: cond(M::All(Seq {
                    matches: vec![
                        m(M::Method("POST".into())),
                        m(M::PathRegex("^(?:/api)$".into())),
                    ],
                })),
                timeouts: Some(pb::Timeouts {
                    request_ms: 200,
                    ..Default::default()
                }),
                response_classes: vec![pb::ResponseClass {
                    condition: Some(pb::ResponseMatch {
                        r#match: Some(pb::response_match::Match::Status(pb::StatusRange {
                            min: 500,
                            max: 503,
                        })),
                    }),
                    is_failure: false,
                }],
                ..Default::default()
            },
            pb::HttpRoute {
                name: "GET".into(),
                matches: cond(M::Method("GET".into())),
                ..Default::default()
            },
        ];
        Profile::compile(&pb::OutboundPolicy {
            routes,
            ..Default::default()
        })
        .expect("supported")
    }

    #[test]
    fn istio_string_prefixes_ignore_case_and_pseudo_headers_match() {
        use pb::header_match::Value;
        use pb::path_match::Kind;
        let route = |name: &str, kind: Kind, ignore_case: bool, headers: Vec<pb::HeaderMatch>| {
            pb::HttpRoute {
                name: name.into(),
                matches: vec![pb::RouteMatch {
                    path: Some(pb::PathMatch {
                        kind: Some(kind),
                        ignore_case,
                    }),
                    headers,
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let header = |name: &str, value: Value| pb::HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert: false,
        };
        let p = Profile::compile(&pb::OutboundPolicy {
            routes: vec![
                route(
                    "authority",
                    Kind::StringPrefix("/".into()),
                    false,
                    vec![header(":authority", Value::Regex("admin\\..*".into()))],
                ),
                route(
                    "method",
                    Kind::StringPrefix("/".into()),
                    false,
                    vec![header(":method", Value::Regex("P.*".into()))],
                ),
                route("exact", Kind::Exact("/Login".into()), true, vec![]),
                route("prefix", Kind::StringPrefix("/api".into()), false, vec![]),
                route("nocase", Kind::StringPrefix("/Static".into()), true, vec![]),
            ],
            ..Default::default()
        })
        .expect("supported");
        let name =
            |method: Method, uri: &str| p.route(&req(method, uri)).map(|r| r.name.to_string());
        assert_eq!(
            name(Method::GET, "/apix").as_deref(),
            Some("prefix"),
            "a string prefix"
        );
        assert_eq!(name(Method::GET, "/ap"), None);
        assert_eq!(name(Method::GET, "/LOGIN").as_deref(), Some("exact"));
        assert_eq!(name(Method::GET, "/login/x"), None);
        assert_eq!(name(Method::GET, "/sTaTiCfiles").as_deref(), Some("nocase"));
        assert_eq!(name(Method::PUT, "/x").as_deref(), Some("method"));
        assert_eq!(
            name(Method::GET, "http://admin.example:80/x").as_deref(),
            Some("authority")
        );
        assert_eq!(
            p.routes[3].prefix, "/api",
            "a rewrite replaces the string prefix"
        );
    }

    #[test]
    fn paths_match_exactly_by_prefix_element_wise_or_by_regex() {
        use pb::path_match::Kind;
        let route = |name: &str, kind: Kind| pb::HttpRoute {
            name: name.into(),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(kind),
                    ..Default::default()
                }),
                method: "GET".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = Profile::compile(&pb::OutboundPolicy {
            routes: vec![
                route("exact", Kind::Exact("/a".into())),
                route("prefix", Kind::Prefix("/api/".into())),
                route("regex", Kind::Regex("/v[0-9]+".into())),
            ],
            ..Default::default()
        })
        .expect("supported");
        let name =
            |method: Method, path: &str| p.route(&req(method, path)).map(|r| r.name.to_string());
        assert_eq!(name(Method::GET, "/a").as_deref(), Some("exact"));
        assert_eq!(name(Method::GET, "/a/b"), None);
        assert_eq!(name(Method::GET, "/api").as_deref(), Some("prefix"));
        assert_eq!(name(Method::GET, "/api/x").as_deref(), Some("prefix"));
        assert_eq!(name(Method::GET, "/apix"), None, "element-wise");
        assert_eq!(name(Method::GET, "/v12").as_deref(), Some("regex"));
        assert_eq!(name(Method::GET, "/v12/x"), None, "anchored");
        assert_eq!(name(Method::POST, "/a"), None, "and the method");
    }

    #[test]
    fn headers_and_query_parameters_are_matched() {
        use pb::header_match::Value as H;
        use pb::query_param_match::Value as Q;
        let header = |name: &str, value: H, invert: bool| pb::HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert,
        };
        let query = |name: &str, value: Q| pb::QueryParamMatch {
            name: name.into(),
            value: Some(value),
        };
        let route = |name: &str, m: pb::RouteMatch| pb::HttpRoute {
            name: name.into(),
            matches: vec![m],
            ..Default::default()
        };
        let p = Profile::compile(&pb::OutboundPolicy {
            routes: vec![
                // The examples' canary: a header, exactly (names case-insensitive).
                route(
                    "jason",
                    pb::RouteMatch {
                        headers: vec![header("End-User", H::Exact("jason".into()), false)],
                        ..Default::default()
                    },
                ),
                // A regex over the whole value, and a parameter that must be there.
                route(
                    "v2-beta",
                    pb::RouteMatch {
                        headers: vec![header("x-version", H::Regex("v2|v3".into()), false)],
                        query_params: vec![query("beta", Q::Present(true))],
                        ..Default::default()
                    },
                ),
                route(
                    "debug",
                    pb::RouteMatch {
                        query_params: vec![query("debug", Q::Exact("1".into()))],
                        ..Default::default()
                    },
                ),
                // Absent: an inverted presence.
                route(
                    "anonymous",
                    pb::RouteMatch {
                        headers: vec![header("authorization", H::Present(true), true)],
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        })
        .expect("supported");
        let name = |uri: &str, headers: &[(&str, &str)]| {
            let mut r = req(Method::GET, uri);
            for (k, v) in headers {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    http::HeaderValue::from_str(v).expect("value"),
                );
            }
            p.route(&r).map(|r| r.name.to_string())
        };
        let auth = ("authorization", "Bearer x");
        assert_eq!(
            name("/", &[("end-user", "jason"), auth]).as_deref(),
            Some("jason")
        );
        assert_eq!(name("/", &[("end-user", "jasonx"), auth]), None, "exactly");
        // Any of a repeated header's values.
        assert_eq!(
            name("/", &[("end-user", "bob"), ("end-user", "jason"), auth]).as_deref(),
            Some("jason")
        );
        assert_eq!(
            name("/?beta", &[("x-version", "v3"), auth]).as_deref(),
            Some("v2-beta")
        );
        assert_eq!(
            name("/?beta=", &[("x-version", "v22"), auth]),
            None,
            "anchored"
        );
        assert_eq!(
            name("/", &[("x-version", "v2"), auth]),
            None,
            "beta is needed"
        );
        assert_eq!(name("/x?a=1&debug=1", &[auth]).as_deref(), Some("debug"));
        // The first occurrence decides; names are case-sensitive.
        assert_eq!(name("/x?debug=0&debug=1", &[auth]), None);
        assert_eq!(name("/x?Debug=1", &[auth]), None);
        assert_eq!(name("/x", &[]).as_deref(), Some("anonymous"));
        // `present: false` is "absent", for headers and parameters alike.
        let absent = Profile::compile(&pb::OutboundPolicy {
            routes: vec![route(
                "no-trace-no-debug",
                pb::RouteMatch {
                    headers: vec![header("x-trace", H::Present(false), false)],
                    query_params: vec![query("debug", Q::Present(false))],
                    ..Default::default()
                },
            )],
            ..Default::default()
        })
        .expect("supported");
        let hit = |uri: &str, trace: bool| {
            let mut r = req(Method::GET, uri);
            if trace {
                r.headers_mut()
                    .insert("x-trace", http::HeaderValue::from_static("1"));
            }
            absent.route(&r).is_some()
        };
        assert!(hit("/", false));
        assert!(!hit("/", true));
        assert!(!hit("/?debug", false));
    }

    #[test]
    fn a_header_match_that_cannot_compile_matches_nothing_even_inverted() {
        let p = Profile::compile(&pb::OutboundPolicy {
            routes: vec![pb::HttpRoute {
                name: "bad".into(),
                matches: vec![pb::RouteMatch {
                    headers: vec![pb::HeaderMatch {
                        name: "not a header name".into(),
                        value: Some(pb::header_match::Value::Present(true)),
                        invert: true,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("supported");
        assert!(p.route(&req(Method::GET, "/")).is_none());
    }

    #[test]
    fn what_this_proxy_cannot_do_is_refused_whole() {
        let filtered = pb::OutboundPolicy {
            routes: vec![pb::HttpRoute {
                name: "r".into(),
                filters: vec![pb::Filter::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            Profile::compile(&filtered)
                .expect_err("refused")
                .to_string(),
            "unsupported in this proxy: an empty filter"
        );
        // Connection pools bounding idle time are not done here yet; bounds on
        // requests and connections are.
        let pooled = |idle_timeout_ms| pb::OutboundPolicy {
            connection_pool: Some(pb::ConnectionPool {
                max_connections: 1,
                max_requests_per_connection: 2,
                idle_timeout_ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(Profile::compile(&pooled(1)).is_err());
        let policy = Profile::compile(&pooled(0))
            .expect("supported")
            .policy
            .clone();
        assert_eq!(policy.limits.map(|l| l.max_in_flight), Some(1));
        assert_eq!(policy.connections.max_requests, Some(2));
        let ordered = pb::OutboundPolicy {
            route_order: 7,
            ..Default::default()
        };
        assert!(Profile::compile(&ordered).is_err());
    }

    #[test]
    fn the_most_specific_match_wins_across_routes() {
        use pb::path_match::Kind;
        let m = |path: Option<Kind>, method: &str, headers: usize, queries: usize| pb::RouteMatch {
            path: path.map(|k| pb::PathMatch {
                kind: Some(k),
                ..Default::default()
            }),
            method: method.into(),
            headers: (0..headers)
                .map(|i| pb::HeaderMatch {
                    name: format!("h{i}"),
                    value: Some(pb::header_match::Value::Exact("1".into())),
                    invert: false,
                })
                .collect(),
            query_params: (0..queries)
                .map(|i| pb::QueryParamMatch {
                    name: format!("q{i}"),
                    value: Some(pb::query_param_match::Value::Exact("1".into())),
                })
                .collect(),
            ..Default::default()
        };
        let route = |name: &str, matches| pb::HttpRoute {
            name: name.into(),
            matches,
            ..Default::default()
        };
        let prefix = |p: &str| Some(Kind::Prefix(p.into()));
        let p = Profile::compile(&pb::OutboundPolicy {
            route_order: pb::RouteOrder::MostSpecific.into(),
            unmatched: pb::Unmatched::NotFound.into(),
            routes: vec![
                // Listed first, so it wins ties.
                route("root", vec![m(prefix("/"), "", 0, 0)]),
                route("root-too", vec![m(prefix("/"), "", 0, 0)]),
                route(
                    "regex",
                    vec![m(Some(Kind::Regex("/v2e.*".into())), "", 0, 0)],
                ),
                route(
                    "v2",
                    vec![
                        m(prefix("/v2"), "", 0, 0),
                        m(Some(Kind::Exact("/x".into())), "", 0, 0),
                    ],
                ),
                route("v2-get", vec![m(prefix("/v2"), "GET", 0, 0)]),
                route("v2-headers", vec![m(prefix("/v2"), "", 2, 0)]),
                route("v2-header-query", vec![m(prefix("/v2"), "", 1, 3)]),
                route(
                    "v2-exact",
                    vec![m(Some(Kind::Exact("/v2".into())), "", 0, 0)],
                ),
            ],
            ..Default::default()
        })
        .expect("supported");
        assert!(p.not_found);
        let name = |method: Method, uri: &str, headers: &[&str]| {
            let mut r = req(method, uri);
            for h in headers {
                r.headers_mut().insert(
                    http::HeaderName::from_bytes(h.as_bytes()).expect("name"),
                    http::HeaderValue::from_static("1"),
                );
            }
            p.route(&r).map(|r| r.name.to_string()).unwrap_or_default()
        };
        assert_eq!(
            name(Method::GET, "/other", &[]),
            "root",
            "ties: the first listed"
        );
        assert_eq!(
            name(Method::POST, "/v2example", &[]),
            "regex",
            "a regex over a prefix"
        );
        assert_eq!(name(Method::POST, "/v2x", &[]), "root", "whole segments");
        assert_eq!(name(Method::POST, "/v2/a", &[]), "v2");
        assert_eq!(
            name(Method::GET, "/v2/a", &["h0"]),
            "v2-get",
            "a method over headers"
        );
        assert_eq!(name(Method::POST, "/v2/a", &["h0", "h1"]), "v2-headers");
        assert_eq!(
            name(Method::POST, "/v2/a?q0=1&q1=1&q2=1", &["h0", "h1"]),
            "v2-headers",
            "more headers over more query parameters"
        );
        assert_eq!(
            name(Method::POST, "/v2/a?q0=1&q1=1&q2=1", &["h0"]),
            "v2-header-query"
        );
        assert_eq!(
            name(Method::GET, "/v2", &["h0", "h1"]),
            "v2-exact",
            "exact first"
        );
        assert_eq!(
            name(Method::GET, "/x", &[]),
            "v2",
            "any of a rule's matches"
        );
    }

    #[test]
    fn grpc_methods_match_by_service_and_method() {
        let g = |service: &str, method: &str, regex: bool| pb::RouteMatch {
            grpc: Some(pb::GrpcMethodMatch {
                service: service.into(),
                method: method.into(),
                regex,
            }),
            ..Default::default()
        };
        let route = |name: &str, m| pb::HttpRoute {
            name: name.into(),
            matches: vec![m],
            ..Default::default()
        };
        let p = Profile::compile(&pb::OutboundPolicy {
            route_order: pb::RouteOrder::MostSpecific.into(),
            routes: vec![
                route("any", g("", "", false)),
                route("service", g("pkg.Greeter", "", false)),
                route("method", g("pkg.Greeter", "SayHello", false)),
                route("regex", g("pkg\\..*", "Say.*", true)),
            ],
            ..Default::default()
        })
        .expect("supported");
        let name = |path: &str| {
            p.route(&req(Method::POST, path))
                .map(|r| r.name.to_string())
        };
        assert_eq!(name("/pkg.Greeter/SayHello").as_deref(), Some("method"));
        assert_eq!(name("/pkg.Greeter/Other").as_deref(), Some("service"));
        assert_eq!(name("/pkg.Other/SayBye").as_deref(), Some("regex"));
        assert_eq!(name("/other.Svc/SayBye").as_deref(), Some("any"));
    }

    #[test]
    fn retries_say_what_they_retry() {
        let p = Profile::compile(&pb::OutboundPolicy {
            routes: vec![pb::HttpRoute {
                name: "r".into(),
                retry: Some(pb::Retry {
                    max_retries: 1,
                    conditions: Some(pb::RetryConditions {
                        http_statuses: vec![pb::StatusRange { min: 502, max: 503 }],
                        grpc_codes: vec![14],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("supported");
        let r = p.route(&req(Method::GET, "/")).expect("route");
        let on = r.retry.as_ref().expect("retry");
        assert_eq!(
            (
                on.max_attempts,
                on.statuses.as_slice(),
                on.grpc_codes.as_slice()
            ),
            (2, &[(502, 503)][..], &[14][..])
        );
        assert!(!on.failure_class && !on.connect_failure);
        assert!(r.budget.is_some());
    }

    #[test]
    fn picks_follow_weights() {
        let b = Backend::service;
        let backends = [b("v1", 800), b("v2", 200), b("v3", 0)];
        let mut hits = [0u32; 3];
        for _ in 0..10_000 {
            let chosen = pick(&backends).expect("some");
            hits[backends
                .iter()
                .position(|x| std::ptr::eq(x, chosen))
                .expect("known")] += 1;
        }
        assert_eq!(hits[2], 0);
        assert!((7_700..=8_300).contains(&hits[0]), "{hits:?}");
        assert!(pick(&[b("x", 0)]).is_none());
    }

    #[test]
    fn the_first_matching_route_wins_and_paths_match_whole() {
        let p = profile();
        let api = p.route(&req(Method::POST, "/api")).expect("route");
        assert_eq!(&*api.name, "POST /api");
        assert_eq!(api.timeout, Some(Duration::from_millis(200)));
        assert!(
            p.route(&req(Method::POST, "/api/x")).is_none(),
            "pathRegex must match the whole path"
        );
        assert_eq!(
            &*p.route(&req(Method::GET, "/anything")).expect("GET").name,
            "GET"
        );
        assert!(p.route(&req(Method::DELETE, "/")).is_none());
    }

    #[test]
    fn response_classes_decide_failure() {
        let p = profile();
        let api = p.route(&req(Method::POST, "/api")).expect("route");
        assert_eq!(api.is_failure(StatusCode::SERVICE_UNAVAILABLE), Some(false));
        assert_eq!(api.is_failure(StatusCode::GATEWAY_TIMEOUT), None);
    }
}
