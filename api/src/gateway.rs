//! The Gateway API's routes as the mesh takes them (`gateway.networking.k8s.io/v1`
//! `HTTPRoute` and `GRPCRoute` attached to a Service, GAMMA), with their validation:
//! what the upstream CRDs' schema and CEL rules refuse is refused here too, naming
//! the field, so that a folder of YAML gets the same answers as a cluster.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::profile::{anchored, compile_anchored};

/// The API group of the Gateway API.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The most rules a route may have (the upstream CRD's bound).
pub const MAX_RULES: usize = 16;
/// The most matches a rule may have (the upstream CRD's bound).
pub const MAX_MATCHES: usize = 64;
/// The most filters or backends a rule (or a backend) may have.
pub const MAX_PER_RULE: usize = 16;
/// The most header or query-parameter matches one match may have.
pub const MAX_CONDITIONS: usize = 16;
/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An `HTTPRoute`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// What the route attaches to: for the mesh, Services.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names (not used for routes attached to a Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// A `GRPCRoute`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// What the route attaches to: for the mesh, Services.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host names (not used for routes attached to a Service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// A parent a route attaches to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// The parent's API group: `""` (or `core`) for a Service; the Gateway API's own
    /// group when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The parent's kind: `Service` for the mesh; `Gateway` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The parent's namespace; the route's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The parent's name.
    pub name: String,
    /// A section (listener) of the parent; not used for Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// The Service port the route attaches to; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ParentRef {
    /// Whether this parent is a Service (the mesh's routes); other parents (Gateways)
    /// belong to ingress controllers and are left alone.
    pub fn is_service(&self) -> bool {
        self.kind.as_deref() == Some("Service")
            && matches!(self.group.as_deref(), Some("" | "core"))
    }
}

/// One rule of an `HTTPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// The rule's name, for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The requests it takes: any of these (none: every request).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Applied to the requests it takes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// Where its requests go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Its timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// The experimental channel's retry field, refused: the mesh takes retries from
    /// the `retry.linkerd.io` annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub retry: Option<serde_json::Value>,
    /// The experimental channel's session persistence, refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub session_persistence: Option<serde_json::Value>,
}

/// A set of conditions a request must all meet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path; `PathPrefix` `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Headers, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameters, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// How a path is matched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path, prefix or regular expression.
    #[serde(default = "root")]
    pub value: String,
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        Self {
            kind: PathMatchType::PathPrefix,
            value: root(),
        }
    }
}

fn root() -> String {
    "/".into()
}

/// The ways a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PathMatchType {
    /// The whole path.
    Exact,
    /// Whole leading segments: `/v2` takes `/v2` and `/v2/x`, not `/v2x`.
    #[default]
    PathPrefix,
    /// A regular expression over the whole path.
    RegularExpression,
}

/// A header or query parameter condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// How `value` is compared.
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    /// The header's (case-insensitive) or parameter's (case-sensitive) name.
    pub name: String,
    /// The value or regular expression.
    pub value: String,
}

/// The ways a value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum StringMatchType {
    /// Exactly.
    #[default]
    Exact,
    /// A regular expression over the whole value.
    RegularExpression,
}

/// A filter: its type and that type's settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    /// Which filter.
    #[serde(rename = "type")]
    pub kind: FilterType,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// For `ExtensionRef` (refused: the mesh has no extension filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectRef>,
}

/// The filter types of the standard channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum FilterType {
    /// Changes the request's headers.
    #[default]
    RequestHeaderModifier,
    /// Changes the response's headers.
    ResponseHeaderModifier,
    /// Answers with a redirect.
    RequestRedirect,
    /// Rewrites the host or path sent upstream.
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    /// Sends a copy of requests elsewhere.
    RequestMirror,
    /// An implementation's own filter.
    ExtensionRef,
}

impl FilterType {
    /// The field that holds this type's settings.
    fn field(self) -> &'static str {
        match self {
            Self::RequestHeaderModifier => "requestHeaderModifier",
            Self::ResponseHeaderModifier => "responseHeaderModifier",
            Self::RequestRedirect => "requestRedirect",
            Self::UrlRewrite => "urlRewrite",
            Self::RequestMirror => "requestMirror",
            Self::ExtensionRef => "extensionRef",
        }
    }
}

/// A reference to an object in the route's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LocalObjectRef {
    /// Its group.
    #[serde(default)]
    pub group: String,
    /// Its kind.
    #[serde(default)]
    pub kind: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
}

