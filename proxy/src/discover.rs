//! Discovery and policy from the controller: one watch per authority for its endpoints
//! (`Destination.Get`) and its client policy (`OutboundPolicies.Watch`), and one per
//! application port for its server policy (`InboundPolicies.Watch`). Each keeps the
//! last answer while the controller is away and reconnects with backoff. Names the
//! controller does not know are resolved by DNS instead.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::destination as pb;
use mesh_api::destination::destination_client::DestinationClient;
use mesh_api::policy as policy_pb;
use mesh_api::policy::inbound_policies_client::InboundPoliciesClient;
use mesh_api::policy::outbound_policies_client::OutboundPoliciesClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use crate::metrics::Metrics;
use crate::profile::Profile;
use crate::vocab::DstLabels;

/// How long a first request for a name waits for the controller's first answer, when
/// the controller is reachable but slow (an unreachable one means DNS at once).
const FIRST_ANSWER: Duration = Duration::from_secs(5);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Authorities watched at once, per kind; past this, new names use DNS (bounded
/// memory) until idle ones are dropped. Both kinds and the inbound ports together stay
/// under the controller's 10,000 concurrent streams per connection: past that, a new
/// stream would wait for one to end, and its first request with it.
const MAX_WATCHES: usize = 4_096;
const _: () =
    assert!(2 * MAX_WATCHES + MAX_INBOUND_PORTS < mesh_api::CONTROLLER_MAX_STREAMS as usize);
/// Application ports whose inbound policy is watched at once. Clients choose the port
/// they connect to, so without a bound anyone could open a watch per port and fill the
/// controller connection's streams; past it, the proxy's own setting decides, as it
/// did before the controller decided anything.
const MAX_INBOUND_PORTS: usize = 64;
/// How long a first connection to a port waits for the controller's first decision.
const INBOUND_FIRST_ANSWER: Duration = Duration::from_secs(1);

/// Where to send a request for one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dst {
    /// Where to connect: the app itself, or the endpoint's proxy's inbound port.
    pub connect: SocketAddr,
    /// When `connect` is the endpoint's proxy, the app port it forwards to.
    pub target_port: Option<u16>,
    /// The identity the endpoint's proxy presents, when meshed.
    pub identity: Option<String>,
    /// What discovery says the endpoint belongs to, for metric labels.
    pub labels: Option<Arc<DstLabels>>,
}

impl Dst {
    /// An endpoint reached directly.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            connect: addr,
            target_port: None,
            identity: None,
            labels: None,
        }
    }
}

/// What the controller says about an authority.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Answer {
    /// No answer yet.
    #[default]
    Pending,
    /// Not a name the controller knows: use DNS.
    Unknown,
    /// A known service and its endpoints (perhaps none).
    Endpoints(Arc<Vec<Dst>>),
}

/// What the controller says about inbound mTLS on one application port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundTls {
    /// No answer yet.
    Pending,
    /// No decision: the proxy's own setting applies.
    Unset,
    /// Plaintext accepted beside mTLS.
    Permissive,
    /// mTLS from meshed peers only.
    Strict,
}

/// A client of the controller's destination and policy services.
#[derive(Debug)]
pub struct Discover {
    client: DestinationClient<Channel>,
    outbound: OutboundPoliciesClient<Channel>,
    inbound: InboundPoliciesClient<Channel>,
    namespace: String,
    /// This proxy's pod, for its inbound policy.
    workload: Option<String>,
    watches: Mutex<HashMap<String, Watched<Answer>>>,
    profiles: Mutex<HashMap<String, Watched<Option<Arc<Profile>>>>>,
    ports: Mutex<HashMap<u16, watch::Receiver<InboundTls>>>,
    /// Where the number of watches held is shown.
    metrics: Option<Arc<Metrics>>,
}

