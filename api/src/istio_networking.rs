//! Istio's traffic resources as the mesh takes them (`networking.istio.io` v1alpha3,
//! v1beta1 and v1: `VirtualService`, `DestinationRule`) and `telemetry.istio.io`'s
//! `Telemetry`, with their validation. What Istio refuses, and what the mesh does not
//! model, is refused naming the field; unknown fields are errors, never silently
//! dropped (so an object is never half-applied).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Istio's telemetry API group.
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";

/// Whether `api_version` is a version Istio serves of its networking kinds.
pub fn served(api_version: &str) -> bool {
    api_version
        .strip_prefix(crate::istio::NETWORKING_GROUP)
        .and_then(|v| v.strip_prefix('/'))
        .is_some_and(|v| matches!(v, "v1alpha3" | "v1beta1" | "v1"))
}

fn duration(path: &str, value: &str, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match crate::duration::parse_in(
        value,
        Duration::from_millis(1)..=Duration::from_secs(315_576_000),
    ) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError::new(path, e));
            None
        }
    }
}

fn percentage(path: &str, p: &Percent, errors: &mut Vec<FieldError>) {
    if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
        errors.push(FieldError::new(
            format!("{path}.value"),
            format!("{}: a percentage is 0 to 100", p.value),
        ));
    }
}

/// A `VirtualService`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// The hosts it routes: short names (relative to its namespace) or FQDNs.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where it applies: `mesh` (the sidecars, the default when empty); gateways are
    /// not the mesh's.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes, in order: the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TCP routes: not modelled.
    #[serde(default)]
    pub tcp: Option<serde_json::Value>,
    /// TLS routes: not modelled.
    #[serde(default)]
    pub tls: Option<serde_json::Value>,
    /// Namespaces it is visible to (`.` or `*`).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One HTTP route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Its name, for metrics.
    #[serde(default)]
    pub name: Option<String>,
    /// Match blocks, ORed; none: every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Rewrite the path or authority.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// The request's timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Its retries.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Faults injected.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// A destination copies go to.
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// The share of requests mirrored (`mirror`).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Several mirrors, each with its share.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// Header changes.
    #[serde(default)]
    pub headers: Option<Headers>,
    /// Not modelled: refused.
    #[serde(default)]
    pub cors_policy: Option<serde_json::Value>,
    /// Not modelled: refused.
    #[serde(default)]
    pub direct_response: Option<serde_json::Value>,
    /// Not modelled: refused.
    #[serde(default)]
    pub delegate: Option<serde_json::Value>,
}

/// Conditions a request must all meet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// The path.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// The scheme.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// The method.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// The authority.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Headers that must match (names lower case).
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters that must match.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The destination port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Whether `uri` matches case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Not modelled: refused.
    #[serde(default)]
    pub source_labels: Option<serde_json::Value>,
    /// Not modelled: refused.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Gateways: refused unless `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ignored (a stat name for Envoy).
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// Istio's string match: exactly one of the three.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// The whole value.
    #[serde(default)]
    pub exact: Option<String>,
    /// A prefix (of characters, not path elements).
    #[serde(default)]
    pub prefix: Option<String>,
    /// An RE2 regular expression over the whole value.
    #[serde(default)]
    pub regex: Option<String>,
}

impl StringMatch {
    /// Whether it sets no condition (`{}`: a header's or parameter's presence).
    pub fn is_empty(&self) -> bool {
        self.exact.is_none() && self.prefix.is_none() && self.regex.is_none()
    }

    fn validate(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.validate_in(path, false, errors);
    }

    /// As [`Self::validate`]; `presence` allows `{}` (headers and parameters).
    fn validate_in(&self, path: &str, presence: bool, errors: &mut Vec<FieldError>) {
        let set = [&self.exact, &self.prefix, &self.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 || (set == 0 && !presence) {
            errors.push(FieldError::new(
                path,
                "set exactly one of exact, prefix or regex",
            ));
        }
        if let Some(re) = &self.regex
            && let Err(e) = regex::Regex::new(&format!("^(?:{re})$"))
        {
            errors.push(FieldError::new(
                format!("{path}.regex"),
                format!("invalid regex: {e}"),
            ));
        }
    }
}

/// A weighted destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Its share, relative to the route's other destinations (they need not add up
    /// to 100); a lone destination takes all.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Header changes for this destination.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A service (and subset, and port).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// The host: a short name (the VirtualService's namespace) or an FQDN.
    pub host: String,
    /// A subset a DestinationRule defines.
    #[serde(default)]
    pub subset: Option<String>,
    /// The port.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// A port by number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// The number.
    pub number: u32,
}

