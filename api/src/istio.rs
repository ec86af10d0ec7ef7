//! Istio's security resources as the mesh takes them (`security.istio.io` v1beta1 and
//! v1: `PeerAuthentication`, `AuthorizationPolicy`, `RequestAuthentication`) and the one
//! `EnvoyFilter` pattern it translates (a local rate limit on a workload's inbound
//! side), with their validation: what Istio refuses, and what the mesh does not model,
//! is refused naming the field. Fields are checked strictly: an unknown field is an
//! error, never silently dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Istio's security API group.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// Istio's networking API group.
pub const NETWORKING_GROUP: &str = "networking.istio.io";

/// Which workloads (pods, by labels) a resource applies to; absent: all of its
/// namespace's (in the root namespace: the mesh's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether a pod with `labels` is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A `PeerAuthentication`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads; absent: the namespace (or, in the root namespace, the mesh).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    #[serde(default)]
    pub mtls: Option<PeerMtls>,
    /// Modes for some (container) ports, by number.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

/// An mTLS mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// `UNSET` (inherit), `DISABLE`, `PERMISSIVE`, `STRICT`.
    #[serde(default)]
    pub mode: Option<String>,
}

/// The modes Istio defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Inherit from the wider scope.
    Unset,
    /// Plaintext.
    Disable,
    /// Both.
    Permissive,
    /// mTLS only.
    Strict,
}

impl PeerMtls {
    fn mode(&self) -> Result<MtlsMode, String> {
        match self.mode.as_deref() {
            None | Some("UNSET") => Ok(MtlsMode::Unset),
            Some("DISABLE") => Ok(MtlsMode::Disable),
            Some("PERMISSIVE") => Ok(MtlsMode::Permissive),
            Some("STRICT") => Ok(MtlsMode::Strict),
            Some(other) => Err(format!(
                "{other:?}: expected UNSET, DISABLE, PERMISSIVE or STRICT"
            )),
        }
    }
}

impl PeerAuthenticationSpec {
    /// The mode for all ports.
    pub fn mode(&self) -> MtlsMode {
        self.mtls
            .as_ref()
            .and_then(|m| m.mode().ok())
            .unwrap_or(MtlsMode::Unset)
    }

    /// The mode for container port `port`, where a port-level one is given.
    pub fn port_mode(&self, port: u16) -> Option<MtlsMode> {
        let m = self.port_level_mtls.get(&port.to_string())?;
        m.mode().ok()
    }

    /// What Istio refuses.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(m) = &self.mtls
            && let Err(e) = m.mode()
        {
            errors.push(FieldError::new("spec.mtls.mode", e));
        }
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            errors.push(FieldError::new(
                "spec.portLevelMtls",
                "needs a selector: port-level modes apply to selected workloads only",
            ));
        }
        for (port, m) in &self.port_level_mtls {
            let path = format!("spec.portLevelMtls[{port:?}]");
            if !port.parse::<u16>().is_ok_and(|p| p != 0) {
                errors.push(FieldError::new(&path, "not a port number (1-65535)"));
            }
            if let Err(e) = m.mode() {
                errors.push(FieldError::new(format!("{path}.mode"), e));
            }
        }
        errors
    }
}

/// An `AuthorizationPolicy`'s spec (Istio's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The workloads; absent: the namespace (or the mesh).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Gateways and waypoints: not what sidecars are selected by.
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    /// The same, as a list.
    #[serde(default)]
    pub target_refs: Option<Vec<serde_json::Value>>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`.
    #[serde(default)]
    pub action: Option<String>,
    /// CUSTOM's external authorizer.
    #[serde(default)]
    pub provider: Option<serde_json::Value>,
    /// The rules; absent or empty: matches nothing (an ALLOW then denies all).
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// One rule: any `from`, any `to`, every `when`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Sources; empty: any.
    #[serde(default)]
    pub from: Vec<From>,
    /// Operations; empty: any.
    #[serde(default)]
    pub to: Vec<To>,
    /// Conditions; all must hold.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// A `from` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    /// The source.
    #[serde(default)]
    pub source: Source,
}

/// A `to` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    /// The operation.
    #[serde(default)]
    pub operation: Operation,
}

/// Who the request comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// What the request asks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// A `when` condition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute (`request.headers[x-user]`, `source.namespace`, …).
    pub key: String,
    /// Values, any of which must match.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// How Istio matches a string: `abc`, `abc*`, `*abc`, `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wildcard {
    /// Exactly.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Any value.
    Present,
}