/// Header changes: set, then add, then remove.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HeaderModifier {
    /// Headers replaced (or added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Values added beside any already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Headers removed, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HttpHeader {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A redirect answered instead of sending the request on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`; the request's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host; the request's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path; the request's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    /// The port; the scheme's (or the request's) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The status: 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A rewrite of the request sent upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// The host sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

/// A change to the path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpPathModifier {
    /// Which change.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// For `ReplaceFullPath`: the new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`: what the matched prefix becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// The ways a path is changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PathModifierType {
    /// The whole path is replaced.
    #[default]
    ReplaceFullPath,
    /// The prefix the rule's `PathPrefix` match took is replaced.
    ReplacePrefixMatch,
}

/// A copy of requests sent to another backend; its answer is dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendObjectRef,
    /// The share of requests copied, in percent (all when neither this nor
    /// `fraction` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// The share of requests copied, as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Fraction {
    /// The numerator.
    pub numerator: u32,
    /// The denominator; 100 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

/// A backend object: for the mesh, a Service and its port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BackendObjectRef {
    /// Its group: `""` (the core group) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its kind: `Service` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
    /// Its namespace; the route's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port (required for Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl BackendObjectRef {
    /// Whether it names a Service (the only backend kind the mesh resolves).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some("" | "core"))
            && matches!(self.kind.as_deref(), None | Some("Service"))
    }
}

/// A weighted backend of an `HTTPRoute` rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpBackendRef {
    /// The backend.
    #[serde(flatten)]
    pub backend: BackendObjectRef,
    /// Its weight relative to the rule's other backends; 1 when absent, 0 sends it
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Applied to the requests sent to this backend only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
}

impl HttpBackendRef {
    /// Its weight (1 when absent).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

/// An `HTTPRoute` rule's timeouts (`0s`: none).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included, to its response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// One attempt sent to a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl HttpRouteTimeouts {
    /// The request timeout, if set and not zero (valid objects only).
    pub fn request(&self) -> Option<Duration> {
        nonzero(self.request.as_deref())
    }

    /// The per-backend-request timeout, if set and not zero (valid objects only).
    pub fn backend_request(&self) -> Option<Duration> {
        nonzero(self.backend_request.as_deref())
    }
}

fn nonzero(d: Option<&str>) -> Option<Duration> {
    d.and_then(|d| crate::duration::parse(d).ok())
        .filter(|d| !d.is_zero())
}

/// One rule of a `GRPCRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// The rule's name, for metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The calls it takes: any of these (none: every call).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Applied to the calls it takes: header modifiers and mirrors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// Where its calls go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<HttpBackendRef>,
    /// The experimental channel's session persistence, refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub session_persistence: Option<serde_json::Value>,
}

/// A set of conditions a gRPC call must all meet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// The service and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Headers, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
}

/// A gRPC service and method condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// How `service` and `method` are compared.
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    /// The fully qualified service (`pkg.Greeter`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The method (`SayHello`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A `ReferenceGrant`'s spec (`gateway.networking.k8s.io/v1beta1`): which objects of
/// other namespaces may refer to which objects of the grant's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReferenceGrantSpec {
    /// Who may refer: a kind of a namespace.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// To what: a kind, perhaps one name.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// Objects that may refer, by group, kind and namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GrantFrom {
    /// Their group (`gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: String,
    /// Their kind (`HTTPRoute`).
    pub kind: String,
    /// Their namespace.
    pub namespace: String,
}

/// Objects that may be referred to, by group and kind, and perhaps name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GrantTo {
    /// Their group (`""` for Services).
    #[serde(default)]
    pub group: String,
    /// Their kind (`Service`).
    pub kind: String,
    /// Only this one; every object of the kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ReferenceGrantSpec {
    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (list, len) in [("spec.from", self.from.len()), ("spec.to", self.to.len())] {
            if !(1..=16).contains(&len) {
                errors.push(FieldError::new(list, "needs 1 to 16 entries"));
            }
        }
        for (i, f) in self.from.iter().enumerate() {
            if f.kind.is_empty() {
                errors.push(FieldError::new(format!("spec.from[{i}].kind"), "required"));
            }
            if f.namespace.is_empty() {
                errors.push(FieldError::new(
                    format!("spec.from[{i}].namespace"),
                    "required",
                ));
            }
        }
        for (i, t) in self.to.iter().enumerate() {
            if t.kind.is_empty() {
                errors.push(FieldError::new(format!("spec.to[{i}].kind"), "required"));
            }
        }
        errors
    }

    /// Whether it lets a `kind` (of the Gateway API's group) in `namespace` refer to
    /// Service `service` of the grant's namespace.
    pub fn allows(&self, kind: &str, namespace: &str, service: &str) -> bool {
        self.from
            .iter()
            .any(|f| f.group == GROUP && f.kind == kind && f.namespace == namespace)
            && self.to.iter().any(|t| {
                matches!(t.group.as_str(), "" | "core")
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == service)
            })
    }
}