/// A redirect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    /// The new path.
    #[serde(default)]
    pub uri: Option<String>,
    /// The new authority.
    #[serde(default)]
    pub authority: Option<String>,
    /// The new port.
    #[serde(default)]
    pub port: Option<u32>,
    /// The new scheme.
    #[serde(default)]
    pub scheme: Option<String>,
    /// 301 (the default), 302, 303, 307 or 308.
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

/// A rewrite.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the match's `uri` took (the whole path for an
    /// exact match).
    #[serde(default)]
    pub uri: Option<String>,
    /// The authority sent upstream.
    #[serde(default)]
    pub authority: Option<String>,
}

/// Retries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries allowed (0: none).
    #[serde(default)]
    pub attempts: i64,
    /// Each attempt's timeout.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Conditions, comma-separated.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Accepted (the mesh has no localities).
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

/// The retry conditions Istio takes (Envoy's `x-envoy-retry-on` and gRPC's).
pub const RETRY_ON: [&str; 15] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "http3-post-connect-failure",
];

/// A share of requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// 0 to 100.
    #[serde(default)]
    pub value: f64,
}

/// Faults injected into a route's requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// A delay.
    #[serde(default)]
    pub delay: Option<Delay>,
    /// An error answered instead.
    #[serde(default)]
    pub abort: Option<Abort>,
}

/// A delay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delay {
    /// How long.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Of which requests; absent: the older `percent`, else none (as Istio's pilot
    /// translates it).
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// The older integer share.
    #[serde(default)]
    pub percent: Option<u32>,
}

/// An abort.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Abort {
    /// The HTTP status answered.
    #[serde(default)]
    pub http_status: Option<u32>,
    /// The gRPC status answered (`UNAVAILABLE`, …).
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Of which requests; absent: none.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// One mirror of several.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// Where copies go.
    pub destination: Destination,
    /// The share of requests copied; absent: all.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Header changes of requests and responses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// The request's.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// The response's.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// Set, add, remove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replaced.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Appended.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The gRPC status names Istio's `grpcStatus` takes, each at its code.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn not_modelled<T>(v: &Option<T>, path: &str, what: &str, errors: &mut Vec<FieldError>) {
    if v.is_some() {
        errors.push(FieldError::new(
            path,
            format!("{what} is not supported by this mesh"),
        ));
    }
}

fn mesh_only(gateways: &[String], path: &str, errors: &mut Vec<FieldError>) {
    for (i, g) in gateways.iter().enumerate() {
        if g != "mesh" {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{g:?}: the mesh runs no gateways; only `mesh` applies"),
            ));
        }
    }
}

impl VirtualServiceSpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.hosts.is_empty() {
            errors.push(FieldError::new(
                "spec.hosts",
                "at least one host is required",
            ));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_empty() || h == "*" || h.contains('/') {
                errors.push(FieldError::new(
                    format!("spec.hosts[{i}]"),
                    format!("{h:?}: expected a service's short name or FQDN"),
                ));
            }
        }
        mesh_only(&self.gateways, "spec.gateways", &mut errors);
        not_modelled(&self.tcp, "spec.tcp", "TCP routing", &mut errors);
        not_modelled(&self.tls, "spec.tls", "TLS routing", &mut errors);
        for (i, r) in self.http.iter().enumerate() {
            r.validate(&format!("spec.http[{i}]"), &mut errors);
        }
        errors
    }
}