impl Wildcard {
    /// Parses Istio's forms; a `*` anywhere but at one end is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Present);
        }
        let w = if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_string())
        } else if let Some(x) = s.strip_prefix('*') {
            Self::Suffix(x.to_string())
        } else {
            Self::Exact(s.to_string())
        };
        let inner = match &w {
            Self::Exact(x) | Self::Prefix(x) | Self::Suffix(x) => x,
            Self::Present => "",
        };
        if inner.contains('*') {
            return Err(format!(
                "{s:?}: a wildcard is allowed only at the start or the end (exact, prefix*, *suffix or *)"
            ));
        }
        if s.contains("{*}") || s.contains("{**}") {
            return Err(format!(
                "{s:?}: path templates ({{*}}, {{**}}) are not supported"
            ));
        }
        Ok(w)
    }
}

/// The `when` keys the mesh evaluates; the HTTP-only ones are marked.
pub const CONDITION_KEYS: [(&str, bool); 12] = [
    ("source.ip", false),
    ("remote.ip", false),
    ("source.namespace", false),
    ("source.principal", false),
    ("request.auth.principal", true),
    ("request.auth.audiences", true),
    ("request.auth.presenter", true),
    ("destination.ip", false),
    ("destination.port", false),
    ("connection.sni", false),
    ("source.identity", false),
    ("experimental.envoy.filters.network.mysql_proxy", false),
];

/// Whether `key` is a `when` key the mesh knows.
pub fn known_condition_key(key: &str) -> bool {
    let bracket = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix(']'))
            .is_some_and(|k| !k.is_empty())
    };
    bracket("request.headers[")
        || bracket("request.auth.claims[")
        || CONDITION_KEYS[..11].iter().any(|(k, _)| *k == key)
}

/// The address keys, whose values are CIDRs or addresses.
pub fn is_address_key(key: &str) -> bool {
    matches!(key, "source.ip" | "remote.ip" | "destination.ip")
}

fn check_wildcards(errors: &mut Vec<FieldError>, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if let Err(e) = Wildcard::parse(v) {
            errors.push(FieldError::new(format!("{path}[{i}]"), e));
        }
    }
}

fn check_cidrs(errors: &mut Vec<FieldError>, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if !crate::net::valid(v) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{v:?}: not an address or CIDR"),
            ));
        }
    }
}

fn check_ports(errors: &mut Vec<FieldError>, path: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if !v.parse::<u16>().is_ok_and(|p| p != 0) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("{v:?}: not a port number (1-65535)"),
            ));
        }
    }
}

/// An authorization's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Admit what matches.
    Allow,
    /// Refuse what matches.
    Deny,
    /// Log what matches.
    Audit,
}

impl AuthorizationPolicySpec {
    /// The action (valid specs only have one of these).
    pub fn action(&self) -> Action {
        match self.action.as_deref() {
            Some("DENY") => Action::Deny,
            Some("AUDIT") => Action::Audit,
            _ => Action::Allow,
        }
    }

