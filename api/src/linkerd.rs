//! Linkerd's policy resources as the mesh takes them (`policy.linkerd.io`, the versions
//! Linkerd serves): `Server`, `AuthorizationPolicy`, `MeshTLSAuthentication`,
//! `NetworkAuthentication` and `HTTPLocalRateLimitPolicy`, with their validation. What
//! Linkerd refuses, and what the mesh does not model, is refused naming the field;
//! unknown fields are errors, never silently dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Linkerd's policy API group.
pub const POLICY_GROUP: &str = "policy.linkerd.io";

/// Whether `api_version` is a version Linkerd serves of `kind` in its policy group.
pub fn served(kind: &str, api_version: &str) -> bool {
    let Some(v) = api_version
        .strip_prefix(POLICY_GROUP)
        .and_then(|v| v.strip_prefix('/'))
    else {
        return false;
    };
    match kind {
        "Server" => matches!(v, "v1beta1" | "v1beta2" | "v1beta3"),
        "HTTPRoute" => matches!(v, "v1alpha1" | "v1beta1" | "v1beta2" | "v1beta3"),
        "AuthorizationPolicy"
        | "MeshTLSAuthentication"
        | "NetworkAuthentication"
        | "HTTPLocalRateLimitPolicy" => v == "v1alpha1",
        _ => false,
    }
}

/// Whether a route's parent is a Linkerd `Server` (a route on a workload's inbound
/// port).
pub fn is_server(parent: &crate::gateway::ParentRef) -> bool {
    parent.kind.as_deref() == Some("Server") && parent.group.as_deref() == Some(POLICY_GROUP)
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which
/// must hold; an empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a pod must all have.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Conditions on labels a pod must all meet.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One condition of a label selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelRequirement {
    /// The label.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values `In` and `NotIn` compare with.
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether a pod with `labels` is selected (a requirement with an unknown operator
    /// selects nothing; validation refuses it).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }

    fn validate(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (i, r) in self.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => errors.push(FieldError::new(
                    format!("{at}.values"),
                    format!("{} needs at least one value", r.operator),
                )),
                "Exists" | "DoesNotExist" if !r.values.is_empty() => errors.push(FieldError::new(
                    format!("{at}.values"),
                    format!("{} takes no values", r.operator),
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => errors.push(FieldError::new(
                    format!("{at}.operator"),
                    format!("{other:?}: expected In, NotIn, Exists or DoesNotExist"),
                )),
            }
        }
    }
}

/// A port by number or by a container port's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    /// A number.
    Number(u32),
    /// A container port's name.
    Name(String),
}

/// The default policies Linkerd defines (a Server's `accessPolicy`, the
/// `default-inbound-policy` setting and annotation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Everyone (the default at install, as Linkerd's).
    #[default]
    AllUnauthenticated,
    /// Meshed clients.
    AllAuthenticated,
    /// Clients in the cluster's networks.
    ClusterUnauthenticated,
    /// Meshed clients in the cluster's networks.
    ClusterAuthenticated,
    /// No one.
    Deny,
    /// Everyone; what `deny` would refuse is logged and counted.
    Audit,
}

impl DefaultPolicy {
    /// The names, as Linkerd spells them.
    pub const NAMES: &'static str = "all-unauthenticated, all-authenticated, \
        cluster-unauthenticated, cluster-authenticated, deny or audit";

    /// Parses Linkerd's name for it.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all-unauthenticated" => Self::AllUnauthenticated,
            "all-authenticated" => Self::AllAuthenticated,
            "cluster-unauthenticated" => Self::ClusterUnauthenticated,
            "cluster-authenticated" => Self::ClusterAuthenticated,
            "deny" => Self::Deny,
            "audit" => Self::Audit,
            other => return Err(format!("{other:?}: expected {}", Self::NAMES)),
        })
    }
}

