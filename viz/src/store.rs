//! The scraped proxies and what changed at each scrape, kept for the retention period
//! so that any window up to it can be summed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use mesh_controller::index::PodView;
use serde::Serialize;

use crate::stats::{Series, Snapshot};

/// A proxy viz scrapes (or scraped: a pod that went away keeps its history until it
/// ages out, so windows that cover its traffic stay right).
#[derive(Debug)]
pub struct Target {
    /// The pod.
    pub pod: PodView,
    /// Whether the pod is still in the source.
    pub present: bool,
    last: Option<Snapshot>,
    deltas: VecDeque<(Instant, Series)>,
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

/// Every target, by namespace and pod name.
#[derive(Debug)]
pub struct Store {
    targets: BTreeMap<(String, String), Target>,
    retention: Duration,
    interval: Duration,
    started: Instant,
    started_wall: SystemTime,
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
        });
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
                t.deltas.push_back((at, delta));
            }
            Err(e) => {
                t.status.failures += 1;
                t.status.error = Some(e);
            }
        }
        while t
            .deltas
            .front()
            .is_some_and(|(when, _)| at.saturating_duration_since(*when) > retention)
        {
            t.deltas.pop_front();
        }
    }

    /// Every target with what changed within `window` before `now`.
    pub fn window(&self, window: Duration, now: Instant) -> Vec<(&Target, Series)> {
        let within = |at: &Instant| *at <= now && now.duration_since(*at) < window;
        self.targets
            .values()
            .map(|t| {
                let mut sum = Series::default();
                for (_, d) in t.deltas.iter().filter(|(at, _)| within(at)) {
                    sum.add(d);
                }
                (t, sum)
            })
            .collect()
    }

    /// The seconds a window of `window` actually covers (less while viz is young).
    pub fn covered(&self, window: Duration, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.started);
        window
            .min(age)
            .as_secs_f64()
            .max(self.interval.as_secs_f64())
    }

    /// Every target.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }
}