    /// What Istio refuses, and what the mesh does not do.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match self.action.as_deref() {
            None | Some("ALLOW" | "DENY" | "AUDIT") => {}
            Some("CUSTOM") => errors.push(FieldError::new(
                "spec.action",
                "CUSTOM (an external authorizer) is not supported by mesh: write the rules as ALLOW or DENY",
            )),
            Some(other) => errors.push(FieldError::new(
                "spec.action",
                format!("{other:?}: expected ALLOW, DENY, AUDIT or CUSTOM"),
            )),
        }
        if self.provider.is_some() && self.action.as_deref() != Some("CUSTOM") {
            errors.push(FieldError::new("spec.provider", "only with action CUSTOM"));
        }
        if self.target_ref.is_some() || self.target_refs.is_some() {
            let field = if self.target_ref.is_some() {
                "spec.targetRef"
            } else {
                "spec.targetRefs"
            };
            errors.push(FieldError::new(
                field,
                "targets gateways and waypoints, which mesh does not run: select sidecars with spec.selector",
            ));
        }
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (f, from) in rule.from.iter().enumerate() {
                let s = &from.source;
                let p = |name: &str| format!("{at}.from[{f}].source.{name}");
                for (name, values) in [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                ] {
                    check_wildcards(&mut errors, &p(name), values);
                }
                for (name, values) in [
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                    ("remoteIpBlocks", &s.remote_ip_blocks),
                    ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
                ] {
                    check_cidrs(&mut errors, &p(name), values);
                }
                if !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty() {
                    errors.push(FieldError::new(
                        p("serviceAccounts"),
                        "not supported yet: write them as principals (cluster.local/ns/NS/sa/SA)",
                    ));
                }
            }
            for (t, to) in rule.to.iter().enumerate() {
                let o = &to.operation;
                let p = |name: &str| format!("{at}.to[{t}].operation.{name}");
                for (name, values) in [
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                ] {
                    check_wildcards(&mut errors, &p(name), values);
                }
                check_ports(&mut errors, &p("ports"), &o.ports);
                check_ports(&mut errors, &p("notPorts"), &o.not_ports);
            }
            for (w, c) in rule.when.iter().enumerate() {
                let p = format!("{at}.when[{w}]");
                if !known_condition_key(&c.key) {
                    errors.push(FieldError::new(
                        format!("{p}.key"),
                        format!("{:?}: not a condition key mesh evaluates", c.key),
                    ));
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    errors.push(FieldError::new(&p, "needs values or notValues"));
                }
                if is_address_key(&c.key) {
                    check_cidrs(&mut errors, &format!("{p}.values"), &c.values);
                    check_cidrs(&mut errors, &format!("{p}.notValues"), &c.not_values);
                } else {
                    check_wildcards(&mut errors, &format!("{p}.values"), &c.values);
                    check_wildcards(&mut errors, &format!("{p}.notValues"), &c.not_values);
                }
            }
        }
        errors
    }
}

/// A `RequestAuthentication`'s spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// The workloads; absent: the namespace (or the mesh).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Gateways and waypoints.
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    /// The same, as a list.
    #[serde(default)]
    pub target_refs: Option<Vec<serde_json::Value>>,
    /// The issuers accepted.
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

/// One accepted issuer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct JwtRule {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A header a token comes in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// A claim copied to a header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

impl RequestAuthenticationSpec {
    /// What Istio refuses.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.target_ref.is_some() || self.target_refs.is_some() {
            errors.push(FieldError::new(
                "spec.targetRef",
                "targets gateways and waypoints, which mesh does not run: select sidecars with spec.selector",
            ));
        }
        let mut issuers = std::collections::HashSet::new();
        for (i, r) in self.jwt_rules.iter().enumerate() {
            let p = |f: &str| format!("spec.jwtRules[{i}].{f}");
            if r.issuer.is_empty() {
                errors.push(FieldError::new(p("issuer"), "required"));
            } else if !issuers.insert(&r.issuer) {
                errors.push(FieldError::new(p("issuer"), "given twice"));
            }
            match (&r.jwks, &r.jwks_uri) {
                (Some(_), Some(_)) => {
                    errors.push(FieldError::new(p("jwks"), "give jwks or jwksUri, not both"))
                }
                (Some(jwks), None) => {
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(jwks)
                        .map_err(|e| e.to_string())
                        .and_then(|v| {
                            v.get("keys")
                                .and_then(|k| k.as_array())
                                .map(|_| ())
                                .ok_or_else(|| "a JWKS has a list of keys".to_string())
                        })
                    {
                        errors.push(FieldError::new(p("jwks"), format!("not a JWKS: {e}")));
                    }
                }
                (None, Some(uri)) => {
                    if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                        errors.push(FieldError::new(
                            p("jwksUri"),
                            format!("{uri:?}: an http(s) URL is needed"),
                        ));
                    }
                }
                // Istio's OIDC discovery (the issuer's `.well-known`): not done.
                (None, None) => errors.push(FieldError::new(
                    p("jwksUri"),
                    "required (mesh does not discover keys from the issuer): give jwksUri or jwks",
                )),
            }
            for (h, header) in r.from_headers.iter().enumerate() {
                if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                    errors.push(FieldError::new(
                        format!("spec.jwtRules[{i}].fromHeaders[{h}].name"),
                        "not a header name",
                    ));
                }
            }
            if let Some(h) = &r.output_payload_to_header
                && http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                errors.push(FieldError::new(
                    p("outputPayloadToHeader"),
                    "not a header name",
                ));
            }
            if let Some(t) = &r.timeout
                && crate::duration::parse(t).is_err()
            {
                errors.push(FieldError::new(
                    p("timeout"),
                    format!("{t:?}: not a duration"),
                ));
            }
        }
        errors
    }
}