impl HttpRoute {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        not_modelled(
            &self.cors_policy,
            &format!("{at}.corsPolicy"),
            "CORS",
            errors,
        );
        not_modelled(
            &self.direct_response,
            &format!("{at}.directResponse"),
            "directResponse",
            errors,
        );
        not_modelled(
            &self.delegate,
            &format!("{at}.delegate"),
            "delegation",
            errors,
        );
        for (j, m) in self.matches.iter().enumerate() {
            let mp = format!("{at}.match[{j}]");
            for (field, sm) in [
                ("uri", &m.uri),
                ("scheme", &m.scheme),
                ("method", &m.method),
                ("authority", &m.authority),
            ] {
                if let Some(sm) = sm {
                    sm.validate(&format!("{mp}.{field}"), errors);
                }
            }
            for (field, map) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
                ("queryParams", &m.query_params),
            ] {
                for (name, sm) in map {
                    if field != "queryParams"
                        && http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    {
                        errors.push(FieldError::new(
                            format!("{mp}.{field}[{name:?}]"),
                            "not a header name",
                        ));
                    }
                    sm.validate_in(&format!("{mp}.{field}[{name:?}]"), true, errors);
                }
            }
            if m.port.is_some_and(|p| !(1..=65535).contains(&p)) {
                errors.push(FieldError::new(format!("{mp}.port"), "expected 1-65535"));
            }
            not_modelled(
                &m.source_labels,
                &format!("{mp}.sourceLabels"),
                "sourceLabels",
                errors,
            );
            not_modelled(
                &m.source_namespace,
                &format!("{mp}.sourceNamespace"),
                "sourceNamespace",
                errors,
            );
            mesh_only(&m.gateways, &format!("{mp}.gateways"), errors);
        }
        match (self.route.is_empty(), &self.redirect) {
            (true, None) => errors.push(FieldError::new(
                format!("{at}.route"),
                "a route needs destinations or a redirect",
            )),
            (false, Some(_)) => errors.push(FieldError::new(
                format!("{at}.redirect"),
                "a route has destinations or a redirect, not both",
            )),
            _ => {}
        }
        for (j, d) in self.route.iter().enumerate() {
            let dp = format!("{at}.route[{j}]");
            d.destination.validate(&format!("{dp}.destination"), errors);
            if d.weight.is_some_and(|w| w < 0) {
                errors.push(FieldError::new(format!("{dp}.weight"), "negative"));
            }
        }
        if let Some(r) = &self.redirect
            && r.redirect_code
                .is_some_and(|c| !matches!(c, 301 | 302 | 303 | 307 | 308))
        {
            errors.push(FieldError::new(
                format!("{at}.redirect.redirectCode"),
                "expected 301, 302, 303, 307 or 308",
            ));
        }
        if let Some(t) = &self.timeout {
            duration(&format!("{at}.timeout"), t, errors);
        }
        if let Some(r) = &self.retries {
            if r.attempts < 0 {
                errors.push(FieldError::new(
                    format!("{at}.retries.attempts"),
                    "negative",
                ));
            }
            if let Some(t) = &r.per_try_timeout {
                duration(&format!("{at}.retries.perTryTimeout"), t, errors);
            }
            for cond in r.retry_on.iter().flat_map(|s| s.split(',')).map(str::trim) {
                let known = RETRY_ON.contains(&cond)
                    || cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
                if !cond.is_empty() && !known {
                    errors.push(FieldError::new(
                        format!("{at}.retries.retryOn"),
                        format!("{cond:?} is not a retry condition Istio takes"),
                    ));
                }
            }
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                match &d.fixed_delay {
                    Some(t) => {
                        duration(&format!("{at}.fault.delay.fixedDelay"), t, errors);
                    }
                    None => errors.push(FieldError::new(
                        format!("{at}.fault.delay.fixedDelay"),
                        "missing",
                    )),
                }
                if let Some(p) = &d.percentage {
                    percentage(&format!("{at}.fault.delay.percentage"), p, errors);
                }
                if d.percent.is_some_and(|p| p > 100) {
                    errors.push(FieldError::new(
                        format!("{at}.fault.delay.percent"),
                        "0 to 100",
                    ));
                }
            }
            if let Some(a) = &f.abort {
                match (a.http_status, &a.grpc_status) {
                    (Some(s), None) if (200..=599).contains(&s) => {}
                    (Some(_), None) => errors.push(FieldError::new(
                        format!("{at}.fault.abort.httpStatus"),
                        "expected 200-599",
                    )),
                    (None, Some(g)) if GRPC_CODES.contains(&g.as_str()) => {}
                    (None, Some(g)) => errors.push(FieldError::new(
                        format!("{at}.fault.abort.grpcStatus"),
                        format!("{g:?} is not a gRPC status name"),
                    )),
                    _ => errors.push(FieldError::new(
                        format!("{at}.fault.abort"),
                        "set one of httpStatus or grpcStatus",
                    )),
                }
                if let Some(p) = &a.percentage {
                    percentage(&format!("{at}.fault.abort.percentage"), p, errors);
                }
            }
        }
        if let Some(m) = &self.mirror {
            m.validate(&format!("{at}.mirror"), errors);
        }
        if let Some(p) = &self.mirror_percentage {
            percentage(&format!("{at}.mirrorPercentage"), p, errors);
        }
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            errors.push(FieldError::new(
                format!("{at}.mirrors"),
                "set mirror or mirrors, not both",
            ));
        }
        for (j, m) in self.mirrors.iter().enumerate() {
            m.destination
                .validate(&format!("{at}.mirrors[{j}].destination"), errors);
            if let Some(p) = &m.percentage {
                percentage(&format!("{at}.mirrors[{j}].percentage"), p, errors);
            }
        }
    }
}

