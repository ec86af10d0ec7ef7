//! Istio's security resources compiled into a pod port's [`pb::InboundPolicy`]:
//! PeerAuthentication into its mTLS mode, AuthorizationPolicy into authorizations,
//! RequestAuthentication into JWT providers, and the local-rate-limit EnvoyFilter into
//! a rate limit. Pure functions over validated objects.

use std::collections::BTreeMap;

use mesh_api::istio::{
    Action, AuthorizationPolicySpec, EnvoyFilterSpec, LocalRateLimit, MtlsMode,
    PeerAuthenticationSpec, RequestAuthenticationSpec, Wildcard, WorkloadSelector,
};
use mesh_api::linkerd;
use mesh_api::policy as pb;

/// The mesh's own namespace: its objects apply mesh-wide (Istio's root namespace).
pub const MESH_ROOT_NAMESPACE: &str = "mesh";
/// Istio's root namespace, honoured too, so that mesh-wide policy moves unchanged.
pub const ISTIO_ROOT_NAMESPACE: &str = "istio-system";

/// A validated security object of one of Istio's kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Security {
    /// `PeerAuthentication`.
    Peer(PeerAuthenticationSpec),
    /// `AuthorizationPolicy` (Istio's).
    Authorization(AuthorizationPolicySpec),
    /// `RequestAuthentication`.
    RequestAuthentication(RequestAuthenticationSpec),
    /// An `EnvoyFilter` that is a local rate limit.
    RateLimit(EnvoyFilterSpec, LocalRateLimit),
    /// Linkerd's `Server`.
    Server(linkerd::ServerSpec),
    /// Linkerd's `AuthorizationPolicy`.
    LinkerdAuthorization(linkerd::AuthorizationPolicySpec),
    /// `MeshTLSAuthentication`.
    MeshTls(linkerd::MeshTlsAuthenticationSpec),
    /// `NetworkAuthentication`.
    Network(linkerd::NetworkAuthenticationSpec),
    /// `HTTPLocalRateLimitPolicy`.
    LinkerdRateLimit(linkerd::HttpLocalRateLimitPolicySpec),
}

impl Security {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Peer(_) => "PeerAuthentication",
            Self::Authorization(_) => "AuthorizationPolicy",
            Self::RequestAuthentication(_) => "RequestAuthentication",
            Self::RateLimit(..) => "EnvoyFilter",
            Self::Server(_) => "Server",
            Self::LinkerdAuthorization(_) => "AuthorizationPolicy",
            Self::MeshTls(_) => "MeshTLSAuthentication",
            Self::Network(_) => "NetworkAuthentication",
            Self::LinkerdRateLimit(_) => "HTTPLocalRateLimitPolicy",
        }
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> Option<bool> {
        let sel = |s: &Option<WorkloadSelector>| s.as_ref().map(|s| s.selects(labels));
        match self {
            Self::Peer(s) => sel(&s.selector),
            Self::Authorization(s) => sel(&s.selector),
            Self::RequestAuthentication(s) => sel(&s.selector),
            Self::RateLimit(s, _) => s
                .workload_selector
                .as_ref()
                .map(|w| w.labels.iter().all(|(k, v)| labels.get(k) == Some(v))),
            // Linkerd's kinds are not Istio's scopes: crate::servers applies them.
            Self::Server(_)
            | Self::LinkerdAuthorization(_)
            | Self::MeshTls(_)
            | Self::Network(_)
            | Self::LinkerdRateLimit(_) => Some(false),
        }
    }
}

/// One stored object, as the compiler needs it.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// When it was made (RFC 3339), for "the oldest wins".
    pub created: Option<&'a str>,
    /// It.
    pub object: &'a Security,
}

impl Stored<'_> {
    /// What "the oldest wins" sorts by: made earlier first (unknown ages last), then
    /// namespace and name.
    pub fn age_order(&self) -> (bool, Option<&str>, &str, &str) {
        (
            self.created.is_none(),
            self.created,
            self.namespace,
            self.name,
        )
    }
}

/// The pod a policy is for.
#[derive(Clone, Copy, Debug)]
pub struct Pod<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// How an object applies to a pod: to the workload (a selector that matches), its
/// namespace, or the mesh (the root namespace, no selector).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Workload,
    Namespace,
    Mesh,
}

fn scope(o: &Stored<'_>, pod: &Pod<'_>, root: bool) -> Option<Scope> {
    let own = o.namespace == pod.namespace;
    match (o.object.selects(pod.labels), own, root) {
        (Some(true), true, _) => Some(Scope::Workload),
        // Istio: a root-namespace policy with a selector applies to matching workloads
        // of every namespace (PeerAuthentication's do not).
        (Some(true), false, true) if !matches!(o.object, Security::Peer(_)) => {
            Some(Scope::Workload)
        }
        (None, true, _) => Some(Scope::Namespace),
        (None, false, true) => Some(Scope::Mesh),
        _ => None,
    }
}