/// A `Server`'s spec: a port of some pods, and how it is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// The pods.
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    /// External workloads (VMs); the mesh has none, so it is refused.
    #[serde(default)]
    pub external_workload_selector: Option<serde_json::Value>,
    /// The port.
    pub port: Port,
    /// `unknown` (detect), `HTTP/1`, `HTTP/2`, `gRPC`, `opaque` or `TLS`.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// What decides requests no AuthorizationPolicy admits; `deny` when absent.
    #[serde(default)]
    pub access_policy: Option<String>,
}

/// How a Server's connections are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Detected.
    Unknown,
    /// HTTP/1.
    Http1,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Opaque,
    /// TLS the application terminates: forwarded as opaque bytes.
    Tls,
}

impl ServerSpec {
    /// Its protocol.
    pub fn protocol(&self) -> ProxyProtocol {
        match self.proxy_protocol.as_deref() {
            Some("HTTP/1") => ProxyProtocol::Http1,
            Some("HTTP/2") => ProxyProtocol::Http2,
            Some("gRPC") => ProxyProtocol::Grpc,
            Some("opaque") => ProxyProtocol::Opaque,
            Some("TLS") => ProxyProtocol::Tls,
            _ => ProxyProtocol::Unknown,
        }
    }

    /// Its access policy (`deny` when absent, as Linkerd's).
    pub fn access_policy(&self) -> DefaultPolicy {
        self.access_policy
            .as_deref()
            .and_then(|a| DefaultPolicy::parse(a).ok())
            .unwrap_or(DefaultPolicy::Deny)
    }

    /// Whether it selects a pod with `labels` (no selector: none).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.pod_selector
            .as_ref()
            .is_some_and(|s| s.selects(labels))
    }

    /// Whether it is for port `port`, given the pod's named container ports.
    pub fn serves(&self, port: u16, named: impl Fn(&str) -> Option<u16>) -> bool {
        match &self.port {
            Port::Number(n) => *n == u32::from(port),
            Port::Name(name) => named(name) == Some(port),
        }
    }

    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.pod_selector, &self.external_workload_selector) {
            (None, None) => errors.push(FieldError::new("spec.podSelector", "missing")),
            (_, Some(_)) => errors.push(FieldError::new(
                "spec.externalWorkloadSelector",
                "external workloads are not supported by this mesh",
            )),
            (Some(s), None) => s.validate("spec.podSelector", &mut errors),
        }
        match &self.port {
            Port::Number(n) if !(1..=65535).contains(n) => errors.push(FieldError::new(
                "spec.port",
                format!("{n}: expected 1-65535 or a port name"),
            )),
            Port::Name(n) if n.is_empty() || n.len() > 15 => errors.push(FieldError::new(
                "spec.port",
                format!("{n:?}: a port name is 1-15 characters"),
            )),
            _ => {}
        }
        if let Some(p) = &self.proxy_protocol
            && !matches!(
                p.as_str(),
                "unknown" | "HTTP/1" | "HTTP/2" | "gRPC" | "opaque" | "TLS"
            )
        {
            errors.push(FieldError::new(
                "spec.proxyProtocol",
                format!("{p:?}: expected unknown, HTTP/1, HTTP/2, gRPC, opaque or TLS"),
            ));
        }
        if let Some(a) = &self.access_policy
            && let Err(e) = DefaultPolicy::parse(a)
        {
            errors.push(FieldError::new("spec.accessPolicy", e));
        }
        errors
    }
}

/// A reference to another object (Linkerd's `targetRef`, `requiredAuthenticationRefs`,
/// `identityRefs`, `clientRefs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    /// The API group; empty or absent: the core group.
    #[serde(default)]
    pub group: Option<String>,
    /// The kind.
    pub kind: String,
    /// The name.
    #[serde(default)]
    pub name: String,
    /// The namespace; absent: the referring object's.
    #[serde(default)]
    pub namespace: Option<String>,
}

impl ObjectRef {
    /// Whether it names `kind` of `group` (`""` for the core group).
    pub fn is(&self, group: &str, kind: &str) -> bool {
        let own = match self.group.as_deref() {
            None | Some("core") => "",
            Some(g) => g,
        };
        own == group && self.kind.eq_ignore_ascii_case(kind)
    }
}

