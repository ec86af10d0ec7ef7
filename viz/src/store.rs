//! The scraped proxies and what changed at each scrape, kept for the retention period
//! so that any window up to it can be summed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mesh_controller::index::PodView;
use serde::Serialize;

use crate::stats::{Interner, Series, Snapshot};

/// How long changes are kept at scrape resolution; older ones are merged into blocks
/// of [`BLOCK`], so that memory grows with the retention in minutes, not in scrapes.
/// A window up to this long is exact to the scrape.
pub const FULL_RESOLUTION: Duration = Duration::from_secs(120);
/// The span of one merged block.
pub const BLOCK: Duration = Duration::from_secs(60);

/// A proxy viz scrapes (or scraped: a pod that went away keeps its history until it
/// ages out, so windows that cover its traffic stay right).
#[derive(Debug)]
pub struct Target {
    /// The pod.
    pub pod: PodView,
    /// Whether the pod is still in the source.
    pub present: bool,
    last: Option<Snapshot>,
    /// Changes at each scrape, for the last [`FULL_RESOLUTION`].
    deltas: VecDeque<(Instant, Series)>,
    /// Older changes, merged per [`BLOCK`] (numbered from the store's start).
    blocks: VecDeque<(u64, Series)>,
    /// The outcome of the latest scrape.
    pub status: ScrapeStatus,
}

/// How scraping a proxy went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScrapeStatus {
    /// Successful scrapes.
    pub scrapes: u64,
    /// Failed scrapes.
    pub failures: u64,
    /// The latest error, cleared by a success.
    pub error: Option<String>,
    /// Restarts noticed (the proxy's instance changed).
    pub restarts: u64,
    /// Inbound connections open at the latest scrape.
    pub tcp_open_inbound: u64,
}

/// The longest retention kept (a day).
pub const MAX_RETENTION: Duration = Duration::from_secs(86_400);

/// See [`Store::block_of`].
fn block_index(since_start: Duration) -> u64 {
    (since_start.as_nanos().saturating_sub(1) / BLOCK.as_nanos()) as u64
}

/// Every target, by namespace and pod name.
#[derive(Debug)]
pub struct Store {
    targets: BTreeMap<(String, String), Target>,
    retention: Duration,
    interval: Duration,
    started: Instant,
    started_wall: SystemTime,
    labels: Arc<Mutex<Interner>>,
}

impl Store {
    /// An empty store for scrapes every `interval`, keeping changes for `retention`.
    pub fn new(retention: Duration, interval: Duration) -> Self {
        Self {
            targets: BTreeMap::new(),
            retention: retention.min(MAX_RETENTION),
            interval,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            labels: Arc::default(),
        }
    }

    /// The block a change made at `at` belongs to: block `n` holds the changes made
    /// in `(start + n·BLOCK, start + (n+1)·BLOCK]`, as a window holds those in
    /// `(now − window, now]`.
    fn block_of(&self, at: Instant) -> u64 {
        block_index(at.saturating_duration_since(self.started))
    }

    /// When block `n` starts.
    fn block_start(&self, n: u64) -> Instant {
        self.started + BLOCK * n as u32
    }