/// The `controllerName` the mesh writes route statuses under.
pub const CONTROLLER_NAME: &str = "mesh.io/mesh-controller";

/// A route's status: each implementation's word on each parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// Per parent and implementation.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// One implementation's conditions for one parent of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent.
    pub parent_ref: ParentRef,
    /// Who wrote this entry (the mesh: [`CONTROLLER_NAME`]).
    pub controller_name: String,
    /// `Accepted`, `ResolvedRefs`.
    #[serde(default)]
    pub conditions: Vec<StatusCondition>,
}

/// A condition, as Kubernetes writes them (`metav1.Condition`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    /// Its type (`Accepted`).
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// In words.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation of the spec it speaks of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The methods an `HTTPRoute` match may name (the upstream CRD's enum).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl HttpRouteSpec {
    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        parent_refs(&self.parent_refs, &mut errors);
        if self.rules.len() > MAX_RULES {
            errors.push(FieldError::new(
                "spec.rules",
                format!("more than {MAX_RULES} rules"),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            rule.validate(&at, &mut errors);
        }
        rule_names(self.rules.iter().map(|r| r.name.as_deref()), &mut errors);
        errors
    }
}

impl GrpcRouteSpec {
    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        parent_refs(&self.parent_refs, &mut errors);
        if self.rules.len() > MAX_RULES {
            errors.push(FieldError::new(
                "spec.rules",
                format!("more than {MAX_RULES} rules"),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            bounded(
                &rule.matches,
                MAX_MATCHES,
                &format!("{at}.matches"),
                &mut errors,
            );
            for (j, m) in rule.matches.iter().enumerate() {
                let at = format!("{at}.matches[{j}]");
                if let Some(method) = &m.method {
                    grpc_method(method, &format!("{at}.method"), &mut errors);
                }
                values(&m.headers, &format!("{at}.headers"), true, &mut errors);
            }
            filters(
                &rule.filters,
                &format!("{at}.filters"),
                Some(false),
                &mut errors,
            );
            backends(
                &rule.backend_refs,
                &format!("{at}.backendRefs"),
                &mut errors,
            );
            if rule.session_persistence.is_some() {
                errors.push(FieldError::new(
                    format!("{at}.sessionPersistence"),
                    "not supported (an experimental-channel field)",
                ));
            }
        }
        rule_names(self.rules.iter().map(|r| r.name.as_deref()), &mut errors);
        errors
    }
}

impl HttpRouteRule {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        bounded(&self.matches, MAX_MATCHES, &format!("{at}.matches"), errors);
        for (j, m) in self.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(path) = &m.path {
                path_match(path, &format!("{at}.path"), errors);
            }
            values(&m.headers, &format!("{at}.headers"), true, errors);
            values(&m.query_params, &format!("{at}.queryParams"), false, errors);
            if let Some(method) = &m.method
                && !METHODS.contains(&method.as_str())
            {
                errors.push(FieldError::new(
                    format!("{at}.method"),
                    format!("{method:?} is not one of {}", METHODS.join(", ")),
                ));
            }
        }
        // A prefix rewrite needs exactly one prefix to replace.
        let prefix_rewrite = self.filters.iter().any(|f| {
            f.url_rewrite
                .as_ref()
                .and_then(|r| r.path.as_ref())
                .or(f.request_redirect.as_ref().and_then(|r| r.path.as_ref()))
                .is_some_and(|p| p.kind == PathModifierType::ReplacePrefixMatch)
        });
        if prefix_rewrite {
            let prefixes = self
                .matches
                .iter()
                .filter(|m| {
                    m.path
                        .as_ref()
                        .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
                })
                .count();
            if self.matches.len() > 1 || prefixes != 1 && !self.matches.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.filters"),
                    "ReplacePrefixMatch needs the rule to have exactly one match, with a \
                     PathPrefix path",
                ));
            }
        }
        filters(&self.filters, &format!("{at}.filters"), Some(true), errors);
        backends(&self.backend_refs, &format!("{at}.backendRefs"), errors);
        if !self.backend_refs.is_empty()
            && self
                .filters
                .iter()
                .any(|f| f.kind == FilterType::RequestRedirect)
        {
            errors.push(FieldError::new(
                format!("{at}.backendRefs"),
                "a rule that redirects has no backends",
            ));
        }
        if let Some(t) = &self.timeouts {
            timeouts(t, &format!("{at}.timeouts"), errors);
        }
        if self.retry.is_some() {
            errors.push(FieldError::new(
                format!("{at}.retry"),
                "not supported (an experimental-channel field): set the \
                 retry.linkerd.io annotations on the route instead",
            ));
        }
        if self.session_persistence.is_some() {
            errors.push(FieldError::new(
                format!("{at}.sessionPersistence"),
                "not supported (an experimental-channel field)",
            ));
        }
    }
}