impl Destination {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        if self.host.is_empty() || self.host.contains('*') {
            errors.push(FieldError::new(
                format!("{at}.host"),
                format!("{:?}: expected a service's short name or FQDN", self.host),
            ));
        }
        if self
            .port
            .as_ref()
            .is_some_and(|p| !(1..=65535).contains(&p.number))
        {
            errors.push(FieldError::new(
                format!("{at}.port.number"),
                "expected 1-65535",
            ));
        }
    }
}

/// A `DestinationRule`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service: a short name (the rule's namespace) or an FQDN.
    pub host: String,
    /// The policy for all of its traffic.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets by pod labels, each with a policy overriding the host's.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces it is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Not modelled: refused.
    #[serde(default)]
    pub workload_selector: Option<serde_json::Value>,
}

/// A subset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Its name (`v1`).
    pub name: String,
    /// The pods' labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its policy.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Load balancing, connection pools, outlier detection, TLS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// How an endpoint is picked.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// Connection and request bounds.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS toward the host.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Per-port settings.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// A port's policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port.
    pub port: PortSelector,
    /// As in [`TrafficPolicy`].
    #[serde(default)]
    pub load_balancer: Option<LoadBalancer>,
    /// As in [`TrafficPolicy`].
    #[serde(default)]
    pub connection_pool: Option<ConnectionPool>,
    /// As in [`TrafficPolicy`].
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// As in [`TrafficPolicy`].
    #[serde(default)]
    pub tls: Option<ClientTls>,
}

/// A load balancer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    /// `LEAST_REQUEST`, `ROUND_ROBIN`, `RANDOM`, `PASSTHROUGH` (or `UNSPECIFIED`).
    #[serde(default)]
    pub simple: Option<String>,
    /// Session affinity by a hash.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    /// Not modelled: refused.
    #[serde(default)]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Not modelled: refused.
    #[serde(default)]
    pub warmup_duration_secs: Option<serde_json::Value>,
}

/// What a consistent hash hashes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// A header's value.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// A cookie (made, with its `ttl`, when the client has none).
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// The client's address.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// A query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// The older ring size: accepted.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
    /// Ring-hash settings: accepted.
    #[serde(default)]
    pub ring_hash: Option<serde_json::Value>,
    /// Maglev settings: accepted.
    #[serde(default)]
    pub maglev: Option<serde_json::Value>,
}

/// A session cookie.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Its name.
    pub name: String,
    /// Its path.
    #[serde(default)]
    pub path: Option<String>,
    /// Its lifetime when made.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Connection and request bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// TCP bounds.
    #[serde(default)]
    pub tcp: Option<TcpPool>,
    /// HTTP bounds.
    #[serde(default)]
    pub http: Option<HttpPool>,
}

