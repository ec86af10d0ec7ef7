//! The Gateway API front-end: `HTTPRoute`s and `GRPCRoute`s attached to a Service
//! (GAMMA) compiled into its [`pb::OutboundPolicy`], and the conditions each route
//! earns (`Accepted`, `ResolvedRefs`) for its status, the log and `mesh check`.
//!
//! Merging follows the Gateway API: every rule of every attached route is one
//! candidate, and the proxy picks the most specific match (exact path, longest prefix,
//! method, most headers, most query parameters); ties go to the oldest route, then
//! the route first by `namespace/name`, then the rule listed first — the order this
//! module lists them in. Once a route is attached, a request none of its rules match
//! is answered 404. A GRPCRoute and an HTTPRoute on the same Service conflict: the
//! GRPCRoute wins (GEP-1426).

use mesh_api::gateway::{
    BackendObjectRef, FilterType, GrpcRouteSpec, HttpBackendRef, HttpPathModifier, HttpRouteFilter,
    HttpRouteSpec, PathMatchType, PathModifierType, StringMatchType, ValueMatch,
};
use mesh_api::policy as pb;

use crate::annotations::{ClientPolicy, RetryPolicy, TimeoutPolicy};

/// An `HTTPRoute` or a `GRPCRoute` and when it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRoute {
    /// Its spec.
    pub spec: RouteSpec,
    /// `metadata.creationTimestamp` (RFC 3339, as the API server writes it); objects
    /// from a folder have none and tie on age.
    pub created: Option<String>,
    /// Its retry and timeout annotations (Linkerd's).
    pub client: ClientPolicy,
    /// `metadata.generation`: which version of the spec this is.
    pub generation: Option<i64>,
}

/// The two route kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteSpec {
    /// An `HTTPRoute`.
    Http(HttpRouteSpec),
    /// A `GRPCRoute`.
    Grpc(GrpcRouteSpec),
}

impl GatewayRoute {
    /// Its parents.
    pub fn parent_refs(&self) -> &[mesh_api::gateway::ParentRef] {
        match &self.spec {
            RouteSpec::Http(s) => &s.parent_refs,
            RouteSpec::Grpc(s) => &s.parent_refs,
        }
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match &self.spec {
            RouteSpec::Http(_) => "HTTPRoute",
            RouteSpec::Grpc(_) => "GRPCRoute",
        }
    }

    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<mesh_api::FieldError> {
        match &self.spec {
            RouteSpec::Http(s) => s.validate(),
            RouteSpec::Grpc(s) => s.validate(),
        }
    }

    /// The Services (namespace, name) this route attaches to, the route's own
    /// namespace filling in for parents that name none.
    pub fn services<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.parent_refs()
            .iter()
            .filter(|p| p.is_service())
            .map(move |p| (p.namespace.as_deref().unwrap_or(namespace), p.name.as_str()))
    }

    /// The Linkerd Servers (namespace, name) this route attaches to.
    pub fn servers<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.parent_refs()
            .iter()
            .filter(|p| mesh_api::linkerd::is_server(p))
            .map(move |p| (p.namespace.as_deref().unwrap_or(namespace), p.name.as_str()))
    }

    /// Whether it attaches to port `port` of Service `namespace/name`.
    pub fn attaches(&self, route_ns: &str, namespace: &str, name: &str, port: u16) -> bool {
        self.parent_refs().iter().any(|p| {
            p.is_service()
                && p.namespace.as_deref().unwrap_or(route_ns) == namespace
                && p.name == name
                && p.port.is_none_or(|p| p == port)
        })
    }
}

/// A route attached to the Service being compiled.
#[derive(Debug)]
pub struct Attached<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The route.
    pub route: &'a GatewayRoute,
}

/// What a backend reference found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A Service with that port.
    Found,
    /// No such Service.
    NoService,
    /// The Service has no such port.
    NoPort,
    /// The Service is in another namespace, and no ReferenceGrant there lets the route
    /// refer to it.
    NotPermitted,
}

/// A backend reference to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup<'a> {
    /// The Service's namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// The port.
    pub port: u16,
    /// For a reference across namespaces, the referring route's kind and namespace,
    /// which a ReferenceGrant in the Service's namespace must allow.
    pub from: Option<(&'static str, &'a str)>,
}