/// Rule names are unique in a route (they name its routes' metrics).
fn rule_names<'a>(names: impl Iterator<Item = Option<&'a str>>, errors: &mut Vec<FieldError>) {
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.enumerate() {
        let Some(name) = name else { continue };
        let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if name.is_empty() || name.len() > 253 || !name.chars().all(label) {
            errors.push(FieldError::new(
                format!("spec.rules[{i}].name"),
                format!("{name:?} is not a lower-case DNS label"),
            ));
        } else if !seen.insert(name) {
            errors.push(FieldError::new(
                format!("spec.rules[{i}].name"),
                format!("{name:?} names two rules"),
            ));
        }
    }
}

fn parent_refs(refs: &[ParentRef], errors: &mut Vec<FieldError>) {
    if refs.len() > 32 {
        errors.push(FieldError::new("spec.parentRefs", "more than 32 parents"));
    }
    for (i, p) in refs.iter().enumerate() {
        if p.name.trim().is_empty() {
            errors.push(FieldError::new(
                format!("spec.parentRefs[{i}].name"),
                "a parent needs a name",
            ));
        }
        if p.is_service() && p.port == Some(0) {
            errors.push(FieldError::new(
                format!("spec.parentRefs[{i}].port"),
                "0 is not a port",
            ));
        }
    }
}

fn bounded<T>(items: &[T], max: usize, at: &str, errors: &mut Vec<FieldError>) {
    if items.len() > max {
        errors.push(FieldError::new(at, format!("more than {max}")));
    }
}

/// A path as the Gateway API accepts it: absolute, without `//`, `/./`, `/../`, an
/// encoded slash or a fragment.
fn path_value(value: &str, at: &str, errors: &mut Vec<FieldError>) {
    let bad = !value.starts_with('/')
        || ["//", "/./", "/../", "%2f", "%2F", "#"]
            .iter()
            .any(|s| value.contains(s))
        || value.ends_with("/..")
        || value.ends_with("/.")
        || value.len() > 1024;
    if bad {
        errors.push(FieldError::new(
            at,
            format!(
                "{value:?} must be an absolute path (start with `/`) of at most 1024 bytes \
                 without `//`, `/./`, `/../`, `%2f` or `#`"
            ),
        ));
    }
}

fn path_match(p: &HttpPathMatch, at: &str, errors: &mut Vec<FieldError>) {
    match p.kind {
        PathMatchType::Exact | PathMatchType::PathPrefix => {
            path_value(&p.value, &format!("{at}.value"), errors);
        }
        PathMatchType::RegularExpression => {
            if let Err(e) = compile_anchored(&anchored(&p.value)) {
                errors.push(FieldError::new(format!("{at}.value"), e));
            }
        }
    }
}