/// TCP bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Connections to the host's endpoints at most.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// How long a connect may take.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Keepalive: accepted.
    #[serde(default)]
    pub tcp_keepalive: Option<serde_json::Value>,
    /// How long a connection may live.
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    /// How long an idle connection is kept.
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// HTTP bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Requests waiting for a connection at most.
    #[serde(default)]
    pub http1_max_pending_requests: Option<u32>,
    /// Requests in flight at most.
    #[serde(default)]
    pub http2_max_requests: Option<u32>,
    /// Requests per connection at most (1: no keep-alive).
    #[serde(default)]
    pub max_requests_per_connection: Option<u32>,
    /// Retries in flight at most.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// How long an idle connection is kept.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE`: accepted (the mesh's proxies speak
    /// HTTP/2 between themselves anyway).
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    /// Accepted.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// Streams per HTTP/2 connection at most.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
}

/// Ejection of failing endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: gateway errors (502, 503, 504) in a row — not a synonym of
    /// `consecutive5xxErrors`.
    #[serde(default)]
    pub consecutive_errors: Option<u32>,
    /// 5xx responses in a row.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    /// 502, 503 and 504 responses in a row.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// Accepted.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Accepted.
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    /// How often endpoints are checked.
    #[serde(default)]
    pub interval: Option<String>,
    /// The first ejection's length (× times ejected).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// The share of endpoints that may be out at once.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
    /// Below this share healthy, nothing is ejected.
    #[serde(default)]
    pub min_health_percent: Option<u32>,
}

/// TLS toward a host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `ISTIO_MUTUAL` (the mesh's mTLS) or `DISABLE`; `SIMPLE` and `MUTUAL` (TLS of
    /// the application's own) are refused.
    #[serde(default)]
    pub mode: Option<String>,
    /// Accepted with ISTIO_MUTUAL.
    #[serde(default)]
    pub sni: Option<String>,
}

impl TrafficPolicy {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        validate_parts(
            at,
            &self.load_balancer,
            &self.connection_pool,
            &self.outlier_detection,
            &self.tls,
            errors,
        );
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let pp = format!("{at}.portLevelSettings[{i}]");
            if !(1..=65535).contains(&p.port.number) {
                errors.push(FieldError::new(
                    format!("{pp}.port.number"),
                    "expected 1-65535",
                ));
            }
            validate_parts(
                &pp,
                &p.load_balancer,
                &p.connection_pool,
                &p.outlier_detection,
                &p.tls,
                errors,
            );
        }
    }
}