    /// How many label sets the store holds one copy of.
    pub fn label_sets(&self) -> usize {
        self.labels.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Parses a scraped `/stats` body, sharing its label sets with every other scrape.
    /// Needs no lock on the store: scrapes parse concurrently.
    pub fn parser(&self) -> impl Fn(&[u8]) -> Result<Snapshot, crate::stats::StatsError> + use<> {
        let labels = self.labels.clone();
        move |json| {
            Snapshot::parse_with(json, &mut |l| {
                labels.lock().unwrap_or_else(|e| e.into_inner()).get(l)
            })
        }
    }

    /// How long changes are kept: the longest window a query may ask for.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The shortest window worth asking for: two scrapes.
    pub fn min_window(&self) -> Duration {
        self.interval * 2
    }

    /// Follows the source: new pods become targets, pods gone are marked so.
    pub fn sync(&mut self, pods: Vec<PodView>) {
        for t in self.targets.values_mut() {
            t.present = false;
        }
        for pod in pods {
            let key = (pod.namespace.clone(), pod.name.clone());
            match self.targets.get_mut(&key) {
                Some(t) => {
                    // A pod recreated on another IP is another proxy.
                    if t.pod.ip != pod.ip {
                        t.last = None;
                    }
                    t.pod = pod;
                    t.present = true;
                }
                None => {
                    self.targets.insert(
                        key,
                        Target {
                            pod,
                            present: true,
                            last: None,
                            deltas: VecDeque::new(),
                            blocks: VecDeque::new(),
                            status: ScrapeStatus::default(),
                        },
                    );
                }
            }
        }
        let (now, retention) = (Instant::now(), self.retention);
        self.targets.retain(|_, t| {
            t.present
                || t.deltas
                    .back()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) <= retention)
                || t.blocks.back().is_some()
        });
        // Label sets of targets gone and changes aged out.
        self.labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .collect();
    }

    /// The meshed pods of `workload` in `namespace` (a range of one namespace, not a
    /// scan of every pod).
    pub fn pods_of(&self, namespace: &str, workload: &str) -> Vec<PodView> {
        self.targets
            .range((namespace.to_string(), String::new())..)
            .take_while(|((ns, _), _)| ns == namespace)
            .filter(|(_, t)| t.present && t.pod.meshed && t.pod.workload == workload)
            .map(|(_, t)| t.pod.clone())
            .collect()
    }

    /// The pods to scrape now: present, meshed, with an address.
    pub fn scrape_list(&self) -> Vec<PodView> {
        self.targets
            .values()
            .filter(|t| t.present && t.pod.meshed && t.pod.ip.is_some())
            .map(|t| t.pod.clone())
            .collect()
    }

    /// Records a scrape of `pod` made at `at`.
    pub fn record(&mut self, pod: &PodView, at: Instant, result: Result<Snapshot, String>) {
        let (started_wall, retention) = (self.started_wall, self.retention);
        let key = (pod.namespace.clone(), pod.name.clone());
        // No window (at most the retention) holds a block before this one whole.
        let oldest_block = self.first_block(retention, at);
        let started = self.started;
        let Some(t) = self.targets.get_mut(&key) else {
            return;
        };
        match result {
            Ok(snapshot) => {
                if t.last
                    .as_ref()
                    .is_some_and(|l| l.instance != snapshot.instance)
                {
                    t.status.restarts += 1;
                }
                // A proxy's first scrape is a baseline, unless the proxy started after
                // viz did: then everything it counted is new.
                let delta = match &t.last {
                    None if snapshot.started.is_some_and(|s| s >= started_wall) => {
                        snapshot.series.clone()
                    }
                    last => snapshot.since(last.as_ref()),
                };
                t.status.scrapes += 1;
                t.status.error = None;
                t.status.tcp_open_inbound = snapshot.tcp_open_inbound;
                t.last = Some(snapshot);
                if !delta.is_empty() {
                    t.deltas.push_back((at, delta));
                }
            }
            Err(e) => {
                t.status.failures += 1;
                t.status.error = Some(e);
            }
        }
        // Changes older than FULL_RESOLUTION join their block (still within the
        // retention); blocks past the retention go.
        while let Some((when, _)) = t.deltas.front() {
            if at.saturating_duration_since(*when) <= FULL_RESOLUTION {
                break;
            }
            let Some((when, delta)) = t.deltas.pop_front() else {
                break;
            };
            let n = block_index(when.saturating_duration_since(started));
            if n < oldest_block {
                continue;
            }
            match t.blocks.back_mut() {
                Some((b, sum)) if *b == n => sum.add(&delta),
                _ => t.blocks.push_back((n, delta)),
            }
        }
        while t.blocks.front().is_some_and(|(b, _)| *b < oldest_block) {
            t.blocks.pop_front();
        }
    }

    /// The first block wholly within `window` before `now`: blocks from it on are
    /// summed into the window, earlier ones are not.
    fn first_block(&self, window: Duration, now: Instant) -> u64 {
        let from = now.checked_sub(window).unwrap_or(self.started);
        let from = from.saturating_duration_since(self.started);
        from.as_secs().div_ceil(BLOCK.as_secs())
    }

    /// Every target with what changed within `window` before `now`: each scrape's
    /// change over the last [`FULL_RESOLUTION`], whole blocks before that.
    pub fn window(&self, window: Duration, now: Instant) -> Vec<(&Target, Series)> {
        let within = |at: &Instant| *at <= now && now.duration_since(*at) < window;
        let first = self.first_block(window, now);
        let last = self.block_of(now);
        self.targets
            .values()
            .map(|t| {
                let mut sum = Series::default();
                for (_, b) in t.blocks.iter().filter(|(n, _)| *n >= first && *n <= last) {
                    sum.add(b);
                }
                for (_, d) in t.deltas.iter().filter(|(at, _)| within(at)) {
                    sum.add(d);
                }
                (t, sum)
            })
            .collect()
    }

    /// The seconds a window of `window` actually covers: less while viz is young,
    /// and, past [`FULL_RESOLUTION`], from the first whole block it holds.
    pub fn covered(&self, window: Duration, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.started);
        let mut covered = window.min(age);
        if window > FULL_RESOLUTION {
            // Changes since FULL_RESOLUTION ago are all there; before that, whole
            // blocks from the first one the window holds.
            let recent = now.checked_sub(FULL_RESOLUTION).unwrap_or(self.started);
            let start = self.block_start(self.first_block(window, now)).min(recent);
            covered = covered.min(now.saturating_duration_since(start));
        }
        covered.as_secs_f64().max(self.interval.as_secs_f64())
    }

    /// How long viz has been keeping history at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Every target.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(store: &Store, count: u64) -> Snapshot {
        let json = serde_json::json!({
            "instance": "1",
            "responses": [{"direction": "inbound", "authority": "web:80", "route": "default",
                "tls": "true", "status": 200, "class": "success", "count": count}],
            "latency": [{"direction": "inbound", "authority": "web:80", "route": "default",
                "tls": "true", "status_class": 2, "sum_us": count, "buckets": [[1000, count]]}],
        });
        store.parser()(json.to_string().as_bytes()).expect("snapshot")
    }

    fn pod() -> PodView {
        PodView {
            namespace: "ns".into(),
            name: "web-1".into(),
            ip: "10.0.0.1".parse().ok(),
            workload: "web".into(),
            service_account: "web".into(),
            meshed: true,
        }
    }

    fn responses(store: &Store, window: Duration, now: Instant) -> u64 {
        store
            .window(window, now)
            .iter()
            .flat_map(|(_, s)| s.responses.values())
            .sum()
    }

    #[test]
    fn old_changes_merge_into_blocks_and_windows_stay_exact() {
        let mut store = Store::new(Duration::from_secs(600), Duration::from_secs(1));
        store.sync(vec![pod()]);
        let t0 = store.started;
        let at = |s: u64| t0 + Duration::from_secs(s);
        // One response a second for ten minutes.
        for k in 0..=600 {
            let s = snapshot(&store, k);
            store.record(&pod(), at(k), Ok(s));
        }
        let now = at(600);
        let t = store.targets().next().expect("target");
        assert!(t.deltas.len() <= 121, "{} deltas", t.deltas.len());
        assert!(t.blocks.len() <= 10, "{} blocks", t.blocks.len());
        assert_eq!(store.label_sets(), 1, "one copy of the labels");
        // Windows up to FULL_RESOLUTION count every scrape; longer ones whole blocks,
        // with the seconds they cover to match.
        for (window, want, secs) in [
            (60, 60, 60.0),
            (120, 120, 120.0),
            (300, 300, 300.0),
            (600, 600, 600.0),
            (330, 300, 300.0),
        ] {
            let w = Duration::from_secs(window);
            assert_eq!(responses(&store, w, now), want, "{window} s");
            assert_eq!(store.covered(w, now), secs, "{window} s");
        }
        // Latency merges the same way: one value per response.
        let lat: u64 = store
            .window(Duration::from_secs(600), now)
            .iter()
            .flat_map(|(_, s)| s.latency.values().flat_map(|b| b.values()))
            .sum();
        assert_eq!(lat, 600);
        // Past the retention, blocks go.
        for k in 601..=900 {
            let s = snapshot(&store, k);
            store.record(&pod(), at(k), Ok(s));
        }
        let t = store.targets().next().expect("target");
        assert!(
            t.blocks.front().is_some_and(|(n, _)| *n >= 5),
            "{:?}",
            t.blocks.front().map(|b| b.0)
        );
        assert_eq!(responses(&store, Duration::from_secs(600), at(900)), 600);
    }

    #[test]
    fn authorization_outcomes_sum_over_the_window_by_workload_and_policy() {
        let mut store = Store::new(Duration::from_secs(600), Duration::from_secs(1));
        store.sync(vec![pod()]);
        let t0 = store.started;
        let parse = store.parser();
        let stats = |allowed: u64, denied: u64| {
            let json = serde_json::json!({
                "instance": "1",
                "authz": [
                    {"protocol": "http", "outcome": "allow", "port": 8080, "kind": "AuthorizationPolicy",
                     "name": "ns/web", "client_id": "load.ns.serviceaccount.identity.mesh.cluster.local", "count": allowed},
                    {"protocol": "http", "outcome": "deny", "port": 8080, "kind": "default",
                     "name": "deny", "client_id": "intruder.ns.serviceaccount.identity.mesh.cluster.local", "count": denied},
                    {"protocol": "http", "outcome": "deny", "port": 8080, "kind": "default",
                     "name": "deny", "count": 1},
                ],
            });
            parse(json.to_string().as_bytes()).expect("snapshot")
        };
        let s = stats(10, 3);
        store.record(&pod(), t0 + Duration::from_secs(1), Ok(s));
        let s = stats(25, 7);
        store.record(&pod(), t0 + Duration::from_secs(2), Ok(s));
        let out = crate::query::authz(
            &store,
            &crate::query::Namespaces::All,
            Some("web"),
            Duration::from_secs(60),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let allow = out
            .iter()
            .find(|a| a.kind == "AuthorizationPolicy")
            .expect("allow");
        assert_eq!(
            (allow.allowed, allow.denied),
            (15, 0),
            "the window's change"
        );
        let deny = out.iter().find(|a| a.kind == "default").expect("deny");
        assert_eq!(deny.denied, 4);
        assert_eq!(
            deny.denied_clients,
            [(
                "intruder.ns.serviceaccount.identity.mesh.cluster.local".to_string(),
                4
            )]
        );
        assert!(
            crate::query::authz(
                &store,
                &crate::query::Namespaces::All,
                Some("other"),
                Duration::from_secs(60),
                t0 + Duration::from_secs(2),
            )
            .is_empty()
        );
    }
}
