//! The scraped proxies and what changed at each scrape, kept for the retention period
//! so that any window up to it can be summed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

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
    deltas: VecDeque<(SystemTime, Series)>,
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

/// Every target, by namespace and pod name.
#[derive(Debug)]
pub struct Store {
    targets: BTreeMap<(String, String), Target>,
    retention: Duration,
    started: SystemTime,
}

impl Store {
    /// An empty store keeping changes for `retention`.
    pub fn new(retention: Duration) -> Self {
        Self {
            targets: BTreeMap::new(),
            retention,
            started: SystemTime::now(),
        }
    }

    /// How long changes are kept: the longest window a query may ask for.
    pub fn retention(&self) -> Duration {
        self.retention
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
        let horizon = SystemTime::now() - self.retention;
        self.targets
            .retain(|_, t| t.present || t.deltas.back().is_some_and(|(at, _)| *at >= horizon));
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
    pub fn record(&mut self, pod: &PodView, at: SystemTime, result: Result<Snapshot, String>) {
        let Some(t) = self
            .targets
            .get_mut(&(pod.namespace.clone(), pod.name.clone()))
        else {
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
                let delta = snapshot.since(t.last.as_ref());
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
        let horizon = at - self.retention;
        while t.deltas.front().is_some_and(|(when, _)| *when < horizon) {
            t.deltas.pop_front();
        }
    }

    /// Every target with what changed within `window` before `now`.
    pub fn window(&self, window: Duration, now: SystemTime) -> Vec<(&Target, Series)> {
        let from = now - window;
        self.targets
            .values()
            .map(|t| {
                let mut sum = Series::default();
                for (_, d) in t.deltas.iter().filter(|(at, _)| *at > from && *at <= now) {
                    sum.add(d);
                }
                (t, sum)
            })
            .collect()
    }

    /// The seconds a window of `window` actually covers (less while viz is young).
    pub fn covered(&self, window: Duration, now: SystemTime) -> f64 {
        let age = now.duration_since(self.started).unwrap_or_default();
        window.min(age).as_secs_f64().max(1.0)
    }

    /// Every target.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }
}
