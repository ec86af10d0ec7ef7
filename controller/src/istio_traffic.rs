//! Istio's traffic front-end: a VirtualService's `http` routes, with the subsets its
//! destinations name from DestinationRules, compiled into a service's
//! [`pb::OutboundPolicy`] (first match wins, as Istio's sidecars route). Pure
//! functions over validated objects; what cannot be applied as written is answered
//! the way Istio answers it (an undefined subset: 503) and reported.

use std::collections::BTreeMap;

use mesh_api::istio_networking::{
    self as istio, DestinationRuleSpec, HttpMatch, HttpRoute, Percent, StringMatch,
    VirtualServiceSpec,
};
use mesh_api::policy as pb;

/// The cluster-local name a host of an object in `namespace` stands for: a name
/// without a dot is `name.namespace.svc.domain`; anything else is taken as written
/// (lower case, no trailing dot), as Istio resolves short names.
pub fn fqdn(host: &str, namespace: &str, domain: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('.') {
        host
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

/// The (namespace, name) of the service a cluster-local host names, if it does.
pub fn service_of(host: &str, domain: &str) -> Option<(String, String)> {
    let rest = host.strip_suffix(domain)?.strip_suffix(".svc.")?;
    let (name, ns) = rest.split_once('.')?;
    (!ns.contains('.')).then(|| (ns.to_string(), name.to_string()))
}

/// A stored Istio object: where it is, when it was made, and its spec.
#[derive(Debug)]
pub struct Stored<'a, T> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// When it was made (RFC 3339), for "the oldest wins".
    pub created: Option<&'a str>,
    /// It.
    pub spec: &'a T,
}

impl<T> Clone for Stored<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Stored<'_, T> {}

impl<T> Stored<'_, T> {
    /// Istio's order among objects of one host: the oldest first (folder objects tie
    /// on age), then name, then namespace (pilot's `sortConfigByCreationTime`).
    pub fn age_order(&self) -> (bool, &str, &str, &str) {
        (
            self.created.is_none(),
            self.created.unwrap_or_default(),
            self.name,
            self.namespace,
        )
    }
}

/// Sorts objects into Istio's order: the first of a host's VirtualServices is the one
/// that applies; DestinationRules merge in this order.
pub fn order<T>(objects: &mut [Stored<'_, T>]) {
    objects.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
}

/// The subset `name` as a host's DestinationRules define it (they come in
/// [`order`]; the first definition wins).
pub fn subset<'a>(
    rules: &[Stored<'a, DestinationRuleSpec>],
    name: &str,
) -> Option<&'a istio::Subset> {
    rules
        .iter()
        .find_map(|r| r.spec.subsets.iter().find(|s| s.name == name))
}

/// What compiling a VirtualService for one service port gave.
#[derive(Debug, Default, PartialEq)]
pub struct Compiled {
    /// Its routes, in order.
    pub routes: Vec<pb::HttpRoute>,
    /// What could not be applied as written, naming the field (each is answered as
    /// Istio answers it).
    pub problems: Vec<String>,
    /// The hosts whose DestinationRules were read (their subsets), for watching.
    pub hosts_read: Vec<String>,
}

/// One level's traffic-policy sections; a later level replaces each section it
/// sets whole (Istio's `MergeTrafficPolicy`).
#[derive(Clone, Copy, Default)]
struct Sections<'a> {
    lb: Option<&'a istio::LoadBalancer>,
    pool: Option<&'a istio::ConnectionPool>,
    outlier: Option<&'a istio::OutlierDetection>,
    tls: Option<&'a istio::ClientTls>,
}

impl<'a> Sections<'a> {
    /// `policy`'s sections over these, then its settings for `port` over those.
    fn over(mut self, policy: Option<&'a istio::TrafficPolicy>, port: u16) -> Self {
        let Some(p) = policy else { return self };
        self = self.with(
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
        );
        if let Some(pl) = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.number == u32::from(port))
        {
            self = self.with(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
                pl.tls.as_ref(),
            );
        }
        self
    }

    fn with(
        self,
        lb: Option<&'a istio::LoadBalancer>,
        pool: Option<&'a istio::ConnectionPool>,
        outlier: Option<&'a istio::OutlierDetection>,
        tls: Option<&'a istio::ClientTls>,
    ) -> Self {
        Self {
            lb: lb.or(self.lb),
            pool: pool.or(self.pool),
            outlier: outlier.or(self.outlier),
            tls: tls.or(self.tls),
        }
    }
}

