//! ServiceProfiles as the proxy applies them: routes compiled once per profile update,
//! matched against each request, with the route's timeout and response classes.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mesh_api::destination as pb;
use tower::retry::budget::TpsBudget;

/// The route name of requests no route matches.
pub const DEFAULT_ROUTE: &str = "default";

/// A profile ready to match requests.
#[derive(Debug, Default)]
pub struct Profile {
    /// Routes in order; the first match wins.
    pub routes: Vec<Arc<Route>>,
    /// Weighted backends (TrafficSplit or dstOverrides).
    pub backends: Vec<Backend>,
}

/// A weighted backend authority (from a TrafficSplit or `dstOverrides`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The backend's authority.
    pub authority: String,
    /// Its weight, in thousandths.
    pub weight: u64,
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
#[derive(Debug)]
pub struct Route {
    /// Its name, the `route` metric label.
    pub name: Arc<str>,
    condition: Match,
    classes: Vec<(StatusMatch, bool)>,
    /// Its timeout, covering the whole request.
    pub timeout: Option<Duration>,
    /// The retry budget, for retryable routes: the route's own or the profile's.
    pub budget: Option<Arc<TpsBudget>>,
}

/// The profile and route a request was matched to (outbound), as an extension the
/// layers below read.
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// The destination's profile.
    pub profile: Arc<Profile>,
    /// The matching route, if any.
    pub route: Option<Arc<Route>>,
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
    Method(Method),
    /// A condition that could not be compiled matches nothing (the controller
    /// validates, so this only guards against a newer controller's additions).
    Never,
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
    /// Compiles a profile from the destination service.
    pub fn compile(p: &pb::Profile) -> Self {
        let shared = budget(p.retry_budget.as_ref());
        let routes = p
            .routes
            .iter()
            .map(|r| {
                Arc::new(Route {
                    name: Arc::from(r.name.as_str()),
                    condition: r.condition.as_ref().map_or(Match::Never, request_match),
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
                    timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
                    budget: r.is_retryable.then(|| match &r.retry_budget {
                        Some(own) => budget(Some(own)),
                        None => shared.clone(),
                    }),
                })
            })
            .collect();
        let backends = p
            .dst_overrides
            .iter()
            .map(|d| Backend {
                authority: d.authority.clone(),
                weight: d.weight,
            })
            .collect();
        Self { routes, backends }
    }

    /// The first route matching a request, if any.
    pub fn route(&self, method: &Method, path: &str) -> Option<Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.condition.matches(method, path))
            .cloned()
    }
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
    fn matches(&self, method: &Method, path: &str) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(method, path)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(method, path)),
            Self::Not(m) => !m.matches(method, path),
            Self::Path(re) => re.is_match(path.as_bytes()),
            Self::Method(m) => m == method,
            Self::Never => false,
        }
    }
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

fn request_match(m: &pb::RequestMatch) -> Match {
    use pb::request_match::Match as M;
    match &m.r#match {
        Some(M::All(seq)) => Match::All(seq.matches.iter().map(request_match).collect()),
        Some(M::Any(seq)) => Match::Any(seq.matches.iter().map(request_match).collect()),
        Some(M::Not(inner)) => Match::Not(Box::new(request_match(inner))),
        // The controller sends the regex already anchored to the whole path.
        Some(M::PathRegex(re)) => {
            mesh_api::profile::compile_anchored(re).map_or(Match::Never, Match::Path)
        }
        Some(M::Method(method)) => {
            Method::from_bytes(method.as_bytes()).map_or(Match::Never, Match::Method)
        }
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

    fn profile() -> Profile {
        use pb::request_match::{Match as M, Seq};
        let m = |x: M| pb::RequestMatch { r#match: Some(x) };
        let routes = vec![
            pb::Route {
                name: "POST /api".into(),
                condition: Some(m(M::All(Seq {
                    matches: vec![
                        m(M::Method("POST".into())),
                        m(M::PathRegex("^(?:/api)$".into())),
                    ],
                }))),
                timeout_ms: 200,
                response_classes: vec![pb::ResponseClass {
                    condition: Some(pb::ResponseMatch {
                        r#match: Some(pb::response_match::Match::Status(
                            pb::response_match::StatusRange { min: 500, max: 503 },
                        )),
                    }),
                    is_failure: false,
                }],
                ..Default::default()
            },
            pb::Route {
                name: "GET".into(),
                condition: Some(m(M::Method("GET".into()))),
                ..Default::default()
            },
        ];
        Profile::compile(&pb::Profile {
            routes,
            ..Default::default()
        })
    }

    #[test]
    fn picks_follow_weights() {
        let b = |a: &str, w| Backend {
            authority: a.into(),
            weight: w,
        };
        let backends = [b("v1", 800), b("v2", 200), b("v3", 0)];
        let mut hits = [0u32; 3];
        for _ in 0..10_000 {
            let chosen = pick(&backends).expect("some");
            hits[backends.iter().position(|x| x == chosen).expect("known")] += 1;
        }
        assert_eq!(hits[2], 0);
        assert!((7_700..=8_300).contains(&hits[0]), "{hits:?}");
        assert!(pick(&[b("x", 0)]).is_none());
    }

    #[test]
    fn the_first_matching_route_wins_and_paths_match_whole() {
        let p = profile();
        let api = p.route(&Method::POST, "/api").expect("route");
        assert_eq!(&*api.name, "POST /api");
        assert_eq!(api.timeout, Some(Duration::from_millis(200)));
        assert!(
            p.route(&Method::POST, "/api/x").is_none(),
            "pathRegex must match the whole path"
        );
        assert_eq!(
            &*p.route(&Method::GET, "/anything").expect("GET").name,
            "GET"
        );
        assert!(p.route(&Method::DELETE, "/").is_none());
    }

    #[test]
    fn response_classes_decide_failure() {
        let p = profile();
        let api = p.route(&Method::POST, "/api").expect("route");
        assert_eq!(api.is_failure(StatusCode::SERVICE_UNAVAILABLE), Some(false));
        assert_eq!(api.is_failure(StatusCode::GATEWAY_TIMEOUT), None);
    }
}