/// An `EnvoyFilter`'s spec: only the local rate-limit pattern is understood.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyFilterSpec {
    /// The workloads it patches.
    #[serde(default)]
    pub workload_selector: Option<EnvoyWorkloadSelector>,
    /// Gateways and waypoints.
    #[serde(default)]
    pub target_refs: Option<Vec<serde_json::Value>>,
    /// The patches.
    #[serde(default)]
    pub config_patches: Vec<serde_json::Value>,
    /// Its rank among filters.
    #[serde(default)]
    pub priority: Option<i32>,
}

/// An EnvoyFilter's selector (`labels`, not `matchLabels`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyWorkloadSelector {
    /// Labels a pod must all have.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The local rate limit an EnvoyFilter stands for: a bucket of `max_tokens`, refilled
/// with `tokens_per_fill` every `fill_interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRateLimit {
    /// The bucket's size.
    pub max_tokens: u32,
    /// Tokens added per interval.
    pub tokens_per_fill: u32,
    /// The interval.
    pub fill_interval_ms: u64,
}

const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

impl EnvoyFilterSpec {
    /// The rate limit, or why the filter is refused (naming the field).
    pub fn local_rate_limit(&self) -> Result<LocalRateLimit, Vec<FieldError>> {
        use serde_json::Value;
        let refuse = |path: &str, why: &str| Err(vec![FieldError::new(path, why)]);
        if self.target_refs.is_some() {
            return refuse("spec.targetRefs", "mesh runs no gateways or waypoints");
        }
        if self.workload_selector.is_none() {
            return refuse(
                "spec.workloadSelector",
                "required: mesh translates a local rate limit on selected workloads only",
            );
        }
        let [patch] = self.config_patches.as_slice() else {
            return refuse(
                "spec.configPatches",
                "mesh translates exactly one patch: an HTTP_FILTER inserting envoy.filters.http.local_ratelimit on SIDECAR_INBOUND; other EnvoyFilters are not supported",
            );
        };
        let at = "spec.configPatches[0]";
        let get = |v: &Value, path: &[&str]| {
            let mut v = v;
            for p in path {
                v = v.get(*p)?;
            }
            Some(v.clone())
        };
        if get(patch, &["applyTo"]).as_ref().and_then(Value::as_str) != Some("HTTP_FILTER") {
            return refuse(
                &format!("{at}.applyTo"),
                "only HTTP_FILTER (a local rate limit) is supported; other EnvoyFilters are not",
            );
        }
        if get(patch, &["match", "context"])
            .as_ref()
            .and_then(Value::as_str)
            != Some("SIDECAR_INBOUND")
        {
            return refuse(
                &format!("{at}.match.context"),
                "only SIDECAR_INBOUND: the limit applies to the workload's inbound requests",
            );
        }
        let op = get(patch, &["patch", "operation"]);
        if !matches!(
            op.as_ref().and_then(Value::as_str),
            Some("INSERT_BEFORE" | "INSERT_FIRST" | "INSERT_AFTER" | "ADD")
        ) {
            return refuse(
                &format!("{at}.patch.operation"),
                "only an insertion of the filter is supported",
            );
        }
        let Some(value) = get(patch, &["patch", "value"]) else {
            return refuse(&format!("{at}.patch.value"), "missing");
        };
        if value.get("name").and_then(Value::as_str) != Some(LOCAL_RATELIMIT) {
            return refuse(
                &format!("{at}.patch.value.name"),
                "only envoy.filters.http.local_ratelimit is supported",
            );
        }
        let Some(typed) = value
            .get("typed_config")
            .or_else(|| value.get("typedConfig"))
        else {
            return refuse(&format!("{at}.patch.value.typed_config"), "missing");
        };
        let tp = format!("{at}.patch.value.typed_config");
        // Either the LocalRateLimit itself, or a TypedStruct wrapping it.
        let config = match (
            typed.get("@type").and_then(Value::as_str),
            typed.get("type_url").and_then(Value::as_str),
        ) {
            (Some(LOCAL_RATELIMIT_TYPE), _) => typed.clone(),
            (
                Some(
                    "type.googleapis.com/udpa.type.v1.TypedStruct"
                    | "type.googleapis.com/xds.type.v3.TypedStruct",
                ),
                Some(LOCAL_RATELIMIT_TYPE),
            ) => match typed.get("value") {
                Some(v) => v.clone(),
                None => return refuse(&format!("{tp}.value"), "missing"),
            },
            _ => {
                return refuse(
                    &format!("{tp}.@type"),
                    "expected a LocalRateLimit (or a TypedStruct of one)",
                );
            }
        };
        let vp = format!("{tp}.value");
        for (field, what) in [
            ("filter_enabled", "enabled"),
            ("filter_enforced", "enforced"),
        ] {
            if let Some(f) = config.get(field) {
                let n = get(f, &["default_value", "numerator"]).and_then(|n| n.as_u64());
                let d = get(f, &["default_value", "denominator"]);
                let d = d.as_ref().and_then(Value::as_str).unwrap_or("HUNDRED");
                if n != Some(100) || d != "HUNDRED" {
                    return refuse(
                        &format!("{vp}.{field}"),
                        &format!(
                            "only 100% {what} is supported (numerator: 100, denominator: HUNDRED)"
                        ),
                    );
                }
            }
        }
        let Some(bucket) = config.get("token_bucket") else {
            return refuse(&format!("{vp}.token_bucket"), "missing");
        };
        let bp = format!("{vp}.token_bucket");
        let count = |name: &str, default: Option<u64>| -> Result<u32, Vec<FieldError>> {
            let v = bucket
                .get(name)
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
            match v.or(default) {
                Some(n) if n > 0 => u32::try_from(n)
                    .map_err(|_| vec![FieldError::new(format!("{bp}.{name}"), "too large")]),
                _ => Err(vec![FieldError::new(
                    format!("{bp}.{name}"),
                    "a positive count is required",
                )]),
            }
        };
        let max_tokens = count("max_tokens", None)?;
        let tokens_per_fill = count("tokens_per_fill", Some(1))?;
        let interval = bucket.get("fill_interval").and_then(Value::as_str);
        let fill_interval_ms = match interval.map(crate::duration::parse) {
            Some(Ok(d)) if !d.is_zero() => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
            _ => {
                return refuse(
                    &format!("{bp}.fill_interval"),
                    "a positive duration (\"60s\") is required",
                );
            }
        };
        Ok(LocalRateLimit {
            max_tokens,
            tokens_per_fill,
            fill_interval_ms,
        })
    }