/// The backend policy a host's DestinationRules (in [`order`]) give port `port`, or
/// its subset `subset_name`: the first rule's top-level `trafficPolicy` (as
/// DestinationRules merge), its port's settings over it, then the subset's over
/// both. `None` when nothing is set.
pub fn backend_policy(
    rules: &[Stored<'_, DestinationRuleSpec>],
    subset_name: Option<&str>,
    port: u16,
) -> Option<pb::BackendPolicy> {
    let host = rules.iter().find_map(|r| r.spec.traffic_policy.as_ref());
    let mut sections = Sections::default().over(host, port);
    if let Some(name) = subset_name {
        let own = subset(rules, name).and_then(|s| s.traffic_policy.as_ref());
        sections = sections.over(own, port);
    }
    let Sections {
        lb,
        pool,
        outlier,
        tls,
    } = sections;
    if lb.is_none() && pool.is_none() && outlier.is_none() && tls.is_none() {
        return None;
    }
    Some(pb::BackendPolicy {
        load_balancer: lb.map(load_balancer),
        connection_pool: pool.map(connection_pool),
        outlier_detection: outlier.map(outlier_detection),
        disable_mtls: tls.and_then(|t| t.mode.as_deref()) == Some("DISABLE"),
    })
}

fn ms(t: Option<&str>) -> Option<u64> {
    t.and_then(|t| mesh_api::duration::parse(t).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn load_balancer(lb: &istio::LoadBalancer) -> pb::LoadBalancer {
    use pb::load_balancer::Kind;
    let kind = match (&lb.simple, &lb.consistent_hash) {
        (_, Some(h)) => {
            use pb::consistent_hash::Key;
            let key = if let Some(name) = &h.http_header_name {
                Key::Header(name.to_ascii_lowercase())
            } else if let Some(c) = &h.http_cookie {
                Key::Cookie(pb::HashCookie {
                    name: c.name.clone(),
                    ttl_ms: ms(c.ttl.as_deref()),
                    path: c.path.clone().unwrap_or_default(),
                })
            } else if let Some(q) = &h.http_query_parameter_name {
                Key::QueryParam(q.clone())
            } else {
                Key::SourceIp(true)
            };
            Kind::ConsistentHash(pb::ConsistentHash {
                key: Some(key),
                ring_size: h.minimum_ring_size.unwrap_or_default(),
            })
        }
        (Some(s), None) => match s.as_str() {
            "ROUND_ROBIN" => Kind::RoundRobin(pb::RoundRobin {}),
            "RANDOM" => Kind::Random(pb::RandomPick {}),
            "PASSTHROUGH" => Kind::Passthrough(pb::Passthrough {}),
            // LEAST_REQUEST (and the older LEAST_CONN): the better of two by load.
            _ => Kind::PeakEwma(pb::PeakEwma::default()),
        },
        (None, None) => Kind::PeakEwma(pb::PeakEwma::default()),
    };
    pb::LoadBalancer { kind: Some(kind) }
}

fn connection_pool(p: &istio::ConnectionPool) -> pb::ConnectionPool {
    let tcp = p.tcp.as_ref();
    let http = p.http.as_ref();
    pb::ConnectionPool {
        max_connections: tcp.and_then(|t| t.max_connections).unwrap_or_default(),
        max_pending_requests: http
            .and_then(|h| h.http1_max_pending_requests)
            .unwrap_or_default(),
        max_requests: http.and_then(|h| h.http2_max_requests).unwrap_or_default(),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .unwrap_or_default(),
        // Not applied yet (reported by `not_applied`): the proxy's connections are
        // pooled per endpoint, not per backend.
        idle_timeout_ms: 0,
        connect_timeout_ms: ms(tcp.and_then(|t| t.connect_timeout.as_deref())).unwrap_or_default(),
        max_retries: http.and_then(|h| h.max_retries).unwrap_or_default(),
    }
}

/// The fields of a traffic policy the mesh accepts but does not act on yet, each by
/// its path under `at`.
pub fn not_applied(p: &istio::TrafficPolicy, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut parts = |at: String,
                     pool: Option<&istio::ConnectionPool>,
                     outlier: Option<&istio::OutlierDetection>| {
        if let Some(t) = pool.and_then(|p| p.tcp.as_ref()) {
            for (field, set) in [
                ("tcpKeepalive", t.tcp_keepalive.is_some()),
                ("maxConnectionDuration", t.max_connection_duration.is_some()),
                ("idleTimeout", t.idle_timeout.is_some()),
            ] {
                if set {
                    out.push(format!("{at}.connectionPool.tcp.{field}"));
                }
            }
        }
        if let Some(h) = pool.and_then(|p| p.http.as_ref()) {
            for (field, set) in [
                ("idleTimeout", h.idle_timeout.is_some()),
                ("maxConcurrentStreams", h.max_concurrent_streams.is_some()),
            ] {
                if set {
                    out.push(format!("{at}.connectionPool.http.{field}"));
                }
            }
        }
        if let Some(o) = outlier {
            for (field, set) in [
                (
                    "consecutiveLocalOriginFailures",
                    o.consecutive_local_origin_failures.is_some(),
                ),
                (
                    "splitExternalLocalOriginErrors",
                    o.split_external_local_origin_errors.is_some(),
                ),
            ] {
                if set {
                    out.push(format!("{at}.outlierDetection.{field}"));
                }
            }
        }
    };
    parts(
        at.to_string(),
        p.connection_pool.as_ref(),
        p.outlier_detection.as_ref(),
    );
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        parts(
            format!("{at}.portLevelSettings[{i}]"),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
        );
    }
    out
}

/// Istio's outlier detection with Envoy's defaults: five 5xx in a row (unless only
/// the older `consecutiveErrors`, gateway errors, is set), every 10 s, 30 s × times
/// ejected, at most 10% of the endpoints out (and at least one).
fn outlier_detection(o: &istio::OutlierDetection) -> pb::OutlierDetection {
    let (five_xx, gateway) = match (
        o.consecutive_5xx_errors,
        o.consecutive_gateway_errors,
        o.consecutive_errors,
    ) {
        (None, None, Some(n)) => (0, n),
        (five_xx, gateway, _) => (five_xx.unwrap_or(5), gateway.unwrap_or(0)),
    };
    pb::OutlierDetection {
        consecutive_failures: five_xx,
        consecutive_gateway_errors: gateway,
        interval_ms: ms(o.interval.as_deref()).unwrap_or(10_000),
        base_ejection_ms: ms(o.base_ejection_time.as_deref()).unwrap_or(30_000),
        max_ejection_ms: 0,
        max_ejection_percent: o.max_ejection_percent.unwrap_or(10),
        jitter_percent: 0,
        linear: true,
        min_health_percent: o.min_health_percent.unwrap_or(0),
    }
}

/// Looks up the DestinationRules of a host (an FQDN), in [`order`].
pub type Rules<'r, 'a> = dyn FnMut(&str) -> Vec<Stored<'a, DestinationRuleSpec>> + 'r;

/// Istio's retries when a route sets none: 2, on connect failures, refused streams
/// and gRPC's `cancelled` and `unavailable` (pilot's `DefaultPolicy`).
const DEFAULT_RETRIES: u32 = 2;
/// Istio's backoff between retries: from 25 ms, jittered, up to ten times that.
const BACKOFF_BASE_MS: u64 = 25;
const BACKOFF_MAX_MS: u64 = 250;
/// The most retries the proxy makes (its `MAX_ATTEMPTS`, less the first).
const MAX_RETRIES: i64 = 9;

/// Compiles `vs` for port `port` of the service it routes: its `http` routes whose
/// matches can take that port, in order.
pub fn compile(
    vs: &Stored<'_, VirtualServiceSpec>,
    port: u16,
    domain: &str,
    rules: &mut Rules<'_, '_>,
) -> Compiled {
    let mut out = Compiled::default();
    for (i, route) in vs.spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        // As the Gateway API's rules are named: the object, then the route's name or
        // place (the `route` metric label).
        let name = match &route.name {
            Some(n) => format!("{}/{n}", vs.name),
            None => format!("{}/{i}", vs.name),
        };
        // Blocks for other ports never match here; a route whose blocks all name
        // other ports is not this port's.
        let blocks: Vec<&HttpMatch> = route
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == u32::from(port)))
            .collect();
        if !route.matches.is_empty() && blocks.is_empty() {
            continue;
        }
        for t in unmodelled_retry_on(route) {
            out.problems.push(format!(
                "{at}.retries.retryOn: {t:?} is not acted on by this mesh"
            ));
        }
        let mut c = Route {
            vs,
            at: &at,
            port,
            domain,
            rules,
            out: &mut out,
        };
        let backends = c.backends(route);
        let retry = if route.fault.is_some() {
            // Istio: "timeouts or retries will not be enabled when faults are".
            None
        } else {
            retry(route.retries.as_ref())
        };
        let timeouts = match (&route.fault, &route.timeout) {
            (None, Some(t)) => mesh_api::duration::parse(t).ok().map(|d| pb::Timeouts {
                request_ms: millis(d),
                ..Default::default()
            }),
            _ => None,
        };
        let common = c.filters(route);
        // One policy route per match block, so that a rewrite replaces the prefix
        // its own block matched.
        let each: Vec<Option<&HttpMatch>> = if blocks.is_empty() {
            vec![None]
        } else {
            blocks.into_iter().map(Some).collect()
        };
        for block in each {
            let mut filters = common.clone();
            if let Some(rw) = &route.rewrite {
                filters.push(rewrite(rw, block));
            }
            // A redirect answers before anything else happens.
            if let Some(r) = &route.redirect {
                filters.push(redirect(r));
            }
            out.routes.push(pb::HttpRoute {
                name: name.clone(),
                matches: block.map(route_match).into_iter().collect(),
                filters,
                backends: backends.clone(),
                timeouts,
                retry: retry.clone(),
                response_classes: vec![],
            });
        }
    }
    out
}