/// What an AuthorizationPolicy can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A Server.
    Server,
    /// An HTTPRoute (Linkerd's or the Gateway API's) whose parent is a Server.
    HttpRoute,
    /// A GRPCRoute whose parent is a Server.
    GrpcRoute,
    /// Every Server of a namespace.
    Namespace,
}

/// An `AuthorizationPolicy`'s spec (Linkerd's): a target, and the authentications a
/// client must all pass to be admitted to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// What it authorizes.
    pub target_ref: ObjectRef,
    /// MeshTLSAuthentications, NetworkAuthentications and ServiceAccounts, all of
    /// which must match; none: everyone.
    #[serde(default)]
    pub required_authentication_refs: Vec<ObjectRef>,
}

/// One of an AuthorizationPolicy's required authentications.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// A MeshTLSAuthentication.
    MeshTls,
    /// A NetworkAuthentication.
    Network,
    /// A ServiceAccount: clients with its identity.
    ServiceAccount,
}

/// What kind of authentication a reference names, if one Linkerd allows.
pub fn authentication(r: &ObjectRef) -> Option<Authentication> {
    if r.is(POLICY_GROUP, "MeshTLSAuthentication") {
        Some(Authentication::MeshTls)
    } else if r.is(POLICY_GROUP, "NetworkAuthentication") {
        Some(Authentication::Network)
    } else if r.is("", "ServiceAccount") {
        Some(Authentication::ServiceAccount)
    } else {
        None
    }
}

impl AuthorizationPolicySpec {
    /// Its target's kind (validation refuses others).
    pub fn target(&self) -> Option<Target> {
        let t = &self.target_ref;
        if t.is(POLICY_GROUP, "Server") {
            Some(Target::Server)
        } else if t.is(POLICY_GROUP, "HTTPRoute") || t.is(crate::gateway::GROUP, "HTTPRoute") {
            Some(Target::HttpRoute)
        } else if t.is(crate::gateway::GROUP, "GRPCRoute") {
            Some(Target::GrpcRoute)
        } else if t.is("", "Namespace") {
            Some(Target::Namespace)
        } else {
            None
        }
    }

    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.target().is_none() {
            errors.push(FieldError::new(
                "spec.targetRef",
                format!(
                    "{}: expected a Server, HTTPRoute or GRPCRoute, or a Namespace",
                    describe(&self.target_ref)
                ),
            ));
        }
        if self.target_ref.name.is_empty() {
            errors.push(FieldError::new("spec.targetRef.name", "missing"));
        }
        if self.target_ref.namespace.is_some() {
            errors.push(FieldError::new(
                "spec.targetRef.namespace",
                "a policy targets objects of its own namespace",
            ));
        }
        for (i, r) in self.required_authentication_refs.iter().enumerate() {
            let at = format!("spec.requiredAuthenticationRefs[{i}]");
            if authentication(r).is_none() {
                errors.push(FieldError::new(
                    at.clone(),
                    format!(
                        "{}: expected a MeshTLSAuthentication, NetworkAuthentication or ServiceAccount",
                        describe(r)
                    ),
                ));
            }
            if r.name.is_empty() {
                errors.push(FieldError::new(format!("{at}.name"), "missing"));
            }
        }
        errors
    }
}

fn describe(r: &ObjectRef) -> String {
    match r.group.as_deref() {
        None | Some("") | Some("core") => format!("kind {:?}", r.kind),
        Some(g) => format!("kind {:?} of group {g:?}", r.kind),
    }
}

/// A `MeshTLSAuthentication`'s spec: meshed clients by identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshTlsAuthenticationSpec {
    /// Identities (`SA.NS.serviceaccount.identity.linkerd.cluster.local`, or the
    /// mesh's own), `*` (any meshed client), or `*.` followed by a suffix.
    #[serde(default)]
    pub identities: Vec<String>,
    /// ServiceAccounts (`name: "*"`: all of a namespace's) and Namespaces.
    #[serde(default)]
    pub identity_refs: Vec<ObjectRef>,
}

