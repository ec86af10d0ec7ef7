//! Golden metrics: request and response counters, HDR latency histograms, and TCP
//! connection counters, served as Prometheus text with Linkerd's names and labels.
//!
//! Latency is kept as HDR histograms (microseconds, two significant digits) so that
//! percentiles are exact to the histogram's precision; the Prometheus
//! `response_latency_ms` buckets are computed from the same histograms at scrape time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::vocab::{Class, Direction, Peer, Tls};

/// Prometheus `response_latency_ms` bucket bounds, as Linkerd publishes them.
const LATENCY_BOUNDS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1_000, 2_000, 3_000, 4_000, 5_000,
    10_000, 20_000, 30_000, 40_000, 50_000,
];
/// The highest latency a histogram tracks exactly; longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Distinct authorities and route names kept as their own label value; the rest share
/// `overflow`. Authorities come from clients, so without a cap they would grow memory
/// (each label set keeps histograms) without bound.
const MAX_LABEL_VALUES: usize = 256;
/// The label value used once [`MAX_LABEL_VALUES`] is reached.
const OVERFLOW: &str = "overflow";

/// The labels shared by a request and its response. Made only by [`Metrics::labels`]
/// and [`Metrics::with_peer`], which intern their strings: equal labels share their
/// strings' allocations, so they hash by address (see the `Hash` impl).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The request's authority (`host:port`), capped in cardinality.
    pub authority: Arc<str>,
    /// The route name; `default` when no profile route matched.
    pub route: Arc<str>,
    /// mTLS state and identity of the peer (`client_id` inbound, `server_id` outbound).
    pub peer: Peer,
}

/// The address of an interned string: one per distinct value.
fn interned(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

impl Hash for RequestLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Interned strings by address: equal values are one allocation (the store
        // hands out one `Arc` per value), and addresses cannot be chosen by a client
        // to collide, so a cheap hasher is safe over them.
        self.direction.hash(state);
        state.write_usize(interned(&self.authority));
        state.write_usize(interned(&self.route));
        self.peer.tls.hash(state);
        state.write_usize(self.peer.id.as_ref().map_or(0, interned));
        // Discovery's labels (from the controller, not from clients), by value.
        self.peer.dst.hash(state);
    }
}

// The store's maps hash their keys (addresses, small numbers, interned labels: see
// [`RequestLabels`]'s `Hash`) with FxHash's hasher; strings clients send are interned
// under a seeded hasher ([`crate::fasthash::SeededSet`]).
use crate::fasthash::FastMap;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ResponseKey {
    request: RequestLabels,
    status: u16,
    class: Class,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct LatencyKey {
    request: RequestLabels,
    /// 1 for 1xx … 5xx for 5xx: the status class the histogram is kept per.
    status_class: u16,
}

/// An HDR latency histogram with the exact sum beside it.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Latencies in microseconds.
    pub histogram: Histogram<u64>,
    /// The exact sum of recorded latencies, in microseconds.
    pub sum_us: u64,
}