/// One route's compilation: what it reads and where problems go.
struct Route<'c, 'a, 'r, 'x> {
    vs: &'c Stored<'a, VirtualServiceSpec>,
    at: &'c str,
    port: u16,
    domain: &'c str,
    rules: &'c mut Rules<'r, 'x>,
    out: &'c mut Compiled,
}

impl Route<'_, '_, '_, '_> {
    /// The backend a destination names: the service, or its subset's endpoints; an
    /// undefined subset answers 503, as Istio's missing cluster does.
    fn backend(&mut self, d: &istio::Destination, at: &str) -> pb::Backend {
        let host = fqdn(&d.host, self.vs.namespace, self.domain);
        let port = d
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok())
            .unwrap_or(self.port);
        let authority = format!("{host}:{port}");
        let Some(name) = &d.subset else {
            return authority_backend(authority);
        };
        let rules = (self.rules)(&host);
        if !self.out.hosts_read.contains(&host) {
            self.out.hosts_read.push(host.clone());
        }
        match subset(&rules, name) {
            Some(s) => pb::Backend {
                kind: Some(pb::backend::Kind::Subset(pb::Subset {
                    authority,
                    name: name.clone(),
                    labels: s.labels.clone().into_iter().collect(),
                })),
            },
            None => {
                let message = format!("no DestinationRule for {host} defines subset {name:?}");
                self.out.problems.push(format!(
                    "{at}.subset: {message}; its requests are answered 503"
                ));
                pb::Backend {
                    kind: Some(pb::backend::Kind::Failure(pb::Failure {
                        status: 503,
                        message,
                    })),
                }
            }
        }
    }

    /// A route's weighted destinations (weights are relative; a lone destination
    /// takes all, and with no weight given they share alike).
    fn backends(&mut self, route: &HttpRoute) -> Vec<pb::WeightedBackend> {
        let weighted = route.route.iter().any(|d| d.weight.is_some());
        let lone = route.route.len() == 1;
        let at = self.at.to_string();
        route
            .route
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let backend = self.backend(&d.destination, &format!("{at}.route[{j}].destination"));
                let weight = match d.weight {
                    _ if lone => 1,
                    Some(w) => u64::try_from(w).unwrap_or(0),
                    None if weighted => 0,
                    None => 1,
                };
                pb::WeightedBackend {
                    backend: Some(backend),
                    weight,
                    filters: d.headers.as_ref().map(headers).unwrap_or_default(),
                    // Filled in from the destination's DestinationRules by the index
                    // (for every front-end's backends alike).
                    policy: None,
                }
            })
            .collect()
    }

    /// The route's faults, mirrors and header changes, in the order they act.
    fn filters(&mut self, route: &HttpRoute) -> Vec<pb::Filter> {
        use pb::filter::Kind;
        let mut filters = Vec::new();
        if let Some(f) = &route.fault {
            if let Some(d) = &f.delay {
                let share = d
                    .percentage
                    .as_ref()
                    .map(fraction)
                    .or_else(|| d.percent.map(|p| share(f64::from(p))));
                let delay = d
                    .fixed_delay
                    .as_deref()
                    .and_then(|t| mesh_api::duration::parse(t).ok());
                if let (Some(share), Some(delay)) = (share, delay) {
                    filters.push(pb::Filter {
                        kind: Some(Kind::FaultDelay(pb::FaultDelay {
                            delay_ms: millis(delay),
                            fraction: Some(share),
                        })),
                    });
                }
            }
            if let Some(a) = &f.abort
                && let Some(share) = a.percentage.as_ref().map(fraction)
            {
                let grpc = a
                    .grpc_status
                    .as_deref()
                    .and_then(|g| istio::GRPC_CODES.iter().position(|c| *c == g));
                filters.push(pb::Filter {
                    kind: Some(Kind::FaultAbort(pb::FaultAbort {
                        // A gRPC abort answers plain HTTP callers 200 with the
                        // status in trailers-only, as Envoy does; the proxy maps.
                        http_status: a.http_status.unwrap_or(if grpc.is_some() {
                            200
                        } else {
                            500
                        }),
                        grpc_status: grpc.map_or(0, |g| g as u32),
                        fraction: Some(share),
                    })),
                });
            }
        }
        let mirrors: Vec<(&istio::Destination, Option<&Percent>, String)> = match &route.mirror {
            Some(m) => vec![(
                m,
                route.mirror_percentage.as_ref(),
                format!("{}.mirror", self.at),
            )],
            None => route
                .mirrors
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    (
                        &m.destination,
                        m.percentage.as_ref(),
                        format!("{}.mirrors[{j}].destination", self.at),
                    )
                })
                .collect(),
        };
        for (d, share, at) in mirrors {
            let backend = self.backend(d, &at);
            if matches!(backend.kind, Some(pb::backend::Kind::Failure(_))) {
                // Copies to nowhere: none are sent.
                continue;
            }
            filters.push(pb::Filter {
                kind: Some(Kind::Mirror(pb::Mirror {
                    backend: Some(backend),
                    fraction: share.map(fraction),
                    shadow_host: true,
                })),
            });
        }
        if let Some(h) = &route.headers {
            filters.extend(headers(h));
        }
        filters
    }
}