fn values(matches: &[ValueMatch], at: &str, headers: bool, errors: &mut Vec<FieldError>) {
    if matches.len() > MAX_CONDITIONS {
        errors.push(FieldError::new(at, format!("more than {MAX_CONDITIONS}")));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, m) in matches.iter().enumerate() {
        let name = if headers {
            m.name.to_ascii_lowercase()
        } else {
            m.name.clone()
        };
        let valid = if headers {
            http::HeaderName::from_bytes(m.name.as_bytes()).is_ok()
        } else {
            !m.name.is_empty() && m.name.len() <= 256
        };
        if !valid {
            errors.push(FieldError::new(
                format!("{at}[{k}].name"),
                format!("invalid name {:?}", m.name),
            ));
        } else if !seen.insert(name) {
            errors.push(FieldError::new(
                format!("{at}[{k}].name"),
                format!("{:?} is matched twice in one match", m.name),
            ));
        }
        if m.kind == StringMatchType::RegularExpression
            && let Err(e) = compile_anchored(&anchored(&m.value))
        {
            errors.push(FieldError::new(format!("{at}[{k}].value"), e));
        }
        if m.value.len() > 4096 {
            errors.push(FieldError::new(
                format!("{at}[{k}].value"),
                "longer than 4096 bytes",
            ));
        }
    }
}

fn grpc_method(m: &GrpcMethodMatch, at: &str, errors: &mut Vec<FieldError>) {
    let parts = [("service", &m.service), ("method", &m.method)];
    if m.kind == StringMatchType::Exact && m.service.is_none() && m.method.is_none() {
        errors.push(FieldError::new(
            at,
            "an Exact method match needs a service or a method",
        ));
    }
    for (field, value) in parts {
        let Some(v) = value else { continue };
        let at = format!("{at}.{field}");
        match m.kind {
            StringMatchType::Exact => {
                let allowed = |c: char| {
                    c.is_ascii_alphanumeric() || c == '_' || (field == "service" && c == '.')
                };
                if v.is_empty() || !v.chars().all(allowed) {
                    errors.push(FieldError::new(at, format!("invalid gRPC {field} {v:?}")));
                }
            }
            StringMatchType::RegularExpression => {
                if let Err(e) = compile_anchored(&anchored(v)) {
                    errors.push(FieldError::new(at, e));
                }
            }
        }
    }
}

/// `http` tells an `HTTPRoute`'s filters (which may redirect and rewrite) from a
/// `GRPCRoute`'s; `None` for a backend's own filters, which are an `HTTPRoute`'s.
fn filters(
    filters: &[HttpRouteFilter],
    at: &str,
    http: Option<bool>,
    errors: &mut Vec<FieldError>,
) {
    bounded(filters, MAX_PER_RULE, at, errors);
    let mut seen = std::collections::HashSet::new();
    for (k, f) in filters.iter().enumerate() {
        let at = format!("{at}[{k}]");
        let set = [
            (
                FilterType::RequestHeaderModifier,
                f.request_header_modifier.is_some(),
            ),
            (
                FilterType::ResponseHeaderModifier,
                f.response_header_modifier.is_some(),
            ),
            (FilterType::RequestRedirect, f.request_redirect.is_some()),
            (FilterType::UrlRewrite, f.url_rewrite.is_some()),
            (FilterType::RequestMirror, f.request_mirror.is_some()),
            (FilterType::ExtensionRef, f.extension_ref.is_some()),
        ];
        for (kind, present) in set {
            if kind == f.kind && !present {
                errors.push(FieldError::new(
                    format!("{at}.{}", kind.field()),
                    format!("required by type {:?}", kind.field()),
                ));
            } else if kind != f.kind && present {
                errors.push(FieldError::new(
                    format!("{at}.{}", kind.field()),
                    format!("must not be set for type {:?}", f.kind.field()),
                ));
            }
        }
        // Mirrors may repeat; any other filter appears once per rule.
        if f.kind != FilterType::RequestMirror && !seen.insert(f.kind) {
            errors.push(FieldError::new(
                format!("{at}.type"),
                "appears twice in one list of filters",
            ));
        }
        match f.kind {
            FilterType::RequestHeaderModifier | FilterType::ResponseHeaderModifier => {
                let m = f
                    .request_header_modifier
                    .as_ref()
                    .or(f.response_header_modifier.as_ref());
                if let Some(m) = m {
                    header_modifier(m, &format!("{at}.{}", f.kind.field()), errors);
                }
            }
            FilterType::RequestMirror if http.is_none() => errors.push(FieldError::new(
                format!("{at}.type"),
                "\"requestMirror\" is not supported in a backend's filters: mirror in the rule's",
            )),
            FilterType::RequestRedirect | FilterType::UrlRewrite if http != Some(true) => {
                let whose = if http.is_none() {
                    "a backend's filters"
                } else {
                    "a GRPCRoute"
                };
                errors.push(FieldError::new(
                    format!("{at}.type"),
                    format!("{:?} is not allowed in {whose}", f.kind.field()),
                ));
            }
            FilterType::RequestRedirect => {
                if let Some(r) = &f.request_redirect {
                    redirect(r, &format!("{at}.requestRedirect"), errors);
                }
            }
            FilterType::UrlRewrite => {
                if let Some(r) = &f.url_rewrite {
                    let at = format!("{at}.urlRewrite");
                    if let Some(h) = &r.hostname {
                        hostname(h, &format!("{at}.hostname"), errors);
                    }
                    if let Some(p) = &r.path {
                        path_modifier(p, &format!("{at}.path"), errors);
                    }
                }
            }
            FilterType::RequestMirror => {
                if let Some(m) = &f.request_mirror {
                    mirror(m, &format!("{at}.requestMirror"), errors);
                }
            }
            FilterType::ExtensionRef => errors.push(FieldError::new(
                format!("{at}.type"),
                "ExtensionRef filters are not supported: the mesh has no extension filters",
            )),
        }
    }
    let has = |k| filters.iter().any(|f| f.kind == k);
    if has(FilterType::RequestRedirect) && has(FilterType::UrlRewrite) {
        errors.push(FieldError::new(
            at,
            "RequestRedirect and URLRewrite cannot both be set",
        ));
    }
}

