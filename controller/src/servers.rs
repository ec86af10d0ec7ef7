//! Linkerd's policy resources compiled into a pod port's [`pb::InboundPolicy`]: the
//! `Server` that selects the port decides its protocol and access policy; the
//! `AuthorizationPolicy`s targeting that Server, its namespace or a route on it admit
//! the clients that pass all their required authentications (`MeshTLSAuthentication`,
//! `NetworkAuthentication`, ServiceAccounts); its `HTTPLocalRateLimitPolicy` limits the
//! requests admitted. Pure functions over validated objects; references are looked up
//! through [`Lookup`], so that the index can record what an answer read.

use std::collections::BTreeMap;

use mesh_api::linkerd::{
    self, Authentication, AuthorizationPolicySpec, IdentityMatch, ProxyProtocol, Target,
};
use mesh_api::policy as pb;

use crate::authz::{Security, Stored, object_ref};

/// A route attached to a Server (an HTTPRoute or GRPCRoute whose parent it is).
#[derive(Clone, Debug)]
pub struct ServerRoute {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    /// Its name (in the Server's namespace).
    pub name: String,
    /// The requests it takes.
    pub matches: Vec<pb::RouteMatch>,
}

/// What the compiler may look up beyond the pod's namespace.
pub trait Lookup<'a> {
    /// A security object of another (or the same) namespace, by its kind's name.
    fn object(&mut self, namespace: &str, kind: &str, name: &str) -> Option<&'a Security>;
    /// The routes attached to Server `name` of `namespace`.
    fn routes(&mut self, namespace: &str, server: &str) -> Vec<ServerRoute>;
}

/// The pod a policy is for.
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Its named container ports.
    pub named_ports: &'a std::collections::HashMap<String, u16>,
}

