//! Inbound authorization: a port's `InboundPolicy`, compiled once per update into
//! what the proxy checks, and the decision for each request (or, on opaque ports, each
//! connection). The order is the policy's: a present but invalid JWT is refused, then
//! DENY authorizations, then ALLOW ones, then the default policy; AUDIT never decides.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::policy as pb;

use crate::profile::RequestMatcher;

pub mod jwt;
pub mod limit;
pub mod metrics;

use mesh_api::net::Net;

/// Linkerd's default cluster networks, for a policy that names none.
const DEFAULT_CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

/// What decided a request: the object (or default policy) its metrics are labelled
/// with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    /// `AuthorizationPolicy`, `Server`, `default`, …
    pub kind: Arc<str>,
    /// `namespace/name`, or the default policy's name.
    pub name: Arc<str>,
}

impl Label {
    fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn of(source: Option<&pb::ObjectRef>) -> Self {
        match source {
            Some(s) if s.namespace.is_empty() => Self::new(&s.kind, &s.name),
            Some(s) => Self::new(&s.kind, &format!("{}/{}", s.namespace, s.name)),
            None => Self::new("unknown", "unknown"),
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// A decision: admitted or refused, and by what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admitted.
    Allow(Label),
    /// Refused.
    Deny(Label),
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// What decided.
    pub fn label(&self) -> &Label {
        match self {
            Self::Allow(l) | Self::Deny(l) => l,
        }
    }
}

/// Who is asking, as the connection tells.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The client's address.
    pub addr: IpAddr,
    /// Its verified mTLS identity (`SA.NS.serviceaccount.identity.mesh.cluster.local`).
    pub identity: Option<&'a str>,
    /// Where it connected: this pod's address and the application port.
    pub dst: SocketAddr,
}

impl Client<'_> {
    fn namespace(&self) -> Option<&str> {
        self.identity
            .and_then(mesh_api::identity::parse_dns_name)
            .map(|(_, ns)| ns)
    }

    /// Istio's principal: `cluster.local/ns/NS/sa/SA`.
    fn principal(&self) -> Option<String> {
        let id = self.identity?;
        Some(match mesh_api::identity::parse_dns_name(id) {
            Some((sa, ns)) => format!("{}/ns/{ns}/sa/{sa}", mesh_api::identity::TRUST_DOMAIN),
            None => id.to_string(),
        })
    }
}

/// What an HTTP request offers to the checks beyond its connection.
pub struct Http<'a, B> {
    /// The request.
    pub req: &'a http::Request<B>,
    /// Its verified JWT, if it bore one.
    pub auth: Option<&'a jwt::Verified>,
}

impl<B> Clone for Http<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Http<'_, B> {}

/// A match's outcome on what is known: `None` when it needs HTTP and the connection
/// is opaque (then an ALLOW rule does not match and a DENY rule ignores the field).
type Tri = Option<bool>;