fn validate_parts(
    at: &str,
    lb: &Option<LoadBalancer>,
    pool: &Option<ConnectionPool>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTls>,
    errors: &mut Vec<FieldError>,
) {
    if let Some(lb) = lb {
        let lp = format!("{at}.loadBalancer");
        if let Some(s) = &lb.simple
            && !matches!(
                s.as_str(),
                "UNSPECIFIED"
                    | "LEAST_REQUEST"
                    | "LEAST_CONN"
                    | "ROUND_ROBIN"
                    | "RANDOM"
                    | "PASSTHROUGH"
            )
        {
            errors.push(FieldError::new(
                format!("{lp}.simple"),
                format!("{s:?}: expected LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH"),
            ));
        }
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            errors.push(FieldError::new(
                lp.clone(),
                "set simple or consistentHash, not both",
            ));
        }
        if let Some(h) = &lb.consistent_hash {
            let set = [
                h.http_header_name.is_some(),
                h.http_cookie.is_some(),
                h.use_source_ip == Some(true),
                h.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                errors.push(FieldError::new(
                    format!("{lp}.consistentHash"),
                    "set exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
                ));
            }
            if let Some(c) = &h.http_cookie
                && let Some(ttl) = &c.ttl
            {
                duration(&format!("{lp}.consistentHash.httpCookie.ttl"), ttl, errors);
            }
        }
        not_modelled(
            &lb.locality_lb_setting,
            &format!("{lp}.localityLbSetting"),
            "locality load balancing",
            errors,
        );
        not_modelled(
            &lb.warmup_duration_secs,
            &format!("{lp}.warmupDurationSecs"),
            "slow start",
            errors,
        );
    }
    if let Some(p) = pool {
        let pp = format!("{at}.connectionPool");
        if let Some(t) = &p.tcp {
            for (field, v) in [
                ("connectTimeout", &t.connect_timeout),
                ("maxConnectionDuration", &t.max_connection_duration),
                ("idleTimeout", &t.idle_timeout),
            ] {
                if let Some(v) = v {
                    duration(&format!("{pp}.tcp.{field}"), v, errors);
                }
            }
        }
        if let Some(h) = &p.http {
            if let Some(v) = &h.idle_timeout {
                duration(&format!("{pp}.http.idleTimeout"), v, errors);
            }
            if let Some(u) = &h.h2_upgrade_policy
                && !matches!(u.as_str(), "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE")
            {
                errors.push(FieldError::new(
                    format!("{pp}.http.h2UpgradePolicy"),
                    format!("{u:?}: expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
                ));
            }
        }
    }
    if let Some(o) = outlier {
        let op = format!("{at}.outlierDetection");
        for (field, v) in [
            ("interval", &o.interval),
            ("baseEjectionTime", &o.base_ejection_time),
        ] {
            if let Some(v) = v {
                duration(&format!("{op}.{field}"), v, errors);
            }
        }
        for (field, v) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if v.is_some_and(|v| v > 100) {
                errors.push(FieldError::new(format!("{op}.{field}"), "0 to 100"));
            }
        }
    }
    if let Some(t) = tls {
        match t.mode.as_deref() {
            None | Some("ISTIO_MUTUAL" | "DISABLE") => {}
            Some(m @ ("SIMPLE" | "MUTUAL")) => errors.push(FieldError::new(
                format!("{at}.tls.mode"),
                format!("{m}: TLS originated to the application's own certificates is not supported by this mesh"),
            )),
            Some(m) => errors.push(FieldError::new(
                format!("{at}.tls.mode"),
                format!("{m:?}: expected ISTIO_MUTUAL or DISABLE"),
            )),
        }
    }
}

impl DestinationRuleSpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.host.is_empty() || self.host.contains('*') {
            errors.push(FieldError::new(
                "spec.host",
                format!("{:?}: expected a service's short name or FQDN", self.host),
            ));
        }
        not_modelled(
            &self.workload_selector,
            "spec.workloadSelector",
            "workloadSelector",
            &mut errors,
        );
        if let Some(p) = &self.traffic_policy {
            p.validate("spec.trafficPolicy", &mut errors);
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if s.name.is_empty() {
                errors.push(FieldError::new(format!("{at}.name"), "missing"));
            } else if !names.insert(&s.name) {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    format!("{:?} is defined twice", s.name),
                ));
            }
            if let Some(p) = &s.traffic_policy {
                p.validate(&format!("{at}.trafficPolicy"), &mut errors);
            }
        }
        errors
    }
}

/// A `Telemetry`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads; absent: the namespace (the root namespace: the mesh).
    #[serde(default)]
    pub selector: Option<crate::istio::WorkloadSelector>,
    /// Access logs.
    #[serde(default)]
    pub access_logging: Vec<TelemetryEntry>,
    /// Metrics.
    #[serde(default)]
    pub metrics: Vec<TelemetryEntry>,
    /// Traces.
    #[serde(default)]
    pub tracing: Vec<TelemetryEntry>,
    /// Not modelled: refused.
    #[serde(default)]
    pub target_refs: Option<serde_json::Value>,
}

/// One telemetry setting: providers and the rest (kept as written).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetryEntry {
    /// The providers it selects.
    #[serde(default)]
    pub providers: Vec<Provider>,
    /// Whether it is disabled.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Everything else (filters, overrides, sampling): kept for later.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

/// A provider, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    /// Its name (`envoy`, `prometheus`, `zipkin`, …).
    pub name: String,
}

