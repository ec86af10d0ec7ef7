//! `ServiceProfile` (`linkerd.io/v1alpha2`), as Linkerd users already write it, with the
//! route-level `retryBudget` extension, and its validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;
use crate::{FieldError, duration};

/// The API group and version of ServiceProfile.
pub const API_VERSION: &str = "linkerd.io/v1alpha2";

/// The ServiceProfile spec: routes, the shared retry budget, and traffic overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceProfileSpec {
    /// Routes, matched in order; the first match names the request's route.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The retry budget shared by retryable routes that have none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Weighted destinations that replace the service's own endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_overrides: Vec<WeightedDst>,
    /// Ports whose traffic is opaque TCP, never HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

/// One route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// The route's name, used as the `route` metric label.
    pub name: String,
    /// Which requests the route matches.
    pub condition: RequestMatch,
    /// Which responses count as failures, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_classes: Vec<ResponseClass>,
    /// Whether failed requests may be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_retryable: Option<bool>,
    /// The route's timeout, covering retries, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// A retry budget for this route alone; it also makes the route retryable unless
    /// `isRetryable: false` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// A request condition: every field given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// All of these must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::nested_list")
    )]
    pub all: Option<Vec<RequestMatch>>,
    /// At least one of these must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::nested_list")
    )]
    pub any: Option<Vec<RequestMatch>>,
    /// This must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::nested"))]
    pub not: Option<Box<RequestMatch>>,
    /// A regular expression the whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A response class: responses matching `condition` are failures if `isFailure`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResponseClass {
    /// Which responses this class covers.
    pub condition: ResponseMatch,
    /// Whether they count as failures.
    #[serde(default)]
    pub is_failure: bool,
}

/// A response condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResponseMatch {
    /// All of these must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::nested_list")
    )]
    pub all: Option<Vec<ResponseMatch>>,
    /// At least one of these must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::nested_list")
    )]
    pub any: Option<Vec<ResponseMatch>>,
    /// This must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::nested"))]
    pub not: Option<Box<ResponseMatch>>,
    /// An inclusive range of status codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRange>,
}

/// An inclusive range of HTTP status codes; a missing end is open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatusRange {
    /// The lowest status included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// The highest status included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// How many retries may be added to the requests seen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries may add at most this fraction of the original requests.
    pub retry_ratio: f64,
    /// Retries allowed per second regardless of the ratio.
    pub min_retries_per_second: u32,
    /// The window over which requests and retries are counted, e.g. `10s`.
    pub ttl: String,
}

impl Default for RetryBudget {
    /// Linkerd's default budget: 20% more requests, 10 per second, over 10 s.
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: "10s".into(),
        }
    }
}

/// A weighted destination authority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WeightedDst {
    /// The destination, e.g. `web-v2.default.svc.cluster.local:80`.
    pub authority: String,
    /// Its relative weight.
    pub weight: Quantity,
}

impl ServiceProfileSpec {
    /// Every problem with the spec, each naming its field (`spec.routes[1].timeout`).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("spec.routes[{i}]");
            if route.name.trim().is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.name"),
                    "a route needs a name",
                ));
            }
            validate_request_match(&route.condition, &format!("{at}.condition"), &mut errors);
            for (j, class) in route.response_classes.iter().enumerate() {
                validate_response_match(
                    &class.condition,
                    &format!("{at}.responseClasses[{j}].condition"),
                    &mut errors,
                );
            }
            if let Some(t) = &route.timeout {
                match duration::parse(t) {
                    Ok(d) if d.is_zero() => errors.push(FieldError::new(
                        format!("{at}.timeout"),
                        "must be more than 0",
                    )),
                    Ok(_) => {}
                    Err(e) => errors.push(FieldError::new(format!("{at}.timeout"), e.to_string())),
                }
            }
            if let Some(b) = &route.retry_budget {
                b.validate(&format!("{at}.retryBudget"), &mut errors);
            }
        }
        if let Some(b) = &self.retry_budget {
            b.validate("spec.retryBudget", &mut errors);
        }
        for (i, dst) in self.dst_overrides.iter().enumerate() {
            if dst.weight > Quantity::MAX_WEIGHT {
                errors.push(FieldError::new(
                    format!("spec.dstOverrides[{i}].weight"),
                    "larger than 1000000",
                ));
            }
            if dst.authority.parse::<http_authority::Authority>().is_err() {
                errors.push(FieldError::new(
                    format!("spec.dstOverrides[{i}].authority"),
                    "not a valid authority",
                ));
            }
        }
        if !self.dst_overrides.is_empty() && self.dst_overrides.iter().all(|d| d.weight.0 == 0) {
            errors.push(FieldError::new("spec.dstOverrides", "weights sum to zero"));
        }
        errors
    }
}

impl RouteSpec {
    /// Whether the route may be retried: `isRetryable`, else whether it has a budget.
    pub fn retryable(&self) -> bool {
        self.is_retryable.unwrap_or(self.retry_budget.is_some())
    }

    /// The route's timeout, if it has a valid one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
    }
}