fn all(items: impl IntoIterator<Item = Tri>) -> Tri {
    let mut unknown = false;
    for t in items {
        match t {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    if unknown { None } else { Some(true) }
}

fn any(items: impl IntoIterator<Item = Tri>) -> Tri {
    let mut unknown = false;
    let mut empty = true;
    for t in items {
        empty = false;
        match t {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    if empty {
        return Some(true);
    }
    if unknown { None } else { Some(false) }
}

/// A compiled string match (Istio's exact, `prefix*`, `*suffix`, `*`).
#[derive(Clone, Debug)]
enum Str {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
    Never,
}

impl Str {
    fn compile(m: &pb::StringMatch) -> Self {
        use pb::string_match::Kind;
        match &m.kind {
            Some(Kind::Exact(e)) => Self::Exact(e.clone()),
            Some(Kind::Prefix(p)) => Self::Prefix(p.clone()),
            Some(Kind::Suffix(s)) => Self::Suffix(s.clone()),
            Some(Kind::Present(true)) => Self::Present,
            _ => Self::Never,
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Exact(e) => e == v,
            Self::Prefix(p) => v.starts_with(p.as_str()),
            Self::Suffix(s) => v.ends_with(s.as_str()),
            Self::Present => true,
            Self::Never => false,
        }
    }

    fn matches_ignoring_case(&self, v: &str) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            Self::Exact(e) => e.eq_ignore_ascii_case(v),
            Self::Prefix(p) => lower(v).starts_with(&lower(p)),
            Self::Suffix(s) => lower(v).ends_with(&lower(s)),
            Self::Present => true,
            Self::Never => false,
        }
    }
}

fn strs(ms: &[pb::StringMatch]) -> Vec<Str> {
    ms.iter().map(Str::compile).collect()
}

fn nets(ns: &[pb::Network]) -> Vec<Net> {
    ns.iter().map(Net::compile).collect()
}

/// A list and its negation over one attribute, which may be absent (`Some(None)`) or
/// unknowable on this connection (`None`).
fn field<T: ?Sized>(
    yes: &[Str],
    no: &[Str],
    value: Option<Option<&T>>,
    hit: impl Fn(&Str, &T) -> bool,
) -> Tri {
    if yes.is_empty() && no.is_empty() {
        return Some(true);
    }
    let value = value?;
    let yes_ok = yes.is_empty() || value.is_some_and(|v| yes.iter().any(|m| hit(m, v)));
    let no_ok = value.is_none_or(|v| !no.iter().any(|m| hit(m, v)));
    Some(yes_ok && no_ok)
}

fn net_field(yes: &[Net], no: &[Net], ip: IpAddr) -> bool {
    (yes.is_empty() || yes.iter().any(|n| n.contains(ip))) && !no.iter().any(|n| n.contains(ip))
}

#[derive(Debug)]
struct Source {
    principals: Vec<Str>,
    not_principals: Vec<Str>,
    identities: Vec<Str>,
    not_identities: Vec<Str>,
    namespaces: Vec<Str>,
    not_namespaces: Vec<Str>,
    networks: Vec<Net>,
    not_networks: Vec<Net>,
    request_principals: Vec<Str>,
    not_request_principals: Vec<Str>,
    authenticated: bool,
}

impl Source {
    fn compile(s: &pb::Source) -> Self {
        Self {
            principals: strs(&s.principals),
            not_principals: strs(&s.not_principals),
            identities: strs(&s.identities),
            not_identities: strs(&s.not_identities),
            namespaces: strs(&s.namespaces),
            not_namespaces: strs(&s.not_namespaces),
            networks: nets(&s.networks),
            not_networks: nets(&s.not_networks),
            request_principals: strs(&s.request_principals),
            not_request_principals: strs(&s.not_request_principals),
            authenticated: s.authenticated,
        }
    }

    fn matches<B>(&self, client: &Client<'_>, http: Option<Http<'_, B>>) -> Tri {
        let principal = client.principal();
        let request_principal = http.map(|h| h.auth.map(jwt::Verified::principal));
        all([
            Some(!self.authenticated || client.identity.is_some()),
            field(
                &self.principals,
                &self.not_principals,
                Some(principal.as_deref()),
                |m, v| m.matches(v),
            ),
            field(
                &self.identities,
                &self.not_identities,
                Some(client.identity),
                |m, v| m.matches(v),
            ),
            field(
                &self.namespaces,
                &self.not_namespaces,
                Some(client.namespace()),
                |m, v| m.matches(v),
            ),
            Some(net_field(&self.networks, &self.not_networks, client.addr)),
            field(
                &self.request_principals,
                &self.not_request_principals,
                request_principal.as_ref().map(|p| p.as_deref()),
                |m, v| m.matches(v),
            ),
        ])
    }
}

#[derive(Debug)]
struct Operation {
    hosts: Vec<Str>,
    not_hosts: Vec<Str>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<Str>,
    not_methods: Vec<Str>,
    paths: Vec<Str>,
    not_paths: Vec<Str>,
    routes: Vec<RequestMatcher>,
}

fn ports(ps: &[u32]) -> Vec<u16> {
    // A port that is no port matches nothing (the controller refuses those).
    ps.iter().map(|p| u16::try_from(*p).unwrap_or(0)).collect()
}

/// The request's host, without a port.
fn host<B>(req: &http::Request<B>) -> Option<&str> {
    let authority = crate::http::headers::request_authority(req)?;
    // `[::1]:80`, `a.b:80`, `a.b`.
    Some(match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    })
}

impl Operation {
    fn compile(o: &pb::Operation) -> Self {
        Self {
            hosts: strs(&o.hosts),
            not_hosts: strs(&o.not_hosts),
            ports: ports(&o.ports),
            not_ports: ports(&o.not_ports),
            methods: strs(&o.methods),
            not_methods: strs(&o.not_methods),
            paths: strs(&o.paths),
            not_paths: strs(&o.not_paths),
            routes: o.routes.iter().map(RequestMatcher::compile).collect(),
        }
    }

    fn matches<B>(&self, client: &Client<'_>, http: Option<Http<'_, B>>) -> Tri {
        let port = client.dst.port();
        let req = http.map(|h| h.req);
        all([
            Some(
                (self.ports.is_empty() || self.ports.contains(&port))
                    && !self.not_ports.contains(&port),
            ),
            field(&self.hosts, &self.not_hosts, req.map(host), |m, v| {
                m.matches_ignoring_case(v)
            }),
            field(
                &self.methods,
                &self.not_methods,
                req.map(|r| Some(r.method().as_str())),
                |m, v| m.matches(v),
            ),
            field(
                &self.paths,
                &self.not_paths,
                req.map(|r| Some(r.uri().path())),
                |m, v| m.matches(v),
            ),
            if self.routes.is_empty() {
                Some(true)
            } else {
                req.map(|r| self.routes.iter().any(|m| m.matches(r)))
            },
        ])
    }
}

/// The attribute a condition reads.
#[derive(Debug)]
enum Key {
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    SourceIdentity,
    Header(http::HeaderName),
    AuthPrincipal,
    AuthAudiences,
    AuthPresenter,
    AuthClaim(Vec<String>),
    DestinationIp,
    DestinationPort,
    Sni,
    Unknown,
}

impl Key {
    fn parse(key: &str) -> Self {
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            return http::HeaderName::from_bytes(name.as_bytes())
                .map_or(Self::Unknown, Self::Header);
        }
        if let Some(path) = key
            .strip_prefix("request.auth.claims[")
            .and_then(|k| k.strip_suffix(']'))
        {
            return Self::AuthClaim(path.split("][").map(str::to_string).collect());
        }
        match key {
            "source.ip" | "remote.ip" => Self::SourceIp,
            "source.namespace" => Self::SourceNamespace,
            "source.principal" => Self::SourcePrincipal,
            "source.identity" => Self::SourceIdentity,
            "request.auth.principal" => Self::AuthPrincipal,
            "request.auth.audiences" => Self::AuthAudiences,
            "request.auth.presenter" => Self::AuthPresenter,
            "destination.ip" => Self::DestinationIp,
            "destination.port" => Self::DestinationPort,
            "connection.sni" => Self::Sni,
            _ => Self::Unknown,
        }
    }
}