/// How one identity of a MeshTLSAuthentication matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Any meshed client.
    Any,
    /// This identity, in the mesh's form.
    Exact(String),
    /// Identities ending so (`.NS.serviceaccount.identity.mesh.cluster.local`).
    Suffix(String),
}

/// Linkerd's identities end so; the mesh's identities carry the same names under its
/// own domain.
const LINKERD_IDENTITY_SUFFIX: &str = ".identity.linkerd.cluster.local";

fn mesh_identity(s: &str) -> String {
    match s.strip_suffix(LINKERD_IDENTITY_SUFFIX) {
        Some(rest) => format!("{rest}.identity.mesh.{}", crate::identity::TRUST_DOMAIN),
        None => s.to_string(),
    }
}

impl MeshTlsAuthenticationSpec {
    /// Its identities as matches, references resolved (in `namespace`, the object's).
    pub fn matches(&self, namespace: &str) -> Vec<IdentityMatch> {
        let mut out: Vec<IdentityMatch> = self
            .identities
            .iter()
            .map(|i| {
                if i == "*" {
                    IdentityMatch::Any
                } else if let Some(suffix) = i.strip_prefix('*') {
                    IdentityMatch::Suffix(mesh_identity(suffix))
                } else {
                    IdentityMatch::Exact(mesh_identity(i))
                }
            })
            .collect();
        for r in &self.identity_refs {
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            if r.is("", "Namespace") {
                out.push(IdentityMatch::Suffix(crate::identity::dns_name(
                    "", &r.name,
                )));
            } else if r.name == "*" {
                let suffix = crate::identity::dns_name("", ns);
                out.push(IdentityMatch::Suffix(suffix));
            } else {
                out.push(IdentityMatch::Exact(crate::identity::dns_name(&r.name, ns)));
            }
        }
        out
    }

    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (self.identities.is_empty(), self.identity_refs.is_empty()) {
            (true, true) => errors.push(FieldError::new(
                "spec.identities",
                "one of identities or identityRefs is required",
            )),
            (false, false) => errors.push(FieldError::new(
                "spec.identityRefs",
                "set identities or identityRefs, not both",
            )),
            _ => {}
        }
        for (i, id) in self.identities.iter().enumerate() {
            let bad = id.is_empty()
                || (id.contains('*')
                    && !(id == "*" || (id.starts_with("*.") && id[1..].find('*').is_none())));
            if bad {
                errors.push(FieldError::new(
                    format!("spec.identities[{i}]"),
                    format!("{id:?}: expected an identity, `*`, or `*.` and a suffix"),
                ));
            }
        }
        for (i, r) in self.identity_refs.iter().enumerate() {
            if !(r.is("", "ServiceAccount") || r.is("", "Namespace")) {
                errors.push(FieldError::new(
                    format!("spec.identityRefs[{i}]"),
                    format!("{}: expected a ServiceAccount or a Namespace", describe(r)),
                ));
            }
            if r.name.is_empty() {
                errors.push(FieldError::new(
                    format!("spec.identityRefs[{i}].name"),
                    "missing",
                ));
            }
        }
        errors
    }
}

/// A `NetworkAuthentication`'s spec: clients by address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkAuthenticationSpec {
    /// The networks; a client in any of them matches.
    pub networks: Vec<Network>,
}

/// A network less some of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// A CIDR (or an address).
    pub cidr: String,
    /// CIDRs within it that do not match.
    #[serde(default)]
    pub except: Vec<String>,
}

impl NetworkAuthenticationSpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.networks.is_empty() {
            errors.push(FieldError::new(
                "spec.networks",
                "at least one network is required",
            ));
        }
        for (i, n) in self.networks.iter().enumerate() {
            if !crate::net::valid(&n.cidr) {
                errors.push(FieldError::new(
                    format!("spec.networks[{i}].cidr"),
                    format!("{:?} is not a CIDR", n.cidr),
                ));
            }
            for (j, e) in n.except.iter().enumerate() {
                if !crate::net::valid(e) {
                    errors.push(FieldError::new(
                        format!("spec.networks[{i}].except[{j}]"),
                        format!("{e:?} is not a CIDR"),
                    ));
                }
            }
        }
        errors
    }
}