fn header_modifier(m: &HeaderModifier, at: &str, errors: &mut Vec<FieldError>) {
    for (list, headers) in [("set", &m.set), ("add", &m.add)] {
        if headers.len() > MAX_CONDITIONS {
            errors.push(FieldError::new(
                format!("{at}.{list}"),
                format!("more than {MAX_CONDITIONS}"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                errors.push(FieldError::new(
                    format!("{at}.{list}[{i}].name"),
                    format!("invalid header name {:?}", h.name),
                ));
            } else if !seen.insert(h.name.to_ascii_lowercase()) {
                errors.push(FieldError::new(
                    format!("{at}.{list}[{i}].name"),
                    format!("{:?} appears twice", h.name),
                ));
            }
            if http::HeaderValue::from_str(&h.value).is_err() {
                errors.push(FieldError::new(
                    format!("{at}.{list}[{i}].value"),
                    "invalid header value",
                ));
            }
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(
                format!("{at}.remove[{i}]"),
                format!("invalid header name {name:?}"),
            ));
        }
    }
}

fn hostname(h: &str, at: &str, errors: &mut Vec<FieldError>) {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.len() > 253 || !h.split('.').all(label) {
        errors.push(FieldError::new(
            at,
            format!("{h:?} is not a lower-case DNS name"),
        ));
    }
}

fn path_modifier(p: &HttpPathModifier, at: &str, errors: &mut Vec<FieldError>) {
    let (want, other, value) = match p.kind {
        PathModifierType::ReplaceFullPath => (
            "replaceFullPath",
            p.replace_prefix_match.is_some(),
            &p.replace_full_path,
        ),
        PathModifierType::ReplacePrefixMatch => (
            "replacePrefixMatch",
            p.replace_full_path.is_some(),
            &p.replace_prefix_match,
        ),
    };
    match value {
        Some(v) => path_value(v, &format!("{at}.{want}"), errors),
        None => errors.push(FieldError::new(
            format!("{at}.{want}"),
            "required by the path's type",
        )),
    }
    if other {
        errors.push(FieldError::new(
            at,
            format!("only {want} may be set for this type"),
        ));
    }
}

fn redirect(r: &RequestRedirect, at: &str, errors: &mut Vec<FieldError>) {
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        errors.push(FieldError::new(
            format!("{at}.scheme"),
            format!("{s:?} is neither http nor https"),
        ));
    }
    if let Some(h) = &r.hostname {
        hostname(h, &format!("{at}.hostname"), errors);
    }
    if let Some(p) = &r.path {
        path_modifier(p, &format!("{at}.path"), errors);
    }
    if r.port == Some(0) {
        errors.push(FieldError::new(format!("{at}.port"), "0 is not a port"));
    }
    if let Some(code) = r.status_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        errors.push(FieldError::new(
            format!("{at}.statusCode"),
            format!("{code} is not one of 301, 302, 303, 307, 308"),
        ));
    }
}