fn authority_backend(authority: String) -> pb::Backend {
    pb::Backend {
        kind: Some(pb::backend::Kind::Authority(authority)),
    }
}

/// A percentage as parts per million.
fn fraction(p: &Percent) -> pb::Fraction {
    share(p.value)
}

fn share(percent: f64) -> pb::Fraction {
    pb::Fraction {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: 1_000_000,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn headers(h: &istio::Headers) -> Vec<pb::Filter> {
    use pb::filter::Kind;
    let modifier = |o: &istio::HeaderOperations| {
        let pairs = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(name, value)| pb::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        };
        pb::HeaderModifier {
            set: pairs(&o.set),
            add: pairs(&o.add),
            remove: o.remove.clone(),
        }
    };
    let mut out = Vec::new();
    if let Some(r) = &h.request {
        out.push(pb::Filter {
            kind: Some(Kind::RequestHeaders(modifier(r))),
        });
    }
    if let Some(r) = &h.response {
        out.push(pb::Filter {
            kind: Some(Kind::ResponseHeaders(modifier(r))),
        });
    }
    out
}

fn rewrite(rw: &istio::Rewrite, block: Option<&HttpMatch>) -> pb::Filter {
    use pb::path_modifier::Kind;
    let prefixed = block
        .and_then(|b| b.uri.as_ref())
        .is_some_and(|u| u.prefix.is_some());
    pb::Filter {
        kind: Some(pb::filter::Kind::Rewrite(pb::Rewrite {
            hostname: rw.authority.clone().unwrap_or_default(),
            path: rw.uri.as_ref().map(|u| pb::PathModifier {
                kind: Some(if prefixed {
                    Kind::ReplacePrefixMatch(u.clone())
                } else {
                    Kind::ReplaceFullPath(u.clone())
                }),
            }),
        })),
    }
}

fn redirect(r: &istio::Redirect) -> pb::Filter {
    pb::Filter {
        kind: Some(pb::filter::Kind::Redirect(pb::Redirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.authority.clone().unwrap_or_default(),
            path: r.uri.as_ref().map(|u| pb::PathModifier {
                kind: Some(pb::path_modifier::Kind::ReplaceFullPath(u.clone())),
            }),
            port: r.port.unwrap_or_default(),
            // Istio's default.
            status: r.redirect_code.unwrap_or(301),
        })),
    }
}