/// One authority's watch: the latest answer, when a request last asked for it, and the
/// task that follows the controller (stopped when the watch is dropped).
#[derive(Debug)]
struct Watched<T> {
    rx: watch::Receiver<T>,
    used: tokio::time::Instant,
    task: tokio::task::AbortHandle,
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        // Ends the gRPC stream: the controller stops following it too.
        self.task.abort();
    }
}

/// The watch of `key` in `map`, marked used now. When there is none (and fewer than
/// [`MAX_WATCHES`]), one starts at `pending` and `follow` keeps it up to date.
/// `None` past the bound.
fn watched<T, F>(
    map: &Mutex<HashMap<String, Watched<T>>>,
    key: &str,
    pending: T,
    follow: impl FnOnce(watch::Sender<T>) -> F,
    gauge: Option<&AtomicU64>,
) -> Option<watch::Receiver<T>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let now = tokio::time::Instant::now();
    if let Some(w) = map.get_mut(key) {
        w.used = now;
        return Some(w.rx.clone());
    }
    if map.len() >= MAX_WATCHES {
        return None;
    }
    let (tx, rx) = watch::channel(pending);
    let task = tokio::spawn(follow(tx)).abort_handle();
    map.insert(
        key.to_string(),
        Watched {
            rx: rx.clone(),
            used: now,
            task,
        },
    );
    if let Some(g) = gauge {
        g.store(map.len() as u64, Ordering::Relaxed);
    }
    Some(rx)
}

/// Drops the watches in `map` no request has asked for within `idle`; how many are left.
fn sweep<T>(
    map: &Mutex<HashMap<String, Watched<T>>>,
    idle: Duration,
    gauge: Option<&AtomicU64>,
) -> usize {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.used.elapsed() < idle);
    if let Some(g) = gauge {
        g.store(map.len() as u64, Ordering::Relaxed);
    }
    map.len()
}