/// A condition of a route's status, as the Gateway API names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs`.
    pub kind: &'static str,
    /// Whether it holds.
    pub status: bool,
    /// The reason, CamelCase (`Accepted`, `BackendNotFound`, …).
    pub reason: &'static str,
    /// In words.
    pub message: String,
}

/// What the compilation said about one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The route's kind.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `Accepted` and `ResolvedRefs` conditions.
    pub conditions: Vec<Condition>,
    /// The generation of the route they speak of (its `observedGeneration`).
    pub generation: Option<i64>,
}

impl Report {
    /// Each condition that does not hold, in words (`ResolvedRefs is False
    /// (BackendNotFound): …`); none when the route is accepted and resolved.
    pub fn problems(&self) -> Vec<String> {
        self.conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} is False ({}): {}", c.kind, c.reason, c.message))
            .collect()
    }
}

/// A route's reports, one per parent Service (namespace, name).
pub type ParentReports = Vec<((String, String), Report)>;

/// Finds whether a Service (namespace, name) has a port.
pub type Resolver<'r> = dyn FnMut(Lookup<'_>) -> Resolved + 'r;

/// The routes that apply, in precedence order: GRPCRoutes when any attach (an
/// HTTPRoute beside one is conflicted), else HTTPRoutes; the oldest first, then by
/// `namespace/name`. Returns those that apply and those that conflict.
pub fn order<'a>(mut routes: Vec<Attached<'a>>) -> (Vec<Attached<'a>>, Vec<Attached<'a>>) {
    routes.sort_by(|a, b| {
        // Folder objects have no timestamp: they tie on age.
        let age = |r: &Attached<'_>| r.route.created.clone().unwrap_or_default();
        age(a)
            .cmp(&age(b))
            .then_with(|| (a.namespace, a.name).cmp(&(b.namespace, b.name)))
    });
    let grpc = routes
        .iter()
        .any(|r| matches!(r.route.spec, RouteSpec::Grpc(_)));
    routes
        .into_iter()
        .partition(|r| matches!(r.route.spec, RouteSpec::Grpc(_)) == grpc)
}