#[derive(Debug)]
struct Condition {
    key: Key,
    values: Vec<Str>,
    not_values: Vec<Str>,
    /// The values as networks, for the address keys.
    networks: Vec<Net>,
    not_networks: Vec<Net>,
}

impl Condition {
    fn compile(c: &pb::Condition) -> Self {
        let key = Key::parse(&c.key);
        let as_nets = |ms: &[pb::StringMatch]| -> Vec<Net> {
            ms.iter()
                .map(|m| match &m.kind {
                    Some(pb::string_match::Kind::Exact(e)) => Net::parse(e),
                    _ => Net::never(),
                })
                .collect()
        };
        Self {
            networks: as_nets(&c.values),
            not_networks: as_nets(&c.not_values),
            values: strs(&c.values),
            not_values: strs(&c.not_values),
            key,
        }
    }

    /// One string attribute against the values.
    fn one(&self, v: Option<&str>) -> Tri {
        field(&self.values, &self.not_values, Some(v), |m, v| m.matches(v))
    }

    /// A list attribute (a list claim, the audiences): matches when any of its
    /// entries does; `not_values` when none does.
    fn many(&self, vs: Option<Vec<String>>) -> Tri {
        let vs = vs.unwrap_or_default();
        let yes =
            self.values.is_empty() || vs.iter().any(|v| self.values.iter().any(|m| m.matches(v)));
        let no = !vs
            .iter()
            .any(|v| self.not_values.iter().any(|m| m.matches(v)));
        Some(yes && no)
    }

