//! The answers: edges between workloads, per-workload stats, per-route stats, all over
//! a window, with percentiles from exactly merged HDR histograms.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{Labels, Series, histogram};
use crate::store::Store;

/// Latency percentiles in milliseconds (to the histograms' precision: 1%).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// The slowest.
    pub max_ms: Option<f64>,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        // A recorded value stands for its whole bucket; report the bucket's top, which
        // is what a merged histogram of every request would say too.
        let ms = |q: f64| Some(h.highest_equivalent(h.value_at_quantile(q)) as f64 / 1000.0);
        Self {
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: Some(h.highest_equivalent(h.max()) as f64 / 1000.0),
        }
    }
}

/// Requests, successes and latency of a set of series.
#[derive(Default)]
struct Acc {
    ok: u64,
    failed: u64,
    latency: Option<Histogram<u64>>,
}

impl Acc {
    fn add(&mut self, series: &Series, keep: impl Fn(&Labels) -> bool) {
        for ((l, ok), n) in &series.responses {
            if keep(l) {
                if *ok {
                    self.ok += n;
                } else {
                    self.failed += n;
                }
            }
        }
        for (l, buckets) in &series.latency {
            if keep(l) {
                let h = self.latency.get_or_insert_with(histogram);
                for (v, n) in buckets {
                    // Values are checked against the proxies' range when parsed.
                    let _ = h.record_n(*v, *n);
                }
            }
        }
    }

    fn requests(&self) -> u64 {
        self.ok + self.failed
    }

    fn success(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.ok as f64 / n as f64)
    }

    fn percentiles(&self) -> Percentiles {
        self.latency
            .as_ref()
            .map(Percentiles::of)
            .unwrap_or_default()
    }
}

/// Traffic from one workload to another.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// The calling workload.
    pub src: String,
    /// Its namespace.
    pub src_namespace: String,
    /// The called workload (or, when discovery does not know it, the authority).
    pub dst: String,
    /// Its namespace (empty when unknown).
    pub dst_namespace: String,
    /// The caller's identity, when it used mTLS.
    pub src_identity: Option<String>,
    /// The identity the callee presented and the caller verified.
    pub dst_identity: Option<String>,
    /// Whether every request on the edge was mTLS with both identities verified.
    pub secured: bool,
    /// Why not, when not: `no identity` (the caller's proxy has none) or `not meshed`.
    pub reason: Option<String>,
    /// Requests in the window.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Successful fraction, when there were requests.
    pub success: Option<f64>,
    /// Latency.
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// A workload's inbound traffic and mesh status.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadStat {
    /// The workload.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Pods with a proxy.
    pub meshed_pods: usize,
    /// All its pods.
    pub pods: usize,
    /// Requests it received in the window.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Successful fraction.
    pub success: Option<f64>,
    /// Latency as its proxies saw it (inbound).
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Inbound connections open now.
    pub tcp_connections: u64,
}

/// One ServiceProfile route of a service, as its callers saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStat {
    /// The route name (`default` for requests no route matched).
    pub route: String,
    /// The service.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Requests as the callers' apps saw them.
    pub requests: u64,
    /// Their rate.
    pub effective_rps: f64,
    /// Their success.
    pub effective_success: Option<f64>,
    /// Attempts sent, retries included.
    pub actual_requests: u64,
    /// Their rate.
    pub actual_rps: f64,
    /// Their success.
    pub actual_success: Option<f64>,
    /// Responses that were 504 Gateway Timeout (the route's timeout, mostly).
    pub timeouts: u64,
    /// Latency as the callers saw it.
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// A scraped proxy's state.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// The pod.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// Its workload.
    pub workload: String,
    /// Its address.
    pub ip: Option<String>,
    /// Whether it is meshed.
    pub meshed: bool,
    /// Whether the pod still exists.
    pub present: bool,
    /// Scrape outcomes.
    #[serde(flatten)]
    pub status: crate::store::ScrapeStatus,
}