/// Compiles `routes` (already [`order`]ed) into `policy`, the Service being
/// `namespace`; backend references are looked up with `resolve`. Returns a report
/// per route.
pub fn compile(
    routes: &[Attached<'_>],
    service: &ClientPolicy,
    namespace: &str,
    domain: &str,
    resolve: &mut Resolver<'_>,
    policy: &mut pb::OutboundPolicy,
) -> Vec<Report> {
    policy.route_order = pb::RouteOrder::MostSpecific.into();
    policy.unmatched = pb::Unmatched::NotFound.into();
    let mut reports = Vec::new();
    for r in routes {
        policy.sources.push(pb::ObjectRef {
            kind: r.route.kind().into(),
            namespace: r.namespace.into(),
            name: r.name.into(),
        });
        // Annotations on the route replace the Service's, retries and timeouts each
        // as a whole (as Linkerd reads them).
        let retry = r
            .route
            .client
            .retry
            .as_ref()
            .or(service.retry.as_ref())
            .and_then(retry);
        let annotated = r
            .route
            .client
            .timeouts
            .as_ref()
            .or(service.timeouts.as_ref());
        let mut refs = Refs {
            kind: r.route.kind(),
            route_ns: r.namespace,
            parent_ns: namespace,
            domain,
            resolve,
            problems: Vec::new(),
        };
        match &r.route.spec {
            RouteSpec::Http(spec) => {
                for (i, rule) in spec.rules.iter().enumerate() {
                    let matches = if rule.matches.is_empty() {
                        vec![pb::RouteMatch {
                            path: Some(prefix("/")),
                            ..Default::default()
                        }]
                    } else {
                        rule.matches.iter().map(http_match).collect()
                    };
                    let redirects = rule
                        .filters
                        .iter()
                        .any(|f| f.kind == FilterType::RequestRedirect);
                    // The rule's own timeouts (request, backendRequest) over the
                    // annotations' (request, response).
                    let mut timeouts = annotated.map(timeouts_of);
                    if let Some(t) = &rule.timeouts {
                        let out = timeouts.get_or_insert_with(Default::default);
                        if t.request.is_some() {
                            out.request_ms = millis(t.request());
                        }
                        if t.backend_request.is_some() {
                            out.per_try_ms = millis(t.backend_request());
                        }
                    }
                    policy.routes.push(pb::HttpRoute {
                        name: rule_name(r.name, rule.name.as_deref(), i),
                        matches,
                        filters: refs.filters(&rule.filters, &format!("spec.rules[{i}]")),
                        backends: refs.backends(&rule.backend_refs, redirects, i),
                        timeouts,
                        retry: retry.clone(),
                        ..Default::default()
                    });
                }
            }
            RouteSpec::Grpc(spec) => {
                for (i, rule) in spec.rules.iter().enumerate() {
                    let matches = if rule.matches.is_empty() {
                        // Any call: the least specific gRPC match.
                        vec![pb::RouteMatch {
                            grpc: Some(pb::GrpcMethodMatch::default()),
                            ..Default::default()
                        }]
                    } else {
                        rule.matches.iter().map(grpc_match).collect()
                    };
                    policy.routes.push(pb::HttpRoute {
                        name: rule_name(r.name, rule.name.as_deref(), i),
                        matches,
                        filters: refs.filters(&rule.filters, &format!("spec.rules[{i}]")),
                        backends: refs.backends(&rule.backend_refs, false, i),
                        timeouts: annotated.map(timeouts_of),
                        retry: retry.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        let resolved = match refs.problems.first() {
            None => condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
            ),
            Some((reason, _)) => condition(
                "ResolvedRefs",
                false,
                reason,
                &refs
                    .problems
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        reports.push(Report {
            kind: r.route.kind(),
            namespace: r.namespace.into(),
            name: r.name.into(),
            conditions: vec![
                condition("Accepted", true, "Accepted", "attached to the Service"),
                resolved,
            ],
            generation: r.route.generation,
        });
    }
    reports
}

/// The policy's retry of Linkerd's retry annotations; a limit of 0 retries nothing.
/// Requests no endpoint took are retried too (nothing was sent).
pub fn retry(p: &RetryPolicy) -> Option<pb::Retry> {
    (p.limit > 0).then(|| pb::Retry {
        max_retries: p.limit,
        conditions: Some(pb::RetryConditions {
            http_statuses: p
                .http
                .iter()
                .map(|(lo, hi)| pb::StatusRange {
                    min: (*lo).into(),
                    max: (*hi).into(),
                })
                .collect(),
            grpc_codes: p.grpc.clone(),
            connect_failure: true,
            ..Default::default()
        }),
        timeout_ms: millis(p.timeout),
        ..Default::default()
    })
}

/// The policy's timeouts of Linkerd's timeout annotations: `request` the whole
/// request, `response` each backend response, `idle` idle streams.
pub fn timeouts_of(t: &TimeoutPolicy) -> pb::Timeouts {
    pb::Timeouts {
        request_ms: millis(t.request),
        per_try_ms: millis(t.response),
        idle_ms: millis(t.idle),
    }
}

/// The route a Service's annotations give it when no route is attached (and no
/// ServiceProfile): every request, with the annotated retries and timeouts.
pub fn annotated_default(service: &ClientPolicy) -> Option<pb::HttpRoute> {
    if service.retry.is_none() && service.timeouts.is_none() {
        return None;
    }
    Some(pb::HttpRoute {
        name: "default".into(),
        retry: service.retry.as_ref().and_then(retry),
        timeouts: service.timeouts.as_ref().map(timeouts_of),
        ..Default::default()
    })
}

/// The outlier detection of Linkerd's consecutive failure accrual.
pub fn accrual(a: &crate::annotations::FailureAccrual) -> pb::OutlierDetection {
    pb::OutlierDetection {
        consecutive_failures: a.max_failures,
        base_ejection_ms: millis(Some(a.min_penalty)),
        max_ejection_ms: millis(Some(a.max_penalty)),
        jitter_percent: a.jitter_percent,
        ..Default::default()
    }
}

/// A report for a route that does not apply: `Accepted` false with the reason.
pub fn refused(r: &Attached<'_>, reason: &'static str, message: &str) -> Report {
    Report {
        kind: r.route.kind(),
        namespace: r.namespace.into(),
        name: r.name.into(),
        conditions: vec![condition("Accepted", false, reason, message)],
        generation: r.route.generation,
    }
}

fn condition(kind: &'static str, status: bool, reason: &'static str, message: &str) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message: message.into(),
    }
}

/// The `route` label of a rule: the route's name and the rule's name, else its index.
fn rule_name(route: &str, rule: Option<&str>, i: usize) -> String {
    match rule {
        Some(rule) => format!("{route}/{rule}"),
        None => format!("{route}/{i}"),
    }
}

fn millis(d: Option<std::time::Duration>) -> u64 {
    // 0 means unset, so anything shorter than 1 ms becomes 1 ms.
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn prefix(p: &str) -> pb::PathMatch {
    pb::PathMatch {
        kind: Some(pb::path_match::Kind::Prefix(p.into())),
        ignore_case: false,
    }
}

/// The requests a route's rules take, all together (a rule with no matches takes
/// every request): what a Linkerd Server's routes admit.
pub fn route_matches(route: &GatewayRoute) -> Vec<pb::RouteMatch> {
    fn all<M>(rules: Vec<&[M]>, one: fn(&M) -> pb::RouteMatch) -> Vec<pb::RouteMatch> {
        rules
            .into_iter()
            .flat_map(|matches| match matches {
                [] => vec![pb::RouteMatch::default()],
                ms => ms.iter().map(one).collect(),
            })
            .collect()
    }
    match &route.spec {
        RouteSpec::Http(spec) => all(
            spec.rules.iter().map(|r| r.matches.as_slice()).collect(),
            http_match,
        ),
        RouteSpec::Grpc(spec) => all(
            spec.rules.iter().map(|r| r.matches.as_slice()).collect(),
            grpc_match,
        ),
    }
}

fn grpc_match(m: &mesh_api::gateway::GrpcRouteMatch) -> pb::RouteMatch {
    pb::RouteMatch {
        // No method: any call (ranked as a gRPC match still).
        grpc: Some(
            m.method
                .as_ref()
                .map_or_else(pb::GrpcMethodMatch::default, |g| pb::GrpcMethodMatch {
                    service: g.service.clone().unwrap_or_default(),
                    method: g.method.clone().unwrap_or_default(),
                    regex: g.kind == StringMatchType::RegularExpression,
                }),
        ),
        headers: m.headers.iter().map(header).collect(),
        ..Default::default()
    }
}

fn http_match(m: &mesh_api::gateway::HttpRouteMatch) -> pb::RouteMatch {
    use pb::path_match::Kind;
    let path = m.path.clone().unwrap_or_default();
    let kind = match path.kind {
        PathMatchType::Exact => Kind::Exact(path.value),
        PathMatchType::PathPrefix => Kind::Prefix(path.value),
        PathMatchType::RegularExpression => Kind::Regex(path.value),
    };
    pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(kind),
            ignore_case: false,
        }),
        method: m.method.clone().unwrap_or_default(),
        headers: m.headers.iter().map(header).collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| pb::QueryParamMatch {
                name: q.name.clone(),
                value: Some(match q.kind {
                    StringMatchType::Exact => pb::query_param_match::Value::Exact(q.value.clone()),
                    StringMatchType::RegularExpression => {
                        pb::query_param_match::Value::Regex(q.value.clone())
                    }
                }),
            })
            .collect(),
        ..Default::default()
    }
}

fn header(h: &ValueMatch) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: h.name.clone(),
        value: Some(match h.kind {
            StringMatchType::Exact => pb::header_match::Value::Exact(h.value.clone()),
            StringMatchType::RegularExpression => pb::header_match::Value::Regex(h.value.clone()),
        }),
        invert: false,
    }
}