impl Discover {
    /// A client for the destination service at `addr` (`host:port`), asking on behalf of
    /// a pod in `namespace`. Connects lazily.
    pub fn new(addr: &str, namespace: &str) -> Result<Self, tonic::transport::Error> {
        let channel = GrpcEndpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A controller whose node died must not leave streams half-open for the
            // TCP timeout: ping, and give up on a silent peer.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            client: DestinationClient::new(channel.clone()),
            outbound: OutboundPoliciesClient::new(channel.clone()),
            inbound: InboundPoliciesClient::new(channel),
            namespace: namespace.to_string(),
            workload: None,
            watches: Mutex::default(),
            profiles: Mutex::default(),
            ports: Mutex::default(),
            metrics: None,
        })
    }

    /// Shows the number of watches held in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Drops the watches of authorities no request has asked for within `idle`; returns
    /// how many endpoint and policy watches are left.
    pub fn sweep(&self, idle: Duration) -> (usize, usize) {
        let held = self.metrics.as_deref().map(|m| &m.held);
        (
            sweep(&self.watches, idle, held.map(|h| &h.destination_watches)),
            sweep(&self.profiles, idle, held.map(|h| &h.policy_watches)),
        )
    }

    /// Asks for the inbound policy of pod `name` (in this client's namespace).
    pub fn with_workload(mut self, name: &str) -> Self {
        self.workload = Some(name.to_string());
        self
    }

    /// The controller's inbound mTLS decision for application port `port`, waiting
    /// briefly for the first answer; `None` when it makes none (or cannot be asked).
    pub async fn inbound_tls(&self, port: u16) -> Option<bool> {
        let workload = self.workload.as_ref()?;
        let mut rx = {
            let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
            match ports.get(&port) {
                Some(rx) => rx.clone(),
                None if ports.len() >= MAX_INBOUND_PORTS => {
                    tracing::debug!(port, "inbound policy not asked for: too many ports watched");
                    return None;
                }
                None => {
                    let (tx, rx) = watch::channel(InboundTls::Pending);
                    ports.insert(port, rx.clone());
                    let req = policy_pb::InboundPolicyRequest {
                        workload: workload.clone(),
                        namespace: self.namespace.clone(),
                        port: port.into(),
                    };
                    tokio::spawn(follow_inbound(self.inbound.clone(), req, tx));
                    rx
                }
            }
        };
        if *rx.borrow() == InboundTls::Pending {
            let first = rx.wait_for(|a| *a != InboundTls::Pending);
            let _ = tokio::time::timeout(INBOUND_FIRST_ANSWER, first).await;
        }
        let answer = *rx.borrow();
        match answer {
            InboundTls::Strict => Some(true),
            InboundTls::Permissive => Some(false),
            InboundTls::Pending | InboundTls::Unset => None,
        }
    }

    /// The current answer for `authority`, waiting briefly for the first one.
    pub async fn resolve(&self, authority: &str) -> Answer {
        let Some(mut rx) = self.watch(authority) else {
            return Answer::Unknown;
        };
        if *rx.borrow() == Answer::Pending {
            let _ =
                tokio::time::timeout(FIRST_ANSWER, rx.wait_for(|a| *a != Answer::Pending)).await;
        }
        let answer = rx.borrow().clone();
        match answer {
            // The controller never answered: DNS, rather than failing the request.
            Answer::Pending => Answer::Unknown,
            a => a,
        }
    }

    /// The profile for `authority` (empty when none applies). Waits briefly for the
    /// first answer.
    pub async fn profile(&self, authority: &str) -> Arc<Profile> {
        let gauge = self.metrics.as_deref().map(|m| &m.held.policy_watches);
        let req = || policy_pb::OutboundPolicyRequest {
            authority: authority.to_string(),
            namespace: self.namespace.clone(),
        };
        let rx = watched(
            &self.profiles,
            authority,
            None,
            |tx| follow_policy(self.outbound.clone(), req(), tx),
            gauge,
        );
        let Some(mut rx) = rx else {
            return Arc::default();
        };
        if rx.borrow().is_none() {
            let _ = tokio::time::timeout(FIRST_ANSWER, rx.wait_for(Option::is_some)).await;
        }
        let profile = rx.borrow().clone();
        profile.unwrap_or_default()
    }

    fn watch(&self, authority: &str) -> Option<watch::Receiver<Answer>> {
        let gauge = self.metrics.as_deref().map(|m| &m.held.destination_watches);
        let req = || pb::GetDestination {
            authority: authority.to_string(),
            namespace: self.namespace.clone(),
        };
        watched(
            &self.watches,
            authority,
            Answer::Pending,
            |tx| follow(self.client.clone(), req(), tx),
            gauge,
        )
    }
}

/// Keeps `tx` up to date with the controller's answers for one authority.
async fn follow(
    mut client: DestinationClient<Channel>,
    req: pb::GetDestination,
    tx: watch::Sender<Answer>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.get(req.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                // Each stream starts from the full state, so start from empty.
                let mut endpoints = BTreeMap::new();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff = BACKOFF_MIN;
                            let answer = apply(&mut endpoints, update);
                            tx.send_if_modified(|a| {
                                let changed = *a != answer;
                                *a = answer;
                                changed
                            });
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(authority = %req.authority, %status, "destination stream ended");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tx.send_replace(Answer::Unknown);
                return;
            }
            Err(status) => {
                tracing::debug!(authority = %req.authority, %status, "destination service unreachable");
            }
        }
        // Keep serving the last answer; with none yet, let requests use DNS meanwhile.
        settle(&tx, |a| *a == Answer::Pending, || Answer::Unknown);
        back_off(&mut backoff).await;
    }
}