/// Which namespaces a query covers.
#[derive(Clone, Debug)]
pub enum Namespaces {
    /// Every namespace.
    All,
    /// One.
    One(String),
}

impl Namespaces {
    fn has(&self, ns: &str) -> bool {
        match self {
            Self::All => true,
            Self::One(n) => n == ns,
        }
    }
}

/// Edges whose source is in `namespaces`.
pub fn edges(store: &Store, namespaces: &Namespaces, window: Duration, now: Instant) -> Vec<Edge> {
    let secs = store.covered(window, now);
    type Key = (String, String, String, String);
    // Per edge: the counts, why not secured, the callee's identity, the caller's.
    type Found = (Acc, Option<String>, Option<String>, Option<String>);
    let mut acc: BTreeMap<Key, Found> = BTreeMap::new();
    let windows = store.window(window, now);
    // The client identities each workload's proxies verified, inbound: an edge is
    // secured only if the callee saw the caller's identity, not just the other way.
    let verified: std::collections::HashSet<(String, String, String)> = windows
        .iter()
        .flat_map(|(t, series)| {
            series
                .responses
                .keys()
                .filter(|(l, _)| l.direction == "inbound" && l.tls == "true")
                .filter_map(|(l, _)| {
                    Some((
                        t.pod.namespace.clone(),
                        t.pod.workload.clone(),
                        l.peer_id.clone()?,
                    ))
                })
        })
        .collect();
    for (t, series) in &windows {
        if !namespaces.has(&t.pod.namespace) {
            continue;
        }
        let mut dsts: BTreeMap<Key, Vec<&crate::stats::Key>> = BTreeMap::new();
        for (l, _) in series.responses.keys() {
            if l.direction != "outbound" {
                continue;
            }
            let (dst, dst_ns) = match (&l.dst_workload, &l.dst_namespace) {
                (Some(w), Some(ns)) if !w.is_empty() => (w.clone(), ns.clone()),
                _ => (host(&l.authority).to_owned(), String::new()),
            };
            let key = (t.pod.namespace.clone(), t.pod.workload.clone(), dst_ns, dst);
            dsts.entry(key).or_default().push(l);
        }
        for (key, labels) in dsts {
            let entry = acc.entry(key).or_insert((Acc::default(), None, None, None));
            entry.0.add(series, |l| labels.iter().any(|k| ***k == *l));
            for l in &labels {
                if l.tls == "true" {
                    entry.2 = entry.2.take().or_else(|| l.peer_id.clone());
                    entry.3 = entry.3.take().or_else(|| {
                        Some(mesh_api::identity::dns_name(
                            &t.pod.service_account,
                            &t.pod.namespace,
                        ))
                    });
                } else if entry.1.is_none() {
                    entry.1 = Some(match l.tls.as_str() {
                        "disabled" => "no identity".to_owned(),
                        _ => "not meshed".to_owned(),
                    });
                }
            }
        }
    }
    acc.into_iter()
        .map(
            |((src_ns, src, dst_ns, dst), (a, reason, dst_id, src_id))| {
                // The caller's identity counts only once the callee has verified it.
                let seen = src_id.as_ref().is_some_and(|id| {
                    verified.contains(&(dst_ns.clone(), dst.clone(), id.clone()))
                });
                let reason = match (reason, &dst_id) {
                    (Some(r), _) => Some(r),
                    (None, Some(_)) if !seen => Some("client identity not verified".to_owned()),
                    (None, None) => Some("not meshed".to_owned()),
                    (None, Some(_)) => None,
                };
                Edge {
                    src,
                    src_namespace: src_ns,
                    dst,
                    dst_namespace: dst_ns,
                    secured: reason.is_none(),
                    src_identity: src_id.filter(|_| seen),
                    dst_identity: dst_id,
                    reason,
                    requests: a.requests(),
                    rps: a.requests() as f64 / secs,
                    success: a.success(),
                    latency: a.percentiles(),
                }
            },
        )
        .collect()
}