impl Latency {
    fn new() -> Self {
        // Two significant digits (at most 1% relative error) in an array that grows
        // only as far as the largest latency seen: a few KiB for typical services,
        // where three digits from 1 µs to an hour would cost 184 KiB per histogram.
        let histogram =
            Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits are valid"));
        Self {
            histogram,
            sum_us: 0,
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        // `record` grows the array as needed; `saturating_record` would clamp instead.
        if self.histogram.record(us).is_err() {
            self.histogram.saturating_record(us);
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Per-bucket (not cumulative) counts for the Prometheus bounds, +Inf last.
    fn buckets(&self) -> Vec<(f64, u64)> {
        let mut counts = vec![0u64; LATENCY_BOUNDS_MS.len() + 1];
        for v in self.histogram.iter_recorded() {
            // A recorded HDR bucket holds values up to its highest equivalent value.
            let ms = v.value_iterated_to() as f64 / 1000.0;
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|&b| ms <= b as f64)
                .unwrap_or(LATENCY_BOUNDS_MS.len());
            counts[i] += v.count_at_value();
        }
        LATENCY_BOUNDS_MS
            .iter()
            .map(|&b| b as f64)
            .chain(std::iter::once(f64::INFINITY))
            .zip(counts)
            .collect()
    }
}

/// Byte and connection counters for one (direction, peer) pair; updated without locks.
#[derive(Debug, Default)]
pub struct TcpStats {
    open: AtomicU64,
    close: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
}

impl TcpStats {
    /// Counts bytes read from the peer.
    pub fn read(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Counts bytes written to the peer.
    pub fn wrote(&self, n: usize) {
        self.write_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Counts a closed connection.
    pub fn closed(&self) {
        self.close.fetch_add(1, Ordering::Relaxed);
    }
}

impl Store {
    fn intern(&mut self, value: &str) -> Arc<str> {
        if let Some(v) = self.label_values.get(value) {
            return v.clone();
        }
        if self.label_values.len() >= MAX_LABEL_VALUES {
            return self.intern_unbounded(OVERFLOW);
        }
        self.intern_unbounded(value)
    }

    fn intern_peer(&mut self, peer: &Peer) -> Peer {
        Peer {
            tls: peer.tls,
            id: peer.id.as_deref().map(|id| self.intern(id)),
            dst: peer.dst.clone(),
        }
    }

    fn intern_unbounded(&mut self, value: &str) -> Arc<str> {
        if let Some(v) = self.label_values.get(value) {
            return v.clone();
        }
        let v: Arc<str> = Arc::from(value);
        self.label_values.insert(v.clone());
        v
    }
}

/// Why a retry was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skipped {
    /// The route's retry budget was spent.
    Budget,
    /// The service's retries in flight were at their bound (`maxRetries`).
    MaxRetries,
}

impl Skipped {
    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::MaxRetries => "max_retries",
        }
    }
}

#[derive(Default, Debug)]
struct Store {
    /// Every attempt's response, retries included (`response` is what clients saw).
    actual: FastMap<ResponseKey, u64>,
    /// Retries not made, by why: the budget was spent, or the service's bound on
    /// retries in flight was reached.
    retries_skipped: FastMap<(RequestLabels, Skipped), u64>,
    label_values: crate::fasthash::SeededSet<Arc<str>>,
    requests: FastMap<RequestLabels, u64>,
    responses: FastMap<ResponseKey, u64>,
    latencies: FastMap<LatencyKey, Latency>,
}

/// When this process started (first asked), in milliseconds since the Unix epoch.
pub fn started_unix_ms() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// This process's instance id: random, fixed at first use; a restarted proxy has
/// another, which tells readers of `/stats` that its counters started over.
pub fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| fastrand::u64(1..))
}