/// Resolves a route's references, collecting what did not resolve.
struct Refs<'a, 'r> {
    kind: &'static str,
    route_ns: &'a str,
    parent_ns: &'a str,
    domain: &'a str,
    resolve: &'a mut Resolver<'r>,
    problems: Vec<(&'static str, String)>,
}

impl Refs<'_, '_> {
    /// The authority of a backend reference, or why there is none.
    fn authority(&mut self, b: &BackendObjectRef, at: &str) -> Result<String, String> {
        let ns = b.namespace.as_deref().unwrap_or(self.route_ns);
        let problem = if !b.is_service() {
            Some((
                "InvalidKind",
                format!(
                    "{at}: {}/{} is not a Service",
                    b.group.as_deref().unwrap_or(""),
                    b.kind.as_deref().unwrap_or("")
                ),
            ))
        } else {
            let port = b.port.unwrap_or(0);
            // A route reaches Services of its own namespace and (a consumer route) of
            // its parent's; others only where a ReferenceGrant there allows it.
            let from =
                (ns != self.route_ns && ns != self.parent_ns).then_some((self.kind, self.route_ns));
            let lookup = Lookup {
                namespace: ns,
                name: &b.name,
                port,
                from,
            };
            match (self.resolve)(lookup) {
                Resolved::NotPermitted => Some((
                    "RefNotPermitted",
                    format!(
                        "{at}: Service {ns}/{} is in another namespace, and no ReferenceGrant there allows it",
                        b.name
                    ),
                )),
                Resolved::Found => {
                    return Ok(format!("{}.{ns}.svc.{}:{port}", b.name, self.domain));
                }
                Resolved::NoService => Some((
                    "BackendNotFound",
                    format!("{at}: no Service {ns}/{}", b.name),
                )),
                Resolved::NoPort => Some((
                    "BackendNotFound",
                    format!("{at}: Service {ns}/{} has no port {port}", b.name),
                )),
            }
        };
        let (reason, message) = problem.unwrap_or_default();
        self.problems.push((reason, message.clone()));
        Err(message)
    }