/// Keeps `tx` up to date with the controller's client policy for one authority; like
/// [`follow`], the last policy stands while the controller is away, and so does it
/// when a new one asks for what this proxy cannot do (never half-applied).
async fn follow_policy(
    mut client: OutboundPoliciesClient<Channel>,
    req: policy_pb::OutboundPolicyRequest,
    tx: watch::Sender<Option<Arc<Profile>>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.watch(req.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                while let Ok(Some(policy)) = stream.message().await {
                    backoff = BACKOFF_MIN;
                    // Compiled once per update, not per request.
                    match Profile::compile(&policy) {
                        Ok(profile) => {
                            tx.send_replace(Some(Arc::new(profile)));
                        }
                        Err(unsupported) => {
                            tracing::warn!(authority = %req.authority, %unsupported, "policy not applied: the last one stays");
                            // Nothing to keep yet: the service itself, with defaults.
                            settle(&tx, Option::is_none, || Some(Arc::default()));
                        }
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tx.send_replace(Some(Arc::default()));
                return;
            }
            Err(status) => {
                tracing::debug!(authority = %req.authority, %status, "destination service unreachable")
            }
        }
        // No profile yet: requests go to the service itself meanwhile.
        settle(&tx, Option::is_none, || Some(Arc::default()));
        back_off(&mut backoff).await;
    }
}

/// Keeps `tx` up to date with the controller's inbound mTLS decision for one port; the
/// last decision stands while the controller is away.
async fn follow_inbound(
    mut client: InboundPoliciesClient<Channel>,
    req: policy_pb::InboundPolicyRequest,
    tx: watch::Sender<InboundTls>,
) {
    use policy_pb::MtlsMode;
    let mut backoff = BACKOFF_MIN;
    loop {
        match client.watch(req.clone()).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                while let Ok(Some(policy)) = stream.message().await {
                    backoff = BACKOFF_MIN;
                    let tls = match policy.mtls() {
                        MtlsMode::Strict => InboundTls::Strict,
                        MtlsMode::Permissive => InboundTls::Permissive,
                        MtlsMode::Unset => InboundTls::Unset,
                    };
                    tx.send_replace(tls);
                }
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tx.send_replace(InboundTls::Unset);
                return;
            }
            Err(status) => {
                tracing::debug!(port = req.port, %status, "policy service unreachable");
            }
        }
        // No decision yet: the proxy's own setting applies meanwhile.
        settle(&tx, |t| *t == InboundTls::Pending, || InboundTls::Unset);
        back_off(&mut backoff).await;
    }
}

/// Waits out `backoff` (with up to half again of jitter) and doubles it, up to the max.
async fn back_off(backoff: &mut Duration) {
    let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
    tokio::time::sleep(*backoff + jitter).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// Replaces a watch's value that is still `pending` (no answer yet) with `fallback`,
/// so that waiters go on with the proxy's defaults; an answer already given stands.
fn settle<T>(tx: &watch::Sender<T>, pending: impl Fn(&T) -> bool, fallback: impl FnOnce() -> T) {
    tx.send_if_modified(|value| {
        let was = pending(value);
        if was {
            *value = fallback();
        }
        was
    });
}

fn socket_addr(a: &pb::SocketAddr) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        a.ip.parse::<IpAddr>().ok()?,
        u16::try_from(a.port).ok()?,
    ))
}