impl RetryBudget {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        if !self.retry_ratio.is_finite() || self.retry_ratio < 0.0 {
            errors.push(FieldError::new(
                format!("{at}.retryRatio"),
                "must be 0 or more",
            ));
        }
        match duration::parse(&self.ttl) {
            Ok(ttl) if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) => errors
                .push(FieldError::new(
                    format!("{at}.ttl"),
                    "must be between 1s and 60s",
                )),
            Ok(_) => {}
            Err(e) => errors.push(FieldError::new(format!("{at}.ttl"), e.to_string())),
        }
    }

    /// The window, if valid.
    pub fn ttl(&self) -> Option<Duration> {
        duration::parse(&self.ttl).ok()
    }
}

/// How deeply conditions may nest: enough for any real route, and far from the limits
/// of the decoders downstream.
pub const MAX_DEPTH: usize = 16;

fn validate_request_match(m: &RequestMatch, at: &str, errors: &mut Vec<FieldError>) {
    if at.matches('.').count() > MAX_DEPTH + 3 {
        errors.push(FieldError::new(
            at,
            format!("nested more than {MAX_DEPTH} deep"),
        ));
        return;
    }
    if let Some(re) = &m.path_regex
        && let Err(e) = compile_anchored(&anchored(re))
    {
        errors.push(FieldError::new(format!("{at}.pathRegex"), e));
    }
    if let Some(method) = &m.method
        && (method.is_empty() || http::Method::from_bytes(method.as_bytes()).is_err())
    {
        errors.push(FieldError::new(
            format!("{at}.method"),
            format!("invalid method {method:?}"),
        ));
    }
    for (i, sub) in m.all.iter().flatten().enumerate() {
        validate_request_match(sub, &format!("{at}.all[{i}]"), errors);
    }
    for (i, sub) in m.any.iter().flatten().enumerate() {
        validate_request_match(sub, &format!("{at}.any[{i}]"), errors);
    }
    if let Some(sub) = &m.not {
        validate_request_match(sub, &format!("{at}.not"), errors);
    }
}

fn validate_response_match(m: &ResponseMatch, at: &str, errors: &mut Vec<FieldError>) {
    if at.matches('.').count() > MAX_DEPTH + 4 {
        errors.push(FieldError::new(
            at,
            format!("nested more than {MAX_DEPTH} deep"),
        ));
        return;
    }
    if let Some(range) = &m.status {
        let (min, max) = (range.min.unwrap_or(100), range.max.unwrap_or(599));
        if !(100..=599).contains(&min) || !(100..=599).contains(&max) || min > max {
            errors.push(FieldError::new(
                format!("{at}.status"),
                format!("invalid range {min}..{max}"),
            ));
        }
    }
    for (i, sub) in m.all.iter().flatten().enumerate() {
        validate_response_match(sub, &format!("{at}.all[{i}]"), errors);
    }
    for (i, sub) in m.any.iter().flatten().enumerate() {
        validate_response_match(sub, &format!("{at}.any[{i}]"), errors);
    }
    if let Some(sub) = &m.not {
        validate_response_match(sub, &format!("{at}.not"), errors);
    }
}

/// A `pathRegex` anchored so that it must match the whole path, as Linkerd does.
pub fn anchored(path_regex: &str) -> String {
    format!("^(?:{path_regex})$")
}

/// The largest compiled program a route regex may have. Matching is linear in the
/// path's length, but the factor is the program's size when the regex defeats the
/// lazy DFA: at this bound an adversarial pattern costs tens of milliseconds on the
/// longest path the proxy accepts (8 KiB), where an unbounded one (`(?:[a-z/]{1,60}){200}`)
/// took seconds on the proxy's only worker. Real routes compile to a few KiB.
pub const MAX_REGEX_PROGRAM_BYTES: usize = 32 * 1024;

/// The lazy DFA's cache per compiled regex: bounds the proxy's memory per route.
const MAX_REGEX_CACHE_BYTES: usize = 256 * 1024;

/// Compiles an (already anchored) path regex the way the proxy matches it, with its
/// size bounded; the error says why in words.
///
/// Request paths are ASCII (RFC 3986: anything else is percent-encoded), so the regex
/// runs over bytes with Unicode classes off: the same matches on every possible path,
/// at a small fraction of the size (`\w` is 808 bytes instead of 50 KiB). A pattern
/// that needs Unicode syntax (`\p{Greek}`) is compiled with it, under the same bound
/// (which the larger classes, such as `\p{L}`, exceed).
pub fn compile_anchored(pattern: &str) -> Result<regex::bytes::Regex, String> {
    let build = |unicode: bool| {
        regex::bytes::RegexBuilder::new(pattern)
            .unicode(unicode)
            .size_limit(MAX_REGEX_PROGRAM_BYTES)
            .dfa_size_limit(MAX_REGEX_CACHE_BYTES)
            .build()
    };
    build(false).or_else(|_| build(true)).map_err(|e| match e {
        regex::Error::CompiledTooBig(limit) => format!(
            "regex compiles to more than {} KiB, the bound that keeps matching fast: \
             use fewer or smaller counted repetitions ({{n,m}}) and no Unicode classes (\\p{{..}})",
            limit / 1024
        ),
        other => format!("invalid regex: {other}"),
    })
}

mod http_authority {
    pub use http::uri::Authority;
}