impl TelemetrySpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        not_modelled(
            &self.target_refs,
            "spec.targetRefs",
            "targetRefs",
            &mut errors,
        );
        for (field, list) in [
            ("accessLogging", &self.access_logging),
            ("metrics", &self.metrics),
            ("tracing", &self.tracing),
        ] {
            for (i, e) in list.iter().enumerate() {
                for (j, p) in e.providers.iter().enumerate() {
                    if p.name.is_empty() {
                        errors.push(FieldError::new(
                            format!("spec.{field}[{i}].providers[{j}].name"),
                            "missing",
                        ));
                    }
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(file: &str) -> Vec<(String, serde_json::Value)> {
        let path = format!(
            "{}/../../shared/examples/istio/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        crate::yaml::documents(&text)
            .map(|d| d.expect("YAML"))
            .map(|d| {
                let kind = d["kind"].as_str().unwrap_or_default().to_string();
                (kind, d["spec"].clone())
            })
            .collect()
    }

    #[test]
    fn every_example_object_is_accepted_as_written() {
        let mut seen = 0;
        for file in ["routing.yaml", "resilience.yaml", "telemetry.yaml"] {
            for (kind, spec) in examples(file) {
                let errors = match kind.as_str() {
                    "VirtualService" => serde_json::from_value::<VirtualServiceSpec>(spec)
                        .expect("VirtualService")
                        .validate(),
                    "DestinationRule" => serde_json::from_value::<DestinationRuleSpec>(spec)
                        .expect("DestinationRule")
                        .validate(),
                    "Telemetry" => serde_json::from_value::<TelemetrySpec>(spec)
                        .expect("Telemetry")
                        .validate(),
                    other => panic!("{file}: unexpected kind {other}"),
                };
                assert!(errors.is_empty(), "{file} {kind}: {errors:?}");
                seen += 1;
            }
        }
        assert_eq!(seen, 14, "every object of the three files");
        assert!(served("networking.istio.io/v1alpha3") && !served("networking.istio.io/v2"));
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn bad_virtual_services_are_refused_naming_the_field() {
        let vs: VirtualServiceSpec = crate::yaml::from_str(
            "hosts: [reviews]\ngateways: [ingress]\nhttp:\n\
             - match: [{uri: {exact: /a, prefix: /b}, headers: {end-user: {regex: '('}}}]\n  \
               route: [{destination: {host: reviews, subset: v1}, weight: 70}, {destination: {host: reviews, subset: v2}, weight: -5}]\n  \
               timeout: soon\n  retries: {attempts: 3, retryOn: '5xx,sometimes'}\n  \
               fault: {abort: {httpStatus: 700, percentage: {value: 150}}}\n\
             - corsPolicy: {}\n",
        )
        .expect("parses");
        assert_eq!(
            fields(vs.validate()),
            [
                "spec.gateways[0]",
                "spec.http[0].match[0].uri",
                "spec.http[0].match[0].headers[\"end-user\"].regex",
                "spec.http[0].route[1].weight",
                "spec.http[0].timeout",
                "spec.http[0].retries.retryOn",
                "spec.http[0].fault.abort.httpStatus",
                "spec.http[0].fault.abort.percentage.value",
                "spec.http[1].corsPolicy",
                "spec.http[1].route",
            ]
        );
        assert!(
            crate::yaml::from_str::<VirtualServiceSpec>("hosts: [a]\nhtp: []\n").is_err(),
            "an unknown field is an error"
        );
    }

    #[test]
    fn bad_destination_rules_are_refused_naming_the_field() {
        let dr: DestinationRuleSpec = crate::yaml::from_str(
            "host: reviews\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}\n  \
             tls: {mode: SIMPLE}\n  outlierDetection: {interval: often, maxEjectionPercent: 120}\n\
             subsets: [{name: v1, labels: {version: v1}}, {name: v1}]\n",
        )
        .expect("parses");
        assert_eq!(
            fields(dr.validate()),
            [
                "spec.trafficPolicy.loadBalancer.simple",
                "spec.trafficPolicy.outlierDetection.interval",
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                "spec.trafficPolicy.tls.mode",
                "spec.subsets[1].name",
            ]
        );
    }
}