/// TCP counters are kept per direction, peer (`src` or `dst`) and TLS state.
type TcpKey = (Direction, &'static str, Tls);

/// All of a proxy's metrics. Cheap to share; every record is one short critical section.
#[derive(Debug, Default)]
pub struct Metrics {
    store: Mutex<Store>,
    tcp: Mutex<HashMap<TcpKey, Arc<TcpStats>>>,
    /// What the proxy holds for destinations it talks to.
    pub held: Held,
    /// The endpoints failure accrual took out, whose states it reports.
    pub accrual: crate::accrual::Accrual,
    /// Inbound authorization outcomes.
    pub authz: crate::authz::metrics::AuthzMetrics,
    /// Access-log lines dropped for want of room in the writer's queue.
    pub access_log_dropped: Arc<AtomicU64>,
    /// What happened to spans ([`crate::trace`]).
    pub traces: Arc<crate::trace::Counters>,
    /// Who taps this proxy ([`crate::tap`]).
    pub taps: Arc<crate::tap::Taps>,
    /// Connections accepted, by worker ([`crate::worker`]).
    worker_connections: Mutex<Vec<u64>>,
}

/// Gauges of what the proxy holds on behalf of destinations; dropped once idle.
#[derive(Debug, Default)]
pub struct Held {
    /// Authorities whose endpoints are watched.
    pub destination_watches: AtomicU64,
    /// Authorities whose client policy is watched.
    pub policy_watches: AtomicU64,
    /// Endpoints with a connection pool.
    pub endpoints: AtomicU64,
}

impl Metrics {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Labels for a request, interning the authority and route (bounded, see
    /// [`MAX_LABEL_VALUES`]) so that recording allocates nothing once they are known.
    pub fn labels(
        &self,
        direction: Direction,
        authority: &str,
        route: &str,
        peer: &Peer,
    ) -> RequestLabels {
        let mut store = self.store();
        let authority = store.intern(authority);
        let route = store.intern(route);
        let peer = store.intern_peer(peer);
        RequestLabels {
            direction,
            authority,
            route,
            peer,
        }
    }

    /// The same labels with another peer.
    pub fn with_peer(&self, labels: &RequestLabels, peer: &Peer) -> RequestLabels {
        if labels.peer == *peer {
            return labels.clone();
        }
        let peer = self.store().intern_peer(peer);
        RequestLabels {
            peer,
            ..labels.clone()
        }
    }

    /// Counts a request as it arrives.
    pub fn request(&self, labels: &RequestLabels) {
        *self.store().requests.entry(labels.clone()).or_default() += 1;
    }

    /// Records a finished response: its latency to headers, status, and classification.
    pub fn response(&self, labels: &RequestLabels, status: u16, class: Class, latency: Duration) {
        let mut store = self.store();
        let key = ResponseKey {
            request: labels.clone(),
            status,
            class,
        };
        *store.responses.entry(key).or_default() += 1;
        let key = LatencyKey {
            request: labels.clone(),
            status_class: status / 100,
        };
        store
            .latencies
            .entry(key)
            .or_insert_with(Latency::new)
            .record(latency);
    }

    /// Counts one attempt's response (the client sees only the last attempt's).
    pub fn attempt(&self, labels: &RequestLabels, status: u16, class: Class) {
        let key = ResponseKey {
            request: labels.clone(),
            status,
            class,
        };
        *self.store().actual.entry(key).or_default() += 1;
    }

    /// Counts a connection accepted by this thread's worker.
    pub fn accepted(&self) {
        let i = usize::from(crate::worker::index());
        let mut counts = self
            .worker_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] += 1;
    }

    /// Counts a retry that was not made, and why.
    pub fn retry_skipped(&self, labels: &RequestLabels, why: Skipped) {
        *self
            .store()
            .retries_skipped
            .entry((labels.clone(), why))
            .or_default() += 1;
    }

    /// The TCP counters for a direction, peer (`src` or `dst`) and TLS state, counting
    /// one open.
    pub fn tcp_open(&self, direction: Direction, peer: &'static str, tls: Tls) -> Arc<TcpStats> {
        let mut tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        let stats = tcp.entry((direction, peer, tls)).or_default().clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        stats
    }

    /// The merged latency histogram of every response matching `filter`.
    pub fn latency_where(&self, filter: impl Fn(&RequestLabels, u16) -> bool) -> Option<Latency> {
        let store = self.store();
        let mut merged: Option<Latency> = None;
        for (k, v) in &store.latencies {
            if !filter(&k.request, k.status_class) {
                continue;
            }
            match merged.as_mut() {
                None => merged = Some(v.clone()),
                Some(m) => {
                    // Both histograms share bounds, so adding cannot fail.
                    let _ = m.histogram.add(&v.histogram);
                    m.sum_us += v.sum_us;
                }
            }
        }
        merged
    }

    /// Every counter and latency histogram, cumulative since the proxy started, as
    /// The `/stats` document for mesh-viz ([`mesh_api::stats`]): histograms as their
    /// recorded buckets (`[value_us, count]`), so that merging them elsewhere stays exact. `instance` changes on restart, so
    /// that a reader can tell a reset from a decrease.
    pub fn stats(&self, instance: u64) -> mesh_api::stats::Stats {
        use mesh_api::stats::{Count, Labels, Latency, Stats, Tcp};
        fn labels(l: &RequestLabels) -> Labels {
            let dst = l.peer.dst.as_deref();
            Labels {
                direction: l.direction.as_str().into(),
                authority: (*l.authority).into(),
                route: (*l.route).into(),
                tls: l.peer.tls.as_str().into(),
                peer_id: l.peer.id.as_deref().map(Into::into),
                dst_namespace: dst.map(|d| (*d.namespace).into()),
                dst_workload: dst.map(|d| (*d.workload).into()),
                dst_service: dst.map(|d| (*d.service).into()),
            }
        }
        let responses = |map: &FastMap<ResponseKey, u64>| -> Vec<Count> {
            map.iter()
                .map(|(k, n)| Count {
                    labels: labels(&k.request),
                    status: Some(k.status),
                    class: Some(k.class.as_str().into()),
                    count: *n,
                })
                .collect()
        };
        let store = self.store();
        let mut stats = Stats {
            instance: instance.to_string(),
            started_unix_ms: Some(started_unix_ms()),
            requests: store
                .requests
                .iter()
                .map(|(l, n)| Count {
                    labels: labels(l),
                    count: *n,
                    ..Count::default()
                })
                .collect(),
            responses: responses(&store.responses),
            actual_responses: responses(&store.actual),
            latency: store
                .latencies
                .iter()
                .map(|(k, h)| Latency {
                    labels: labels(&k.request),
                    status_class: k.status_class,
                    sum_us: h.sum_us,
                    buckets: h
                        .histogram
                        .iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect(),
                })
                .collect(),
            tcp: Vec::new(),
            authz: self
                .authz
                .snapshot()
                .into_iter()
                .map(|(k, count)| mesh_api::stats::Authz {
                    protocol: if k.http { "http" } else { "tcp" }.into(),
                    outcome: k.outcome.as_str().into(),
                    port: k.port,
                    kind: (*k.by.kind).into(),
                    name: (*k.by.name).into(),
                    client_id: k.client.as_deref().map(Into::into),
                    count,
                })
                .collect(),
        };
        drop(store);
        let tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        stats.tcp = tcp
            .iter()
            .map(|((direction, peer, tls), s)| Tcp {
                direction: direction.as_str().into(),
                peer: (*peer).into(),
                tls: tls.as_str().into(),
                open: s.open.load(Ordering::Relaxed),
                close: s.close.load(Ordering::Relaxed),
            })
            .collect();
        stats
    }

    /// Renders every metric in the Prometheus / OpenMetrics text format.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collector(self.clone())));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics could not be encoded");
        }
        out
    }
}

