//! Discovery and policy from the controller: for each authority its endpoints and its
//! client policy, and for each application port its server policy, all followed on one
//! `Discovery.Watch` stream that one task drives (a watched authority costs a map entry
//! and what the controller told about it, not streams and tasks of its own). The last
//! answers stand while the controller is away; the stream reconnects with backoff and
//! subscribes again. Names the controller does not know are resolved by DNS instead.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_api::destination as pb;
use mesh_api::discovery as disc_pb;
use mesh_api::discovery::discovery_client::DiscoveryClient;
use mesh_api::policy as policy_pb;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint as GrpcEndpoint};

use crate::authz::PortPolicy;
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
/// memory) until idle ones are dropped. All of a proxy's subscriptions fit the
/// controller's bound for one stream.
const MAX_WATCHES: usize = 16_384;
const _: () = assert!(2 * MAX_WATCHES + MAX_INBOUND_PORTS <= mesh_api::MAX_SUBSCRIPTIONS);
/// Application ports whose inbound policy is watched at once. Clients choose the port
/// they connect to, so without a bound anyone could make the proxy follow a policy per
/// port; past it, the proxy's own setting decides, as it did before the controller
/// decided anything.
const MAX_INBOUND_PORTS: usize = 64;
/// The largest message the discovery stream takes (an endpoint set of ~500,000).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
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
    pub identity: Option<Arc<str>>,
    /// What discovery says the endpoint belongs to, for metric labels.
    pub labels: Option<Arc<DstLabels>>,
    /// Whether its port is opaque TCP (no protocol detection).
    pub opaque: bool,
}