pub(crate) fn object_ref(o: &Stored<'_>) -> pb::ObjectRef {
    pb::ObjectRef {
        kind: o.object.kind().into(),
        namespace: o.namespace.into(),
        name: o.name.into(),
    }
}

fn string_match(s: &str) -> pb::StringMatch {
    use pb::string_match::Kind;
    // Validated: every value parses.
    let kind = match Wildcard::parse(s) {
        Ok(Wildcard::Exact(e)) => Kind::Exact(e),
        Ok(Wildcard::Prefix(p)) => Kind::Prefix(p),
        Ok(Wildcard::Suffix(x)) => Kind::Suffix(x),
        Ok(Wildcard::Present) => Kind::Present(true),
        Err(_) => Kind::Exact(s.into()),
    };
    pb::StringMatch { kind: Some(kind) }
}

fn matches(values: &[String]) -> Vec<pb::StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

fn networks(values: &[String]) -> Vec<pb::Network> {
    values
        .iter()
        .map(|v| pb::Network {
            cidr: v.clone(),
            except: vec![],
        })
        .collect()
}

fn ports(values: &[String]) -> Vec<u32> {
    values.iter().filter_map(|p| p.parse().ok()).collect()
}

/// An Istio AuthorizationPolicy as the proxy's authorization.
fn authorization(o: &Stored<'_>, spec: &AuthorizationPolicySpec) -> pb::Authorization {
    let action = match spec.action() {
        Action::Allow => pb::AuthorizationAction::Allow,
        Action::Deny => pb::AuthorizationAction::Deny,
        Action::Audit => pb::AuthorizationAction::Audit,
    };
    let exact_values = |values: &[String]| -> Vec<pb::StringMatch> {
        values
            .iter()
            .map(|v| pb::StringMatch {
                kind: Some(pb::string_match::Kind::Exact(v.clone())),
            })
            .collect()
    };
    pb::Authorization {
        source: Some(object_ref(o)),
        action: action.into(),
        rules: spec
            .rules
            .iter()
            .map(|r| pb::AuthorizationRule {
                from: r
                    .from
                    .iter()
                    .map(|f| {
                        let s = &f.source;
                        // remoteIpBlocks is the original client by X-Forwarded-For;
                        // with no trusted proxies in front, that is the connection's.
                        let mut nets = networks(&s.ip_blocks);
                        nets.extend(networks(&s.remote_ip_blocks));
                        let mut not_nets = networks(&s.not_ip_blocks);
                        not_nets.extend(networks(&s.not_remote_ip_blocks));
                        pb::Source {
                            principals: matches(&s.principals),
                            not_principals: matches(&s.not_principals),
                            namespaces: matches(&s.namespaces),
                            not_namespaces: matches(&s.not_namespaces),
                            networks: nets,
                            not_networks: not_nets,
                            request_principals: matches(&s.request_principals),
                            not_request_principals: matches(&s.not_request_principals),
                            ..Default::default()
                        }
                    })
                    .collect(),
                to: r
                    .to
                    .iter()
                    .map(|t| {
                        let op = &t.operation;
                        pb::Operation {
                            hosts: matches(&op.hosts),
                            not_hosts: matches(&op.not_hosts),
                            ports: ports(&op.ports),
                            not_ports: ports(&op.not_ports),
                            methods: matches(&op.methods),
                            not_methods: matches(&op.not_methods),
                            paths: matches(&op.paths),
                            not_paths: matches(&op.not_paths),
                            routes: vec![],
                        }
                    })
                    .collect(),
                when: r
                    .when
                    .iter()
                    .map(|c| {
                        let values = |v: &[String]| {
                            if mesh_api::istio::is_address_key(&c.key) {
                                exact_values(v)
                            } else {
                                matches(v)
                            }
                        };
                        pb::Condition {
                            key: c.key.clone(),
                            values: values(&c.values),
                            not_values: values(&c.not_values),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Fetched JWKS documents by URI: the document, or why it could not be had.
pub type JwksCache = BTreeMap<String, Result<String, String>>;

fn jwt_providers(
    o: &Stored<'_>,
    spec: &RequestAuthenticationSpec,
    jwks: &JwksCache,
) -> Vec<pb::JwtProvider> {
    spec.jwt_rules
        .iter()
        .map(|r| {
            let (keys, error) = match (&r.jwks, &r.jwks_uri) {
                (Some(inline), _) => (inline.clone(), String::new()),
                (None, Some(uri)) => match jwks.get(uri) {
                    Some(Ok(doc)) => (doc.clone(), String::new()),
                    Some(Err(e)) => (String::new(), format!("{uri}: {e}")),
                    None => (String::new(), format!("{uri}: not fetched yet")),
                },
                (None, None) => (String::new(), "no keys".into()),
            };
            pb::JwtProvider {
                source: Some(object_ref(o)),
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                jwks: keys,
                jwks_error: error,
                from_headers: r
                    .from_headers
                    .iter()
                    .map(|h| pb::TokenHeader {
                        name: h.name.clone(),
                        prefix: h.prefix.clone().unwrap_or_default(),
                    })
                    .collect(),
                from_params: r.from_params.clone(),
                from_cookies: r.from_cookies.clone(),
                forward_token: r.forward_original_token,
                output_payload_to_header: r.output_payload_to_header.clone().unwrap_or_default(),
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .map(|c| pb::ClaimToHeader {
                        header: c.header.clone(),
                        claim: c.claim.clone(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Which mTLS mode Istio's PeerAuthentications give `port` of `pod`, and from which
/// object: the workload's (its port-level mode first), else the namespace's, else
/// the mesh's; UNSET inherits. `None`: none decides.
fn peer_mode<'a>(objects: &[(Stored<'a>, Scope)], port: u16) -> Option<(MtlsMode, Stored<'a>)> {
    let peers = |s: Scope| {
        objects.iter().filter_map(move |(o, scope)| match o.object {
            Security::Peer(p) if *scope == s => Some((o, p)),
            _ => None,
        })
    };
    for s in [Scope::Workload, Scope::Namespace, Scope::Mesh] {
        // The oldest wins (objects come sorted).
        if let Some((o, p)) = peers(s).next() {
            let mode = p
                .port_mode(port)
                .filter(|m| *m != MtlsMode::Unset)
                .unwrap_or(p.mode());
            if mode != MtlsMode::Unset {
                return Some((mode, *o));
            }
        }
    }
    None
}

/// Applies the Istio objects of the pod's namespace and of the root namespaces
/// (`root` tells which of `objects` live there) to `policy`.
pub fn apply(
    policy: &mut pb::InboundPolicy,
    pod: &Pod<'_>,
    port: u16,
    objects: &[(Stored<'_>, bool)],
    jwks: &JwksCache,
) {
    let mut scoped: Vec<(Stored<'_>, Scope)> = objects
        .iter()
        .filter_map(|(o, root)| Some((*o, scope(o, pod, *root)?)))
        .collect();
    // The oldest first, then by namespace and name: Istio's tie-break.
    scoped.sort_by(|(a, _), (b, _)| a.age_order().cmp(&b.age_order()));
    if let Some((mode, o)) = peer_mode(&scoped, port) {
        policy.mtls = match mode {
            MtlsMode::Strict => pb::MtlsMode::Strict,
            MtlsMode::Permissive => pb::MtlsMode::Permissive,
            MtlsMode::Disable => pb::MtlsMode::Disable,
            MtlsMode::Unset => pb::MtlsMode::Unset,
        }
        .into();
        policy.sources.push(object_ref(&o));
    }
    let mut any_allow = false;
    for (o, _) in &scoped {
        match o.object {
            Security::Peer(_)
            | Security::Server(_)
            | Security::LinkerdAuthorization(_)
            | Security::MeshTls(_)
            | Security::Network(_)
            | Security::LinkerdRateLimit(_) => {}
            Security::Authorization(spec) => {
                any_allow |= spec.action() == Action::Allow;
                policy.authorizations.push(authorization(o, spec));
                policy.sources.push(object_ref(o));
            }
            Security::RequestAuthentication(spec) => {
                policy.jwt_providers.extend(jwt_providers(o, spec, jwks));
                policy.sources.push(object_ref(o));
            }
            Security::RateLimit(_, limit) => {
                policy.rate_limits.push(pb::RateLimit {
                    source: Some(object_ref(o)),
                    total: Some(pb::Limit {
                        requests: limit.tokens_per_fill,
                        period_ms: limit.fill_interval_ms,
                        burst: limit.max_tokens,
                    }),
                    per_identity: None,
                    overrides: vec![],
                });
                policy.sources.push(object_ref(o));
            }
        }
    }
    // Istio: with any ALLOW policy on the workload, a request must match one.
    if any_allow {
        policy.default_policy = pb::DefaultPolicy::Deny.into();
    }
}

/// The JWKS URIs the objects name, for the fetcher.
pub fn jwks_uris<'a>(objects: impl IntoIterator<Item = &'a Security>) -> Vec<String> {
    objects
        .into_iter()
        .filter_map(|o| match o {
            Security::RequestAuthentication(s) => Some(s),
            _ => None,
        })
        .flat_map(|s| s.jwt_rules.iter().filter_map(|r| r.jwks_uri.clone()))
        .collect()
}