fn host(authority: &str) -> &str {
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Per-workload stats for workloads in `namespaces`.
pub fn stat(
    store: &Store,
    namespaces: &Namespaces,
    window: Duration,
    now: Instant,
) -> Vec<WorkloadStat> {
    let secs = store.covered(window, now);
    let mut acc: BTreeMap<(String, String), (Acc, usize, usize, u64)> = BTreeMap::new();
    for (t, series) in store.window(window, now) {
        if !t.present && series.responses.is_empty() {
            continue;
        }
        if !namespaces.has(&t.pod.namespace) {
            continue;
        }
        let e = acc
            .entry((t.pod.namespace.clone(), t.pod.workload.clone()))
            .or_insert((Acc::default(), 0, 0, 0));
        e.0.add(&series, |l| l.direction == "inbound");
        if t.present {
            e.2 += 1;
            if t.pod.meshed {
                e.1 += 1;
                e.3 += t.status.tcp_open_inbound;
            }
        }
    }
    acc.into_iter()
        .map(|((namespace, name), (a, meshed, pods, tcp))| WorkloadStat {
            name,
            namespace,
            meshed_pods: meshed,
            pods,
            requests: a.requests(),
            rps: a.requests() as f64 / secs,
            success: a.success(),
            latency: a.percentiles(),
            tcp_connections: tcp,
        })
        .collect()
}

/// Per-route stats of the services in `namespaces` (or only `service`), from every
/// caller.
pub fn routes(
    store: &Store,
    namespaces: &Namespaces,
    service: Option<&str>,
    window: Duration,
    now: Instant,
) -> Vec<RouteStat> {
    let secs = store.covered(window, now);
    type Key = (String, String, String);
    let mut by_route: BTreeMap<Key, (Acc, Acc, u64)> = BTreeMap::new();
    for (t, series) in store.window(window, now) {
        // Routes belong to the service the caller asked for (the profile's), not to the
        // split backend that answered.
        let caller_ns = t.pod.namespace.as_str();
        let of_service = |l: &Labels| -> Option<(String, String)> {
            if l.direction != "outbound" {
                return None;
            }
            let (svc, ns) = authority_service(&l.authority, caller_ns)?;
            (namespaces.has(&ns) && service.is_none_or(|want| want == svc)).then_some((ns, svc))
        };
        let mut keys: Vec<Key> = series
            .responses
            .keys()
            .map(|(l, _)| l)
            .filter_map(|l| of_service(l).map(|(ns, svc)| (ns, svc, l.route.clone())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let e = by_route
                .entry(key.clone())
                .or_insert((Acc::default(), Acc::default(), 0));
            let (ns, svc, route) = &key;
            let keep = |l: &Labels| {
                &l.route == route && of_service(l).is_some_and(|(n, s)| &n == ns && &s == svc)
            };
            e.2 += series
                .timeouts
                .iter()
                .filter(|(l, _)| keep(l))
                .map(|(_, n)| n)
                .sum::<u64>();
            e.0.add(&series, keep);
            // Attempts are counted separately only on retryable routes; elsewhere
            // every request is one attempt.
            let retried = series.actual.keys().any(|(l, _)| keep(l));
            if retried {
                let attempts = Series {
                    responses: series.actual.clone(),
                    ..Series::default()
                };
                e.1.add(&attempts, keep);
            } else {
                let once = Series {
                    responses: series.responses.clone(),
                    ..Series::default()
                };
                e.1.add(&once, keep);
            }
        }
    }
    by_route
        .into_iter()
        .map(
            |((namespace, service, route), (effective, actual, timeouts))| RouteStat {
                route,
                service,
                namespace,
                requests: effective.requests(),
                effective_rps: effective.requests() as f64 / secs,
                effective_success: effective.success(),
                actual_requests: actual.requests(),
                actual_rps: actual.requests() as f64 / secs,
                actual_success: actual.success(),
                timeouts,
                latency: effective.percentiles(),
            },
        )
        .collect()
}

/// The service and namespace an authority names (`name.ns.svc.cluster.local`,
/// `name.ns`, or a short `name` in the caller's namespace), if it names one.
fn authority_service(authority: &str, caller_ns: &str) -> Option<(String, String)> {
    let host = host(authority);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let name = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(svc), Some(ns), None) => Some((svc.to_owned(), ns.to_owned())),
        (Some(svc), None, None) if !svc.is_empty() => Some((svc.to_owned(), caller_ns.to_owned())),
        _ => None,
    }
}