fn mirror(m: &RequestMirror, at: &str, errors: &mut Vec<FieldError>) {
    backend_ref(&m.backend_ref, &format!("{at}.backendRef"), errors);
    if m.percent.is_some() && m.fraction.is_some() {
        errors.push(FieldError::new(
            at,
            "only one of percent and fraction may be set",
        ));
    }
    if let Some(p) = m.percent
        && p > 100
    {
        errors.push(FieldError::new(
            format!("{at}.percent"),
            format!("{p} is more than 100"),
        ));
    }
    if let Some(f) = &m.fraction {
        let d = f.denominator.unwrap_or(100);
        if d == 0 || f.numerator > d {
            errors.push(FieldError::new(
                format!("{at}.fraction"),
                format!("{}/{d} is not a fraction between 0 and 1", f.numerator),
            ));
        }
    }
}

fn backend_ref(b: &BackendObjectRef, at: &str, errors: &mut Vec<FieldError>) {
    if b.name.trim().is_empty() {
        errors.push(FieldError::new(
            format!("{at}.name"),
            "a backend needs a name",
        ));
    }
    if b.is_service() && b.port.is_none_or(|p| p == 0) {
        errors.push(FieldError::new(
            format!("{at}.port"),
            "a Service backend needs its port",
        ));
    }
}

fn backends(refs: &[HttpBackendRef], at: &str, errors: &mut Vec<FieldError>) {
    bounded(refs, MAX_PER_RULE, at, errors);
    for (k, b) in refs.iter().enumerate() {
        let at = format!("{at}[{k}]");
        backend_ref(&b.backend, &at, errors);
        if b.weight() > MAX_WEIGHT {
            errors.push(FieldError::new(
                format!("{at}.weight"),
                format!("{} is more than {MAX_WEIGHT}", b.weight()),
            ));
        }
        filters(&b.filters, &format!("{at}.filters"), None, errors);
    }
}

