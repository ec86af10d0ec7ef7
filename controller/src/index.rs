//! The index: what the cluster (or a local folder) says about services, pods,
//! namespaces, profiles and splits, and the answers proxies ask for. Pure logic: the
//! sources translate objects into it, the gRPC server reads from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use mesh_api::policy as pb;

use crate::authz::Security;
use crate::compile::InboundTls;
use crate::gateway::{Attached, GatewayRoute, ParentReports, Report, Resolved};
use mesh_api::{FieldError, ServiceProfileSpec, TrafficSplitSpec};
use tokio::sync::Notify;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Istio's root namespace: its `Telemetry` without a selector is the mesh's.
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The port a meshed pod's proxy accepts peers on.
pub const PROXY_INBOUND_PORT: u16 = 4143;

/// The kinds the index keeps.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Service.
    Service,
    /// core/v1 Pod.
    Pod,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// linkerd.io/v1alpha2 ServiceProfile.
    ServiceProfile,
    /// split.smi-spec.io TrafficSplit.
    TrafficSplit,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io/v1 GRPCRoute.
    GrpcRoute,
    /// gateway.networking.k8s.io/v1beta1 ReferenceGrant.
    ReferenceGrant,
    /// security.istio.io PeerAuthentication.
    PeerAuthentication,
    /// security.istio.io AuthorizationPolicy.
    IstioAuthorizationPolicy,
    /// security.istio.io RequestAuthentication.
    RequestAuthentication,
    /// networking.istio.io EnvoyFilter (the local rate limit).
    EnvoyFilter,
    /// policy.linkerd.io Server.
    Server,
    /// policy.linkerd.io AuthorizationPolicy.
    LinkerdAuthorizationPolicy,
    /// policy.linkerd.io MeshTLSAuthentication.
    MeshTlsAuthentication,
    /// policy.linkerd.io NetworkAuthentication.
    NetworkAuthentication,
    /// policy.linkerd.io HTTPLocalRateLimitPolicy.
    HttpLocalRateLimitPolicy,
    /// networking.istio.io VirtualService.
    VirtualService,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// telemetry.istio.io Telemetry.
    Telemetry,
}

/// A kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace ("" for namespaces themselves).
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Kind {
    /// The kind as Kubernetes spells it (`HTTPRoute`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Service => "Service",
            Self::Pod => "Pod",
            Self::EndpointSlice => "EndpointSlice",
            Self::ServiceProfile => "ServiceProfile",
            Self::TrafficSplit => "TrafficSplit",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
            Self::ReferenceGrant => "ReferenceGrant",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::IstioAuthorizationPolicy => "AuthorizationPolicy",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::EnvoyFilter => "EnvoyFilter",
            Self::Server => "Server",
            Self::LinkerdAuthorizationPolicy => "AuthorizationPolicy",
            Self::MeshTlsAuthentication => "MeshTLSAuthentication",
            Self::NetworkAuthentication => "NetworkAuthentication",
            Self::HttpLocalRateLimitPolicy => "HTTPLocalRateLimitPolicy",
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::Telemetry => "Telemetry",
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// A service as the index needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceInfo {
    /// Its cluster IP, if any.
    pub cluster_ip: Option<IpAddr>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Pods with all these labels back it; empty means it has no selector.
    pub selector: BTreeMap<String, String>,
    /// An ExternalName service: a DNS alias, not a set of endpoints.
    pub external_name: bool,
    /// Its retry, timeout and failure-accrual annotations.
    pub client: crate::annotations::ClientPolicy,
    /// Client-policy annotations that did not parse: the index keeps their last good
    /// values and reports them (never stored).
    pub client_errors: Vec<FieldError>,
    /// Service ports whose traffic is opaque TCP (ranges, inclusive).
    pub opaque_ports: Vec<(u16, u16)>,
}

/// A service port and where it leads on the pods.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// The service's port.
    pub port: u16,
    /// Its name.
    pub name: Option<String>,
    /// The pods' port: a number, or a container port's name.
    pub target: TargetPort,
}

/// A service port's target on the pods.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// The name of a container port.
    Name(String),
}

/// A pod as the index needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// Its IP, once it has one.
    pub ip: Option<IpAddr>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its service account.
    pub service_account: String,
    /// Whether it is ready for traffic.
    pub ready: bool,
    /// Its own inject annotation: Some(true) enabled, Some(false) disabled.
    pub inject: Option<bool>,
    /// Whether it already runs the mesh proxy.
    pub has_proxy: bool,
    /// Named container ports.
    pub named_ports: HashMap<String, u16>,
    /// The kubelet's HTTP probes: the port and path of each.
    pub probes: Vec<(u16, String)>,
    /// The workload that owns it (a Deployment's name), for metric labels.
    pub workload: Option<String>,
    /// Its inbound-TLS annotations.
    pub inbound_tls: InboundTls,
}

/// An EndpointSlice as the index needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceInfo {
    /// The service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// Its ports: name (matching the service port's) and number.
    pub ports: Vec<(Option<String>, u16)>,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SliceEndpoint {
    /// Its addresses (all of one pod).
    pub addresses: Vec<IpAddr>,
    /// Whether it is ready.
    pub ready: bool,
    /// The pod behind it, when the slice says.
    pub pod: Option<String>,
}

/// A namespace as the index needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    /// Its inject annotation.
    pub inject: Option<bool>,
    /// Its inbound-TLS annotations, for pods that set none.
    pub inbound_tls: InboundTls,
}

/// A translated object.
#[derive(Clone, Debug)]
pub enum Object {
    /// A namespace.
    Namespace(NamespaceInfo),
    /// A service.
    Service(ServiceInfo),
    /// A pod.
    Pod(PodInfo),
    /// An EndpointSlice.
    EndpointSlice(SliceInfo),
    /// A ServiceProfile's spec.
    ServiceProfile(ServiceProfileSpec),
    /// A TrafficSplit's spec.
    TrafficSplit(TrafficSplitSpec),
    /// An HTTPRoute or a GRPCRoute (the kind as its [`ObjectRef`] says).
    Route(GatewayRoute),
    /// A ReferenceGrant's spec.
    ReferenceGrant(mesh_api::gateway::ReferenceGrantSpec),
    /// One of Istio's security objects or Linkerd's policy objects (the kind as its
    /// [`ObjectRef`] says), not yet validated, with when it was made.
    Security(SecuritySpec, Option<String>),
    /// One of Istio's traffic objects (VirtualService, DestinationRule, Telemetry),
    /// with when it was made: validated and kept, not yet compiled into policy.
    Traffic(TrafficSpec, Option<String>),
}

/// A namespace's Istio traffic objects by kind and name, with when each was made.
type TrafficObjects = BTreeMap<(Kind, String), (Option<String>, TrafficSpec)>;

/// An Istio traffic object's spec.
#[derive(Clone, Debug, PartialEq)]
pub enum TrafficSpec {
    /// VirtualService.
    VirtualService(Box<mesh_api::istio_networking::VirtualServiceSpec>),
    /// DestinationRule.
    DestinationRule(Box<mesh_api::istio_networking::DestinationRuleSpec>),
    /// Telemetry.
    Telemetry(Box<mesh_api::istio_networking::TelemetrySpec>),
}

impl TrafficSpec {
    /// Every problem, each naming its field.
    pub fn validate(&self) -> Vec<FieldError> {
        match self {
            Self::VirtualService(s) => s.validate(),
            Self::DestinationRule(s) => s.validate(),
            Self::Telemetry(s) => s.validate(),
        }
    }

    /// The hosts (FQDNs) it routes or configures, for an object in `namespace`.
    pub fn hosts(&self, namespace: &str) -> Vec<String> {
        match self {
            Self::VirtualService(s) => virtual_service_hosts(s, namespace),
            Self::DestinationRule(s) => {
                vec![crate::istio_traffic::fqdn(
                    &s.host,
                    namespace,
                    CLUSTER_DOMAIN,
                )]
            }
            Self::Telemetry(_) => vec![],
        }
    }

    /// What the mesh accepts of it but does not act on yet, naming the field.
    pub fn not_applied(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        match self {
            Self::VirtualService(_) => {}
            Self::DestinationRule(s) => {
                let policies =
                    std::iter::once(("spec.trafficPolicy".to_string(), &s.traffic_policy)).chain(
                        s.subsets.iter().enumerate().map(|(i, sub)| {
                            (
                                format!("spec.subsets[{i}].trafficPolicy"),
                                &sub.traffic_policy,
                            )
                        }),
                    );
                for (at, p) in policies {
                    if let Some(p) = p {
                        gaps.extend(
                            crate::istio_traffic::not_applied(p, &at)
                                .into_iter()
                                .map(|f| format!("{f}: accepted, not applied by this mesh yet")),
                        );
                    }
                }
            }
            Self::Telemetry(t) => {
                if !t.tracing.is_empty() {
                    gaps.push(
                        "spec.tracing: applied when pods are injected (a pod started before takes it at its restart): the `zipkin` provider exports Zipkin v2 JSON to the install's Zipkin collector, any other provider OTLP to the install's trace collector"
                            .to_string(),
                    );
                }
                if !t.access_logging.is_empty() {
                    gaps.push(
                        "spec.accessLogging: applied when pods are injected (a pod started before takes it at its restart), as the proxy's access log"
                            .to_string(),
                    );
                }
            }
        }
        gaps
    }
}

/// What an Istio `Telemetry`'s `tracing` says of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryTracing {
    /// The provider it selects (`zipkin`, `otel`, …).
    pub provider: Option<String>,
    /// `randomSamplingPercentage`, as a share.
    pub sampling: Option<f64>,
    /// Span reporting off (`disableSpanReporting`, or the entry disabled).
    pub disabled: bool,
}

/// The hosts (FQDNs) a VirtualService in `namespace` routes, sorted, each once.
fn virtual_service_hosts(
    spec: &mesh_api::istio_networking::VirtualServiceSpec,
    namespace: &str,
) -> Vec<String> {
    let mut hosts: Vec<String> = spec
        .hosts
        .iter()
        .map(|h| crate::istio_traffic::fqdn(h, namespace, CLUSTER_DOMAIN))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// A namespace's Istio security and Linkerd policy objects by kind and name, with when
/// each was made.
type SecurityObjects = BTreeMap<(Kind, String), (Option<String>, Security)>;

/// An Istio security object's spec as read, before validation.
#[derive(Clone, Debug)]
pub enum SecuritySpec {
    /// PeerAuthentication.
    Peer(mesh_api::istio::PeerAuthenticationSpec),
    /// AuthorizationPolicy.
    Authorization(mesh_api::istio::AuthorizationPolicySpec),
    /// RequestAuthentication.
    RequestAuthentication(mesh_api::istio::RequestAuthenticationSpec),
    /// EnvoyFilter.
    EnvoyFilter(mesh_api::istio::EnvoyFilterSpec),
    /// Linkerd's Server.
    Server(mesh_api::linkerd::ServerSpec),
    /// Linkerd's AuthorizationPolicy.
    LinkerdAuthorization(mesh_api::linkerd::AuthorizationPolicySpec),
    /// MeshTLSAuthentication.
    MeshTls(mesh_api::linkerd::MeshTlsAuthenticationSpec),
    /// NetworkAuthentication.
    Network(mesh_api::linkerd::NetworkAuthenticationSpec),
    /// HTTPLocalRateLimitPolicy.
    LinkerdRateLimit(mesh_api::linkerd::HttpLocalRateLimitPolicySpec),
}

impl SecuritySpec {
    /// Validates it into what the compiler takes.
    pub fn validate(self) -> Result<Security, Vec<FieldError>> {
        let checked = |errors: Vec<FieldError>, ok: Security| {
            if errors.is_empty() {
                Ok(ok)
            } else {
                Err(errors)
            }
        };
        match self {
            Self::Peer(p) => checked(p.validate(), Security::Peer(p)),
            Self::Authorization(a) => checked(a.validate(), Security::Authorization(a)),
            Self::RequestAuthentication(r) => {
                checked(r.validate(), Security::RequestAuthentication(r))
            }
            Self::EnvoyFilter(f) => {
                let limit = f.local_rate_limit()?;
                Ok(Security::RateLimit(f, limit))
            }
            Self::Server(x) => checked(x.validate(), Security::Server(x)),
            Self::LinkerdAuthorization(x) => {
                checked(x.validate(), Security::LinkerdAuthorization(x))
            }
            Self::MeshTls(x) => checked(x.validate(), Security::MeshTls(x)),
            Self::Network(x) => checked(x.validate(), Security::Network(x)),
            Self::LinkerdRateLimit(x) => checked(x.validate(), Security::LinkerdRateLimit(x)),
        }
    }
}

/// Why an object was refused; the last good version of it stays in force.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// Fields are invalid.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// Some annotations are invalid: the object is applied without them, and what they
    /// set keeps its last good value (a Service with a typo in a retry annotation
    /// still has its endpoints).
    #[error(
        "{}; applied without these annotations, which keep their last good values",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Partly(Vec<FieldError>),
}

