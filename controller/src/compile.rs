//! The front-ends: users' objects compiled into the one policy model
//! ([`mesh_api::policy`]) that proxies know. ServiceProfile and TrafficSplit compile
//! into a service's [`pb::OutboundPolicy`]; the inbound-TLS annotations of a pod and its
//! namespace into a port's [`pb::InboundPolicy`]. Pure functions over validated
//! objects: whatever reaches here has been checked, so every policy made can be
//! applied whole.

use mesh_api::policy as pb;
use mesh_api::profile::{RequestMatch, ResponseMatch, RetryBudget};
use mesh_api::{ServiceProfileSpec, TrafficSplitSpec};

/// Inbound mTLS as a pod's or namespace's annotations set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboundTls {
    /// The mode of every port not listed below.
    pub mode: Option<TlsMode>,
    /// Ports that are strict whatever the mode.
    pub strict_ports: Vec<u16>,
    /// Ports that are permissive whatever the mode.
    pub permissive_ports: Vec<u16>,
    /// The default inbound policy (`config.linkerd.io/default-inbound-policy`, or the
    /// mesh's alias).
    pub default_policy: Option<mesh_api::linkerd::DefaultPolicy>,
    /// Opaque ports (`config.linkerd.io/opaque-ports`, or the mesh's alias): ranges,
    /// inclusive; `None` when the annotation is absent.
    pub opaque_ports: Option<Vec<(u16, u16)>>,
}

/// Whether plaintext is accepted beside mTLS.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext accepted beside mTLS.
    Permissive,
    /// mTLS from meshed peers only.
    Strict,
}

/// Whether `port` is in one of `ranges`.
pub fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port))
}

impl InboundTls {
    /// The mode these annotations give `port`, if they say.
    pub fn mode_for(&self, port: u16) -> Option<TlsMode> {
        if self.strict_ports.contains(&port) {
            Some(TlsMode::Strict)
        } else if self.permissive_ports.contains(&port) {
            Some(TlsMode::Permissive)
        } else {
            self.mode
        }
    }
}

/// One service port's sources, as the index found them.
#[derive(Debug, Default)]
pub struct Outbound<'a> {
    /// The cluster's DNS domain (`cluster.local`).
    pub domain: &'a str,
    /// The service's namespace.
    pub namespace: &'a str,
    /// The service's name.
    pub name: &'a str,
    /// The port asked for.
    pub port: u16,
    /// Its ServiceProfile (by the service's fully qualified name), with its name.
    pub profile: Option<(&'a str, &'a ServiceProfileSpec)>,
    /// The TrafficSplit whose apex it is, with its name.
    pub split: Option<(&'a str, &'a TrafficSplitSpec)>,
}

/// The client policy of one service port: the profile's routes, timeouts, retries
/// and budget; the split's weighted backends (a split overrides `dstOverrides`, as
/// SMI's apex service decides where its traffic goes).
pub fn outbound(o: &Outbound<'_>) -> pb::OutboundPolicy {
    let fqdn = format!("{}.{}.svc.{}", o.name, o.namespace, o.domain);
    let mut policy = pb::OutboundPolicy {
        service: format!("{fqdn}:{}", o.port),
        ..Default::default()
    };
    if let Some((name, spec)) = o.profile {
        policy
            .sources
            .push(source("ServiceProfile", o.namespace, name));
        profile(spec, &mut policy);
    }
    if let Some((name, split)) = o.split {
        policy
            .sources
            .push(source("TrafficSplit", o.namespace, name));
        policy.backends = split
            .backends
            .iter()
            .map(|b| {
                let authority =
                    format!("{}.{}.svc.{}:{}", b.service, o.namespace, o.domain, o.port);
                weighted(&authority, b.weight.0)
            })
            .collect();
    }
    policy
}

/// The server policy of one port of a pod: the pod's inbound-TLS and default-policy
/// annotations, else its namespace's, else (for the default policy) the mesh's
/// `installed` one; with no TLS annotation, no TLS decision (the proxy's own setting
/// applies).
pub fn inbound(
    port: u16,
    pod: Option<(&str, &str, &InboundTls)>,
    namespace: Option<(&str, &InboundTls)>,
    installed: mesh_api::linkerd::DefaultPolicy,
) -> pb::InboundPolicy {
    let mut policy = pb::InboundPolicy {
        port: port.into(),
        ..Default::default()
    };
    let decided = pod
        .and_then(|(ns, name, tls)| Some((tls.mode_for(port)?, source("Pod", ns, name))))
        .or_else(|| {
            namespace.and_then(|(ns, tls)| Some((tls.mode_for(port)?, source("Namespace", "", ns))))
        });
    let default = pod
        .and_then(|(ns, name, tls)| Some((tls.default_policy?, source("Pod", ns, name))))
        .or_else(|| {
            namespace.and_then(|(ns, tls)| Some((tls.default_policy?, source("Namespace", "", ns))))
        });
    if let Some((mode, from)) = decided {
        policy.mtls = match mode {
            TlsMode::Strict => pb::MtlsMode::Strict,
            TlsMode::Permissive => pb::MtlsMode::Permissive,
        }
        .into();
        policy.sources.push(from);
    }
    let default_policy = match default {
        Some((p, from)) => {
            if !policy.sources.contains(&from) {
                policy.sources.push(from);
            }
            p
        }
        None => installed,
    };
    policy.default_policy = default_policy_pb(default_policy).into();
    // Opaque ports: the pod's annotation, else its namespace's.
    let opaque = pod
        .and_then(|(_, _, a)| a.opaque_ports.as_deref())
        .or_else(|| namespace.and_then(|(_, a)| a.opaque_ports.as_deref()));
    if opaque.is_some_and(|r| in_ranges(r, port)) {
        policy.protocol = pb::Protocol::Opaque.into();
    }
    policy
}