/// Whether `v` is a duration in the Gateway API's grammar (GEP-2257,
/// `^([0-9]{1,5}(h|m|s|ms)){1,4}$`), which the upstream CRD enforces: a folder is held
/// to what a cluster accepts.
fn gep_2257(v: &str) -> bool {
    let mut rest = v;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

fn timeouts(t: &HttpRouteTimeouts, at: &str, errors: &mut Vec<FieldError>) {
    let mut parsed = [None, None];
    for (i, (field, value)) in [
        ("request", &t.request),
        ("backendRequest", &t.backend_request),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(v) = value else { continue };
        if !gep_2257(v) {
            errors.push(FieldError::new(
                format!("{at}.{field}"),
                format!(
                    "{v:?} is not a Gateway API duration (GEP-2257: up to four parts of \
                     1-5 digits and h, m, s or ms, as `1h30m` or `500ms`)"
                ),
            ));
            continue;
        }
        match crate::duration::parse(v) {
            Ok(d) => parsed[i] = Some(d),
            Err(e) => errors.push(FieldError::new(format!("{at}.{field}"), e.to_string())),
        }
    }
    // 0s disables a timeout; a backend request may not outlast the request.
    if let [Some(request), Some(backend)] = parsed
        && !request.is_zero()
        && !backend.is_zero()
        && backend > request
    {
        errors.push(FieldError::new(
            format!("{at}.backendRequest"),
            "must not be longer than the request timeout",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(yaml: &str) -> HttpRouteSpec {
        crate::yaml::from_str(yaml).expect("parses")
    }

    fn errors(spec: &HttpRouteSpec) -> Vec<String> {
        spec.validate().iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn a_mesh_route_as_users_write_it_is_valid() {
        let spec = http(
            r#"
parentRefs:
- {group: "", kind: Service, name: books, port: 8080}
rules:
- matches:
  - path: {type: PathPrefix, value: /v2}
    headers: [{name: end-user, value: jason}]
    queryParams: [{type: RegularExpression, name: q, value: "a.*"}]
    method: GET
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {set: [{name: x-v, value: "2"}], remove: [x-old]}
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
  backendRefs:
  - {name: books-v2, port: 8080, weight: 90}
  - {name: books, port: 8080, weight: 10}
  timeouts: {request: 10s, backendRequest: 2s}
- backendRefs: [{name: books, port: 8080}]
"#,
        );
        assert_eq!(spec.validate(), vec![]);
        assert!(spec.parent_refs[0].is_service());
        let m = &spec.rules[0].matches[0];
        assert_eq!(
            m.path.as_ref().map(|p| p.kind),
            Some(PathMatchType::PathPrefix)
        );
        assert_eq!(m.headers[0].kind, StringMatchType::Exact);
        assert_eq!(spec.rules[1].backend_refs[0].weight(), 1);
        let t = spec.rules[0].timeouts.as_ref().expect("timeouts");
        assert_eq!(t.request(), Some(Duration::from_secs(10)));
        assert_eq!(t.backend_request(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_routes_are_refused_naming_the_field() {
        let spec = http(
            r#"
parentRefs: [{kind: Service, group: core, name: ""}]
rules:
- matches:
  - path: {type: RegularExpression, value: "(["}
    headers: [{name: a, value: x}, {name: A, value: y}]
    method: FETCH
  - path: {type: Exact, value: "no-slash"}
  filters:
  - type: RequestRedirect
  - type: ExtensionRef
    extensionRef: {group: x, kind: y, name: z}
  backendRefs:
  - {name: b, weight: 1000001}
  timeouts: {request: 1s, backendRequest: 2s}
  retry: {attempts: 2}
"#,
        );
        assert_eq!(
            errors(&spec),
            [
                "spec.parentRefs[0].name",
                "spec.rules[0].matches[0].path.value",
                "spec.rules[0].matches[0].headers[1].name",
                "spec.rules[0].matches[0].method",
                "spec.rules[0].matches[1].path.value",
                "spec.rules[0].filters[0].requestRedirect",
                "spec.rules[0].filters[1].type",
                "spec.rules[0].backendRefs[0].port",
                "spec.rules[0].backendRefs[0].weight",
                "spec.rules[0].backendRefs",
                "spec.rules[0].timeouts.backendRequest",
                "spec.rules[0].retry",
            ]
        );
        // An unknown filter type fails to parse, naming the field.
        let e = crate::yaml::from_str::<HttpRouteSpec>("rules: [{filters: [{type: Nope}]}]")
            .expect_err("unknown filter");
        assert!(e.to_string().contains("Nope"), "{e}");
    }

    #[test]
    fn timeouts_take_the_gateway_api_grammar_only() {
        for ok in ["10s", "500ms", "1h30m", "0s", "1h2m3s4ms", "99999ms"] {
            assert!(gep_2257(ok), "{ok}");
        }
        for bad in [
            "",
            "1.5s",
            "1d",
            "10",
            "100000s",
            "1h2m3s4ms5s",
            "s",
            "10us",
            "-1s",
        ] {
            assert!(!gep_2257(bad), "{bad}");
        }
    }

    #[test]
    fn rewrites_and_redirects_are_checked() {
        let spec = http(
            r#"
rules:
- matches: [{path: {type: Exact, value: /a}}]
  filters:
  - type: URLRewrite
    urlRewrite:
      hostname: Not_A_Host
      path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}
- filters:
  - type: RequestRedirect
    requestRedirect: {scheme: ftp, port: 0, statusCode: 404}
  - type: RequestMirror
    requestMirror: {backendRef: {name: m, port: 80}, percent: 101}
"#,
        );
        assert_eq!(
            errors(&spec),
            [
                "spec.rules[0].filters",
                "spec.rules[0].filters[0].urlRewrite.hostname",
                "spec.rules[1].filters[0].requestRedirect.scheme",
                "spec.rules[1].filters[0].requestRedirect.port",
                "spec.rules[1].filters[0].requestRedirect.statusCode",
                "spec.rules[1].filters[1].requestMirror.percent",
            ]
        );
    }

    #[test]
    fn grpc_routes_take_method_matches_and_header_filters_only() {
        let spec: GrpcRouteSpec = crate::yaml::from_str(
            r#"
parentRefs: [{kind: Service, group: "", name: greeter, port: 50051}]
rules:
- matches:
  - method: {service: pkg.Greeter, method: SayHello}
  - method: {type: RegularExpression, service: "pkg\\..*"}
    headers: [{name: x-canary, value: "true"}]
  - method: {}
  - method: {service: "bad/name"}
  filters:
  - type: URLRewrite
    urlRewrite: {hostname: x}
  backendRefs: [{name: greeter, port: 50051}]
"#,
        )
        .expect("parses");
        let paths: Vec<_> = spec.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.rules[0].matches[2].method",
                "spec.rules[0].matches[3].method.service",
                "spec.rules[0].filters[0].type",
            ]
        );
    }
}