/// One endpoint of a service port.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    /// Where the application listens.
    pub addr: SocketAddr,
    /// Metric labels: namespace, pod, deployment, serviceaccount.
    pub labels: BTreeMap<String, String>,
    /// The identity its proxy presents, when meshed.
    pub identity: Option<String>,
    /// Whether its port is opaque TCP (the pod's, its namespace's or the service's
    /// opaque-ports annotation).
    pub opaque: bool,
}

/// What an authority resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// A known service port and its current endpoints (perhaps none).
    Service {
        /// The service's namespace.
        namespace: String,
        /// The service's name.
        name: String,
        /// The service port asked for.
        port: u16,
        /// Its endpoints, keyed by address.
        endpoints: BTreeMap<SocketAddr, EndpointView>,
    },
    /// A pod's own address and port (an opaque connection straight to a pod, say).
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The endpoint.
        endpoint: EndpointView,
    },
    /// Nothing the index knows: the proxy falls back to DNS.
    Unknown,
}

/// What an answer depends on. A watch listens to the topics its last answer read; a
/// change to the index wakes the watches of the topics it touches, and no others.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// A service (namespace, name): the object itself (created, changed, deleted).
    Service(String, String),
    /// A service's endpoints: its pods or slices, and whether they are meshed.
    Endpoints(String, String),
    /// A service's client policy: its profile and the splits whose apex it is.
    Policy(String, String),
    /// Which service a cluster IP belongs to.
    ClusterIp(IpAddr),
    /// Which pod has an IP.
    PodIp(IpAddr),
    /// A pod (namespace, name): its own annotations.
    Pod(String, String),
    /// A namespace: its annotations.
    Namespace(String),
    /// A Gateway API route (kind, namespace, name): the object itself.
    Route(Kind, String, String),
    /// Which Gateway API routes exist (one is added or removed).
    Routes,
    /// The ReferenceGrants of a namespace.
    Grants(String),
    /// The Istio security and Linkerd policy objects of a namespace, and the routes
    /// attached to its Servers.
    Security(String),
    /// The VirtualServices and DestinationRules naming a host (an FQDN).
    Host(String),
}

type Key = (String, String);
/// A Gateway API route: its kind, namespace and name.
type RouteKey = (Kind, String, String);
/// A label in a namespace: (namespace, key, value).
type LabelKey = (String, String, String);

/// The watches listening to each topic: where to wake each, and under which tag.
#[derive(Debug, Default)]
struct Registry {
    next: u64,
    topics: HashMap<Topic, HashMap<u64, (Arc<Wakes>, u64)>>,
    /// Wake-ups sent so far, for tests and benchmarks.
    woken: u64,
}

/// Where the watches of one follower are woken. A stream following one target has one
/// of its own; a stream following many (`Discovery.Watch`) shares one among its
/// watches, each under its own tag, and learns which of them changed without looking
/// at the others.
#[derive(Debug, Default)]
pub struct Wakes {
    ready: Mutex<Ready>,
    notify: Notify,
}

/// Tags woken and not yet taken, and where the last take stopped.
#[derive(Debug, Default)]
struct Ready {
    tags: BTreeSet<u64>,
    /// Takes resume after this tag (then wrap around), so that tags woken again and
    /// again cannot keep others waiting.
    after: u64,
}

impl Wakes {
    /// An empty set of wake-ups.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Takes the tags of up to `max` watches woken since they were last taken, in
    /// turn: from just after where the last take stopped, wrapping around; the rest
    /// wait for the next call.
    pub fn take(&self, max: usize) -> Vec<u64> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.tags.len() <= max {
            let all: Vec<u64> = std::mem::take(&mut ready.tags).into_iter().collect();
            if let Some(last) = all.last() {
                ready.after = *last;
            }
            return all;
        }
        let after = ready.after;
        let taken: Vec<u64> = ready
            .tags
            .range(after.saturating_add(1)..)
            .chain(ready.tags.range(..=after))
            .take(max)
            .copied()
            .collect();
        for t in &taken {
            ready.tags.remove(t);
        }
        if let Some(last) = taken.last() {
            ready.after = *last;
        }
        taken
    }

    /// Resolves once some watch has been woken since its tag was last taken (at once if
    /// one has). Cancel-safe: a wake-up is kept until taken.
    pub async fn woken(&self) {
        loop {
            if !self
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .tags
                .is_empty()
            {
                return;
            }
            self.notify.notified().await;
        }
    }

    fn wake(&self, tag: u64) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tags
            .insert(tag);
        self.notify.notify_one();
    }
}

/// One follower of the index (a gRPC stream, or one subscription of one): woken when a
/// topic its last answer read changes. Dropping it stops the listening.
#[derive(Debug)]
pub struct Watch {
    id: u64,
    tag: u64,
    wakes: Arc<Wakes>,
    topics: Vec<Topic>,
    registry: Arc<Mutex<Registry>>,
}

impl Watch {
    /// Resolves once something this watch's last answer read has changed since (at
    /// once if it already has). For a watch with wake-ups of its own
    /// ([`Index::watch`]).
    pub async fn changed(&self) {
        loop {
            self.wakes.woken().await;
            if !self.wakes.take(usize::MAX).is_empty() {
                return;
            }
        }
    }

    /// Whether a change is waiting (and takes it). For a watch with wake-ups of its own.
    pub fn take_change(&self) -> bool {
        !self.wakes.take(usize::MAX).is_empty()
    }

    /// Listens to `topics` from now on instead of the current ones.
    fn listen(&mut self, mut topics: Vec<Topic>) {
        topics.sort();
        topics.dedup();
        if topics == self.topics {
            return;
        }
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for old in self
            .topics
            .iter()
            .filter(|t| topics.binary_search(t).is_err())
        {
            r.unlisten(old, self.id);
        }
        for new in topics
            .iter()
            .filter(|t| self.topics.binary_search(t).is_err())
        {
            r.topics
                .entry(new.clone())
                .or_default()
                .insert(self.id, (self.wakes.clone(), self.tag));
        }
        self.topics = topics;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.topics {
            r.unlisten(t, self.id);
        }
    }
}

impl Registry {
    fn unlisten(&mut self, topic: &Topic, id: u64) {
        if let Some(watches) = self.topics.get_mut(topic) {
            watches.remove(&id);
            if watches.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

/// The topics an answer read.
#[derive(Debug, Default)]
struct Deps(Vec<Topic>);

impl Deps {
    fn service(&mut self, namespace: &str, name: &str) {
        self.0
            .push(Topic::Service(namespace.to_string(), name.to_string()));
    }
}

/// Replaces `key`'s value with `value`: `None` when they are equal (an identical object
/// is no news), else `Some` of the value it had.
fn swap<K: std::hash::Hash + Eq, V: PartialEq>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
) -> Option<Option<V>> {
    if map.get(&key) == Some(&value) {
        return None;
    }
    Some(map.insert(key, value))
}

/// Puts `new` at `key`, or removes what is there with `None`: `None` when nothing
/// changed, else `Some` of what was there.
fn put<K: std::hash::Hash + Eq, V: PartialEq>(
    map: &mut HashMap<K, V>,
    key: K,
    new: Option<V>,
) -> Option<Option<V>> {
    match new {
        Some(v) => swap(map, key, v),
        None => map.remove(&key).map(Some),
    }
}

fn link<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, key: K, value: V) {
    map.entry(key).or_default().insert(value);
}

fn unlink<K: std::hash::Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

fn label_key(namespace: &str, k: &str, v: &str) -> LabelKey {
    (namespace.to_string(), k.to_string(), v.to_string())
}

/// Whether `selector` (non-empty) picks a pod with `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The index's contents, with the secondary indexes that keep every answer and every
/// change's cost proportional to what it touches.
#[derive(Default, Debug)]
struct State {
    /// Whether the inject annotation alone meshes a pod (local folders), or only a
    /// running proxy does (clusters).
    annotation_meshes: bool,
    namespaces: HashMap<String, NamespaceInfo>,
    services: HashMap<Key, ServiceInfo>,
    /// Service names by namespace.
    services_in: HashMap<String, BTreeSet<String>>,
    /// Services by cluster IP (a set: a bad cluster could give two services one IP).
    by_cluster_ip: HashMap<IpAddr, BTreeSet<Key>>,
    /// Services by each label of their selector.
    selecting: HashMap<LabelKey, BTreeSet<String>>,
    pods: HashMap<Key, PodInfo>,
    /// Pods by IP, sorted (a pod that ended and one that started may share one; almost
    /// always there is one, so a Vec: a BTreeSet's first leaf alone is half a KB).
    pods_by_ip: HashMap<IpAddr, Vec<Key>>,
    /// Pods by each of their labels.
    pods_by_label: HashMap<LabelKey, BTreeSet<String>>,
    slices: HashMap<Key, SliceInfo>,
    /// Slice names by the service (namespace, name) they belong to.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Services whose slices name a pod (namespace, pod) → (service, slice).
    slices_naming: HashMap<Key, BTreeSet<(String, String)>>,
    profiles: HashMap<Key, ServiceProfileSpec>,
    splits: HashMap<Key, TrafficSplitSpec>,
    /// Split names by apex service (namespace, name).
    splits_of: HashMap<Key, BTreeSet<String>>,
    /// Splits refused only because a backend service does not exist yet, by namespace.
    pending_splits: HashMap<String, BTreeMap<String, TrafficSplitSpec>>,
    /// HTTPRoutes and GRPCRoutes.
    routes: HashMap<RouteKey, GatewayRoute>,
    /// Routes by each Service (namespace, name) they attach to.
    routes_of: HashMap<Key, BTreeSet<RouteKey>>,
    /// Routes by each Linkerd Server (namespace, name) they attach to.
    routes_of_server: HashMap<Key, BTreeSet<RouteKey>>,
    /// The default inbound policy of pods and namespaces that set none.
    default_inbound: mesh_api::linkerd::DefaultPolicy,
    /// ReferenceGrants by namespace, then name.
    grants: HashMap<String, BTreeMap<String, mesh_api::gateway::ReferenceGrantSpec>>,
    /// Istio security objects by namespace, then kind and name, with when each was made.
    security: HashMap<String, SecurityObjects>,
    /// Fetched JWKS documents by URI.
    jwks: crate::authz::JwksCache,
    /// Istio's traffic objects by namespace, then kind and name, with when each was
    /// made (validated).
    traffic: HashMap<String, TrafficObjects>,
    /// VirtualServices (namespace, name) by each host (FQDN) they route.
    virtual_services_of: HashMap<String, BTreeSet<Key>>,
    /// DestinationRules (namespace, name) by the host (FQDN) they configure.
    destination_rules_of: HashMap<String, BTreeSet<Key>>,
    /// The namespaces whose RequestAuthentications name each JWKS URI.
    jwks_users: HashMap<String, BTreeSet<String>>,
    /// The JWKS URIs each namespace's objects name.
    jwks_of_namespace: HashMap<String, BTreeSet<String>>,
    /// Whether a URI was named or dropped since the fetcher last looked.
    jwks_set_changed: bool,
}

/// A pod as mesh-viz sees it: where its proxy is, and what it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its IP, once it has one.
    pub ip: Option<IpAddr>,
    /// Its workload (a Deployment's name), else the pod's own name.
    pub workload: String,
    /// Its service account.
    pub service_account: String,
    /// Whether it runs (or, locally, is meant to run) the mesh proxy.
    pub meshed: bool,
}

/// The index, shared by sources (writers) and the gRPC server (readers).
#[derive(Debug)]
pub struct Index {
    state: RwLock<State>,
    registry: Arc<Mutex<Registry>>,
    /// Woken when the JWKS URIs objects name change (for the fetcher).
    jwks_wanted: Arc<Notify>,
}

impl Default for Index {
    /// An index for a local folder, where the inject annotation is what meshes a pod.
    fn default() -> Self {
        Self::with_state(State {
            annotation_meshes: true,
            ..State::default()
        })
    }
}

impl Index {
    /// An index for a cluster, where only a pod that runs the proxy is meshed (a pod
    /// created before its namespace was annotated has none).
    pub fn for_cluster() -> Self {
        Self::with_state(State::default())
    }

    /// The default inbound policy of pods and namespaces that set none (the install's
    /// `default-inbound-policy`; `all-unauthenticated` unless set).
    pub fn with_default_inbound_policy(self, policy: mesh_api::linkerd::DefaultPolicy) -> Self {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .default_inbound = policy;
        self
    }