    /// What is refused.
    pub fn validate(&self) -> Vec<FieldError> {
        self.local_rate_limit().err().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert_eq!(Wildcard::parse("*"), Ok(Wildcard::Present));
        assert_eq!(
            Wildcard::parse("/info*"),
            Ok(Wildcard::Prefix("/info".into()))
        );
        assert_eq!(
            Wildcard::parse("*.svc"),
            Ok(Wildcard::Suffix(".svc".into()))
        );
        assert_eq!(Wildcard::parse("GET"), Ok(Wildcard::Exact("GET".into())));
        assert!(Wildcard::parse("/a*b").is_err());
        assert!(Wildcard::parse("/a/{*}/b").is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let spec: AuthorizationPolicySpec = serde_json::from_value(serde_json::json!({
            "action": "CUSTOM",
            "rules": [{"when": [{"key": "request.nonsense", "values": ["x"]}],
                       "from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}],
                       "to": [{"operation": {"ports": ["http"], "paths": ["/a*b"]}}]}],
        }))
        .expect("spec");
        let fields: Vec<String> = spec.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            fields,
            [
                "spec.action",
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].to[0].operation.paths[0]",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].when[0].key",
            ]
        );
        let unknown = serde_json::from_value::<AuthorizationPolicySpec>(
            serde_json::json!({"rules": [{"form": []}]}),
        );
        assert!(unknown.is_err(), "a misspelt field is refused, not dropped");
        let pa: PeerAuthenticationSpec = serde_json::from_value(serde_json::json!({
            "mtls": {"mode": "STRICTLY"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}},
        }))
        .expect("spec");
        let fields: Vec<String> = pa.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(fields, ["spec.mtls.mode", "spec.portLevelMtls"]);
    }
}