/// A regular expression for a string prefix.
fn prefix_regex(p: &str) -> String {
    format!("{}.*", regex::escape(p))
}

fn value_match(name: &str, m: &StringMatch, invert: bool) -> pb::HeaderMatch {
    use pb::header_match::Value;
    let value = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Value::Exact(e.clone()),
        (_, Some(p), _) => Value::Regex(prefix_regex(p)),
        (_, _, Some(r)) => Value::Regex(r.clone()),
        _ => Value::Present(true),
    };
    pb::HeaderMatch {
        name: name.to_ascii_lowercase(),
        value: Some(value),
        invert,
    }
}

/// One match block: its fields all hold.
fn route_match(m: &HttpMatch) -> pb::RouteMatch {
    use pb::path_match::Kind;
    let path = m.uri.as_ref().map(|u| {
        let kind = match (&u.exact, &u.prefix, &u.regex) {
            (Some(e), _, _) => Kind::Exact(e.clone()),
            (_, Some(p), _) => Kind::StringPrefix(p.clone()),
            (_, _, Some(r)) => Kind::Regex(r.clone()),
            _ => Kind::StringPrefix(String::new()),
        };
        pb::PathMatch {
            kind: Some(kind),
            ignore_case: m.ignore_uri_case,
        }
    });
    let mut headers: Vec<pb::HeaderMatch> = m
        .headers
        .iter()
        .map(|(n, v)| value_match(n, v, false))
        .chain(
            m.without_headers
                .iter()
                .map(|(n, v)| value_match(n, v, true)),
        )
        .collect();
    let mut method = String::new();
    if let Some(sm) = &m.method {
        match &sm.exact {
            Some(e) => method = e.to_ascii_uppercase(),
            None => headers.push(value_match(":method", sm, false)),
        }
    }
    if let Some(a) = &m.authority {
        headers.push(value_match(":authority", a, false));
    }
    let query_params = m
        .query_params
        .iter()
        .map(|(n, v)| {
            use pb::query_param_match::Value;
            let value = match (&v.exact, &v.prefix, &v.regex) {
                (Some(e), _, _) => Value::Exact(e.clone()),
                (_, Some(p), _) => Value::Regex(prefix_regex(p)),
                (_, _, Some(r)) => Value::Regex(r.clone()),
                _ => Value::Present(true),
            };
            pb::QueryParamMatch {
                name: n.clone(),
                value: Some(value),
            }
        })
        .collect();
    pb::RouteMatch {
        path,
        method,
        headers,
        query_params,
        ..Default::default()
    }
}