/// Every target and how scraping it goes.
pub fn targets(store: &Store) -> Vec<TargetInfo> {
    store
        .targets()
        .map(|t| TargetInfo {
            pod: t.pod.name.clone(),
            namespace: t.pod.namespace.clone(),
            workload: t.pod.workload.clone(),
            ip: t.pod.ip.map(|ip| ip.to_string()),
            meshed: t.pod.meshed,
            present: t.present,
            status: t.status.clone(),
        })
        .collect()
}

/// One policy's decisions on one port of a workload over a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuthzStat {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload.
    pub workload: String,
    /// The application port.
    pub port: u16,
    /// The kind of what decided (`AuthorizationPolicy`, `Server`, `default`, …).
    pub kind: String,
    /// Its `namespace/name`, or the default policy's name.
    pub name: String,
    /// Requests (and connections) admitted.
    pub allowed: u64,
    /// Refused (403, or closed).
    pub denied: u64,
    /// Matched an AUDIT rule, or admitted by the `audit` default only.
    pub audited: u64,
    /// Refused for an invalid JWT (401).
    pub unauthenticated: u64,
    /// Refused by a rate limit (429).
    pub rate_limited: u64,
    /// The clients refused (denied, unauthenticated or rate limited), by identity
    /// (`unmeshed` for plaintext clients), most refused first.
    pub denied_clients: Vec<(String, u64)>,
}

/// Authorization outcomes of the workloads in `namespaces` (or only `workload`), by
/// port and policy.
pub fn authz(
    store: &Store,
    namespaces: &Namespaces,
    workload: Option<&str>,
    window: Duration,
    now: Instant,
) -> Vec<AuthzStat> {
    type Group = (String, String, u16, String, String);
    let mut acc: BTreeMap<Group, (AuthzStat, BTreeMap<String, u64>)> = BTreeMap::new();
    for (t, series) in store.window(window, now) {
        if !namespaces.has(&t.pod.namespace) || workload.is_some_and(|w| w != t.pod.workload) {
            continue;
        }
        for (a, n) in &series.authz {
            let key = (
                t.pod.namespace.clone(),
                t.pod.workload.clone(),
                a.port,
                a.kind.clone(),
                a.name.clone(),
            );
            let (stat, clients) = acc.entry(key).or_insert_with(|| {
                (
                    AuthzStat {
                        namespace: t.pod.namespace.clone(),
                        workload: t.pod.workload.clone(),
                        port: a.port,
                        kind: a.kind.clone(),
                        name: a.name.clone(),
                        ..AuthzStat::default()
                    },
                    BTreeMap::new(),
                )
            });
            let refused = match a.outcome.as_str() {
                "allow" => {
                    stat.allowed += n;
                    false
                }
                "deny" => {
                    stat.denied += n;
                    true
                }
                "audit" => {
                    stat.audited += n;
                    false
                }
                "unauthenticated" => {
                    stat.unauthenticated += n;
                    true
                }
                "rate_limited" => {
                    stat.rate_limited += n;
                    true
                }
                _ => false,
            };
            if refused {
                let who = a.client_id.clone().unwrap_or_else(|| "unmeshed".into());
                *clients.entry(who).or_default() += n;
            }
        }
    }
    acc.into_values()
        .map(|(mut stat, clients)| {
            let mut clients: Vec<(String, u64)> = clients.into_iter().collect();
            clients.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            stat.denied_clients = clients;
            stat
        })
        .collect()
}
