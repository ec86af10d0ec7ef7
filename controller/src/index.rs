//! The index: what the cluster (or a local folder) says about services, pods,
//! namespaces, profiles and splits, and the answers proxies ask for. Pure logic: the
//! sources translate objects into it, the gRPC server reads from it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::RwLock;

use mesh_api::policy as pb;

use crate::compile::InboundTls;
use mesh_api::{FieldError, ServiceProfileSpec, TrafficSplitSpec};
use tokio::sync::watch;

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
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

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
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
}

/// Why an object was refused; the last good version of it stays in force.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// Fields are invalid.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
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
    /// Nothing the index knows: the proxy falls back to DNS.
    Unknown,
}

/// Inserts `value`, saying whether anything changed (an identical object is no news
/// for the streams that follow the index).
fn replace<K: std::hash::Hash + Eq, V: PartialEq>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

#[derive(Default, Debug)]
struct State {
    /// Whether the inject annotation alone meshes a pod (local folders), or only a
    /// running proxy does (clusters).
    annotation_meshes: bool,
    /// Splits refused only because a backend service does not exist yet.
    pending_splits: HashMap<(String, String), TrafficSplitSpec>,
    namespaces: HashMap<String, NamespaceInfo>,
    services: HashMap<(String, String), ServiceInfo>,
    pods: HashMap<(String, String), PodInfo>,
    slices: HashMap<(String, String), SliceInfo>,
    profiles: HashMap<(String, String), ServiceProfileSpec>,
    splits: HashMap<(String, String), TrafficSplitSpec>,
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
    changed: watch::Sender<u64>,
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

    fn with_state(state: State) -> Self {
        Self {
            state: RwLock::new(state),
            changed: watch::channel(0).0,
        }
    }

    /// A namespace's inject annotation, or `None` if the namespace is not known yet.
    pub fn namespace_inject(&self, namespace: &str) -> Option<Option<bool>> {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.namespaces.get(namespace).map(|n| n.inject)
    }