    fn backends(
        &mut self,
        refs: &[HttpBackendRef],
        redirects: bool,
        rule: usize,
    ) -> Vec<pb::WeightedBackend> {
        if refs.is_empty() {
            // A redirect answers before any backend is needed.
            return if redirects {
                vec![]
            } else {
                vec![failure(500, "the route's rule has no backends")]
            };
        }
        let mut out: Vec<_> = refs
            .iter()
            .enumerate()
            .map(|(k, b)| {
                let at = format!("spec.rules[{rule}].backendRefs[{k}]");
                let backend = match self.authority(&b.backend, &at) {
                    Ok(authority) => pb::backend::Kind::Authority(authority),
                    Err(message) => pb::backend::Kind::Failure(pb::Failure {
                        status: 500,
                        message,
                    }),
                };
                pb::WeightedBackend {
                    backend: Some(pb::Backend {
                        kind: Some(backend),
                    }),
                    weight: b.weight().into(),
                    filters: self.filters(&b.filters, &at),
                    policy: None,
                }
            })
            .collect();
        if out.iter().all(|b| b.weight == 0) {
            out = vec![failure(
                500,
                "every backend of the route's rule has weight 0",
            )];
        }
        out
    }

    fn filters(&mut self, filters: &[HttpRouteFilter], at: &str) -> Vec<pb::Filter> {
        use pb::filter::Kind;
        filters
            .iter()
            .enumerate()
            .filter_map(|(k, f)| {
                let kind = match f.kind {
                    FilterType::RequestHeaderModifier => {
                        Kind::RequestHeaders(modifier(f.request_header_modifier.as_ref()?))
                    }
                    FilterType::ResponseHeaderModifier => {
                        Kind::ResponseHeaders(modifier(f.response_header_modifier.as_ref()?))
                    }
                    FilterType::RequestRedirect => {
                        let r = f.request_redirect.as_ref()?;
                        Kind::Redirect(pb::Redirect {
                            scheme: r.scheme.clone().unwrap_or_default(),
                            hostname: r.hostname.clone().unwrap_or_default(),
                            path: r.path.as_ref().map(path_modifier),
                            port: r.port.unwrap_or(0).into(),
                            status: r.status_code.unwrap_or(302).into(),
                        })
                    }
                    FilterType::UrlRewrite => {
                        let r = f.url_rewrite.as_ref()?;
                        Kind::Rewrite(pb::Rewrite {
                            hostname: r.hostname.clone().unwrap_or_default(),
                            path: r.path.as_ref().map(path_modifier),
                        })
                    }
                    FilterType::RequestMirror => {
                        let m = f.request_mirror.as_ref()?;
                        let at = format!("{at}.filters[{k}].requestMirror.backendRef");
                        // A mirror that does not resolve copies nothing (reported).
                        let authority = self.authority(&m.backend_ref, &at).ok()?;
                        let fraction = match (&m.fraction, m.percent) {
                            (Some(f), _) => Some(pb::Fraction {
                                numerator: f.numerator,
                                denominator: f.denominator.unwrap_or(100),
                            }),
                            (None, Some(p)) => Some(pb::Fraction {
                                numerator: p,
                                denominator: 100,
                            }),
                            (None, None) => None,
                        };
                        Kind::Mirror(pb::Mirror {
                            backend: Some(pb::Backend {
                                kind: Some(pb::backend::Kind::Authority(authority)),
                            }),
                            fraction,
                            shadow_host: false,
                        })
                    }
                    // Refused by validation.
                    FilterType::ExtensionRef => return None,
                };
                Some(pb::Filter { kind: Some(kind) })
            })
            .collect()
    }
}

fn failure(status: u32, message: &str) -> pb::WeightedBackend {
    pb::WeightedBackend {
        backend: Some(pb::Backend {
            kind: Some(pb::backend::Kind::Failure(pb::Failure {
                status,
                message: message.into(),
            })),
        }),
        weight: 1,
        filters: vec![],
        policy: None,
    }
}

fn modifier(m: &mesh_api::gateway::HeaderModifier) -> pb::HeaderModifier {
    let headers = |hs: &[mesh_api::gateway::HttpHeader]| {
        hs.iter()
            .map(|h| pb::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &HttpPathModifier) -> pb::PathModifier {
    use pb::path_modifier::Kind;
    pb::PathModifier {
        kind: Some(match p.kind {
            PathModifierType::ReplaceFullPath => {
                Kind::ReplaceFullPath(p.replace_full_path.clone().unwrap_or_default())
            }
            PathModifierType::ReplacePrefixMatch => {
                Kind::ReplacePrefixMatch(p.replace_prefix_match.clone().unwrap_or_default())
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str, created: Option<&str>) -> GatewayRoute {
        GatewayRoute {
            spec: RouteSpec::Http(mesh_api::yaml::from_str(yaml).expect("route")),
            created: created.map(Into::into),
            client: ClientPolicy::default(),
            generation: None,
        }
    }

    #[test]
    fn routes_merge_oldest_first_and_references_resolve() {
        let newer = route(
            "parentRefs: [{kind: Service, group: '', name: books}]\n\
             rules: [{matches: [{path: {value: /a}}], backendRefs: [{name: books, port: 80}]}]",
            Some("2026-01-02T00:00:00Z"),
        );
        let older = route(
            "parentRefs: [{kind: Service, group: '', name: books, port: 80}]\n\
             rules:\n\
             - backendRefs: [{name: gone, port: 80}, {name: books, port: 81, weight: 0}, {name: books, port: 80}]\n\
             - {}",
            Some("2026-01-01T00:00:00Z"),
        );
        assert!(older.attaches("shop", "shop", "books", 80));
        assert!(!older.attaches("shop", "shop", "books", 81));
        let attached = vec![
            Attached {
                namespace: "shop",
                name: "newer",
                route: &newer,
            },
            Attached {
                namespace: "shop",
                name: "older",
                route: &older,
            },
        ];
        let (apply, conflicted) = order(attached);
        assert!(conflicted.is_empty());
        let mut policy = pb::OutboundPolicy::default();
        let mut resolve = |l: Lookup<'_>| match (l.name, l.port) {
            ("books", 80) => Resolved::Found,
            ("books", _) => Resolved::NoPort,
            _ => Resolved::NoService,
        };
        let reports = compile(
            &apply,
            &ClientPolicy::default(),
            "shop",
            "cluster.local",
            &mut resolve,
            &mut policy,
        );
        let names: Vec<_> = policy.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["older/0", "older/1", "newer/0"]);
        assert_eq!(policy.unmatched, pb::Unmatched::NotFound as i32);
        let kinds: Vec<_> = policy.routes[0]
            .backends
            .iter()
            .map(|b| b.backend.as_ref().and_then(|b| b.kind.clone()))
            .collect();
        assert!(matches!(&kinds[0], Some(pb::backend::Kind::Failure(f)) if f.status == 500));
        assert!(matches!(&kinds[1], Some(pb::backend::Kind::Failure(_))));
        assert_eq!(
            kinds[2],
            Some(pb::backend::Kind::Authority(
                "books.shop.svc.cluster.local:80".into()
            ))
        );
        // A rule without backends answers 500.
        assert!(matches!(
            policy.routes[1].backends[0].backend.as_ref().and_then(|b| b.kind.as_ref()),
            Some(pb::backend::Kind::Failure(f)) if f.message.contains("no backends")
        ));
        let older_report = &reports[0];
        assert_eq!(older_report.name, "older");
        let resolved = &older_report.conditions[1];
        assert_eq!(
            (resolved.status, resolved.reason),
            (false, "BackendNotFound")
        );
        assert!(
            resolved.message.contains("no Service shop/gone"),
            "{resolved:?}"
        );
        assert!(resolved.message.contains("has no port 81"), "{resolved:?}");
        assert!(reports[1].conditions.iter().all(|c| c.status));
    }

    #[test]
    fn annotations_on_the_route_replace_the_services_and_rule_timeouts_win() {
        use crate::annotations::parse;
        let of = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let service = parse(
            Some(&of(&[
                ("retry.linkerd.io/http", "5xx"),
                ("retry.linkerd.io/limit", "2"),
                ("timeout.linkerd.io/request", "5s"),
                ("timeout.linkerd.io/response", "1s"),
            ])),
            true,
        )
        .expect("service");
        let mut plain = route(
            "parentRefs: [{kind: Service, group: '', name: books}]\n\
             rules: [{timeouts: {backendRequest: 200ms}, backendRefs: [{name: books, port: 80}]}]",
            None,
        );
        let mut annotated = route(
            "parentRefs: [{kind: Service, group: '', name: books}]\n\
             rules: [{backendRefs: [{name: books, port: 80}]}]",
            None,
        );
        annotated.client = parse(
            Some(&of(&[
                ("retry.linkerd.io/grpc", "unavailable"),
                ("timeout.linkerd.io/idle", "1m"),
            ])),
            false,
        )
        .expect("route");
        plain.client = ClientPolicy::default();
        let attached = [
            Attached {
                namespace: "shop",
                name: "a-plain",
                route: &plain,
            },
            Attached {
                namespace: "shop",
                name: "b-annotated",
                route: &annotated,
            },
        ];
        let mut policy = pb::OutboundPolicy::default();
        let mut resolve = |_: Lookup<'_>| Resolved::Found;
        compile(
            &attached,
            &service,
            "shop",
            "cluster.local",
            &mut resolve,
            &mut policy,
        );
        // The plain route: the Service's retries; its rule's backendRequest over the
        // Service's response timeout, the Service's request timeout kept.
        let plain = &policy.routes[0];
        let retry = plain.retry.as_ref().expect("retry");
        assert_eq!(retry.max_retries, 2);
        let statuses = &retry.conditions.as_ref().expect("conditions").http_statuses;
        assert_eq!((statuses[0].min, statuses[0].max), (500, 599));
        let t = plain.timeouts.as_ref().expect("timeouts");
        assert_eq!((t.request_ms, t.per_try_ms, t.idle_ms), (5000, 200, 0));
        // The annotated one: its own retries (gRPC only, Linkerd's default limit) and
        // only its own timeouts.
        let annotated = &policy.routes[1];
        let retry = annotated.retry.as_ref().expect("retry");
        assert_eq!(retry.max_retries, 1);
        let c = retry.conditions.as_ref().expect("conditions");
        assert!(c.http_statuses.is_empty());
        assert_eq!(c.grpc_codes, [14]);
        let t = annotated.timeouts.as_ref().expect("timeouts");
        assert_eq!((t.request_ms, t.per_try_ms, t.idle_ms), (0, 0, 60_000));
        // No route: the Service's annotations make a default route.
        let default = annotated_default(&service).expect("default route");
        assert_eq!(default.name, "default");
        assert!(default.matches.is_empty());
        assert!(annotated_default(&ClientPolicy::default()).is_none());
    }

    #[test]
    fn a_grpc_route_beside_an_http_route_wins() {
        let http = route("parentRefs: [{kind: Service, group: '', name: g}]", None);
        let grpc = GatewayRoute {
            spec: RouteSpec::Grpc(
                mesh_api::yaml::from_str("parentRefs: [{kind: Service, group: '', name: g}]")
                    .expect("grpc"),
            ),
            created: None,
            client: ClientPolicy::default(),
            generation: None,
        };
        let (apply, conflicted) = order(vec![
            Attached {
                namespace: "n",
                name: "a-http",
                route: &http,
            },
            Attached {
                namespace: "n",
                name: "b-grpc",
                route: &grpc,
            },
        ]);
        assert_eq!(apply.len(), 1);
        assert_eq!(apply[0].name, "b-grpc");
        assert_eq!(conflicted[0].name, "a-http");
    }
}