fn oldest_first(list: &mut [Stored<'_>]) {
    list.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
}

/// Applies the Linkerd objects of the pod's namespace (`objects`: its security objects)
/// to `policy`: nothing unless a Server selects the port.
pub fn apply<'a>(
    policy: &mut pb::InboundPolicy,
    pod: &Workload<'_>,
    port: u16,
    objects: &[Stored<'a>],
    lookup: &mut dyn Lookup<'a>,
) {
    let mut servers: Vec<Stored<'a>> = objects
        .iter()
        .filter(|o| match o.object {
            Security::Server(s) => {
                s.selects(pod.labels) && s.serves(port, |n| pod.named_ports.get(n).copied())
            }
            _ => false,
        })
        .copied()
        .collect();
    // Linkerd: when two Servers claim a port, the oldest wins.
    oldest_first(&mut servers);
    let Some(server) = servers.first().copied() else {
        return;
    };
    let Security::Server(spec) = server.object else {
        return;
    };
    policy.sources.push(object_ref(&server));
    match spec.protocol() {
        ProxyProtocol::Unknown => {}
        ProxyProtocol::Http1 => policy.protocol = pb::Protocol::Http1.into(),
        ProxyProtocol::Http2 => policy.protocol = pb::Protocol::Http2.into(),
        ProxyProtocol::Grpc => policy.protocol = pb::Protocol::Grpc.into(),
        ProxyProtocol::Opaque | ProxyProtocol::Tls => {
            policy.protocol = pb::Protocol::Opaque.into();
        }
    }
    policy.default_policy = crate::compile::default_policy_pb(spec.access_policy()).into();
    let routes = lookup.routes(pod.namespace, server.name);
    policy.routes = routes.iter().flat_map(|r| r.matches.clone()).collect();
    for r in &routes {
        policy.sources.push(pb::ObjectRef {
            kind: r.kind.into(),
            namespace: pod.namespace.into(),
            name: r.name.clone(),
        });
    }
    let mut policies: Vec<Stored<'a>> = objects
        .iter()
        .filter(|o| matches!(o.object, Security::LinkerdAuthorization(_)))
        .copied()
        .collect();
    oldest_first(&mut policies);
    for o in &policies {
        let Security::LinkerdAuthorization(ap) = o.object else {
            continue;
        };
        let name = ap.target_ref.name.as_str();
        let on_routes: Option<Vec<pb::RouteMatch>> = match ap.target() {
            Some(Target::Server) if name == server.name => None,
            Some(Target::Namespace) if name == pod.namespace => None,
            Some(Target::HttpRoute | Target::GrpcRoute) => {
                let kind = if ap.target() == Some(Target::GrpcRoute) {
                    "GRPCRoute"
                } else {
                    "HTTPRoute"
                };
                match routes.iter().find(|r| r.kind == kind && r.name == name) {
                    Some(r) => Some(r.matches.clone()),
                    None => continue,
                }
            }
            _ => continue,
        };
        // A policy whose authentications are not all there authorizes no one (as
        // Linkerd's).
        let Some(mut rule) = authentications(o.namespace, ap, lookup) else {
            continue;
        };
        if let Some(matches) = on_routes {
            rule.to = vec![pb::Operation {
                routes: matches,
                ..Default::default()
            }];
        }
        policy.authorizations.push(pb::Authorization {
            source: Some(object_ref(o)),
            action: pb::AuthorizationAction::Allow.into(),
            rules: vec![rule],
        });
        policy.sources.push(object_ref(o));
    }
    let mut limits: Vec<Stored<'a>> = objects
        .iter()
        .filter(|o| match o.object {
            Security::LinkerdRateLimit(l) => l.target_ref.name == server.name,
            _ => false,
        })
        .copied()
        .collect();
    // Linkerd allows one per Server: the oldest.
    oldest_first(&mut limits);
    if let Some(o) = limits.first()
        && let Security::LinkerdRateLimit(l) = o.object
    {
        policy.rate_limits.push(rate_limit(o, l));
        policy.sources.push(object_ref(o));
    }
}

fn per_second(rps: u32) -> pb::Limit {
    pb::Limit {
        requests: rps,
        period_ms: 1000,
        burst: 0,
    }
}

fn rate_limit(o: &Stored<'_>, l: &linkerd::HttpLocalRateLimitPolicySpec) -> pb::RateLimit {
    pb::RateLimit {
        source: Some(object_ref(o)),
        total: l.total.map(|t| per_second(t.requests_per_second)),
        per_identity: l.identity.map(|t| per_second(t.requests_per_second)),
        overrides: l
            .overrides
            .iter()
            .map(|ov| pb::LimitOverride {
                limit: Some(per_second(ov.requests_per_second)),
                clients: ov
                    .client_refs
                    .iter()
                    .map(|c| {
                        exact(mesh_api::identity::dns_name(
                            &c.name,
                            c.namespace.as_deref().unwrap_or(o.namespace),
                        ))
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn exact(s: String) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(pb::string_match::Kind::Exact(s)),
    }
}

/// The clients an AuthorizationPolicy admits, as one rule: every authentication must
/// match (the first identity set and network set are the rule's source, later ones its
/// conditions). `None` when one of them does not exist.
fn authentications<'a>(
    namespace: &str,
    ap: &AuthorizationPolicySpec,
    lookup: &mut dyn Lookup<'a>,
) -> Option<pb::AuthorizationRule> {
    let mut source = pb::Source::default();
    let mut when = Vec::new();
    let (mut have_ids, mut have_nets) = (false, false);
    for r in &ap.required_authentication_refs {
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let ids: Vec<IdentityMatch> = match linkerd::authentication(r)? {
            Authentication::ServiceAccount => vec![IdentityMatch::Exact(
                mesh_api::identity::dns_name(&r.name, ns),
            )],
            Authentication::MeshTls => match lookup.object(ns, "MeshTLSAuthentication", &r.name)? {
                Security::MeshTls(m) => m.matches(ns),
                _ => return None,
            },
            Authentication::Network => {
                let Security::Network(n) = lookup.object(ns, "NetworkAuthentication", &r.name)?
                else {
                    return None;
                };
                let nets: Vec<pb::Network> = n
                    .networks
                    .iter()
                    .map(|n| pb::Network {
                        cidr: n.cidr.clone(),
                        except: n.except.clone(),
                    })
                    .collect();
                if !have_nets {
                    source.networks = nets;
                    have_nets = true;
                } else {
                    when.push(pb::Condition {
                        key: "source.ip".into(),
                        values: nets.iter().map(|n| exact(n.cidr.clone())).collect(),
                        not_values: nets
                            .iter()
                            .flat_map(|n| n.except.iter().map(|e| exact(e.clone())))
                            .collect(),
                    });
                }
                continue;
            }
        };
        // `*` admits any meshed client: the rest of the list adds nothing.
        if ids.contains(&IdentityMatch::Any) {
            source.authenticated = true;
            continue;
        }
        let matches: Vec<pb::StringMatch> = ids
            .into_iter()
            .filter_map(|m| {
                let kind = match m {
                    IdentityMatch::Exact(e) => pb::string_match::Kind::Exact(e),
                    IdentityMatch::Suffix(s) => pb::string_match::Kind::Suffix(s),
                    IdentityMatch::Any => return None,
                };
                Some(pb::StringMatch { kind: Some(kind) })
            })
            .collect();
        if !have_ids {
            source.identities = matches;
            have_ids = true;
        } else {
            when.push(pb::Condition {
                key: "source.identity".into(),
                values: matches,
                not_values: vec![],
            });
        }
    }
    let from = if source == pb::Source::default() {
        vec![]
    } else {
        vec![source]
    };
    Some(pb::AuthorizationRule {
        from,
        to: vec![],
        when,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Objects(Vec<(String, String, Security)>, Vec<ServerRoute>);

    impl<'a> Lookup<'a> for &'a Objects {
        fn object(&mut self, namespace: &str, kind: &str, name: &str) -> Option<&'a Security> {
            self.0
                .iter()
                .find(|(ns, n, o)| ns == namespace && n == name && o.kind() == kind)
                .map(|(_, _, o)| o)
        }
        fn routes(&mut self, _: &str, _: &str) -> Vec<ServerRoute> {
            self.1.clone()
        }
    }

    fn yaml<T: serde::de::DeserializeOwned>(y: &str) -> T {
        mesh_api::yaml::from_str(y).expect("parses")
    }

    fn compile(objects: &Objects, port: u16) -> pb::InboundPolicy {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let named = std::collections::HashMap::from([("http".to_string(), 8080)]);
        let pod = Workload {
            namespace: "shop",
            labels: &labels,
            named_ports: &named,
        };
        let stored: Vec<Stored<'_>> = objects
            .0
            .iter()
            .filter(|(ns, _, _)| ns == "shop")
            .map(|(ns, name, object)| Stored {
                namespace: ns,
                name,
                created: None,
                object,
            })
            .collect();
        let mut policy = pb::InboundPolicy::default();
        let mut lookup = objects;
        apply(&mut policy, &pod, port, &stored, &mut lookup);
        policy
    }

    fn objects() -> Objects {
        Objects(
            vec![
                (
                    "shop".into(),
                    "web-http".into(),
                    Security::Server(yaml(
                        "podSelector: {matchLabels: {app: web}}\nport: http\nproxyProtocol: HTTP/1\n",
                    )),
                ),
                (
                    "shop".into(),
                    "web-authn".into(),
                    Security::LinkerdAuthorization(yaml(
                        "targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}\nrequiredAuthenticationRefs:\n- {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: clients, namespace: ops}\n- {group: policy.linkerd.io, kind: NetworkAuthentication, name: pods}\n- {kind: ServiceAccount, name: traffic}\n",
                    )),
                ),
                (
                    "ops".into(),
                    "clients".into(),
                    Security::MeshTls(yaml(
                        "identities: ['*.shop.serviceaccount.identity.linkerd.cluster.local']\n",
                    )),
                ),
                (
                    "shop".into(),
                    "pods".into(),
                    Security::Network(yaml(
                        "networks: [{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}]\n",
                    )),
                ),
                (
                    "shop".into(),
                    "limit".into(),
                    Security::LinkerdRateLimit(yaml(
                        "targetRef: {group: policy.linkerd.io, kind: Server, name: web-http}\ntotal: {requestsPerSecond: 100}\nidentity: {requestsPerSecond: 10}\noverrides: [{requestsPerSecond: 50, clientRefs: [{kind: ServiceAccount, name: batch}]}]\n",
                    )),
                ),
            ],
            vec![],
        )
    }

    #[test]
    fn a_server_decides_its_port_and_policies_need_every_authentication() {
        let objects = objects();
        let p = compile(&objects, 8080);
        assert_eq!(p.protocol(), pb::Protocol::Http1);
        assert_eq!(
            p.default_policy(),
            pb::DefaultPolicy::Deny,
            "accessPolicy's default"
        );
        assert_eq!(p.authorizations.len(), 1);
        let rule = &p.authorizations[0].rules[0];
        assert_eq!(
            rule.from[0].identities,
            [pb::StringMatch {
                kind: Some(pb::string_match::Kind::Suffix(
                    ".shop.serviceaccount.identity.mesh.cluster.local".into()
                ))
            }]
        );
        assert_eq!(rule.from[0].networks[0].except, ["10.9.0.0/16"]);
        assert_eq!(rule.when.len(), 1, "the second identity set is a condition");
        assert_eq!(rule.when[0].key, "source.identity");
        let limit = &p.rate_limits[0];
        assert_eq!(limit.total.as_ref().map(|l| l.requests), Some(100));
        assert_eq!(limit.per_identity.as_ref().map(|l| l.requests), Some(10));
        assert_eq!(
            limit.overrides[0].clients[0].kind,
            Some(pb::string_match::Kind::Exact(
                "batch.shop.serviceaccount.identity.mesh.cluster.local".into()
            ))
        );
        let kinds: Vec<&str> = p.sources.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["Server", "AuthorizationPolicy", "HTTPLocalRateLimitPolicy"]
        );
        // Another port: no Server, nothing changes.
        assert_eq!(compile(&objects, 9090), pb::InboundPolicy::default());
    }

    #[test]
    fn a_missing_authentication_authorizes_no_one() {
        let mut objects = objects();
        objects.0.retain(|(_, n, _)| n != "pods");
        let p = compile(&objects, 8080);
        assert!(p.authorizations.is_empty());
        assert_eq!(p.default_policy(), pb::DefaultPolicy::Deny);
    }

    #[test]
    fn route_policies_cover_their_routes_only() {
        let mut objects = objects();
        objects.0.push((
            "shop".into(),
            "health".into(),
            Security::LinkerdAuthorization(yaml(
                "targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: health}\nrequiredAuthenticationRefs: []\n",
            )),
        ));
        objects.1.push(ServerRoute {
            kind: "HTTPRoute",
            name: "health".into(),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Exact("/healthz".into())),
                    ignore_case: false,
                }),
                ..Default::default()
            }],
        });
        let p = compile(&objects, 8080);
        assert_eq!(p.routes.len(), 1, "requests no route takes are 404");
        let health = p
            .authorizations
            .iter()
            .find(|a| a.source.as_ref().is_some_and(|s| s.name == "health"))
            .expect("the route's policy");
        assert!(health.rules[0].from.is_empty(), "no authentication: anyone");
        assert_eq!(health.rules[0].to[0].routes.len(), 1);
    }
}