#[derive(Debug)]
struct Collector(Arc<Metrics>);

fn request_labels(l: &RequestLabels) -> Vec<(&'static str, &str)> {
    let mut labels = vec![
        ("direction", l.direction.as_str()),
        ("authority", &l.authority),
        ("route", &l.route),
        ("tls", l.peer.tls.as_str()),
    ];
    if let Some(id) = &l.peer.id {
        let name = match l.direction {
            Direction::Inbound => "client_id",
            Direction::Outbound => "server_id",
        };
        labels.push((name, id));
    }
    if let Some(dst) = &l.peer.dst {
        for (name, value) in [
            ("dst_namespace", &dst.namespace),
            ("dst_deployment", &dst.workload),
            ("dst_service", &dst.service),
        ] {
            if !value.is_empty() {
                labels.push((name, value));
            }
        }
    }
    labels
}

/// One response-counter family: request labels plus status code and classification.
fn encode_responses(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: Vec<(&ResponseKey, &u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (key, n) in counts {
        let status = key.status.to_string();
        let mut labels = request_labels(&key.request);
        labels.push(("status_code", &status));
        labels.push(("classification", key.class.as_str()));
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(n, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Encode under the lock rather than copying every histogram: a scrape then
        // costs no extra memory, and recording waits at most one scrape's encoding.
        let store = self.0.store();
        let mut requests: Vec<_> = store.requests.iter().collect();
        let mut responses: Vec<_> = store.responses.iter().collect();
        let mut latencies: Vec<_> = store.latencies.iter().collect();
        requests.sort_unstable_by(|a, b| a.0.cmp(b.0));
        responses.sort_unstable_by(|a, b| a.0.cmp(b.0));
        latencies.sort_unstable_by(|a, b| a.0.cmp(b.0));

        let mut family =
            encoder.encode_descriptor("request", "Requests received", None, MetricType::Counter)?;
        for (labels, n) in requests {
            family
                .encode_family(&request_labels(labels))?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        encode_responses(&mut encoder, "response", "Responses sent", responses)?;
        let mut actual: Vec<_> = store.actual.iter().collect();
        actual.sort_unstable_by(|a, b| a.0.cmp(b.0));
        encode_responses(
            &mut encoder,
            "actual_response",
            "Responses to every attempt, retries included",
            actual,
        )?;
        let mut skipped: Vec<_> = store.retries_skipped.iter().collect();
        skipped.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let now = tokio::time::Instant::now();
        let backends = self.0.accrual.snapshot(now);
        let mut family = encoder.encode_descriptor(
            "outbound_endpoints",
            "Endpoints of backends with failure accrual, by state",
            None,
            MetricType::Gauge,
        )?;
        for b in &backends {
            for (state, n) in &b.states {
                family
                    .encode_family(&[("backend", &*b.backend), ("state", state.as_str())])?
                    .encode_gauge(&(*n as i64))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "outbound_endpoint_ejections",
            "Endpoints taken out of a backend's balancer for failing",
            None,
            MetricType::Counter,
        )?;
        for b in &backends {
            family
                .encode_family(&[("backend", &*b.backend)])?
                .encode_counter::<NoLabelSet, _, u64>(&b.ejections, None)?;
        }
        self.0.authz.encode(&mut encoder)?;
        let mut family = encoder.encode_descriptor(
            "retry_skipped",
            "Retries not made: the retry budget was spent, or the service's bound on retries in flight reached",
            None,
            MetricType::Counter,
        )?;
        for ((labels, why), n) in skipped {
            let mut labels = request_labels(labels);
            labels.push(("reason", why.as_str()));
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let mut family = encoder.encode_descriptor(
            "response_latency_ms",
            "Time from request to response headers, in milliseconds",
            None,
            MetricType::Histogram,
        )?;
        for (key, latency) in latencies {
            let class = format!("{}xx", key.status_class);
            let mut labels = request_labels(&key.request);
            labels.push(("status_class", &class));
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(
                    latency.sum_us as f64 / 1000.0,
                    latency.histogram.len(),
                    &latency.buckets(),
                    None,
                )?;
        }

        drop(store);
        let tcp: Vec<_> = {
            let tcp = self.0.tcp.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = tcp.iter().map(|(k, s)| (*k, s.clone())).collect();
            v.sort_by_key(|(k, _)| *k);
            v
        };
        type Field = fn(&TcpStats) -> &AtomicU64;
        let counters: [(&str, &str, Field); 4] = [
            ("tcp_open", "TCP connections opened", |s| &s.open),
            ("tcp_close", "TCP connections closed", |s| &s.close),
            ("tcp_read_bytes", "Bytes read from peers", |s| &s.read_bytes),
            ("tcp_write_bytes", "Bytes written to peers", |s| {
                &s.write_bytes
            }),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((direction, peer, tls), stats) in &tcp {
                let labels = [
                    ("direction", direction.as_str()),
                    ("peer", peer),
                    ("tls", tls.as_str()),
                ];
                let n = field(stats).load(Ordering::Relaxed);
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tcp_open_connections",
            "TCP connections open now",
            None,
            MetricType::Gauge,
        )?;
        for ((direction, peer, tls), stats) in &tcp {
            let labels = [
                ("direction", direction.as_str()),
                ("peer", peer),
                ("tls", tls.as_str()),
            ];
            let open = stats.open.load(Ordering::Relaxed);
            let open_now = open.saturating_sub(stats.close.load(Ordering::Relaxed)) as i64;
            family.encode_family(&labels)?.encode_gauge(&open_now)?;
        }
        let held = &self.0.held;
        let mut family = encoder.encode_descriptor(
            "discovery_watches",
            "Controller watches held open, by kind",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("destination", &held.destination_watches),
            ("policy", &held.policy_watches),
        ] {
            let n = n.load(Ordering::Relaxed) as i64;
            family.encode_family(&[("kind", kind)])?.encode_gauge(&n)?;
        }
        let n = held.endpoints.load(Ordering::Relaxed) as i64;
        encoder
            .encode_descriptor(
                "endpoint_pools",
                "Endpoints with a connection pool",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&n)?;
        let workers = self
            .0
            .worker_connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut family = encoder.encode_descriptor(
            "worker_connections",
            "Connections accepted, by worker (MESH_PROXY_WORKERS)",
            None,
            MetricType::Counter,
        )?;
        for (i, n) in workers.iter().enumerate() {
            family
                .encode_family(&[("worker", i.to_string().as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
        let dropped = self.0.access_log_dropped.load(Ordering::Relaxed);
        encoder
            .encode_descriptor(
                "access_log_dropped",
                "Access-log lines dropped: the writer fell behind",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
        let taps = &self.0.taps;
        let watchers = taps.watchers() as i64;
        encoder
            .encode_descriptor(
                "tap_watchers",
                "Watchers tapping this proxy's calls now",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&watchers)?;
        let dropped = taps.dropped.load(Ordering::Relaxed);
        encoder
            .encode_descriptor(
                "tap_dropped",
                "Tapped calls dropped for watchers that fell behind",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
        let traces = &self.0.traces;
        for (name, help, n) in [
            (
                "trace_spans_exported",
                "Spans delivered to the trace collector",
                &traces.exported,
            ),
            (
                "trace_spans_dropped",
                "Spans dropped: the export queue was full or the collector failed",
                &traces.dropped,
            ),
            (
                "trace_export_failures",
                "Exports to the trace collector that failed",
                &traces.export_failures,
            ),
        ] {
            let n = n.load(Ordering::Relaxed);
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_with_linkerd_names() {
        let m = Arc::new(Metrics::default());
        let l = m.labels(
            Direction::Outbound,
            "web:80",
            "default",
            &Peer::plaintext(false),
        );
        m.request(&l);
        m.request(&l);
        m.response(&l, 200, Class::Success, Duration::from_micros(1500));
        m.response(&l, 503, Class::Failure, Duration::from_millis(7));
        let text = m.render();
        assert!(text.contains(
            r#"request_total{direction="outbound",authority="web:80",route="default",tls="disabled"} 2"#
        ), "{text}");
        assert!(
            text.contains(r#"status_code="503",classification="failure"} 1"#),
            "{text}"
        );
        // 1.5 ms falls in the le=2 bucket and every bucket above it.
        assert!(text.contains(r#"le="1.0",direction="outbound",authority="web:80",route="default",tls="disabled",status_class="2xx"} 0"#), "{text}");
        assert!(text.contains(r#"le="2.0",direction="outbound",authority="web:80",route="default",tls="disabled",status_class="2xx"} 1"#), "{text}");
        assert!(
            text.contains(r#"le="10.0",direction="outbound",authority="web:80",route="default",tls="disabled",status_class="5xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"response_latency_ms_sum{direction="outbound",authority="web:80",route="default",tls="disabled",status_class="2xx"} 1.5"#), "{text}");
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_requests() {
        let m = Metrics::default();
        let a = m.labels(
            Direction::Outbound,
            "a:80",
            "default",
            &Peer::plaintext(false),
        );
        let b = m.labels(
            Direction::Outbound,
            "b:80",
            "default",
            &Peer::plaintext(false),
        );
        let mut all = Latency::new();
        for i in 1..=1000u64 {
            let d = Duration::from_micros(i * 37);
            m.response(if i % 3 == 0 { &a } else { &b }, 200, Class::Success, d);
            all.record(d);
        }
        let merged = m.latency_where(|_, _| true).expect("recorded");
        assert_eq!(merged.histogram, all.histogram);
        assert_eq!(merged.sum_us, all.sum_us);
    }

    #[test]
    fn histograms_stay_small_and_within_one_percent() {
        let mut l = Latency::new();
        for us in [90, 1_500, 7_000, 250_000, 10_000_000] {
            l.record(Duration::from_micros(us));
        }
        for (q, us) in [(0.0, 90.0), (0.5, 7_000.0), (1.0, 10_000_000.0)] {
            let got = l.histogram.value_at_quantile(q) as f64;
            assert!((got - us).abs() / us <= 0.01, "q{q}: {got} vs {us}");
        }
        // Up to 10 s at two significant digits: a few KiB, not the 184 KiB of a
        // pre-sized three-digit histogram.
        let bytes = l.histogram.distinct_values() * std::mem::size_of::<u64>();
        assert!(bytes < 32 * 1024, "{bytes} bytes");
    }

    #[test]
    fn authorities_are_capped() {
        let m = Metrics::default();
        // "default" (the route) takes one of the slots.
        for i in 0..MAX_LABEL_VALUES - 1 {
            m.labels(
                Direction::Inbound,
                &format!("h{i}:80"),
                "default",
                &Peer::plaintext(false),
            );
        }
        assert_eq!(
            &*m.labels(
                Direction::Inbound,
                "one-too-many:80",
                "default",
                &Peer::plaintext(false)
            )
            .authority,
            OVERFLOW
        );
        assert_eq!(
            &*m.labels(
                Direction::Inbound,
                "h1:80",
                "default",
                &Peer::plaintext(false)
            )
            .authority,
            "h1:80"
        );
    }

    #[test]
    fn tcp_counters_render() {
        let m = Arc::new(Metrics::default());
        let s = m.tcp_open(Direction::Inbound, "src", Tls::Disabled);
        s.read(10);
        s.wrote(20);
        s.closed();
        let text = m.render();
        assert!(
            text.contains(
                r#"tcp_read_bytes_total{direction="inbound",peer="src",tls="disabled"} 10"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tcp_open_connections{direction="inbound",peer="src",tls="disabled"} 0"#
            ),
            "{text}"
        );
    }
}