    fn with_state(state: State) -> Self {
        Self {
            state: RwLock::new(state),
            registry: Arc::default(),
            jwks_wanted: Arc::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A new follower with wake-ups of its own, listening to nothing until its first
    /// answer.
    pub fn watch(&self) -> Watch {
        self.watch_in(&Wakes::new(), 0)
    }

    /// A new follower woken through `wakes` under `tag` (which it shares with others),
    /// listening to nothing until its first answer.
    pub fn watch_in(&self, wakes: &Arc<Wakes>, tag: u64) -> Watch {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        r.next += 1;
        Watch {
            id: r.next,
            tag,
            wakes: wakes.clone(),
            topics: Vec::new(),
            registry: self.registry.clone(),
        }
    }

    /// How many wake-ups changes have sent to watches so far.
    pub fn wakes(&self) -> u64 {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .woken
    }

    /// How many topics some watch listens to.
    pub fn topics_listened(&self) -> usize {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .topics
            .len()
    }

    /// Computes an answer; with `watch`, it listens to what the answer read from now
    /// on. Listening starts while the state is still read-locked, so that a change
    /// made just after the answer is computed cannot be missed.
    fn answer<T>(&self, watch: Option<&mut Watch>, f: impl FnOnce(&State, &mut Deps) -> T) -> T {
        let s = self.read();
        let mut deps = Deps::default();
        let out = f(&s, &mut deps);
        if let Some(w) = watch {
            w.listen(deps.0);
        }
        drop(s);
        out
    }

    /// Wakes the watches of `topics`.
    fn wake(&self, topics: Vec<Topic>) {
        if topics.is_empty() {
            return;
        }
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = 0;
        for t in &topics {
            if let Some(watches) = r.topics.get(t) {
                for (wakes, tag) in watches.values() {
                    wakes.wake(*tag);
                    woken += 1;
                }
            }
        }
        r.woken += woken;
    }

    /// The access log Istio's `Telemetry` objects give a pod in `namespace` with
    /// `labels`: `Some(true)` on, `Some(false)` off, `None` when none says. The most
    /// specific wins: one selecting the pod, then its namespace's, then the root
    /// namespace's (`istio-system`: the mesh's); within a level, the oldest.
    pub fn telemetry_access_log(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<bool> {
        self.telemetry_decides(namespace, labels, |t| {
            t.access_logging.last().map(|e| e.disabled != Some(true))
        })
    }

    /// The tracing Istio's `Telemetry` objects give a pod in `namespace` with
    /// `labels` (the same precedence as [`Self::telemetry_access_log`]), `None` when
    /// none says.
    pub fn telemetry_tracing(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<TelemetryTracing> {
        self.telemetry_decides(namespace, labels, |t| {
            let e = t.tracing.last()?;
            let flag = |k: &str| e.rest.get(k).and_then(serde_json::Value::as_bool);
            Some(TelemetryTracing {
                provider: e.providers.first().map(|p| p.name.clone()),
                sampling: e
                    .rest
                    .get("randomSamplingPercentage")
                    .and_then(serde_json::Value::as_f64)
                    .map(|p| (p / 100.0).clamp(0.0, 1.0)),
                disabled: e.disabled == Some(true) || flag("disableSpanReporting") == Some(true),
            })
        })
    }

    /// What the most specific `Telemetry` for a pod says of one of its settings.
    fn telemetry_decides<T>(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        decides: impl Fn(&mesh_api::istio_networking::TelemetrySpec) -> Option<T>,
    ) -> Option<T> {
        let s = self.read();
        let s = &*s;
        // Each Telemetry of a namespace, the oldest first (folder objects have no age:
        // the name decides).
        let telemetries = |ns: &str| {
            let mut out: Vec<(
                Option<&str>,
                &str,
                &mesh_api::istio_networking::TelemetrySpec,
            )> = s
                .traffic
                .get(ns)
                .into_iter()
                .flatten()
                .filter_map(|((kind, name), (created, spec))| match spec {
                    TrafficSpec::Telemetry(t) if *kind == Kind::Telemetry => {
                        Some((created.as_deref(), name.as_str(), &**t))
                    }
                    _ => None,
                })
                .collect();
            out.sort_by_key(|t| (t.0.is_none(), t.0, t.1));
            out
        };
        let own = telemetries(namespace);
        let selecting = own
            .iter()
            .filter(|(_, _, t)| t.selector.as_ref().is_some_and(|sel| sel.selects(labels)))
            .find_map(|(_, _, t)| decides(t));
        let namespace_wide = || {
            own.iter()
                .filter(|(_, _, t)| t.selector.is_none())
                .find_map(|(_, _, t)| decides(t))
        };
        let mesh_wide = || {
            telemetries(ROOT_NAMESPACE)
                .iter()
                .filter(|(_, _, t)| t.selector.is_none())
                .find_map(|(_, _, t)| decides(t))
        };
        selecting.or_else(namespace_wide).or_else(mesh_wide)
    }

    /// The Istio traffic objects of `namespace` (kind, name), sorted.
    pub fn traffic_objects(&self, namespace: &str) -> Vec<(Kind, String)> {
        self.read()
            .traffic
            .get(namespace)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// What wakes the JWKS fetcher: a URI was named or dropped.
    pub fn jwks_wanted(&self) -> Arc<Notify> {
        self.jwks_wanted.clone()
    }

    /// The JWKS URIs RequestAuthentications name, sorted.
    pub fn jwks_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = self.read().jwks_users.keys().cloned().collect();
        uris.sort();
        uris
    }

    /// A fetched JWKS document: the policies of the namespaces naming `uri` change.
    pub fn set_jwks(&self, uri: &str, document: Result<String, String>) {
        let topics = {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            let Some(users) = s.jwks_users.get(uri) else {
                return;
            };
            let topics: Vec<Topic> = users.iter().map(|ns| Topic::Security(ns.clone())).collect();
            if s.jwks.get(uri) == Some(&document) {
                return;
            }
            s.jwks.insert(uri.to_string(), document);
            topics
        };
        self.wake(topics);
    }

    /// A fetch of `uri` failed: reported in the policies, unless a document fetched
    /// before is at hand (it stays).
    pub fn set_jwks_error(&self, uri: &str, error: String) {
        let kept = matches!(self.read().jwks.get(uri), Some(Ok(_)));
        if !kept {
            self.set_jwks(uri, Err(error));
        }
    }

    /// A namespace's inject annotation, or `None` if the namespace is not known yet.
    pub fn namespace_inject(&self, namespace: &str) -> Option<Option<bool>> {
        self.read().namespaces.get(namespace).map(|n| n.inject)
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<PodView> {
        let s = self.read();
        let mut pods: Vec<PodView> = s
            .pods
            .iter()
            .map(|((namespace, name), pod)| PodView {
                namespace: namespace.clone(),
                name: name.clone(),
                ip: pod.ip,
                workload: pod.workload.clone().unwrap_or_else(|| name.clone()),
                service_account: pod.service_account.clone(),
                meshed: s.meshed(namespace, pod),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// Applies (adds or replaces) an object, or refuses it and keeps the last good one.
    pub fn apply(&self, at: &ObjectRef, object: Object) -> Result<(), Rejected> {
        let key = (at.namespace.clone(), at.name.clone());
        let mut partly = None;
        let (topics, jwks_named) = {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            let topics = match object {
                Object::Namespace(n) => s.put_namespace(&at.name, Some(n)),
                Object::Service(mut svc) => {
                    let errors = std::mem::take(&mut svc.client_errors);
                    if !errors.is_empty() {
                        // The last good client policy stays; the rest applies.
                        let old = s.services.get(&key);
                        svc.client = old.map(|old| old.client.clone()).unwrap_or_default();
                        svc.opaque_ports =
                            old.map(|old| old.opaque_ports.clone()).unwrap_or_default();
                        partly = Some(errors);
                    }
                    s.put_service(key, Some(svc))
                }
                Object::Pod(pod) => s.put_pod(key, Some(pod)),
                Object::EndpointSlice(slice) => s.put_slice(key, Some(slice)),
                Object::ServiceProfile(spec) => {
                    let errors = spec.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    s.put_profile(key, Some(spec))
                }
                Object::TrafficSplit(spec) => {
                    let errors = spec.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    let missing = s.missing_backends(&at.namespace, &spec);
                    if !missing.is_empty() {
                        // Refused for now; admitted once the services exist (watchers
                        // deliver kinds in no particular order).
                        s.pending_splits
                            .entry(key.0)
                            .or_default()
                            .insert(key.1, spec);
                        return Err(Rejected::Invalid(missing));
                    }
                    s.unpend(&key);
                    s.put_split(key, Some(spec))
                }
                Object::Route(route) => {
                    let errors = route.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    s.put_route((at.kind, key.0, key.1), Some(route))
                }
                Object::ReferenceGrant(spec) => {
                    let errors = spec.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    s.put_grant(key, Some(spec))
                }
                Object::Security(spec, created) => {
                    let object = spec.validate().map_err(Rejected::Invalid)?;
                    s.put_security(at.kind, key, Some((created, object)))
                }
                Object::Traffic(spec, created) => {
                    let errors = spec.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    for gap in spec.not_applied() {
                        tracing::warn!("{at}: {gap}");
                    }
                    let hosts = spec.hosts(&at.namespace);
                    let topics = s.put_traffic(at.kind, key, Some((created, spec)));
                    if at.kind == Kind::DestinationRule {
                        s.report_shadowed_policies(&hosts);
                    }
                    topics
                }
            };
            // The fetcher learns of URIs named or dropped.
            (topics, std::mem::take(&mut s.jwks_set_changed))
        };
        self.wake(topics);
        if jwks_named {
            self.jwks_wanted.notify_one();
        }
        match partly {
            Some(errors) => Err(Rejected::Partly(errors)),
            None => Ok(()),
        }
    }

    /// Removes an object.
    pub fn delete(&self, at: &ObjectRef) {
        let key = (at.namespace.clone(), at.name.clone());
        let (topics, jwks_dropped) = {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            let topics = match at.kind {
                Kind::Namespace => s.put_namespace(&at.name, None),
                Kind::Service => s.put_service(key, None),
                Kind::Pod => s.put_pod(key, None),
                Kind::EndpointSlice => s.put_slice(key, None),
                Kind::ServiceProfile => s.put_profile(key, None),
                Kind::TrafficSplit => {
                    s.unpend(&key);
                    s.put_split(key, None)
                }
                Kind::HttpRoute | Kind::GrpcRoute => s.put_route((at.kind, key.0, key.1), None),
                Kind::ReferenceGrant => s.put_grant(key, None),
                Kind::PeerAuthentication
                | Kind::IstioAuthorizationPolicy
                | Kind::RequestAuthentication
                | Kind::EnvoyFilter
                | Kind::Server
                | Kind::LinkerdAuthorizationPolicy
                | Kind::MeshTlsAuthentication
                | Kind::NetworkAuthentication
                | Kind::HttpLocalRateLimitPolicy => s.put_security(at.kind, key, None),
                Kind::VirtualService | Kind::DestinationRule | Kind::Telemetry => {
                    s.put_traffic(at.kind, key, None)
                }
            };
            (topics, std::mem::take(&mut s.jwks_set_changed))
        };
        self.wake(topics);
        if jwks_dropped {
            self.jwks_wanted.notify_one();
        }
    }

    /// Resolves `authority` (`name.ns.svc.cluster.local:port`, `name.ns:port`, `name`,
    /// or a cluster IP and port) for a caller in `caller_ns`.
    /// With `watch`, it listens to what the answer read from now on.
    pub fn resolve(
        &self,
        authority: &str,
        caller_ns: &str,
        watch: Option<&mut Watch>,
    ) -> Resolution {
        self.answer(watch, |s, deps| {
            let Some((namespace, name, port)) = s.find_service(authority, caller_ns, deps) else {
                return s.find_pod(authority, deps).unwrap_or(Resolution::Unknown);
            };
            deps.0
                .push(Topic::Endpoints(namespace.clone(), name.clone()));
            let endpoints = s.endpoints(&namespace, &name, port);
            Resolution::Service {
                namespace,
                name,
                port,
                endpoints,
            }
        })
    }

    /// As [`Self::resolve`], keeping only the endpoints whose pods carry all of
    /// `labels` (a DestinationRule's subset); empty labels keep all.
    pub fn resolve_selected(
        &self,
        authority: &str,
        caller_ns: &str,
        labels: &BTreeMap<String, String>,
        watch: Option<&mut Watch>,
    ) -> Resolution {
        let resolution = self.resolve(authority, caller_ns, watch);
        if labels.is_empty() {
            return resolution;
        }
        let s = self.read();
        match resolution {
            Resolution::Service {
                namespace,
                name,
                port,
                mut endpoints,
            } => {
                endpoints.retain(|_, e| {
                    e.labels
                        .get("pod")
                        .and_then(|pod| s.pods.get(&(namespace.clone(), pod.clone())))
                        .is_some_and(|pod| selects(labels, &pod.labels))
                });
                Resolution::Service {
                    namespace,
                    name,
                    port,
                    endpoints,
                }
            }
            other => other,
        }
    }

    /// The client policy of the service `authority` names: compiled from its
    /// ServiceProfile and the TrafficSplit whose apex it is. Empty for names that are
    /// no service.
    /// With `watch`, it listens to what the answer read from now on.
    pub fn outbound_policy(
        &self,
        authority: &str,
        caller_ns: &str,
        watch: Option<&mut Watch>,
    ) -> pb::OutboundPolicy {
        self.answer(watch, |s, deps| {
            let Some((namespace, name, port)) = s.find_service(authority, caller_ns, deps) else {
                return pb::OutboundPolicy::default();
            };
            deps.0.push(Topic::Policy(namespace.clone(), name.clone()));
            let fqdn = format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}");
            let profile = s.profiles.get_key_value(&(namespace.clone(), fqdn.clone()));
            // A split on this service decides where its traffic goes (SMI: the apex);
            // with several, the first by name.
            let split = s
                .splits_of
                .get(&(namespace.clone(), name.clone()))
                .and_then(|names| names.first())
                .and_then(|n| s.splits.get_key_value(&(namespace.clone(), n.clone())));
            let mut policy = crate::compile::outbound(&crate::compile::Outbound {
                domain: CLUSTER_DOMAIN,
                namespace: &namespace,
                name: &name,
                port,
                profile: profile.map(|((_, n), spec)| (n.as_str(), spec)),
                split: split.map(|((_, n), spec)| (n.as_str(), spec)),
            });
            // A ServiceProfile takes precedence over the Gateway API's routes and the
            // retry and timeout annotations (as in Linkerd); they are reported, not
            // applied.
            let client = s
                .services
                .get(&(namespace.clone(), name.clone()))
                .map(|svc| &svc.client);
            if profile.is_none() {
                let empty = Default::default();
                let client = client.unwrap_or(&empty);
                s.gateway(
                    (&namespace, &name, port),
                    caller_ns,
                    client,
                    deps,
                    &mut policy,
                );
                // Istio's VirtualService, where no ServiceProfile or HTTPRoute applies.
                if policy.routes.is_empty() {
                    s.virtual_service(&fqdn, port, deps, &mut policy);
                }
                if policy.routes.is_empty() {
                    policy
                        .routes
                        .extend(crate::gateway::annotated_default(client));
                }
            }
            if let Some(a) = client.and_then(|c| c.accrual.as_ref()) {
                policy.outlier_detection = Some(crate::gateway::accrual(a));
            }
            s.destination_rules_into(&fqdn, port, deps, &mut policy);
            policy
        })
    }

    /// What the compilation says about a Gateway API route, per Service it attaches
    /// to: its `Accepted` and `ResolvedRefs` conditions (for its status, the log and
    /// `mesh check`). Empty when the index has no such route.
    /// With `watch`, it listens to what the answer read from now on.
    pub fn route_reports(&self, at: &ObjectRef, watch: Option<&mut Watch>) -> ParentReports {
        self.answer(watch, |s, deps| {
            let key = (at.kind, at.namespace.clone(), at.name.clone());
            deps.0
                .push(Topic::Route(key.0, key.1.clone(), key.2.clone()));
            if at.kind == Kind::VirtualService {
                return s.virtual_service_reports(&at.namespace, &at.name, deps);
            }
            let Some(route) = s.routes.get(&key) else {
                return vec![];
            };
            let parents: BTreeSet<(String, String)> = route
                .services(&at.namespace)
                .map(|(ns, n)| (ns.to_string(), n.to_string()))
                .collect();
            parents
                .into_iter()
                .map(|(ns, svc)| {
                    deps.service(&ns, &svc);
                    deps.0.push(Topic::Policy(ns.clone(), svc.clone()));
                    let report = s.report(&key, route, &ns, &svc, deps);
                    ((ns, svc), report)
                })
                .collect()
        })
    }

    /// Every route the index holds (the Gateway API's, and VirtualServices), sorted.
    /// With `watch`, it listens to routes being added and removed from now on.
    pub fn routes(&self, watch: Option<&mut Watch>) -> Vec<ObjectRef> {
        self.answer(watch, |s, deps| {
            deps.0.push(Topic::Routes);
            let virtual_services = s.traffic.iter().flat_map(|(ns, objects)| {
                objects
                    .keys()
                    .filter(|(kind, _)| *kind == Kind::VirtualService)
                    .map(|(kind, name)| ObjectRef {
                        kind: *kind,
                        namespace: ns.clone(),
                        name: name.clone(),
                    })
            });
            let mut out: Vec<ObjectRef> = s
                .routes
                .keys()
                .map(|(kind, namespace, name)| ObjectRef {
                    kind: *kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
                .chain(virtual_services)
                .collect();
            out.sort();
            out
        })
    }

    /// The server policy of port `port` of pod `workload` in `namespace`.
    /// With `watch`, it listens to what the answer read from now on.
    pub fn inbound_policy(
        &self,
        workload: &str,
        namespace: &str,
        port: u16,
        watch: Option<&mut Watch>,
    ) -> pb::InboundPolicy {
        self.answer(watch, |s, deps| {
            deps.0
                .push(Topic::Pod(namespace.to_string(), workload.to_string()));
            deps.0.push(Topic::Namespace(namespace.to_string()));
            let info = s.pods.get(&(namespace.to_string(), workload.to_string()));
            let pod = info.map(|p| (namespace, workload, &p.inbound_tls));
            let ns = s
                .namespaces
                .get(namespace)
                .map(|n| (namespace, &n.inbound_tls));
            let mut policy = crate::compile::inbound(port, pod, ns, s.default_inbound);
            // A pod's own annotation is the most specific setting: it stands over
            // PeerAuthentication's modes.
            let pod_decided = info.is_some_and(|p| p.inbound_tls.mode_for(port).is_some());
            let annotated = policy.mtls;
            let mut objects = Vec::new();
            for ns in [
                namespace,
                crate::authz::MESH_ROOT_NAMESPACE,
                crate::authz::ISTIO_ROOT_NAMESPACE,
            ] {
                if objects
                    .iter()
                    .any(|(o, _): &(crate::authz::Stored<'_>, bool)| o.namespace == ns)
                {
                    continue;
                }
                deps.0.push(Topic::Security(ns.to_string()));
                let root = ns == crate::authz::MESH_ROOT_NAMESPACE
                    || ns == crate::authz::ISTIO_ROOT_NAMESPACE;
                for ((_, name), (created, object)) in s.security.get(ns).into_iter().flatten() {
                    objects.push((
                        crate::authz::Stored {
                            namespace: ns,
                            name,
                            created: created.as_deref(),
                            object,
                        },
                        root,
                    ));
                }
            }
            let empty = BTreeMap::new();
            let no_ports = HashMap::new();
            let labels = info.map_or(&empty, |p| &p.labels);
            // Linkerd's Servers first: Istio's ALLOW policies then still make requests
            // need an ALLOW.
            let own: Vec<crate::authz::Stored<'_>> = objects
                .iter()
                .filter(|(o, _)| o.namespace == namespace)
                .map(|(o, _)| *o)
                .collect();
            crate::servers::apply(
                &mut policy,
                &crate::servers::Workload {
                    namespace,
                    labels,
                    named_ports: info.map_or(&no_ports, |p| &p.named_ports),
                },
                port,
                &own,
                &mut Lookups { state: s, deps },
            );
            // The kubelet's probes stay admitted whatever the policy says.
            policy.probe_paths = info
                .into_iter()
                .flat_map(|p| &p.probes)
                .filter(|(p, _)| *p == port)
                .map(|(_, path)| path.clone())
                .collect();
            let target = crate::authz::Pod { namespace, labels };
            crate::authz::apply(&mut policy, &target, port, &objects, &s.jwks);
            if pod_decided {
                policy.mtls = annotated;
                policy.sources.retain(|o| o.kind != "PeerAuthentication");
            }
            policy
        })
    }
}

/// What Linkerd's policy compiler looks up, recorded as the answer's topics.
struct Lookups<'a, 'd> {
    state: &'a State,
    deps: &'d mut Deps,
}

impl<'a> crate::servers::Lookup<'a> for Lookups<'a, '_> {
    fn object(&mut self, namespace: &str, kind: &str, name: &str) -> Option<&'a Security> {
        self.deps.0.push(Topic::Security(namespace.to_string()));
        let kind = [
            Kind::MeshTlsAuthentication,
            Kind::NetworkAuthentication,
            Kind::Server,
            Kind::LinkerdAuthorizationPolicy,
            Kind::HttpLocalRateLimitPolicy,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)?;
        self.state
            .security
            .get(namespace)?
            .get(&(kind, name.to_string()))
            .map(|(_, o)| o)
    }

    fn routes(&mut self, namespace: &str, server: &str) -> Vec<crate::servers::ServerRoute> {
        let key = (namespace.to_string(), server.to_string());
        self.state
            .routes_of_server
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let route = self.state.routes.get(k)?;
                Some(crate::servers::ServerRoute {
                    kind: k.0.as_str(),
                    name: k.2.clone(),
                    matches: crate::gateway::route_matches(route),
                })
            })
            .collect()
    }
}

/// Writes: each replaces (or, with `None`, removes) one object, keeps the secondary
/// indexes in step, and returns the topics whose answers may have changed (none when
/// the object is identical to what was there).
impl State {
    fn put_traffic(
        &mut self,
        kind: Kind,
        (ns, name): Key,
        new: Option<(Option<String>, TrafficSpec)>,
    ) -> Vec<Topic> {
        let objects = self.traffic.entry(ns.clone()).or_default();
        let slot = (kind, name.clone());
        let old = match new {
            Some(o) if objects.get(&slot) == Some(&o) => return vec![],
            Some(o) => objects.insert(slot, o),
            None => objects.remove(&slot),
        };
        let now_hosts = objects
            .get(&(kind, name.clone()))
            .map(|(_, spec)| spec.hosts(&ns))
            .unwrap_or_default();
        let exists = objects.contains_key(&(kind, name.clone()));
        if objects.is_empty() {
            self.traffic.remove(&ns);
        }
        if old.is_none() && !exists {
            return vec![];
        }
        let mut topics = BTreeSet::new();
        if kind == Kind::VirtualService {
            topics.insert(Topic::Route(kind, ns.clone(), name.clone()));
            if old.is_none() != exists {
                topics.insert(Topic::Routes);
            }
        }
        let by_host = match kind {
            Kind::VirtualService => &mut self.virtual_services_of,
            Kind::DestinationRule => &mut self.destination_rules_of,
            _ => return topics.into_iter().collect(),
        };
        let key = (ns.clone(), name);
        for host in old.map(|(_, spec)| spec.hosts(&ns)).unwrap_or_default() {
            unlink(by_host, &host, &key);
            topics.insert(Topic::Host(host));
        }
        for host in now_hosts {
            link(by_host, host.clone(), key.clone());
            topics.insert(Topic::Host(host));
        }
        topics.into_iter().collect()
    }

    fn put_security(
        &mut self,
        kind: Kind,
        key: Key,
        new: Option<(Option<String>, Security)>,
    ) -> Vec<Topic> {
        let (ns, name) = key;
        let objects = self.security.entry(ns.clone()).or_default();
        let new_uris = new
            .as_ref()
            .map(|(_, o)| crate::authz::jwks_uris([o]))
            .unwrap_or_default();
        let old = match new {
            Some(o) => {
                let old = objects.insert((kind, name), o.clone());
                if old.as_ref() == Some(&o) {
                    return vec![];
                }
                old
            }
            None => match objects.remove(&(kind, name)) {
                Some(old) => Some(old),
                None => return vec![],
            },
        };
        if objects.is_empty() {
            self.security.remove(&ns);
        }
        let old_uris = old
            .as_ref()
            .map(|(_, o)| crate::authz::jwks_uris([o]))
            .unwrap_or_default();
        if old_uris != new_uris {
            self.relink_jwks(&ns);
        }
        vec![Topic::Security(ns)]
    }

    /// Recomputes which JWKS URIs namespace `ns`'s objects name (after one of them
    /// changed): only that namespace's objects are read.
    fn relink_jwks(&mut self, ns: &str) {
        let now: BTreeSet<String> = crate::authz::jwks_uris(
            self.security
                .get(ns)
                .into_iter()
                .flat_map(|o| o.values().map(|(_, o)| o)),
        )
        .into_iter()
        .collect();
        let before: Vec<String> = self
            .jwks_of_namespace
            .get(ns)
            .map(|b| b.iter().cloned().collect())
            .unwrap_or_default();
        for uri in &before {
            if !now.contains(uri) {
                unlink(&mut self.jwks_users, uri, &ns.to_string());
                if !self.jwks_users.contains_key(uri) {
                    self.jwks.remove(uri);
                    self.jwks_set_changed = true;
                }
            }
        }
        for uri in &now {
            if !self.jwks_users.contains_key(uri) {
                self.jwks_set_changed = true;
            }
            link(&mut self.jwks_users, uri.clone(), ns.to_string());
        }
        if now.is_empty() {
            self.jwks_of_namespace.remove(ns);
        } else {
            self.jwks_of_namespace.insert(ns.to_string(), now);
        }
    }

    fn put_namespace(&mut self, name: &str, new: Option<NamespaceInfo>) -> Vec<Topic> {
        let Some(old) = put(&mut self.namespaces, name.to_string(), new) else {
            return vec![];
        };
        let mut topics = vec![Topic::Namespace(name.to_string())];
        let inject = |n: Option<&NamespaceInfo>| n.and_then(|n| n.inject);
        // Locally, the namespace's inject annotation meshes its pods: every service
        // there may now have endpoints with (or without) identities.
        if self.annotation_meshes && inject(old.as_ref()) != inject(self.namespaces.get(name)) {
            for svc in self.services_in.get(name).into_iter().flatten() {
                topics.push(Topic::Endpoints(name.to_string(), svc.clone()));
            }
        }
        topics
    }

    fn put_service(&mut self, key: Key, new: Option<ServiceInfo>) -> Vec<Topic> {
        let Some(old) = put(&mut self.services, key.clone(), new) else {
            return vec![];
        };
        let mut topics = vec![Topic::Service(key.0.clone(), key.1.clone())];
        if let Some(old) = &old {
            self.index_service(&key, old, false);
            topics.extend(old.cluster_ip.map(Topic::ClusterIp));
        }
        if let Some(new) = self.services.get(&key).cloned() {
            self.index_service(&key, &new, true);
            topics.extend(new.cluster_ip.map(Topic::ClusterIp));
            // Splits that were waiting for their backends may be complete now.
            topics.extend(self.admit_pending_splits(&key.0));
        }
        topics
    }

    fn index_service(&mut self, key: &Key, svc: &ServiceInfo, add: bool) {
        let (ns, name) = key;
        if add {
            link(&mut self.services_in, ns.clone(), name.clone());
        } else {
            unlink(&mut self.services_in, ns, name);
        }
        if let Some(ip) = svc.cluster_ip {
            if add {
                link(&mut self.by_cluster_ip, ip, key.clone());
            } else {
                unlink(&mut self.by_cluster_ip, &ip, key);
            }
        }
        for (k, v) in &svc.selector {
            let lk = label_key(ns, k, v);
            if add {
                link(&mut self.selecting, lk, name.clone());
            } else {
                unlink(&mut self.selecting, &lk, name);
            }
        }
    }

    fn put_pod(&mut self, key: Key, new: Option<PodInfo>) -> Vec<Topic> {
        let Some(old) = put(&mut self.pods, key.clone(), new) else {
            return vec![];
        };
        let (ns, name) = &key;
        let mut topics = vec![Topic::Pod(ns.clone(), name.clone())];
        let mut services = BTreeSet::new();
        if let Some(ip) = old.as_ref().and_then(|o| o.ip)
            && let Some(keys) = self.pods_by_ip.get_mut(&ip)
        {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.pods_by_ip.remove(&ip);
            }
            topics.push(Topic::PodIp(ip));
        }
        if let Some(ip) = self.pods.get(&key).and_then(|p| p.ip) {
            let keys = self.pods_by_ip.entry(ip).or_default();
            if let Err(i) = keys.binary_search(&key) {
                keys.insert(i, key.clone());
            }
            topics.push(Topic::PodIp(ip));
        }
        if let Some(old) = &old {
            for (k, v) in &old.labels {
                unlink(&mut self.pods_by_label, &label_key(ns, k, v), name);
            }
            self.selecting_services(ns, &old.labels, &mut services);
        }
        if let Some(new) = self.pods.get(&key) {
            let labels = new.labels.clone();
            for (k, v) in &labels {
                link(&mut self.pods_by_label, label_key(ns, k, v), name.clone());
            }
            self.selecting_services(ns, &labels, &mut services);
        }
        // Slices name pods: their services' endpoints wait for (and show) the pod.
        for (svc, _) in self.slices_naming.get(&key).into_iter().flatten() {
            services.insert(svc.clone());
        }
        topics.extend(
            services
                .into_iter()
                .map(|svc| Topic::Endpoints(ns.clone(), svc)),
        );
        topics
    }

    /// Adds to `out` the services in `namespace` whose selector picks a pod with
    /// `labels`: found through the pod's labels, never by scanning services.
    fn selecting_services(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        out: &mut BTreeSet<String>,
    ) {
        for (k, v) in labels {
            let Some(candidates) = self.selecting.get(&label_key(namespace, k, v)) else {
                continue;
            };
            for svc in candidates {
                if out.contains(svc) {
                    continue;
                }
                let picks = self
                    .services
                    .get(&(namespace.to_string(), svc.clone()))
                    .is_some_and(|s| selects(&s.selector, labels));
                if picks {
                    out.insert(svc.clone());
                }
            }
        }
    }

    fn put_slice(&mut self, key: Key, new: Option<SliceInfo>) -> Vec<Topic> {
        let Some(old) = put(&mut self.slices, key.clone(), new) else {
            return vec![];
        };
        let mut topics = Vec::new();
        if let Some(old) = &old {
            self.index_slice(&key, old, false);
            topics.push(Topic::Endpoints(key.0.clone(), old.service.clone()));
        }
        if let Some(new) = self.slices.get(&key).cloned() {
            self.index_slice(&key, &new, true);
            topics.push(Topic::Endpoints(key.0.clone(), new.service.clone()));
        }
        topics
    }

    fn index_slice(&mut self, key: &Key, slice: &SliceInfo, add: bool) {
        let (ns, name) = key;
        let service = (ns.clone(), slice.service.clone());
        if add {
            link(&mut self.slices_of, service, name.clone());
        } else {
            unlink(&mut self.slices_of, &service, name);
        }
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            let pod = (ns.clone(), pod.clone());
            let by = (slice.service.clone(), name.clone());
            if add {
                link(&mut self.slices_naming, pod, by);
            } else {
                unlink(&mut self.slices_naming, &pod, &by);
            }
        }
    }

    fn put_profile(&mut self, key: Key, new: Option<ServiceProfileSpec>) -> Vec<Topic> {
        if put(&mut self.profiles, key.clone(), new).is_none() {
            return vec![];
        }
        // A profile is named after the service it is for: `name.ns.svc.<domain>`, in
        // the service's own namespace.
        let (ns, fqdn) = &key;
        let suffix = format!(".{ns}.svc.{CLUSTER_DOMAIN}");
        match fqdn.strip_suffix(&suffix) {
            Some(name) if !name.contains('.') => vec![Topic::Policy(ns.clone(), name.into())],
            _ => vec![],
        }
    }

    fn put_split(&mut self, key: Key, new: Option<TrafficSplitSpec>) -> Vec<Topic> {
        let Some(old) = put(&mut self.splits, key.clone(), new) else {
            return vec![];
        };
        let (ns, name) = &key;
        let mut topics = Vec::new();
        if let Some(old) = old {
            unlink(
                &mut self.splits_of,
                &(ns.clone(), old.service.clone()),
                name,
            );
            topics.push(Topic::Policy(ns.clone(), old.service));
        }
        if let Some(new) = self.splits.get(&key) {
            let apex = new.service.clone();
            link(
                &mut self.splits_of,
                (ns.clone(), apex.clone()),
                name.clone(),
            );
            topics.push(Topic::Policy(ns.clone(), apex));
        }
        topics
    }

    fn put_route(&mut self, key: RouteKey, new: Option<GatewayRoute>) -> Vec<Topic> {
        let Some(old) = put(&mut self.routes, key.clone(), new) else {
            return vec![];
        };
        let ns = key.1.clone();
        let mut topics = BTreeSet::from([Topic::Route(key.0, key.1.clone(), key.2.clone())]);
        // Added (nothing before, something now) or removed (the reverse).
        if old.is_none() == self.routes.contains_key(&key) {
            topics.insert(Topic::Routes);
        }
        if let Some(old) = &old {
            for (pns, pname) in old.services(&ns) {
                let parent = (pns.to_string(), pname.to_string());
                unlink(&mut self.routes_of, &parent, &key);
                topics.insert(Topic::Policy(parent.0, parent.1));
            }
            for (pns, pname) in old.servers(&ns) {
                let parent = (pns.to_string(), pname.to_string());
                unlink(&mut self.routes_of_server, &parent, &key);
                topics.insert(Topic::Security(parent.0));
            }
        }
        if let Some(new) = self.routes.get(&key) {
            let parents: Vec<Key> = new
                .services(&ns)
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect();
            for parent in parents {
                link(&mut self.routes_of, parent.clone(), key.clone());
                topics.insert(Topic::Policy(parent.0, parent.1));
            }
            let servers: Vec<Key> = new
                .servers(&ns)
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect();
            for parent in servers {
                link(&mut self.routes_of_server, parent.clone(), key.clone());
                topics.insert(Topic::Security(parent.0));
            }
        }
        topics.into_iter().collect()
    }

    fn put_grant(
        &mut self,
        (ns, name): Key,
        new: Option<mesh_api::gateway::ReferenceGrantSpec>,
    ) -> Vec<Topic> {
        let grants = self.grants.entry(ns.clone()).or_default();
        let changed = match new {
            Some(spec) => grants.insert(name, spec.clone()).as_ref() != Some(&spec),
            None => grants.remove(&name).is_some(),
        };
        if grants.is_empty() {
            self.grants.remove(&ns);
        }
        if changed {
            vec![Topic::Grants(ns)]
        } else {
            vec![]
        }
    }

    fn unpend(&mut self, (ns, name): &Key) {
        if let Some(pending) = self.pending_splits.get_mut(ns) {
            pending.remove(name);
            if pending.is_empty() {
                self.pending_splits.remove(ns);
            }
        }
    }

    fn missing_backends(&self, namespace: &str, spec: &TrafficSplitSpec) -> Vec<FieldError> {
        spec.backends
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                !self
                    .services
                    .contains_key(&(namespace.to_string(), b.service.clone()))
            })
            .map(|(i, b)| {
                FieldError::new(
                    format!("spec.backends[{i}].service"),
                    format!("no service {:?} in namespace {namespace:?}", b.service),
                )
            })
            .collect()
    }

    /// Admits pending splits in `namespace` whose backends all exist now; returns the
    /// topics that changed.
    fn admit_pending_splits(&mut self, namespace: &str) -> Vec<Topic> {
        let Some(pending) = self.pending_splits.get(namespace) else {
            return vec![];
        };
        let ready: Vec<String> = pending
            .iter()
            .filter(|(_, spec)| self.missing_backends(namespace, spec).is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        let mut topics = Vec::new();
        for name in ready {
            let key = (namespace.to_string(), name);
            let Some(spec) = self
                .pending_splits
                .get_mut(namespace)
                .and_then(|p| p.remove(&key.1))
            else {
                continue;
            };
            tracing::info!(namespace = %key.0, split = %key.1, "TrafficSplit admitted: its backends exist now");
            topics.extend(self.put_split(key, Some(spec)));
        }
        if self
            .pending_splits
            .get(namespace)
            .is_some_and(BTreeMap::is_empty)
        {
            self.pending_splits.remove(namespace);
        }
        topics
    }
}

/// Reads.
impl State {
    /// The Gateway API routes of port `port` of Service `namespace/name` as a caller
    /// in `caller_ns` sees them: the caller's own namespace's routes (consumer
    /// routes) when it has any, else the Service's namespace's (producer routes).
    fn attached<'a>(
        &'a self,
        namespace: &str,
        name: &str,
        port: Option<u16>,
        caller_ns: &str,
    ) -> Vec<(&'a RouteKey, Attached<'a>)> {
        let Some(keys) = self
            .routes_of
            .get(&(namespace.to_string(), name.to_string()))
        else {
            return vec![];
        };
        let attached = |k: &'a RouteKey| {
            let route = self.routes.get(k)?;
            let on = match port {
                Some(p) => route.attaches(&k.1, namespace, name, p),
                None => true,
            };
            on.then_some((
                k,
                Attached {
                    namespace: &k.1,
                    name: &k.2,
                    route,
                },
            ))
        };
        let of = |ns: &str| -> Vec<_> {
            keys.iter()
                .filter(|k| k.1 == ns)
                .filter_map(attached)
                .collect()
        };
        if caller_ns != namespace {
            let consumer = of(caller_ns);
            if !consumer.is_empty() {
                return consumer;
            }
        }
        of(namespace)
    }

    /// Whether a backend reference resolves (the Service, its port, and across
    /// namespaces a ReferenceGrant), listening to what it read.
    fn resolver<'a>(
        &'a self,
        deps: &'a mut Deps,
    ) -> impl FnMut(crate::gateway::Lookup<'_>) -> Resolved + 'a {
        move |l| {
            if let Some((kind, from)) = l.from {
                deps.0.push(Topic::Grants(l.namespace.to_string()));
                let granted = self
                    .grants
                    .get(l.namespace)
                    .is_some_and(|g| g.values().any(|g| g.allows(kind, from, l.name)));
                if !granted {
                    return Resolved::NotPermitted;
                }
            }
            deps.service(l.namespace, l.name);
            match self
                .services
                .get(&(l.namespace.to_string(), l.name.to_string()))
            {
                None => Resolved::NoService,
                Some(svc) if svc.ports.iter().any(|p| p.port == l.port) => Resolved::Found,
                Some(_) => Resolved::NoPort,
            }
        }
    }

    /// Compiles the Gateway API routes of a Service port into `policy`.
    fn gateway(
        &self,
        (namespace, name, port): (&str, &str, u16),
        caller_ns: &str,
        client: &crate::annotations::ClientPolicy,
        deps: &mut Deps,
        policy: &mut pb::OutboundPolicy,
    ) {
        let attached: Vec<Attached<'_>> = self
            .attached(namespace, name, Some(port), caller_ns)
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        if attached.is_empty() {
            return;
        }
        let (apply, _conflicted) = crate::gateway::order(attached);
        let mut resolve = self.resolver(deps);
        crate::gateway::compile(
            &apply,
            client,
            namespace,
            CLUSTER_DOMAIN,
            &mut resolve,
            policy,
        );
    }

    /// The VirtualServices routing `host` (an FQDN), the one that applies first.
    fn virtual_services(
        &self,
        host: &str,
    ) -> Vec<crate::istio_traffic::Stored<'_, mesh_api::istio_networking::VirtualServiceSpec>> {
        self.stored(
            &self.virtual_services_of,
            Kind::VirtualService,
            host,
            |t| match t {
                TrafficSpec::VirtualService(s) => Some(&**s),
                _ => None,
            },
        )
    }

    /// The DestinationRules of `host` (an FQDN), in the order they merge.
    fn destination_rules(
        &self,
        host: &str,
    ) -> Vec<crate::istio_traffic::Stored<'_, mesh_api::istio_networking::DestinationRuleSpec>>
    {
        self.stored(
            &self.destination_rules_of,
            Kind::DestinationRule,
            host,
            |t| match t {
                TrafficSpec::DestinationRule(s) => Some(&**s),
                _ => None,
            },
        )
    }

    /// The traffic objects of `kind` that `by_host` lists for `host`, in Istio's order.
    fn stored<'a, T>(
        &'a self,
        by_host: &'a HashMap<String, BTreeSet<Key>>,
        kind: Kind,
        host: &str,
        spec_of: fn(&TrafficSpec) -> Option<&T>,
    ) -> Vec<crate::istio_traffic::Stored<'a, T>> {
        let mut out: Vec<_> = by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|(ns, name)| {
                let (created, spec) = self.traffic.get(ns)?.get(&(kind, name.clone()))?;
                Some(crate::istio_traffic::Stored {
                    namespace: ns,
                    name,
                    created: created.as_deref(),
                    spec: spec_of(spec)?,
                })
            })
            .collect();
        crate::istio_traffic::order(&mut out);
        out
    }

    /// Warns of DestinationRules of `hosts` whose top-level `trafficPolicy` is not
    /// applied because an earlier one's is (Istio merges a host's rules, and only
    /// the first top-level policy counts).
    fn report_shadowed_policies(&self, hosts: &[String]) {
        for host in hosts {
            let rules = self.destination_rules(host);
            let mut with_policy = rules.iter().filter(|r| r.spec.traffic_policy.is_some());
            let Some(first) = with_policy.next() else {
                continue;
            };
            for later in with_policy {
                tracing::warn!(
                    "DestinationRule {}/{}: spec.trafficPolicy is not applied: DestinationRule {}/{} comes first for host {host} and only the first top-level trafficPolicy applies (Istio's merge)",
                    later.namespace,
                    later.name,
                    first.namespace,
                    first.name
                );
            }
        }
    }

    /// The routes of the VirtualService that applies to `host` (the oldest of
    /// those naming it), compiled into `policy` for `port`.
    fn virtual_service(
        &self,
        host: &str,
        port: u16,
        deps: &mut Deps,
        policy: &mut pb::OutboundPolicy,
    ) {
        deps.0.push(Topic::Host(host.to_string()));
        let claims = self.virtual_services(host);
        let Some(winner) = claims.first() else {
            return;
        };
        let mut rules = |h: &str| {
            deps.0.push(Topic::Host(h.to_string()));
            self.destination_rules(h)
        };
        let compiled = crate::istio_traffic::compile(winner, port, CLUSTER_DOMAIN, &mut rules);
        policy.sources.push(pb::ObjectRef {
            kind: Kind::VirtualService.as_str().into(),
            namespace: winner.namespace.into(),
            name: winner.name.into(),
        });
        if !compiled.routes.is_empty() {
            policy.route_order = pb::RouteOrder::FirstMatch.into();
            // Istio answers requests no route of the VirtualService matches 404.
            policy.unmatched = pb::Unmatched::NotFound.into();
            policy.routes = compiled.routes;
        }
    }

    /// The DestinationRules' settings, into `policy`: the service's own (host `host`,
    /// port `port`; over its annotations'), and each backend's, by its host, subset
    /// and port, whichever front-end named it.
    fn destination_rules_into(
        &self,
        host: &str,
        port: u16,
        deps: &mut Deps,
        policy: &mut pb::OutboundPolicy,
    ) {
        deps.0.push(Topic::Host(host.to_string()));
        let rules = self.destination_rules(host);
        if let Some(own) = crate::istio_traffic::backend_policy(&rules, None, port) {
            if own.load_balancer.is_some() {
                policy.load_balancer = own.load_balancer;
            }
            if own.connection_pool.is_some() {
                policy.connection_pool = own.connection_pool;
            }
            if own.outlier_detection.is_some() {
                policy.outlier_detection = own.outlier_detection;
            }
            policy.disable_mtls = own.disable_mtls;
        }
        let backends = policy
            .backends
            .iter_mut()
            .chain(policy.routes.iter_mut().flat_map(|r| r.backends.iter_mut()));
        for b in backends {
            let (authority, subset) = match b.backend.as_ref().and_then(|b| b.kind.as_ref()) {
                Some(pb::backend::Kind::Authority(a)) => (a.as_str(), None),
                Some(pb::backend::Kind::Subset(s)) => (s.authority.as_str(), Some(s.name.as_str())),
                _ => continue,
            };
            let Some((h, p)) = split_authority(authority) else {
                continue;
            };
            deps.0.push(Topic::Host(h.clone()));
            let rules = self.destination_rules(&h);
            b.policy = crate::istio_traffic::backend_policy(&rules, subset, p);
        }
    }

    /// A VirtualService's conditions per host it names: whether it is the one that
    /// applies there, and whether its destinations resolve.
    fn virtual_service_reports(&self, ns: &str, name: &str, deps: &mut Deps) -> ParentReports {
        use crate::gateway::Condition;
        let Some((created, TrafficSpec::VirtualService(spec))) = self
            .traffic
            .get(ns)
            .and_then(|o| o.get(&(Kind::VirtualService, name.to_string())))
        else {
            return vec![];
        };
        let me = crate::istio_traffic::Stored {
            namespace: ns,
            name,
            created: created.as_deref(),
            spec: &**spec,
        };
        let condition = |kind, status, reason, message: String| Condition {
            kind,
            status,
            reason,
            message,
        };
        let mut out = Vec::new();
        for host in virtual_service_hosts(spec, ns) {
            deps.0.push(Topic::Host(host.clone()));
            let parent = crate::istio_traffic::service_of(&host, CLUSTER_DOMAIN)
                .unwrap_or_else(|| (String::new(), host.clone()));
            let service = self.services.get(&parent);
            if !parent.0.is_empty() {
                deps.service(&parent.0, &parent.1);
                deps.0
                    .push(Topic::Policy(parent.0.clone(), parent.1.clone()));
            }
            let claims = self.virtual_services(&host);
            let first = claims.first().map(|c| (c.namespace, c.name));
            let accepted = if first != Some((ns, name)) {
                let (wns, wname) = first.unwrap_or_default();
                condition(
                    "Accepted",
                    false,
                    "Superseded",
                    format!(
                        "VirtualService {wns}/{wname} is older and routes {host}: Istio applies one VirtualService per host"
                    ),
                )
            } else if self
                .profiles
                .contains_key(&(parent.0.clone(), host.clone()))
            {
                condition(
                    "Accepted",
                    false,
                    "Overridden",
                    format!("ServiceProfile {}/{host} takes precedence", parent.0),
                )
            } else if self.routes_of.get(&parent).is_some_and(|r| !r.is_empty()) {
                condition(
                    "Accepted",
                    false,
                    "Overridden",
                    format!(
                        "HTTPRoutes attached to Service {}/{} take precedence",
                        parent.0, parent.1
                    ),
                )
            } else if service.is_none() {
                condition(
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("no Service for host {host}"),
                )
            } else {
                condition("Accepted", true, "Accepted", "routes this host".into())
            };
            let port = service.and_then(|s| s.ports.first()).map_or(80, |p| p.port);
            let mut rules = |h: &str| {
                deps.0.push(Topic::Host(h.to_string()));
                self.destination_rules(h)
            };
            let compiled = crate::istio_traffic::compile(&me, port, CLUSTER_DOMAIN, &mut rules);
            let resolved = if compiled.problems.is_empty() {
                condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "all destinations resolved".into(),
                )
            } else {
                condition(
                    "ResolvedRefs",
                    false,
                    "BackendNotFound",
                    compiled.problems.join("; "),
                )
            };
            out.push((
                parent,
                Report {
                    kind: "VirtualService",
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    conditions: vec![accepted, resolved],
                    generation: None,
                },
            ));
        }
        out
    }

    /// The conditions of route `key` on its parent Service `ns/svc`.
    fn report(
        &self,
        key: &RouteKey,
        route: &GatewayRoute,
        ns: &str,
        svc: &str,
        deps: &mut Deps,
    ) -> Report {
        let me = Attached {
            namespace: &key.1,
            name: &key.2,
            route,
        };
        let Some(service) = self.services.get(&(ns.to_string(), svc.to_string())) else {
            return crate::gateway::refused(
                &me,
                "NoMatchingParent",
                &format!("no Service {ns}/{svc}"),
            );
        };
        // Ports a parentRef names must be the Service's.
        let has = |p: u16| service.ports.iter().any(|sp| sp.port == p);
        let missing: Vec<String> = route
            .parent_refs()
            .iter()
            .filter(|p| {
                p.is_service() && p.namespace.as_deref().unwrap_or(&key.1) == ns && p.name == svc
            })
            .filter_map(|p| p.port.filter(|p| !has(*p)))
            .map(|p| p.to_string())
            .collect();
        if !missing.is_empty() {
            return crate::gateway::refused(
                &me,
                "NoMatchingParent",
                &format!("Service {ns}/{svc} has no port {}", missing.join(", ")),
            );
        }
        let fqdn = format!("{svc}.{ns}.svc.{CLUSTER_DOMAIN}");
        if self.profiles.contains_key(&(ns.to_string(), fqdn.clone())) {
            return crate::gateway::refused(
                &me,
                "Overridden",
                &format!("ServiceProfile {ns}/{fqdn} takes precedence over routes"),
            );
        }
        // Seen as a caller in the route's own namespace sees it, port by port: the
        // route is conflicted when a GRPCRoute wins on every port it attaches to.
        let ports: Vec<u16> = service
            .ports
            .iter()
            .map(|p| p.port)
            .filter(|p| route.attaches(&key.1, ns, svc, *p))
            .collect();
        let conflicted_on = |port: u16| {
            let (_, conflicted) = crate::gateway::order(
                self.attached(ns, svc, Some(port), &key.1)
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect(),
            );
            conflicted
                .iter()
                .any(|c| c.namespace == key.1 && c.name == key.2)
        };
        if !ports.is_empty() && ports.iter().all(|p| conflicted_on(*p)) {
            return crate::gateway::refused(
                &me,
                "Conflicted",
                "a GRPCRoute attached to the same Service takes precedence",
            );
        }
        let mut resolve = self.resolver(deps);
        let mut scratch = pb::OutboundPolicy::default();
        let reports = crate::gateway::compile(
            std::slice::from_ref(&me),
            &Default::default(),
            ns,
            CLUSTER_DOMAIN,
            &mut resolve,
            &mut scratch,
        );
        // One report per route compiled.
        reports
            .into_iter()
            .next()
            .unwrap_or_else(|| crate::gateway::refused(&me, "Invalid", "not compiled"))
    }

    fn find_service(
        &self,
        authority: &str,
        caller_ns: &str,
        deps: &mut Deps,
    ) -> Option<(String, String, u16)> {
        let (host, port) = split_authority(authority)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            deps.0.push(Topic::ClusterIp(ip));
            let (ns, name) = self.by_cluster_ip.get(&ip)?.first()?;
            deps.service(ns, name);
            return Some((ns.clone(), name.clone(), port));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let suffix = format!(".svc.{CLUSTER_DOMAIN}");
        // `name.ns.svc` is a service; `x.svc` is service `x` in a namespace named `svc`.
        let short = host
            .strip_suffix(&suffix)
            .or_else(|| host.strip_suffix(".svc").filter(|h| h.contains('.')))
            .unwrap_or(&host);
        let (name, ns) = match short.split_once('.') {
            Some((name, ns)) if !ns.contains('.') => (name.to_string(), ns.to_string()),
            Some(_) => return None,
            None => (short.to_string(), caller_ns.to_string()),
        };
        // Listened to whether or not it exists yet: its creation is news too.
        deps.service(&ns, &name);
        let svc = self.services.get(&(ns.clone(), name.clone()))?;
        // An ExternalName service is a DNS alias: the proxy resolves it by DNS.
        if svc.external_name {
            return None;
        }
        Some((ns, name, port))
    }

    /// The pod whose IP `authority` names, as one endpoint.
    fn find_pod(&self, authority: &str, deps: &mut Deps) -> Option<Resolution> {
        let (host, port) = split_authority(authority)?;
        let ip = host.parse::<IpAddr>().ok()?;
        deps.0.push(Topic::PodIp(ip));
        let (ns, name) = self.pods_by_ip.get(&ip)?.first()?;
        let pod = self.pods.get(&(ns.clone(), name.clone()))?;
        // Its namespace's annotations decide whether it is meshed and opaque ports.
        deps.0.push(Topic::Namespace(ns.clone()));
        let addr = SocketAddr::new(ip, port);
        Some(Resolution::Pod {
            namespace: ns.clone(),
            endpoint: self.view(ns, addr, Some((name, pod))),
        })
    }

    fn meshed(&self, namespace: &str, pod: &PodInfo) -> bool {
        if pod.has_proxy {
            return true;
        }
        if !self.annotation_meshes {
            return false;
        }
        match pod.inject {
            Some(v) => v,
            None => self
                .namespaces
                .get(namespace)
                .and_then(|n| n.inject)
                .unwrap_or(false),
        }
    }

    /// Labels and identity for an endpoint backed by `pod` (when known).
    fn view(
        &self,
        namespace: &str,
        addr: SocketAddr,
        pod: Option<(&str, &PodInfo)>,
    ) -> EndpointView {
        let mut labels = BTreeMap::from([("namespace".to_string(), namespace.to_string())]);
        let mut identity = None;
        let mut opaque = false;
        if let Some((name, pod)) = pod {
            let ranges = pod.inbound_tls.opaque_ports.as_deref().or_else(|| {
                self.namespaces
                    .get(namespace)
                    .and_then(|n| n.inbound_tls.opaque_ports.as_deref())
            });
            opaque = ranges.is_some_and(|r| crate::compile::in_ranges(r, addr.port()));
            labels.insert("pod".to_string(), name.to_string());
            labels.insert("serviceaccount".to_string(), pod.service_account.clone());
            if let Some(w) = &pod.workload {
                labels.insert("deployment".to_string(), w.clone());
            }
            identity = self
                .meshed(namespace, pod)
                .then(|| mesh_api::identity::dns_name(&pod.service_account, namespace));
        }
        EndpointView {
            addr,
            labels,
            identity,
            opaque,
        }
    }

    /// The pods in `namespace` that `selector` picks, through the label index: only
    /// the pods of the selector's rarest label are looked at.
    fn selected<'a>(
        &'a self,
        namespace: &'a str,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a str, &'a PodInfo)> + 'a {
        let rarest = selector
            .iter()
            .map(|(k, v)| self.pods_by_label.get(&label_key(namespace, k, v)))
            .min_by_key(|set| set.map_or(0, BTreeSet::len))
            .flatten();
        rarest.into_iter().flatten().filter_map(move |name| {
            let pod = self.pods.get(&(namespace.to_string(), name.clone()))?;
            selects(selector, &pod.labels).then_some((name.as_str(), pod))
        })
    }

    fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> BTreeMap<SocketAddr, EndpointView> {
        let mut out = self.endpoints_of(namespace, name, port);
        // The Service's opaque-ports annotation marks all of its endpoints.
        let key = (namespace.to_string(), name.to_string());
        if self
            .services
            .get(&key)
            .is_some_and(|svc| crate::compile::in_ranges(&svc.opaque_ports, port))
        {
            for e in out.values_mut() {
                e.opaque = true;
            }
        }
        out
    }

    fn endpoints_of(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> BTreeMap<SocketAddr, EndpointView> {
        let mut out = BTreeMap::new();
        let key = (namespace.to_string(), name.to_string());
        let Some(svc) = self.services.get(&key) else {
            return out;
        };
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return out;
        };

        // EndpointSlices, when the service has any, are what Kubernetes decided (and
        // the only source for services without a selector); pods and the selector
        // otherwise, as in a local folder.
        if let Some(slices) = self.slices_of.get(&key) {
            for slice in slices
                .iter()
                .filter_map(|s| self.slices.get(&(namespace.to_string(), s.clone())))
            {
                let slice_port = match &sp.name {
                    Some(n) => slice
                        .ports
                        .iter()
                        .find(|(pn, _)| pn.as_deref() == Some(n.as_str())),
                    None => slice
                        .ports
                        .iter()
                        .find(|(pn, _)| pn.as_deref().is_none_or(str::is_empty)),
                };
                let Some((_, target)) = slice_port else {
                    continue;
                };
                for e in slice.endpoints.iter().filter(|e| e.ready) {
                    let pod = e.pod.as_deref().and_then(|p| {
                        self.pods
                            .get(&(namespace.to_string(), p.to_string()))
                            .map(|i| (p, i))
                    });
                    // A pod not seen yet may be meshed: sending it plaintext to the app
                    // port would be wrong, so wait for the pod.
                    if e.pod.is_some() && pod.is_none() {
                        continue;
                    }
                    for ip in &e.addresses {
                        let addr = SocketAddr::new(*ip, *target);
                        out.insert(addr, self.view(namespace, addr, pod));
                    }
                }
            }
            return out;
        }
        for (pod_name, pod) in self.selected(namespace, &svc.selector) {
            if !pod.ready {
                continue;
            }
            let Some(ip) = pod.ip else { continue };
            let target = match &sp.target {
                TargetPort::Number(n) => *n,
                TargetPort::Name(n) => match pod.named_ports.get(n) {
                    Some(p) => *p,
                    None => continue,
                },
            };
            let addr = SocketAddr::new(ip, target);
            out.insert(addr, self.view(namespace, addr, Some((pod_name, pod))));
        }
        out
    }
}