/// Istio's `retries` as the proxy's: `attempts` retries after the first (0: none);
/// without a `retries` block, Istio's default policy.
fn retry(r: Option<&istio::Retries>) -> Option<pb::Retry> {
    let mut conditions = pb::RetryConditions::default();
    let (max_retries, timeout_ms, on) = match r {
        None => (DEFAULT_RETRIES, 0, None),
        Some(r) if r.attempts == 0 => return None,
        Some(r) => (
            r.attempts.clamp(1, MAX_RETRIES) as u32,
            r.per_try_timeout
                .as_deref()
                .and_then(|t| mesh_api::duration::parse(t).ok())
                .map_or(0, millis),
            r.retry_on.as_deref(),
        ),
    };
    let on = on.unwrap_or("connect-failure,refused-stream,unavailable,cancelled");
    let mut status =
        |min: u32, max: u32| conditions.http_statuses.push(pb::StatusRange { min, max });
    let mut codes = Vec::new();
    let (mut connect, mut reset) = (false, false);
    for token in on.split(',').map(str::trim) {
        match token {
            "5xx" => {
                status(500, 599);
                connect = true;
                reset = true;
            }
            "gateway-error" => status(502, 504),
            "retriable-4xx" => status(409, 409),
            "reset" | "refused-stream" => reset = true,
            "connect-failure" => connect = true,
            "cancelled" => codes.push(1),
            "deadline-exceeded" => codes.push(4),
            "resource-exhausted" => codes.push(8),
            "internal" => codes.push(13),
            "unavailable" => codes.push(14),
            n => {
                if let Ok(code) = n.parse::<u32>() {
                    status(code, code);
                }
            }
        }
    }
    conditions.grpc_codes = codes;
    conditions.connect_failure = connect;
    conditions.reset = reset;
    Some(pb::Retry {
        max_retries,
        conditions: Some(conditions),
        // Istio's retries spend no budget: the largest the proxy keeps.
        budget: Some(pb::RetryBudget {
            retry_ratio: 1000.0,
            min_retries_per_second: 1000,
            ttl_ms: 10_000,
        }),
        backoff_base_ms: BACKOFF_BASE_MS,
        backoff_max_ms: BACKOFF_MAX_MS,
        timeout_ms,
    })
}