/// An `HTTPLocalRateLimitPolicy`'s spec: request rates for a Server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpLocalRateLimitPolicySpec {
    /// The Server.
    pub target_ref: ObjectRef,
    /// All requests together.
    #[serde(default)]
    pub total: Option<Rate>,
    /// Each client identity.
    #[serde(default)]
    pub identity: Option<Rate>,
    /// Rates for some clients instead of `identity`.
    #[serde(default)]
    pub overrides: Vec<RateOverride>,
}

/// A rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    /// Requests per second.
    pub requests_per_second: u32,
}

/// A rate for some clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateOverride {
    /// Requests per second.
    pub requests_per_second: u32,
    /// The clients: ServiceAccounts.
    pub client_refs: Vec<ObjectRef>,
}

impl HttpLocalRateLimitPolicySpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.target_ref.is(POLICY_GROUP, "Server") {
            errors.push(FieldError::new(
                "spec.targetRef",
                format!("{}: expected a Server", describe(&self.target_ref)),
            ));
        }
        if self.target_ref.name.is_empty() {
            errors.push(FieldError::new("spec.targetRef.name", "missing"));
        }
        let total = self.total.map(|t| t.requests_per_second);
        let mut rate = |at: String, rps: u32| {
            if rps == 0 {
                errors.push(FieldError::new(at, "must be at least 1"));
            } else if total.is_some_and(|t| rps > t) {
                errors.push(FieldError::new(
                    at,
                    format!("{rps} exceeds total.requestsPerSecond"),
                ));
            }
        };
        if let Some(t) = self.total {
            rate("spec.total.requestsPerSecond".into(), t.requests_per_second);
        }
        if let Some(i) = self.identity {
            rate(
                "spec.identity.requestsPerSecond".into(),
                i.requests_per_second,
            );
        }
        for (i, o) in self.overrides.iter().enumerate() {
            rate(
                format!("spec.overrides[{i}].requestsPerSecond"),
                o.requests_per_second,
            );
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if o.client_refs.is_empty() {
                errors.push(FieldError::new(
                    format!("spec.overrides[{i}].clientRefs"),
                    "at least one client is required",
                ));
            }
            for (j, c) in o.client_refs.iter().enumerate() {
                if !c.is("", "ServiceAccount") {
                    errors.push(FieldError::new(
                        format!("spec.overrides[{i}].clientRefs[{j}]"),
                        format!("{}: expected a ServiceAccount", describe(c)),
                    ));
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(y: &str) -> T {
        crate::yaml::from_str(y).expect("parses")
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn servers_select_pods_and_ports() {
        let s: ServerSpec = parse(
            "podSelector:\n  matchLabels: {app: web}\n  matchExpressions:\n  - {key: tier, operator: NotIn, values: [canary]}\nport: http\nproxyProtocol: HTTP/1\n",
        );
        assert!(s.validate().is_empty());
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.selects(&labels(&[("app", "web")])));
        assert!(!s.selects(&labels(&[("app", "web"), ("tier", "canary")])));
        assert!(!s.selects(&labels(&[("app", "db")])));
        assert!(s.serves(8080, |n| (n == "http").then_some(8080)));
        assert!(!s.serves(8080, |_| None));
        assert_eq!(s.protocol(), ProxyProtocol::Http1);
        assert_eq!(s.access_policy(), DefaultPolicy::Deny, "Linkerd's default");
    }

    #[test]
    fn bad_servers_are_refused_naming_the_field() {
        let s: ServerSpec = parse(
            "podSelector: {matchExpressions: [{key: a, operator: Near}]}\nport: 70000\nproxyProtocol: HTTP/3\naccessPolicy: everyone\n",
        );
        assert_eq!(
            fields(s.validate()),
            [
                "spec.podSelector.matchExpressions[0].operator",
                "spec.port",
                "spec.proxyProtocol",
                "spec.accessPolicy"
            ]
        );
        assert!(crate::yaml::from_str::<ServerSpec>("port: 80\npodSelektor: {}\n").is_err());
    }

    #[test]
    fn identities_map_to_the_mesh_domain() {
        let m: MeshTlsAuthenticationSpec = parse(
            "identities:\n- '*'\n- web.shop.serviceaccount.identity.linkerd.cluster.local\n- '*.ops.serviceaccount.identity.linkerd.cluster.local'\n",
        );
        assert!(m.validate().is_empty());
        assert_eq!(
            m.matches("shop"),
            [
                IdentityMatch::Any,
                IdentityMatch::Exact("web.shop.serviceaccount.identity.mesh.cluster.local".into()),
                IdentityMatch::Suffix(".ops.serviceaccount.identity.mesh.cluster.local".into()),
            ]
        );
        let r: MeshTlsAuthenticationSpec = parse(
            "identityRefs:\n- {kind: ServiceAccount, name: web}\n- {kind: ServiceAccount, name: '*', namespace: ops}\n- {kind: Namespace, name: batch}\n",
        );
        assert!(r.validate().is_empty());
        assert_eq!(
            r.matches("shop"),
            [
                IdentityMatch::Exact("web.shop.serviceaccount.identity.mesh.cluster.local".into()),
                IdentityMatch::Suffix(".ops.serviceaccount.identity.mesh.cluster.local".into()),
                IdentityMatch::Suffix(".batch.serviceaccount.identity.mesh.cluster.local".into()),
            ]
        );
        let bad: MeshTlsAuthenticationSpec = parse("identities: ['web*x']\n");
        assert_eq!(fields(bad.validate()), ["spec.identities[0]"]);
        let none: MeshTlsAuthenticationSpec = parse("{}");
        assert_eq!(fields(none.validate()), ["spec.identities"]);
    }

    #[test]
    fn policies_name_what_they_may_reference() {
        let a: AuthorizationPolicySpec = parse(
            "targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}\nrequiredAuthenticationRefs:\n- {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}\n- {kind: ServiceAccount, name: books}\n",
        );
        assert!(a.validate().is_empty());
        assert_eq!(a.target(), Some(Target::Server));
        let bad: AuthorizationPolicySpec = parse(
            "targetRef: {kind: Deployment, group: apps, name: web}\nrequiredAuthenticationRefs: [{kind: Secret, name: x}]\n",
        );
        assert_eq!(
            fields(bad.validate()),
            ["spec.targetRef", "spec.requiredAuthenticationRefs[0]"]
        );
        let n: NetworkAuthenticationSpec =
            parse("networks:\n- cidr: 10.0.0.0/8\n  except: [10.1.0.0/16, nope]\n");
        assert_eq!(fields(n.validate()), ["spec.networks[0].except[1]"]);
    }

    #[test]
    fn rate_limits_stay_within_the_total() {
        let ok: HttpLocalRateLimitPolicySpec = parse(
            "targetRef: {group: policy.linkerd.io, kind: Server, name: web}\ntotal: {requestsPerSecond: 100}\nidentity: {requestsPerSecond: 20}\noverrides:\n- requestsPerSecond: 50\n  clientRefs: [{kind: ServiceAccount, name: batch}]\n",
        );
        assert!(ok.validate().is_empty());
        let bad: HttpLocalRateLimitPolicySpec = parse(
            "targetRef: {group: policy.linkerd.io, kind: Server, name: web}\ntotal: {requestsPerSecond: 10}\nidentity: {requestsPerSecond: 20}\noverrides:\n- requestsPerSecond: 0\n  clientRefs: [{kind: Pod, name: batch}]\n",
        );
        assert_eq!(
            fields(bad.validate()),
            [
                "spec.identity.requestsPerSecond",
                "spec.overrides[0].requestsPerSecond",
                "spec.overrides[0].clientRefs[0]"
            ]
        );
        assert!(served("Server", "policy.linkerd.io/v1beta3"));
        assert!(!served("Server", "policy.linkerd.io/v2"));
        assert!(served(
            "HTTPLocalRateLimitPolicy",
            "policy.linkerd.io/v1alpha1"
        ));
    }
}