    /// Every pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<PodView> {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
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
        let changed = {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            match object {
                Object::Namespace(n) => replace(&mut s.namespaces, at.name.clone(), n),
                Object::Service(svc) => {
                    let changed = replace(&mut s.services, key, svc);
                    // Splits that were waiting for their backends may be complete now.
                    s.admit_pending_splits(&at.namespace) || changed
                }
                Object::Pod(pod) => replace(&mut s.pods, key, pod),
                Object::EndpointSlice(slice) => replace(&mut s.slices, key, slice),
                Object::ServiceProfile(spec) => {
                    let errors = spec.validate();
                    if !errors.is_empty() {
                        return Err(Rejected::Invalid(errors));
                    }
                    replace(&mut s.profiles, key, spec)
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
                        s.pending_splits.insert(key, spec);
                        return Err(Rejected::Invalid(missing));
                    }
                    s.pending_splits.remove(&key);
                    replace(&mut s.splits, key, spec)
                }
            }
        };
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Removes an object.
    pub fn delete(&self, at: &ObjectRef) {
        let key = (at.namespace.clone(), at.name.clone());
        {
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            let removed = match at.kind {
                Kind::Namespace => s.namespaces.remove(&at.name).is_some(),
                Kind::Service => s.services.remove(&key).is_some(),
                Kind::Pod => s.pods.remove(&key).is_some(),
                Kind::EndpointSlice => s.slices.remove(&key).is_some(),
                Kind::ServiceProfile => s.profiles.remove(&key).is_some(),
                Kind::TrafficSplit => {
                    s.pending_splits.remove(&key);
                    s.splits.remove(&key).is_some()
                }
            };
            if !removed {
                return;
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// A receiver that changes whenever the index does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves `authority` (`name.ns.svc.cluster.local:port`, `name.ns:port`, `name`,
    /// or a cluster IP and port) for a caller in `caller_ns`.
    pub fn resolve(&self, authority: &str, caller_ns: &str) -> Resolution {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some((namespace, name, port)) = s.find_service(authority, caller_ns) else {
            return Resolution::Unknown;
        };
        let endpoints = s.endpoints(&namespace, &name, port);
        Resolution::Service {
            namespace,
            name,
            port,
            endpoints,
        }
    }

    /// The client policy of the service `authority` names: compiled from its
    /// ServiceProfile and the TrafficSplit whose apex it is. Empty for names that are
    /// no service.
    pub fn outbound_policy(&self, authority: &str, caller_ns: &str) -> pb::OutboundPolicy {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some((namespace, name, port)) = s.find_service(authority, caller_ns) else {
            return pb::OutboundPolicy::default();
        };
        let fqdn = format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}");
        let profile = s.profiles.get_key_value(&(namespace.clone(), fqdn));
        // A split on this service decides where its traffic goes (SMI: the apex).
        let split = s
            .splits
            .iter()
            .filter(|((ns, _), sp)| *ns == namespace && sp.service == name)
            .min_by_key(|(k, _)| *k);
        crate::compile::outbound(&crate::compile::Outbound {
            domain: CLUSTER_DOMAIN,
            namespace: &namespace,
            name: &name,
            port,
            profile: profile.map(|((_, n), spec)| (n.as_str(), spec)),
            split: split.map(|((_, n), spec)| (n.as_str(), spec)),
        })
    }

    /// The server policy of port `port` of pod `workload` in `namespace`.
    pub fn inbound_policy(&self, workload: &str, namespace: &str, port: u16) -> pb::InboundPolicy {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let pod = s
            .pods
            .get(&(namespace.to_string(), workload.to_string()))
            .map(|p| (namespace, workload, &p.inbound_tls));
        let ns = s
            .namespaces
            .get(namespace)
            .map(|n| (namespace, &n.inbound_tls));
        crate::compile::inbound(port, pod, ns)
    }
}

impl State {
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

    /// Admits pending splits in `namespace` whose backends all exist now.
    fn admit_pending_splits(&mut self, namespace: &str) -> bool {
        let ready: Vec<_> = self
            .pending_splits
            .iter()
            .filter(|((ns, _), spec)| ns == namespace && self.missing_backends(ns, spec).is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in &ready {
            if let Some(spec) = self.pending_splits.remove(key) {
                tracing::info!(namespace = %key.0, split = %key.1, "TrafficSplit admitted: its backends exist now");
                self.splits.insert(key.clone(), spec);
            }
        }
        !ready.is_empty()
    }

    fn find_service(&self, authority: &str, caller_ns: &str) -> Option<(String, String, u16)> {
        let (host, port) = split_authority(authority)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let ((ns, name), _) = self
                .services
                .iter()
                .find(|(_, s)| s.cluster_ip == Some(ip))?;
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
        let svc = self.services.get(&(ns.clone(), name.clone()))?;
        // An ExternalName service is a DNS alias: the proxy resolves it by DNS.
        if svc.external_name {
            return None;
        }
        Some((ns, name, port))
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
        if let Some((name, pod)) = pod {
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
        }
    }

    fn endpoints(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> BTreeMap<SocketAddr, EndpointView> {
        let mut out = BTreeMap::new();
        let Some(svc) = self
            .services
            .get(&(namespace.to_string(), name.to_string()))
        else {
            return out;
        };
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return out;
        };
        // EndpointSlices, when the service has any, are what Kubernetes decided (and
        // the only source for services without a selector); pods and the selector
        // otherwise, as in a local folder.
        let slices: Vec<&SliceInfo> = self
            .slices
            .iter()
            .filter(|((ns, _), s)| ns == namespace && s.service == name)
            .map(|(_, s)| s)
            .collect();
        if !slices.is_empty() {
            for slice in slices {
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
        if svc.selector.is_empty() {
            return out;
        }
        for ((ns, pod_name), pod) in &self.pods {
            if ns != namespace
                || !pod.ready
                || !svc
                    .selector
                    .iter()
                    .all(|(k, v)| pod.labels.get(k) == Some(v))
            {
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
            out.insert(addr, self.view(ns, addr, Some((pod_name, pod))));
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
        match index.resolve(authority, "ns") {
            Resolution::Service { endpoints, .. } => {
                endpoints.values().map(|e| e.identity.clone()).collect()
            }
            Resolution::Unknown => vec![],
        }
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
        assert!(index.outbound_policy("web.ns:80", "ns").backends.is_empty());
        // The backend arrives later (watchers deliver kinds in any order).
        index
            .apply(&at(Kind::Service, "ns", "web-v1"), service(&[]))
            .expect("backend");
        assert_eq!(index.outbound_policy("web.ns:80", "ns").backends.len(), 1);
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
                matches!(index.resolve(a, "ns"), Resolution::Service { .. }),
                "{a}"
            );
        }
        // `x.svc` is service x in namespace svc.
        assert!(
            matches!(index.resolve("x.svc:80", "ns"), Resolution::Service { namespace, .. } if namespace == "svc")
        );
        assert_eq!(index.resolve("nope.ns:80", "ns"), Resolution::Unknown);
        let external = Object::Service(ServiceInfo {
            external_name: true,
            ..Default::default()
        });
        index
            .apply(&at(Kind::Service, "ns", "ext"), external)
            .expect("svc");
        assert_eq!(
            index.resolve("ext.ns:80", "ns"),
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
        let mut rx = index.subscribe();
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        index
            .apply(&at(Kind::Service, "ns", "web"), service(&[]))
            .expect("svc");
        assert!(!rx.has_changed().expect("open"));
    }
}