/// Splits `host[:port]`; the port defaults to 80.
fn split_authority(authority: &str) -> Option<(String, u16)> {
    let a: http::uri::Authority = authority.parse().ok()?;
    let host = a
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Some((host, a.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::split::Backend;

    fn at(kind: Kind, ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn service(selector: &[(&str, &str)]) -> Object {
        Object::Service(ServiceInfo {
            ports: vec![ServicePort {
                port: 80,
                name: None,
                target: TargetPort::Number(8080),
            }],
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
    }

    fn pod(app: &str, ip: &str, inject: Option<bool>, has_proxy: bool) -> Object {
        Object::Pod(PodInfo {
            ip: ip.parse().ok(),
            labels: [("app".to_string(), app.to_string())].into(),
            service_account: "sa".into(),
            ready: true,
            inject,
            has_proxy,
            ..Default::default()
        })
    }

    fn identities(index: &Index, authority: &str) -> Vec<Option<String>> {
        match index.resolve(authority, "ns", None) {
            Resolution::Service { endpoints, .. } => {
                endpoints.values().map(|e| e.identity.clone()).collect()
            }
            Resolution::Pod { endpoint, .. } => vec![endpoint.identity],
            Resolution::Unknown => vec![],
        }
    }

    fn request_authentication(uri: &str) -> Object {
        Object::Security(
            SecuritySpec::RequestAuthentication(
                mesh_api::yaml::from_str(&format!(
                    "jwtRules: [{{issuer: iss, jwksUri: \"{uri}\"}}]"
                ))
                .expect("spec"),
            ),
            None,
        )
    }

    #[test]
    fn jwks_documents_follow_the_uris_named_and_wake_only_their_namespaces() {
        let index = Index::default();
        let uri = "https://issuer.example/jwks.json";
        let jwt = |ns: &str| {
            index
                .inbound_policy("web-0", ns, 8080, None)
                .jwt_providers
                .into_iter()
                .next()
                .expect("a provider")
        };
        index
            .apply(
                &at(Kind::RequestAuthentication, "a", "ra"),
                request_authentication(uri),
            )
            .expect("apply");
        assert_eq!(index.jwks_uris(), [uri]);
        assert!(jwt("a").jwks_error.contains("not fetched yet"));
        let mut a = index.watch();
        let mut b = index.watch();
        index.inbound_policy("web-0", "a", 8080, Some(&mut a));
        index.inbound_policy("web-0", "b", 8080, Some(&mut b));
        // A failure is reported; then the document replaces it.
        index.set_jwks_error(uri, "cannot resolve issuer.example".into());
        assert!(a.take_change() && !b.take_change());
        assert!(jwt("a").jwks_error.contains("cannot resolve"));
        index.set_jwks(uri, Ok("{\"keys\": [{}]}".into()));
        assert_eq!(jwt("a").jwks, "{\"keys\": [{}]}");
        assert!(jwt("a").jwks_error.is_empty());
        // A failed refresh keeps the last good document.
        index.set_jwks_error(uri, "timeout".into());
        assert_eq!(jwt("a").jwks, "{\"keys\": [{}]}");
        // Unnamed: dropped, and the fetcher no longer asks for it.
        index.delete(&at(Kind::RequestAuthentication, "a", "ra"));
        assert!(index.jwks_uris().is_empty());
        index
            .apply(
                &at(Kind::RequestAuthentication, "a", "ra"),
                request_authentication(uri),
            )
            .expect("apply");
        assert!(jwt("a").jwks_error.contains("not fetched yet"), "forgotten");
    }

    #[test]
    fn pod_addresses_resolve_to_the_pod_with_its_identity_and_opaque_ports() {
        let index = Index::default();
        index
            .apply(
                &at(Kind::Namespace, "", "ns"),
                Object::Namespace(NamespaceInfo {
                    inject: Some(true),
                    inbound_tls: InboundTls {
                        opaque_ports: Some(vec![(5432, 5432)]),
                        ..Default::default()
                    },
                }),
            )
            .expect("ns");
        let mut watch = index.watch();
        assert_eq!(
            index.resolve("10.0.0.7:5432", "ns", Some(&mut watch)),
            Resolution::Unknown
        );
        index
            .apply(
                &at(Kind::Pod, "ns", "db-0"),
                pod("db", "10.0.0.7", None, false),
            )
            .expect("pod");
        assert!(watch.take_change(), "the pod's arrival is news");
        let Resolution::Pod {
            namespace,
            endpoint,
        } = index.resolve("10.0.0.7:5432", "ns", None)
        else {
            panic!("not the pod");
        };
        assert_eq!(namespace, "ns");
        assert_eq!(
            endpoint.identity.as_deref(),
            Some("sa.ns.serviceaccount.identity.mesh.cluster.local")
        );
        assert!(endpoint.opaque, "the namespace's opaque port");
        let Resolution::Pod { endpoint, .. } = index.resolve("10.0.0.7:8080", "ns", None) else {
            panic!("not the pod");
        };
        assert!(!endpoint.opaque);
        // Its inbound policy for the opaque port reads it as opaque TCP.
        assert_eq!(
            index.inbound_policy("db-0", "ns", 5432, None).protocol(),
            pb::Protocol::Opaque
        );
        // A service's own annotation marks its port.
        index
            .apply(
                &at(Kind::Service, "ns", "db"),
                Object::Service(ServiceInfo {
                    opaque_ports: vec![(80, 80)],
                    ..match service(&[("app", "db")]) {
                        Object::Service(s) => s,
                        _ => unreachable!(),
                    }
                }),
            )
            .expect("svc");
        let Resolution::Service { endpoints, .. } = index.resolve("db.ns:80", "ns", None) else {
            panic!("not the service");
        };
        assert!(endpoints.values().all(|e| e.opaque));
    }

    #[test]
    fn a_split_waits_for_its_backends_then_is_admitted() {
        let index = Index::default();
        let split = TrafficSplitSpec {
            service: "web".into(),
            backends: vec![Backend {
                service: "web-v1".into(),
                weight: mesh_api::Quantity(1000),
            }],
        };
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("apex");
        let refused = index.apply(
            &at(Kind::TrafficSplit, "ns", "s"),
            Object::TrafficSplit(split),
        );
        assert!(refused.is_err());
        assert!(
            index
                .outbound_policy("web.ns:80", "ns", None)
                .backends
                .is_empty()
        );
        // The backend arrives later (watchers deliver kinds in any order).
        index
            .apply(&at(Kind::Service, "ns", "web-v1"), service(&[]))
            .expect("backend");
        assert_eq!(
            index
                .outbound_policy("web.ns:80", "ns", None)
                .backends
                .len(),
            1
        );
    }

    #[test]
    fn names_resolve_as_kubernetes_dns_does() {
        let index = Index::default();
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        index
            .apply(&at(Kind::Service, "svc", "x"), service(&[]))
            .expect("svc");
        for a in [
            "web.ns.svc.cluster.local:80",
            "web.ns.svc:80",
            "web.ns:80",
            "web:80",
            "web",
        ] {
            assert!(
                matches!(index.resolve(a, "ns", None), Resolution::Service { .. }),
                "{a}"
            );
        }
        // `x.svc` is service x in namespace svc.
        assert!(
            matches!(index.resolve("x.svc:80", "ns", None), Resolution::Service { namespace, .. } if namespace == "svc")
        );
        assert_eq!(index.resolve("nope.ns:80", "ns", None), Resolution::Unknown);
        let external = Object::Service(ServiceInfo {
            external_name: true,
            ..Default::default()
        });
        index
            .apply(&at(Kind::Service, "ns", "ext"), external)
            .expect("svc");
        assert_eq!(
            index.resolve("ext.ns:80", "ns", None),
            Resolution::Unknown,
            "ExternalName goes to DNS"
        );
    }

    #[test]
    fn in_a_cluster_only_pods_running_the_proxy_are_meshed() {
        for (index, want) in [(Index::default(), true), (Index::for_cluster(), false)] {
            index
                .apply(
                    &at(Kind::Namespace, "", "ns"),
                    Object::Namespace(NamespaceInfo {
                        inject: Some(true),
                        ..Default::default()
                    }),
                )
                .expect("ns");
            index
                .apply(&at(Kind::Service, "ns", "web"), service(&[("app", "web")]))
                .expect("svc");
            index
                .apply(
                    &at(Kind::Pod, "ns", "old"),
                    pod("web", "10.0.0.1", None, false),
                )
                .expect("pod");
            assert_eq!(identities(&index, "web.ns:80")[0].is_some(), want);
        }
        let index = Index::for_cluster();
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[("app", "web")]))
            .expect("svc");
        index
            .apply(
                &at(Kind::Pod, "ns", "p"),
                pod("web", "10.0.0.2", None, true),
            )
            .expect("pod");
        assert_eq!(
            identities(&index, "web.ns:80"),
            [Some(
                "sa.ns.serviceaccount.identity.mesh.cluster.local".into()
            )]
        );
    }

    #[test]
    fn slice_endpoints_wait_for_their_pod() {
        let index = Index::for_cluster();
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        let slice = SliceInfo {
            service: "web".into(),
            ports: vec![(None, 8080)],
            endpoints: vec![SliceEndpoint {
                addresses: vec!["10.0.0.3".parse().expect("ip")],
                ready: true,
                pod: Some("p".into()),
            }],
        };
        index
            .apply(
                &at(Kind::EndpointSlice, "ns", "web-1"),
                Object::EndpointSlice(slice),
            )
            .expect("slice");
        assert!(identities(&index, "web.ns:80").is_empty());
        index
            .apply(
                &at(Kind::Pod, "ns", "p"),
                pod("web", "10.0.0.3", None, true),
            )
            .expect("pod");
        assert_eq!(identities(&index, "web.ns:80").len(), 1);
    }

    #[test]
    fn identical_objects_are_no_news() {
        let index = Index::default();
        let mut w = index.watch();
        assert_eq!(
            index.resolve("web.ns:80", "ns", Some(&mut w)),
            Resolution::Unknown
        );
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        assert!(w.take_change(), "its creation is news");
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        assert!(!w.take_change(), "the same object again is not");
    }

    /// Watches on `n` services `svc-i` (selector app=svc-i, one pod each), resolved.
    fn watched(index: &Index, n: usize) -> Vec<Watch> {
        (0..n)
            .map(|i| {
                let name = format!("svc-{i}");
                index
                    .apply(&at(Kind::Service, "ns", &name), service(&[("app", &name)]))
                    .expect("svc");
                index
                    .apply(
                        &at(Kind::Pod, "ns", &format!("{name}-a")),
                        pod(
                            &name,
                            &format!("10.1.{}.{}", i / 200, i % 200 + 1),
                            Some(true),
                            false,
                        ),
                    )
                    .expect("pod");
                let mut w = index.watch();
                let r = index.resolve(&format!("{name}.ns:80"), "ns", Some(&mut w));
                assert!(
                    matches!(r, Resolution::Service { ref endpoints, .. } if endpoints.len() == 1),
                    "{r:?}"
                );
                w
            })
            .collect()
    }

    #[test]
    fn a_pod_change_wakes_only_the_watches_of_its_services() {
        let index = Index::default();
        let watches = watched(&index, 300);
        let before = index.wakes();
        // A second pod for svc-7.
        index
            .apply(
                &at(Kind::Pod, "ns", "svc-7-b"),
                pod("svc-7", "10.2.0.1", Some(true), false),
            )
            .expect("pod");
        assert_eq!(index.wakes() - before, 1, "one watch woken");
        let woken: Vec<usize> = (0..watches.len())
            .filter(|i| watches[*i].take_change())
            .collect();
        assert_eq!(woken, [7]);
        // A pod whose labels no service selects wakes nobody.
        index
            .apply(
                &at(Kind::Pod, "ns", "stray"),
                pod("nothing", "10.3.0.1", None, false),
            )
            .expect("pod");
        assert_eq!(index.wakes() - before, 1);
        // Relabelling a pod from svc-1 to svc-2 wakes both, and only them.
        index
            .apply(
                &at(Kind::Pod, "ns", "svc-1-a"),
                pod("svc-2", "10.1.0.2", Some(true), false),
            )
            .expect("pod");
        let woken: Vec<usize> = (0..watches.len())
            .filter(|i| watches[*i].take_change())
            .collect();
        assert_eq!(woken, [1, 2]);
        // A dropped watch listens to nothing.
        let listened = index.topics_listened();
        drop(watches);
        assert_eq!(listened, 600, "each: the service and its endpoints");
        assert_eq!(index.topics_listened(), 0);
    }

    #[test]
    fn watches_sharing_wakes_are_told_apart_by_tag() {
        let index = Index::default();
        // Services and their pods, then one stream's worth of watches over them.
        drop(watched(&index, 5));
        let wakes = Wakes::new();
        let mut watches: Vec<Watch> = (0..5)
            .map(|i| {
                let mut w = index.watch_in(&wakes, 100 + i);
                index.resolve(&format!("svc-{i}.ns:80"), "ns", Some(&mut w));
                w
            })
            .collect();
        assert!(wakes.take(usize::MAX).is_empty(), "answers are no news");
        for (svc, ip) in [
            ("svc-3", "10.2.0.3"),
            ("svc-1", "10.2.0.1"),
            ("svc-4", "10.2.0.4"),
        ] {
            index
                .apply(
                    &at(Kind::Pod, "ns", &format!("{svc}-b")),
                    pod(svc, ip, Some(true), false),
                )
                .expect("pod");
        }
        assert!(
            futures_util::FutureExt::now_or_never(wakes.woken()).is_some(),
            "woken"
        );
        // At most two at a time, in turn; the rest stay for the next take.
        assert_eq!(wakes.take(2), [101, 103]);
        assert_eq!(wakes.take(2), [104]);
        // Turns go on from where the last take stopped: a tag woken again and again
        // cannot keep the others waiting.
        for svc in ["svc-0", "svc-2", "svc-4"] {
            index
                .apply(
                    &at(Kind::Pod, "ns", &format!("{svc}-x")),
                    pod(svc, &format!("10.2.2.{}", &svc[4..]), Some(true), false),
                )
                .expect("pod");
        }
        assert_eq!(wakes.take(2), [100, 102], "after 104: wrap around");
        assert_eq!(wakes.take(2), [104]);
        assert!(wakes.take(2).is_empty());
        assert!(futures_util::FutureExt::now_or_never(wakes.woken()).is_none());
        // A dropped watch of the group is woken no more; the others still are.
        watches.remove(1);
        for svc in ["svc-1", "svc-2"] {
            index
                .apply(
                    &at(Kind::Pod, "ns", &format!("{svc}-c")),
                    pod(svc, &format!("10.2.1.{}", &svc[4..]), Some(true), false),
                )
                .expect("pod");
        }
        assert_eq!(wakes.take(usize::MAX), [102]);
    }

    #[test]
    fn cluster_ips_profiles_splits_and_namespaces_wake_their_targets() {
        let index = Index::default();
        let mut by_ip = index.watch();
        assert_eq!(
            index.resolve("10.96.0.9:80", "ns", Some(&mut by_ip)),
            Resolution::Unknown
        );
        let mut policy = index.watch();
        index.outbound_policy("web.ns:80", "ns", Some(&mut policy));
        let mut other = index.watch();
        index.outbound_policy("db.ns:80", "ns", Some(&mut other));
        let mut inbound = index.watch();
        index.inbound_policy("web-1", "ns", 8080, Some(&mut inbound));
        let web = Object::Service(ServiceInfo {
            cluster_ip: "10.96.0.9".parse().ok(),
            ports: vec![ServicePort {
                port: 80,
                name: None,
                target: TargetPort::Number(8080),
            }],
            ..Default::default()
        });
        index
            .apply(&at(Kind::Service, "ns", "web"), web)
            .expect("svc");
        assert!(by_ip.take_change() && policy.take_change());
        assert!(!other.take_change() && !inbound.take_change());
        // Woken watches answer again (as the streams do), listening anew.
        assert!(
            matches!(index.resolve("10.96.0.9:80", "ns", Some(&mut by_ip)), Resolution::Service { ref name, .. } if name == "web")
        );
        index.outbound_policy("web.ns:80", "ns", Some(&mut policy));
        let profile: ServiceProfileSpec = serde_json::from_value(serde_json::json!({
            "routes": [{"name": "r", "condition": {"method": "GET"}}]
        }))
        .expect("profile");
        index
            .apply(
                &at(Kind::ServiceProfile, "ns", "web.ns.svc.cluster.local"),
                Object::ServiceProfile(profile),
            )
            .expect("profile");
        assert!(policy.take_change() && !other.take_change() && !by_ip.take_change());
        assert_eq!(
            index
                .outbound_policy("web.ns:80", "ns", Some(&mut policy))
                .routes
                .len(),
            1
        );
        index
            .apply(&at(Kind::Service, "ns", "web-v2"), service(&[]))
            .expect("svc");
        let split = TrafficSplitSpec {
            service: "web".into(),
            backends: vec![Backend {
                service: "web-v2".into(),
                weight: mesh_api::Quantity(1000),
            }],
        };
        index
            .apply(
                &at(Kind::TrafficSplit, "ns", "s"),
                Object::TrafficSplit(split),
            )
            .expect("split");
        assert!(policy.take_change() && !other.take_change());
        index.delete(&at(Kind::TrafficSplit, "ns", "s"));
        assert!(policy.take_change() && !other.take_change());
        index
            .apply(
                &at(Kind::Namespace, "", "ns"),
                Object::Namespace(NamespaceInfo {
                    inject: Some(true),
                    ..Default::default()
                }),
            )
            .expect("ns");
        assert!(inbound.take_change());
        // The cluster IP moves to another service: the IP's watch follows it.
        index.delete(&at(Kind::Service, "ns", "web"));
        assert!(by_ip.take_change());
        assert_eq!(
            index.resolve("10.96.0.9:80", "ns", Some(&mut by_ip)),
            Resolution::Unknown
        );
    }

    #[test]
    fn selectors_use_the_rarest_label() {
        let index = Index::default();
        // Many pods share `tier: web`; one has `app: a`.
        for i in 0..50 {
            let mut labels = BTreeMap::from([("tier".to_string(), "web".to_string())]);
            if i == 3 {
                labels.insert("app".into(), "a".into());
            }
            let pod = Object::Pod(PodInfo {
                ip: format!("10.0.1.{}", i + 1).parse().ok(),
                labels,
                ready: true,
                ..Default::default()
            });
            index
                .apply(&at(Kind::Pod, "ns", &format!("p{i}")), pod)
                .expect("pod");
        }
        index
            .apply(
                &at(Kind::Service, "ns", "a"),
                service(&[("tier", "web"), ("app", "a")]),
            )
            .expect("svc");
        index
            .apply(&at(Kind::Service, "ns", "all"), service(&[("tier", "web")]))
            .expect("svc");
        let count = |a: &str| match index.resolve(a, "ns", None) {
            Resolution::Service { endpoints, .. } => endpoints.len(),
            Resolution::Pod { .. } | Resolution::Unknown => usize::MAX,
        };
        assert_eq!(count("a.ns:80"), 1);
        assert_eq!(count("all.ns:80"), 50);
        // Another namespace's pods with the same labels are not selected.
        index
            .apply(
                &at(Kind::Pod, "other", "x"),
                pod("a", "10.9.0.1", None, false),
            )
            .expect("pod");
        assert_eq!(count("a.ns:80"), 1);
    }
}