    fn ip(&self, ip: IpAddr) -> Tri {
        Some(net_field(&self.networks, &self.not_networks, ip))
    }

    fn matches<B>(&self, client: &Client<'_>, http: Option<Http<'_, B>>) -> Tri {
        match &self.key {
            Key::SourceIp => self.ip(client.addr),
            Key::DestinationIp => self.ip(client.dst.ip()),
            Key::DestinationPort => self.one(Some(&client.dst.port().to_string())),
            Key::SourceNamespace => self.one(client.namespace()),
            Key::SourcePrincipal => self.one(client.principal().as_deref()),
            Key::SourceIdentity => self.one(client.identity),
            // The mesh's own SNI is this proxy's identity; nothing to tell apart.
            Key::Sni => self.one(None),
            Key::Header(name) => {
                let h = http?;
                let v = h.req.headers().get(name).and_then(|v| v.to_str().ok());
                self.one(v)
            }
            Key::AuthPrincipal => {
                let h = http?;
                self.one(h.auth.map(jwt::Verified::principal).as_deref())
            }
            Key::AuthPresenter => {
                let h = http?;
                self.one(
                    h.auth
                        .and_then(|a| a.claim_strings(&["azp".into()]))
                        .and_then(|v| v.into_iter().next())
                        .as_deref(),
                )
            }
            Key::AuthAudiences => {
                let h = http?;
                self.many(h.auth.and_then(|a| a.claim_strings(&["aud".into()])))
            }
            Key::AuthClaim(path) => {
                let h = http?;
                self.many(h.auth.and_then(|a| a.claim_strings(path)))
            }
            Key::Unknown => Some(false),
        }
    }
}

#[derive(Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

impl Rule {
    fn matches<B>(&self, client: &Client<'_>, http: Option<Http<'_, B>>) -> Tri {
        all([
            any(self.from.iter().map(|s| s.matches(client, http))),
            any(self.to.iter().map(|o| o.matches(client, http))),
            all(self.when.iter().map(|c| c.matches(client, http))),
        ])
    }
}

#[derive(Debug)]
struct Authorization {
    label: Label,
    action: pb::AuthorizationAction,
    rules: Vec<Rule>,
}

impl Authorization {
    /// Whether it covers the request: an ALLOW only when sure, a DENY unless sure not.
    fn covers<B>(&self, client: &Client<'_>, http: Option<Http<'_, B>>) -> bool {
        let hit = self.rules.iter().map(|r| r.matches(client, http));
        // No rules: covers nothing.
        let mut outcome = Some(false);
        for t in hit {
            match t {
                Some(true) => {
                    outcome = Some(true);
                    break;
                }
                None => outcome = None,
                Some(false) => {}
            }
        }
        match self.action {
            pb::AuthorizationAction::Deny => outcome != Some(false),
            _ => outcome == Some(true),
        }
    }
}

/// The compiled policy of one application port.
#[derive(Debug)]
pub struct PortPolicy {
    /// The port.
    pub port: u16,
    /// Its mTLS mode (unset: the proxy's own setting).
    pub mtls: pb::MtlsMode,
    /// Whether its connections are opaque TCP (no protocol detection).
    pub opaque: bool,
    authorizations: Vec<Authorization>,
    default: pb::DefaultPolicy,
    cluster_networks: Vec<Net>,
    probe_paths: Vec<String>,
    probe_networks: Vec<Net>,
    routes: Vec<RequestMatcher>,
    /// The JWT issuers it verifies.
    pub jwt: jwt::Verifier,
    /// Its rate limits.
    pub limits: limit::Limits,
    /// The objects it was compiled from, for logs.
    pub sources: Vec<Label>,
}

impl Default for PortPolicy {
    /// What applies with no controller: everyone is admitted.
    fn default() -> Self {
        Self::compile(&pb::InboundPolicy::default())
    }
}