/// Retry conditions Istio takes that the mesh does not act on, in a route's
/// `retryOn` (reported).
fn unmodelled_retry_on(route: &HttpRoute) -> Vec<&str> {
    route
        .retries
        .as_ref()
        .and_then(|r| r.retry_on.as_deref())
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            matches!(
                *t,
                "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> DestinationRuleSpec {
        mesh_api::yaml::from_str(yaml).expect("spec")
    }

    #[test]
    fn port_and_subset_settings_replace_the_hosts_section_by_section() {
        let spec = rule(
            "host: web\n\
             trafficPolicy:\n\
             \x20 loadBalancer: {simple: ROUND_ROBIN}\n\
             \x20 tls: {mode: DISABLE}\n\
             \x20 portLevelSettings:\n\
             \x20 - port: {number: 9090}\n\
             \x20   loadBalancer: {simple: RANDOM}\n\
             \x20   connectionPool: {tcp: {maxConnections: 7}}\n\
             subsets:\n\
             - name: v2\n\
             \x20 labels: {version: v2}\n\
             \x20 trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, outlierDetection: {consecutiveGatewayErrors: 2}}\n",
        );
        let rules = [Stored {
            namespace: "ns",
            name: "web",
            created: None,
            spec: &spec,
        }];
        let lb = |p: &pb::BackendPolicy| p.load_balancer.clone().and_then(|l| l.kind);
        use pb::load_balancer::Kind;
        let host = backend_policy(&rules, None, 80).expect("host policy");
        assert!(matches!(lb(&host), Some(Kind::RoundRobin(_))));
        assert!(host.disable_mtls, "tls DISABLE: plaintext to the pods");
        assert!(host.connection_pool.is_none());
        let port = backend_policy(&rules, None, 9090).expect("port policy");
        assert!(matches!(lb(&port), Some(Kind::Random(_))));
        assert_eq!(port.connection_pool.map(|c| c.max_connections), Some(7));
        let v2 = backend_policy(&rules, Some("v2"), 80).expect("subset policy");
        assert!(!v2.disable_mtls, "the subset's tls replaces the host's");
        assert!(
            matches!(lb(&v2), Some(Kind::RoundRobin(_))),
            "the host's, which v2 does not set"
        );
        let o = v2.outlier_detection.expect("v2's outlier detection");
        assert_eq!(
            (o.consecutive_failures, o.consecutive_gateway_errors),
            (5, 2)
        );
        assert_eq!(backend_policy(&rules, Some("v3"), 80), Some(host));
        assert_eq!(
            fqdn("Reviews", "ns", "cluster.local"),
            "reviews.ns.svc.cluster.local"
        );
        assert_eq!(fqdn("reviews.prod", "ns", "cluster.local"), "reviews.prod");
        assert_eq!(
            service_of("reviews.ns.svc.cluster.local", "cluster.local"),
            Some(("ns".into(), "reviews".into()))
        );
        assert_eq!(service_of("reviews.prod", "cluster.local"), None);
    }
}