impl Dst {
    /// An endpoint reached directly.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            connect: addr,
            target_port: None,
            identity: None,
            labels: None,
            opaque: false,
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

/// A client of the controller's discovery service.
#[derive(Debug)]
pub struct Discover {
    namespace: String,
    /// This proxy's pod, for its inbound policy.
    workload: Option<String>,
    /// To the task that drives the stream.
    commands: mpsc::UnboundedSender<Command>,
    /// The last subscription id given out.
    ids: AtomicU64,
    watches: Mutex<HashMap<String, Watched<Answer>>>,
    profiles: Mutex<HashMap<String, Watched<Option<Arc<Profile>>>>>,
    /// Inbound policies by application port: `None` until the first answer.
    ports: Mutex<HashMap<u16, watch::Receiver<Option<Arc<PortPolicy>>>>>,
    /// Where the number of watches held is shown.
    metrics: Option<Arc<Metrics>>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Discover {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One authority's watch: the latest answer, and when a request last asked for it.
/// Dropping it ends its subscription.
#[derive(Debug)]
struct Watched<T> {
    rx: watch::Receiver<T>,
    used: tokio::time::Instant,
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        // The controller stops following it too. (Gone only with the driver.)
        let _ = self.commands.send(Command::Unfollow(self.id));
    }
}

/// What the driver is asked to do.
#[derive(Debug)]
enum Command {
    /// Subscribe to a target under an id.
    Follow(u64, Follower),
    /// End a subscription.
    Unfollow(u64),
}

/// One subscription, as the driver keeps it: what it asks for and where answers go.
#[derive(Debug)]
enum Follower {
    Endpoints {
        req: pb::GetDestination,
        tx: watch::Sender<Answer>,
        /// A new stream started: its next update is the whole set, not a change to
        /// the answer held.
        fresh: bool,
    },
    Outbound {
        req: policy_pb::OutboundPolicyRequest,
        tx: watch::Sender<Option<Arc<Profile>>>,
    },
    Inbound {
        req: policy_pb::InboundPolicyRequest,
        tx: watch::Sender<Option<Arc<PortPolicy>>>,
    },
}

/// The watch of `key` in `map`, marked used now. When there is none (and fewer than
/// [`MAX_WATCHES`]), one starts at `pending` and `follow` turns its sender into the
/// subscription that keeps it up to date. `None` past the bound.
fn watched<T>(
    map: &Mutex<HashMap<String, Watched<T>>>,
    key: &str,
    pending: T,
    subscribe: impl FnOnce(watch::Sender<T>) -> (u64, mpsc::UnboundedSender<Command>),
    gauge: Option<&AtomicU64>,
) -> Option<watch::Receiver<T>> {
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
    let (id, commands) = subscribe(tx);
    map.insert(
        key.to_string(),
        Watched {
            rx: rx.clone(),
            used: now,
            id,
            commands,
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
    /// A client for the discovery service at `addr` (`host:port`), asking on behalf of a
    /// pod in `namespace`. Connects lazily; must be called within a tokio runtime (it
    /// starts the task that drives the stream).
    pub fn new(addr: &str, namespace: &str) -> Result<Self, tonic::transport::Error> {
        let channel = GrpcEndpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A controller whose node died must not leave the stream half-open for the
            // TCP timeout: ping, and give up on a silent peer.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let (commands, rx) = mpsc::unbounded_channel();
        // One stream carries every target: a large endpoint set must not break it for
        // all of them (tonic's default is 4 MiB per message).
        let client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let driver = tokio::spawn(drive(client, rx)).abort_handle();
        Ok(Self {
            namespace: namespace.to_string(),
            workload: None,
            commands,
            ids: AtomicU64::new(0),
            watches: Mutex::default(),
            profiles: Mutex::default(),
            ports: Mutex::default(),
            metrics: None,
            driver,
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

    /// Hands `follower` to the driver under a new id.
    fn follow(&self, follower: Follower) -> (u64, mpsc::UnboundedSender<Command>) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
        // Fails only once the driver is gone (the runtime shutting down): answers then
        // stay pending and requests fall back after the first-answer wait.
        let _ = self.commands.send(Command::Follow(id, follower));
        (id, self.commands.clone())
    }

    /// The controller's policy for application port `port`, waiting briefly for the
    /// first answer; `None` when it has none (or cannot be asked), and then the proxy's
    /// own settings apply.
    pub async fn inbound_policy(&self, port: u16) -> Option<Arc<PortPolicy>> {
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
                    let (tx, rx) = watch::channel(None);
                    ports.insert(port, rx.clone());
                    let req = policy_pb::InboundPolicyRequest {
                        workload: workload.clone(),
                        namespace: self.namespace.clone(),
                        port: port.into(),
                    };
                    self.follow(Follower::Inbound { req, tx });
                    rx
                }
            }
        };
        if rx.borrow().is_none() {
            let first = rx.wait_for(Option::is_some);
            let _ = tokio::time::timeout(INBOUND_FIRST_ANSWER, first).await;
        }
        rx.borrow().clone()
    }

    /// The current answer for `authority`, waiting briefly for the first one.
    pub async fn resolve(&self, authority: &str) -> Answer {
        self.resolve_selected(authority, &Default::default()).await
    }

    /// The current answer for the endpoints of `authority` whose pods carry all of
    /// `labels` (all of them when empty), waiting briefly for the first one.
    pub async fn resolve_selected(&self, authority: &str, labels: &crate::vocab::Labels) -> Answer {
        let gauge = self.metrics.as_deref().map(|m| &m.held.destination_watches);
        // A subset is watched apart from its service: `authority{k=v,…}`.
        let key = if labels.is_empty() {
            std::borrow::Cow::Borrowed(authority)
        } else {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            std::borrow::Cow::Owned(format!("{authority}{{{}}}", pairs.join(",")))
        };
        let rx = watched(
            &self.watches,
            &key,
            Answer::Pending,
            |tx| {
                let req = pb::GetDestination {
                    authority: authority.to_string(),
                    namespace: self.namespace.clone(),
                    labels: labels.clone().into_iter().collect(),
                };
                self.follow(Follower::Endpoints {
                    req,
                    tx,
                    fresh: true,
                })
            },
            gauge,
        );
        let Some(mut rx) = rx else {
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
        let rx = watched(
            &self.profiles,
            authority,
            None,
            |tx| {
                let req = policy_pb::OutboundPolicyRequest {
                    authority: authority.to_string(),
                    namespace: self.namespace.clone(),
                };
                self.follow(Follower::Outbound { req, tx })
            },
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
}

impl Follower {
    /// Its subscription, as sent to the controller.
    fn subscription(&self, id: u64) -> disc_pb::Subscription {
        use disc_pb::subscription::Target;
        let target = match self {
            Self::Endpoints { req, .. } => Target::Endpoints(req.clone()),
            Self::Outbound { req, .. } => Target::Outbound(req.clone()),
            Self::Inbound { req, .. } => Target::Inbound(req.clone()),
        };
        disc_pb::Subscription {
            id,
            target: Some(target),
        }
    }

    /// A new stream is starting: its first message is the whole state again.
    fn restart(&mut self) {
        if let Self::Endpoints { fresh, .. } = self {
            *fresh = true;
        }
    }

    /// The controller is away: keep serving the last answer; with none yet, let
    /// requests use the proxy's defaults (DNS, the service itself, its own mTLS
    /// setting) meanwhile.
    fn settle(&self) {
        match self {
            Self::Endpoints { tx, .. } => settle(tx, |a| *a == Answer::Pending, || Answer::Unknown),
            Self::Outbound { tx, .. } => settle(tx, Option::is_none, || Some(Arc::default())),
            Self::Inbound { tx, .. } => settle(tx, Option::is_none, || Some(Arc::default())),
        }
    }

    /// The controller refused the subscription for good (a malformed name): the
    /// defaults, from now on.
    fn refused(&self, refusal: &disc_pb::Refusal) {
        tracing::debug!(target = ?self.subscription(0).target, code = refusal.code, message = %refusal.message, "subscription refused");
        match self {
            Self::Endpoints { tx, .. } => {
                tx.send_replace(Answer::Unknown);
            }
            Self::Outbound { tx, .. } => {
                tx.send_replace(Some(Arc::default()));
            }
            Self::Inbound { tx, .. } => {
                tx.send_replace(Some(Arc::default()));
            }
        }
    }

    /// Applies one message of its subscription.
    fn apply(&mut self, notice: disc_pb::notice::Notice) {
        use disc_pb::notice::Notice as N;
        match (self, notice) {
            (Self::Endpoints { tx, fresh, .. }, N::Endpoints(update)) => {
                let answer = {
                    let now = tx.borrow();
                    let current = match &*now {
                        Answer::Endpoints(e) if !*fresh => e.as_slice(),
                        _ => &[],
                    };
                    apply(current, update)
                };
                *fresh = false;
                tx.send_if_modified(|a| {
                    let changed = *a != answer;
                    *a = answer;
                    changed
                });
            }
            (Self::Outbound { req, tx }, N::Outbound(policy)) => {
                // Compiled once per update, not per request; never half-applied.
                match Profile::compile(&policy) {
                    Ok(profile) => {
                        tx.send_replace(Some(Arc::new(profile)));
                    }
                    Err(unsupported) => {
                        tracing::warn!(authority = %req.authority, %unsupported, "policy not applied: the last one stays");
                        // Nothing to keep yet: the service itself, with defaults.
                        settle(tx, Option::is_none, || Some(Arc::default()));
                    }
                }
            }
            (Self::Inbound { tx, .. }, N::Inbound(policy)) => {
                // Compiled once per update; requests from now on see the new one.
                tx.send_replace(Some(Arc::new(PortPolicy::compile(&policy))));
            }
            (this, N::Refused(refusal)) => this.refused(&refusal),
            (this, other) => {
                tracing::debug!(target = ?this.subscription(0).target, notice = ?other, "notice of another kind ignored");
            }
        }
    }
}

/// The subscriptions the driver holds, and the stream they are on (when connected).
#[derive(Default)]
struct Subscriptions {
    followed: HashMap<u64, Follower>,
    /// Ids the controller refused: not asked for again on a new stream.
    refused: std::collections::HashSet<u64>,
    out: Option<mpsc::UnboundedSender<disc_pb::Subscription>>,
}

impl Subscriptions {
    fn command(&mut self, command: Command) {
        match command {
            Command::Follow(id, follower) => {
                match &self.out {
                    Some(out) => {
                        let _ = out.send(follower.subscription(id));
                    }
                    // Away: the defaults at once, the controller's answer once back.
                    None => follower.settle(),
                }
                self.followed.insert(id, follower);
            }
            Command::Unfollow(id) => {
                self.followed.remove(&id);
                if !self.refused.remove(&id)
                    && let Some(out) = &self.out
                {
                    let target = Some(disc_pb::subscription::Target::Unsubscribe(
                        disc_pb::Unsubscribe {},
                    ));
                    let _ = out.send(disc_pb::Subscription { id, target });
                }
            }
        }
    }

    fn notice(&mut self, notice: disc_pb::Notice) {
        let Some(n) = notice.notice else { return };
        let Some(follower) = self.followed.get_mut(&notice.id) else {
            // Unfollowed meanwhile.
            return;
        };
        // A malformed target is refused for good; anything else (a bound) is asked
        // for again on the next stream.
        if let disc_pb::notice::Notice::Refused(r) = &n
            && r.code == tonic::Code::InvalidArgument as i32
        {
            self.refused.insert(notice.id);
        }
        follower.apply(n);
    }

    /// A new stream: every subscription not refused, from its whole state again.
    fn connect(&mut self) -> impl futures_util::Stream<Item = disc_pb::Subscription> + use<> {
        let (out, rx) = mpsc::unbounded_channel();
        for (id, f) in &mut self.followed {
            if !self.refused.contains(id) {
                f.restart();
                let _ = out.send(f.subscription(*id));
            }
        }
        self.out = Some(out);
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) })
    }

    fn disconnect(&mut self) {
        self.out = None;
        for f in self.followed.values() {
            f.settle();
        }
    }
}

/// Drives the discovery stream: sends `commands`' subscriptions, hands the notices to
/// their followers, and when the stream breaks, subscribes again on a new one (after a
/// backoff during which new subscriptions get the defaults). Ends when the last
/// command sender is gone.
async fn drive(
    mut client: DiscoveryClient<Channel>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut subs = Subscriptions::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let outgoing = subs.connect();
        match client.watch(outgoing).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                loop {
                    tokio::select! {
                        command = commands.recv() => match command {
                            Some(c) => subs.command(c),
                            None => return,
                        },
                        message = stream.message() => match message {
                            Ok(Some(notice)) => {
                                backoff = BACKOFF_MIN;
                                subs.notice(notice);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(%status, "discovery stream ended");
                                break;
                            }
                        },
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%status, "discovery service unreachable");
            }
        }
        subs.disconnect();
        let wait = back_off(&mut backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                command = commands.recv() => match command {
                    Some(c) => subs.command(c),
                    None => return,
                },
            }
        }
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

/// The application address an endpoint stands for (what updates name it by).
fn app_addr(d: &Dst) -> SocketAddr {
    match d.target_port {
        Some(port) => SocketAddr::new(d.connect.ip(), port),
        None => d.connect,
    }
}

/// The endpoints after one update to `current` (sorted by application address, as the
/// result is). The answer is the only copy the proxy keeps.
fn apply(current: &[Dst], update: pb::Update) -> Answer {
    use pb::update::Update;
    let mut endpoints = current.to_vec();
    match update.update {
        Some(Update::Add(add)) => {
            let set = &add.metric_labels;
            // Endpoints of one set mostly share their labels: one copy for all.
            let mut shared: Option<Arc<DstLabels>> = None;
            for e in add.endpoints {
                let label = |k: &str| -> &str {
                    e.metric_labels
                        .get(k)
                        .or_else(|| set.get(k))
                        .map_or("", String::as_str)
                };
                let (namespace, workload, service) =
                    (label("namespace"), label("deployment"), label("service"));
                // Endpoints discovery says nothing about get no dst_* labels.
                let labels = if namespace.is_empty() && workload.is_empty() && service.is_empty() {
                    None
                } else {
                    match &shared {
                        Some(l)
                            if *l.namespace == *namespace
                                && *l.workload == *workload
                                && *l.service == *service =>
                        {
                            Some(l.clone())
                        }
                        _ => {
                            let l = Arc::new(DstLabels {
                                namespace: namespace.into(),
                                workload: workload.into(),
                                service: service.into(),
                            });
                            shared = Some(l.clone());
                            Some(l)
                        }
                    }
                };
                let Some(addr) = e.addr.as_ref().and_then(socket_addr) else {
                    continue;
                };
                let inbound = e
                    .protocol_hint
                    .as_ref()
                    .and_then(|h| u16::try_from(h.inbound_port).ok())
                    .filter(|p| *p != 0);
                let opaque = e.protocol_hint.as_ref().is_some_and(|h| h.opaque);
                let dst = match inbound {
                    Some(port) => Dst {
                        connect: SocketAddr::new(addr.ip(), port),
                        target_port: Some(addr.port()),
                        identity: Some(e.tls_identity)
                            .filter(|i| !i.is_empty())
                            .map(Arc::from),
                        labels,
                        opaque,
                    },
                    None => Dst {
                        labels,
                        opaque,
                        ..Dst::direct(addr)
                    },
                };
                match endpoints.binary_search_by_key(&addr, app_addr) {
                    Ok(i) => endpoints[i] = dst,
                    Err(i) => endpoints.insert(i, dst),
                }
            }
        }
        Some(Update::Remove(remove)) => {
            let gone: Vec<SocketAddr> = remove.addrs.iter().filter_map(socket_addr).collect();
            endpoints.retain(|d| !gone.contains(&app_addr(d)));
        }
        Some(Update::NoEndpoints(n)) => {
            if !n.exists {
                return Answer::Unknown;
            }
            endpoints.clear();
        }
        None => {}
    }
    endpoints.shrink_to_fit();
    Answer::Endpoints(Arc::new(endpoints))
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
        let (commands, mut driver) = mpsc::unbounded_channel();
        let start = |_tx: watch::Sender<u8>| (7, commands.clone());
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
        // Each dropped watch ended its subscription.
        let mut ended = 0;
        while let Ok(c) = driver.try_recv() {
            assert!(matches!(c, Command::Unfollow(7)), "{c:?}");
            ended += 1;
        }
        assert_eq!(ended, MAX_WATCHES - 1);
        assert!(watched(&map, "one-more:80", 0, start, None).is_some());
    }