impl PortPolicy {
    /// Compiles a policy; what cannot be compiled matches nothing (the controller
    /// validated it, so that only guards against a newer controller's additions).
    pub fn compile(p: &pb::InboundPolicy) -> Self {
        let cluster_networks = if p.cluster_networks.is_empty() {
            DEFAULT_CLUSTER_NETWORKS
                .iter()
                .map(|c| Net::parse(c))
                .collect()
        } else {
            nets(&p.cluster_networks)
        };
        Self {
            port: u16::try_from(p.port).unwrap_or(0),
            mtls: p.mtls(),
            opaque: p.protocol() == pb::Protocol::Opaque,
            authorizations: p
                .authorizations
                .iter()
                .map(|a| Authorization {
                    label: Label::of(a.source.as_ref()),
                    action: a.action(),
                    rules: a
                        .rules
                        .iter()
                        .map(|r| Rule {
                            from: r.from.iter().map(Source::compile).collect(),
                            to: r.to.iter().map(Operation::compile).collect(),
                            when: r.when.iter().map(Condition::compile).collect(),
                        })
                        .collect(),
                })
                .collect(),
            default: p.default_policy(),
            cluster_networks,
            probe_paths: p.probe_paths.clone(),
            probe_networks: nets(&p.probe_networks),
            routes: p.routes.iter().map(RequestMatcher::compile).collect(),
            jwt: jwt::Verifier::compile(&p.jwt_providers),
            limits: limit::Limits::compile(&p.rate_limits),
            sources: p.sources.iter().map(|s| Label::of(Some(s))).collect(),
        }
    }

    /// Whether the port's routes (if it has any) take the request; else it is 404.
    pub fn routed<B>(&self, req: &http::Request<B>) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|m| m.matches(req))
    }

    /// Whether the request is one of the kubelet's probes, admitted whatever the
    /// authorizations say.
    pub fn is_probe<B>(&self, client: &Client<'_>, req: &http::Request<B>) -> bool {
        req.method() == http::Method::GET
            && self.probe_paths.iter().any(|p| p == req.uri().path())
            && (self.probe_networks.is_empty()
                || self.probe_networks.iter().any(|n| n.contains(client.addr)))
    }

    /// Decides a request (`http`), or a connection on an opaque port (`None`), and
    /// lists the AUDIT authorizations it matched.
    pub fn decide<B>(
        &self,
        client: &Client<'_>,
        http: Option<Http<'_, B>>,
    ) -> (Decision, Vec<Label>) {
        use pb::AuthorizationAction as A;
        let audits = self
            .authorizations
            .iter()
            .filter(|a| a.action == A::Audit && a.covers(client, http))
            .map(|a| a.label.clone())
            .collect();
        let of = |action| {
            self.authorizations
                .iter()
                .filter(move |a| a.action == action)
        };
        if let Some(deny) = of(A::Deny).find(|a| a.covers(client, http)) {
            return (Decision::Deny(deny.label.clone()), audits);
        }
        if let Some(allow) = of(A::Allow).find(|a| a.covers(client, http)) {
            return (Decision::Allow(allow.label.clone()), audits);
        }
        (self.default_decision(client), audits)
    }

    fn default_decision(&self, client: &Client<'_>) -> Decision {
        use pb::DefaultPolicy as D;
        let in_cluster = || {
            self.cluster_networks
                .iter()
                .any(|n| n.contains(client.addr))
        };
        let meshed = client.identity.is_some();
        let (name, allowed) = match self.default {
            D::AllUnauthenticated => ("all-unauthenticated", true),
            D::AllAuthenticated => ("all-authenticated", meshed),
            D::ClusterUnauthenticated => ("cluster-unauthenticated", in_cluster()),
            D::ClusterAuthenticated => ("cluster-authenticated", meshed && in_cluster()),
            D::Deny => ("deny", false),
            D::Audit => ("audit", true),
        };
        let label = Label::new("default", name);
        if allowed {
            Decision::Allow(label)
        } else {
            Decision::Deny(label)
        }
    }

    /// Whether the default policy is `audit` (then an admitted request no ALLOW
    /// covered is one that `deny` would have refused).
    pub fn audits_default(&self) -> bool {
        self.default == pb::DefaultPolicy::Audit
    }
}

#[cfg(test)]
mod tests;