/// Applies one update to the endpoints (keyed by application address).
fn apply(endpoints: &mut BTreeMap<SocketAddr, Dst>, update: pb::Update) -> Answer {
    use pb::update::Update;
    match update.update {
        Some(Update::Add(add)) => {
            let set = &add.metric_labels;
            for e in add.endpoints {
                let label = |k: &str| -> Arc<str> {
                    Arc::from(
                        e.metric_labels
                            .get(k)
                            .or_else(|| set.get(k))
                            .map_or("", String::as_str),
                    )
                };
                let labels = DstLabels {
                    namespace: label("namespace"),
                    workload: label("deployment"),
                    service: label("service"),
                };
                // Endpoints discovery says nothing about get no dst_* labels.
                let labels = (!labels.namespace.is_empty()
                    || !labels.workload.is_empty()
                    || !labels.service.is_empty())
                .then(|| Arc::new(labels));
                let Some(addr) = e.addr.as_ref().and_then(socket_addr) else {
                    continue;
                };
                let inbound = e
                    .protocol_hint
                    .as_ref()
                    .and_then(|h| u16::try_from(h.inbound_port).ok())
                    .filter(|p| *p != 0);
                let dst = match inbound {
                    Some(port) => Dst {
                        connect: SocketAddr::new(addr.ip(), port),
                        target_port: Some(addr.port()),
                        identity: Some(e.tls_identity).filter(|i| !i.is_empty()),
                        labels,
                    },
                    None => Dst {
                        labels,
                        ..Dst::direct(addr)
                    },
                };
                endpoints.insert(addr, dst);
            }
        }
        Some(Update::Remove(remove)) => {
            for a in remove.addrs.iter().filter_map(socket_addr) {
                endpoints.remove(&a);
            }
        }
        Some(Update::NoEndpoints(n)) => {
            endpoints.clear();
            if !n.exists {
                return Answer::Unknown;
            }
        }
        None => {}
    }
    Answer::Endpoints(Arc::new(endpoints.values().cloned().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ip: &str, port: u32, inbound: Option<u32>) -> pb::Update {
        pb::Update {
            update: Some(pb::update::Update::Add(pb::AddSet {
                endpoints: vec![pb::Endpoint {
                    addr: Some(pb::SocketAddr {
                        ip: ip.into(),
                        port,
                    }),
                    weight: 1,
                    metric_labels: Default::default(),
                    tls_identity: "web.ns.serviceaccount.identity.mesh.cluster.local".into(),
                    protocol_hint: inbound.map(|p| pb::ProtocolHint {
                        h2: true,
                        inbound_port: p,
                        opaque: false,
                    }),
                }],
                metric_labels: Default::default(),
            })),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn watches_are_bounded_and_idle_ones_make_room() {
        let map: Mutex<HashMap<String, Watched<u8>>> = Mutex::default();
        let start = |_tx: watch::Sender<u8>| std::future::pending::<()>();
        for i in 0..MAX_WATCHES {
            assert!(watched(&map, &format!("svc-{i}:80"), 0, start, None).is_some());
        }
        assert!(
            watched(&map, "one-more:80", 0, start, None).is_none(),
            "bounded"
        );
        // A name already watched is still served, and counts as used.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(watched(&map, "svc-7:80", 0, start, None).is_some());
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(
            sweep(&map, Duration::from_secs(60), None),
            1,
            "only svc-7 was used"
        );
        assert!(watched(&map, "one-more:80", 0, start, None).is_some());
    }

    #[test]
    fn updates_build_the_endpoint_set() {
        let mut eps = BTreeMap::new();
        let a = apply(&mut eps, add("127.0.1.1", 8080, Some(4143)));
        let Answer::Endpoints(list) = a else {
            panic!("{a:?}")
        };
        assert_eq!(list[0].connect, "127.0.1.1:4143".parse().expect("addr"));
        assert_eq!(list[0].target_port, Some(8080));
        apply(&mut eps, add("127.0.1.2", 8080, None));
        let remove = pb::Update {
            update: Some(pb::update::Update::Remove(pb::RemoveSet {
                addrs: vec![pb::SocketAddr {
                    ip: "127.0.1.1".into(),
                    port: 8080,
                }],
            })),
        };
        let Answer::Endpoints(list) = apply(&mut eps, remove) else {
            panic!()
        };
        assert_eq!(
            *list,
            vec![Dst::direct("127.0.1.2:8080".parse().expect("addr"))]
        );
        let gone = pb::Update {
            update: Some(pb::update::Update::NoEndpoints(pb::NoEndpoints {
                exists: false,
            })),
        };
        assert_eq!(apply(&mut eps, gone), Answer::Unknown);
        let bad = pb::Update {
            update: Some(pb::update::Update::Add(pb::AddSet {
                endpoints: vec![pb::Endpoint {
                    addr: Some(pb::SocketAddr {
                        ip: "nope".into(),
                        port: 1,
                    }),
                    ..Default::default()
                }],
                metric_labels: Default::default(),
            })),
        };
        assert_eq!(apply(&mut eps, bad), Answer::Endpoints(Arc::new(vec![])));
    }
}