    #[test]
    fn subscriptions_are_sent_again_on_a_new_stream_but_not_refused_ones() {
        use disc_pb::notice::Notice as N;
        let mut subs = Subscriptions::default();
        let (tx, rx) = watch::channel(Answer::Pending);
        let req = |a: &str| pb::GetDestination {
            authority: a.into(),
            namespace: "ns".into(),
            ..Default::default()
        };
        let endpoints = |tx| Follower::Endpoints {
            req: req("web:80"),
            tx,
            fresh: true,
        };
        // Away: the defaults at once.
        subs.command(Command::Follow(1, endpoints(tx)));
        assert_eq!(*rx.borrow(), Answer::Unknown);
        let (tx2, rx2) = watch::channel(Answer::Pending);
        subs.command(Command::Follow(2, endpoints(tx2)));
        let outgoing = subs.connect();
        subs.notice(disc_pb::Notice {
            id: 1,
            notice: Some(N::Endpoints(add("127.0.1.1", 8080, None))),
        });
        assert!(matches!(*rx.borrow(), Answer::Endpoints(ref e) if e.len() == 1));
        subs.notice(disc_pb::Notice {
            id: 2,
            notice: Some(N::Refused(disc_pb::Refusal {
                code: 3,
                message: "bad".into(),
            })),
        });
        assert_eq!(*rx2.borrow(), Answer::Unknown);
        // A notice for an id no longer followed is dropped.
        subs.command(Command::Unfollow(9));
        subs.notice(disc_pb::Notice {
            id: 9,
            notice: Some(N::Endpoints(add("127.0.1.9", 80, None))),
        });
        // The controller goes away: the last answer stands.
        subs.disconnect();
        assert!(matches!(*rx.borrow(), Answer::Endpoints(_)));
        drop(outgoing);
        let again = subs.connect();
        let sent: Vec<_> = futures_util::FutureExt::now_or_never(
            futures_util::StreamExt::collect::<Vec<_>>(futures_util::StreamExt::take(again, 1)),
        )
        .expect("queued");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].id, 1, "the refused one is not asked for again");
        let Follower::Endpoints { fresh, .. } = &subs.followed[&1] else {
            panic!()
        };
        assert!(*fresh, "a new stream starts from its whole state");
    }

    #[test]
    fn updates_build_the_endpoint_set() {
        // The answer held is what the next update applies to.
        let mut eps: Vec<Dst> = Vec::new();
        let mut step = |update| {
            let answer = apply(&eps, update);
            eps = match &answer {
                Answer::Endpoints(e) => e.to_vec(),
                _ => Vec::new(),
            };
            answer
        };
        let a = step(add("127.0.1.1", 8080, Some(4143)));
        let Answer::Endpoints(list) = a else {
            panic!("{a:?}")
        };
        assert_eq!(list[0].connect, "127.0.1.1:4143".parse().expect("addr"));
        assert_eq!(list[0].target_port, Some(8080));
        step(add("127.0.1.2", 8080, None));
        let remove = pb::Update {
            update: Some(pb::update::Update::Remove(pb::RemoveSet {
                addrs: vec![pb::SocketAddr {
                    ip: "127.0.1.1".into(),
                    port: 8080,
                }],
            })),
        };
        let Answer::Endpoints(list) = step(remove) else {
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
        assert_eq!(step(gone), Answer::Unknown);
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
        assert_eq!(step(bad), Answer::Endpoints(Arc::new(vec![])));
    }
}