/// Linkerd's default policy as the proxy's.
pub fn default_policy_pb(p: mesh_api::linkerd::DefaultPolicy) -> pb::DefaultPolicy {
    use mesh_api::linkerd::DefaultPolicy as D;
    match p {
        D::AllUnauthenticated => pb::DefaultPolicy::AllUnauthenticated,
        D::AllAuthenticated => pb::DefaultPolicy::AllAuthenticated,
        D::ClusterUnauthenticated => pb::DefaultPolicy::ClusterUnauthenticated,
        D::ClusterAuthenticated => pb::DefaultPolicy::ClusterAuthenticated,
        D::Deny => pb::DefaultPolicy::Deny,
        D::Audit => pb::DefaultPolicy::Audit,
    }
}

fn source(kind: &str, namespace: &str, name: &str) -> pb::ObjectRef {
    pb::ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A validated ServiceProfile's routes, budget and `dstOverrides`, compiled into
/// `policy` (routes in order, first match wins).
fn profile(spec: &ServiceProfileSpec, policy: &mut pb::OutboundPolicy) {
    policy.route_order = pb::RouteOrder::FirstMatch.into();
    policy.routes = spec
        .routes
        .iter()
        .map(|r| pb::HttpRoute {
            name: r.name.clone(),
            matches: vec![pb::RouteMatch {
                condition: Some(request_match(&r.condition)),
                ..Default::default()
            }],
            response_classes: r
                .response_classes
                .iter()
                .map(|c| pb::ResponseClass {
                    condition: Some(response_match(&c.condition)),
                    is_failure: c.is_failure,
                })
                .collect(),
            // 0 means no timeout, so anything shorter than 1 ms becomes 1 ms.
            timeouts: r.timeout().map(|t| pb::Timeouts {
                request_ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1),
                ..Default::default()
            }),
            // A retryable route retries what its classes call failures, and requests
            // no endpoint took, within its budget (its own, else the profile's).
            retry: r.retryable().then(|| pb::Retry {
                conditions: Some(pb::RetryConditions {
                    failure_class: true,
                    connect_failure: true,
                    ..Default::default()
                }),
                budget: r.retry_budget.as_ref().map(budget),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    policy.retry_budget = Some(budget(
        spec.retry_budget
            .as_ref()
            .unwrap_or(&RetryBudget::default()),
    ));
    policy.backends = spec
        .dst_overrides
        .iter()
        .map(|d| weighted(&d.authority, d.weight.0))
        .collect();
}

fn weighted(authority: &str, weight: u64) -> pb::WeightedBackend {
    pb::WeightedBackend {
        backend: Some(pb::Backend {
            kind: Some(pb::backend::Kind::Authority(authority.to_string())),
        }),
        weight,
        filters: vec![],
        policy: None,
    }
}

fn budget(b: &RetryBudget) -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: b.retry_ratio,
        min_retries_per_second: b.min_retries_per_second,
        ttl_ms: b.ttl().map_or(10_000, |t| t.as_millis() as u64),
    }
}

/// Several conditions in one object all hold: they become an `all`.
fn request_match(m: &RequestMatch) -> pb::RequestMatch {
    use pb::request_match::{Match, Seq};
    let mut parts = Vec::new();
    if let Some(re) = &m.path_regex {
        parts.push(Match::PathRegex(re.clone()));
    }
    if let Some(method) = &m.method {
        parts.push(Match::Method(method.to_ascii_uppercase()));
    }
    if let Some(all) = &m.all {
        parts.push(Match::All(Seq {
            matches: all.iter().map(request_match).collect(),
        }));
    }
    if let Some(any) = &m.any {
        parts.push(Match::Any(Seq {
            matches: any.iter().map(request_match).collect(),
        }));
    }
    if let Some(not) = &m.not {
        parts.push(Match::Not(Box::new(request_match(not))));
    }
    let r#match = match parts.len() {
        // An empty condition matches everything: an empty `all`.
        0 => Match::All(Seq { matches: vec![] }),
        1 => parts.remove(0),
        _ => Match::All(Seq {
            matches: parts
                .into_iter()
                .map(|m| pb::RequestMatch { r#match: Some(m) })
                .collect(),
        }),
    };
    pb::RequestMatch {
        r#match: Some(r#match),
    }
}

fn response_match(m: &ResponseMatch) -> pb::ResponseMatch {
    use pb::StatusRange;
    use pb::response_match::{Match, Seq};
    let mut parts = Vec::new();
    if let Some(s) = &m.status {
        parts.push(Match::Status(StatusRange {
            min: s.min.unwrap_or(100),
            max: s.max.unwrap_or(599),
        }));
    }
    if let Some(all) = &m.all {
        parts.push(Match::All(Seq {
            matches: all.iter().map(response_match).collect(),
        }));
    }
    if let Some(any) = &m.any {
        parts.push(Match::Any(Seq {
            matches: any.iter().map(response_match).collect(),
        }));
    }
    if let Some(not) = &m.not {
        parts.push(Match::Not(Box::new(response_match(not))));
    }
    let r#match = match parts.len() {
        0 => Match::All(Seq { matches: vec![] }),
        1 => parts.remove(0),
        _ => Match::All(Seq {
            matches: parts
                .into_iter()
                .map(|m| pb::ResponseMatch { r#match: Some(m) })
                .collect(),
        }),
    };
    pb::ResponseMatch {
        r#match: Some(r#match),
    }
}
