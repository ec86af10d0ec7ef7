//! A proxy's `/stats` (cumulative counters and HDR histograms), the change between two
//! scrapes, and sums of changes over a window.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

pub use mesh_api::stats::Labels;

/// Why a proxy's stats could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The JSON did not parse.
    #[error("malformed /stats: {0}")]
    Json(#[from] serde_json::Error),
    /// A histogram could not be rebuilt.
    #[error("bad histogram in /stats: {0}")]
    Histogram(String),
}

/// A series' labels, shared: every scrape of every proxy that reports the same labels
/// holds one copy (see [`Interner`]).
pub type Key = Arc<Labels>;

/// Response counts by labels and success.
pub type Counts = HashMap<(Key, bool), u64>;

/// The one copy of each label set in use.
#[derive(Debug, Default)]
pub struct Interner(HashSet<Key>);

impl Interner {
    /// The shared copy of `labels`.
    pub fn get(&mut self, labels: Labels) -> Key {
        if let Some(k) = self.0.get(&labels) {
            return k.clone();
        }
        let k = Arc::new(labels);
        self.0.insert(k.clone());
        k
    }

    /// Forgets label sets nothing holds any more.
    pub fn collect(&mut self) {
        self.0.retain(|k| Arc::strong_count(k) > 1);
    }

    /// How many label sets are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A `/stats` document as viz reads it: the fields of [`mesh_api::stats::Stats`] that
/// viz uses, with each entry's labels read as plain fields (serde's `flatten`, which
/// the writer's types use, buffers every entry and cost viz most of a scrape round).
#[derive(serde::Deserialize)]
struct FlatStats {
    instance: String,
    #[serde(default)]
    started_unix_ms: Option<u64>,
    #[serde(default)]
    responses: Vec<FlatCount>,
    #[serde(default)]
    actual_responses: Vec<FlatCount>,
    #[serde(default)]
    latency: Vec<FlatLatency>,
    #[serde(default)]
    tcp: Vec<mesh_api::stats::Tcp>,
}

/// [`mesh_api::stats::Labels`]' fields, as they appear in each entry.
macro_rules! flat {
    ($(#[$m:meta])* struct $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(serde::Deserialize)]
        struct $name {
            #[serde(default)]
            direction: String,
            #[serde(default)]
            authority: String,
            #[serde(default)]
            route: String,
            #[serde(default)]
            tls: String,
            #[serde(default)]
            peer_id: Option<String>,
            #[serde(default)]
            dst_namespace: Option<String>,
            #[serde(default)]
            dst_workload: Option<String>,
            #[serde(default)]
            dst_service: Option<String>,
            $($field: $ty,)*
        }

        impl $name {
            fn labels(&mut self) -> Labels {
                Labels {
                    direction: std::mem::take(&mut self.direction),
                    authority: std::mem::take(&mut self.authority),
                    route: std::mem::take(&mut self.route),
                    tls: std::mem::take(&mut self.tls),
                    peer_id: self.peer_id.take(),
                    dst_namespace: self.dst_namespace.take(),
                    dst_workload: self.dst_workload.take(),
                    dst_service: self.dst_service.take(),
                }
            }
        }
    };
}

flat! {
    /// A response count ([`mesh_api::stats::Count`]).
    struct FlatCount {
        status: Option<u16>,
        class: Option<String>,
        count: u64,
    }
}

flat! {
    /// A latency histogram ([`mesh_api::stats::Latency`]).
    struct FlatLatency {
        buckets: Vec<(u64, u64)>,
    }
}

/// The largest latency a proxy records (an hour, in microseconds).
pub const MAX_VALUE_US: u64 = 3_600_000_000;

/// Two significant digits, as the proxies keep them: merges stay exact.
pub fn histogram() -> Histogram<u64> {
    Histogram::new(2).unwrap_or_else(|_| unreachable!("2 significant digits are valid"))
}

/// Latency buckets: each recorded bucket's value (µs) and count. Sparse, so that the
/// deltas kept for a window cost what they hold, not a histogram's whole array.
pub type Buckets = BTreeMap<u64, u64>;

/// Counters and latency buckets: cumulative in a snapshot, or a change in a delta.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Responses the clients saw, by labels and success.
    pub responses: Counts,
    /// Every attempt's response (retries included), where the proxy kept them.
    pub actual: Counts,
    /// Latency by labels (all status classes merged).
    pub latency: HashMap<Key, Buckets>,
    /// Responses with status 504 (timeouts), by labels.
    pub timeouts: HashMap<Key, u64>,
}

/// One scrape of one proxy.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Changes when the proxy restarts.
    pub instance: String,
    /// When the proxy started, if it says.
    pub started: Option<SystemTime>,
    /// Cumulative series.
    pub series: Series,
    /// Inbound connections open now.
    pub tcp_open_inbound: u64,
}

impl Snapshot {
    /// Parses a proxy's `/stats` JSON (label sets shared through a fresh interner).
    pub fn parse(json: &[u8]) -> Result<Self, StatsError> {
        let mut interner = Interner::default();
        Self::parse_with(json, &mut |l| interner.get(l))
    }

    /// Parses a proxy's `/stats` JSON, each label set shared through `key`.
    pub fn parse_with(json: &[u8], key: &mut dyn FnMut(Labels) -> Key) -> Result<Self, StatsError> {
        let raw: FlatStats = serde_json::from_slice(json)?;
        let mut timeouts: HashMap<Key, u64> = HashMap::new();
        let mut counts = |raw: Vec<FlatCount>, timeouts: Option<&mut HashMap<Key, u64>>| {
            let mut c = Counts::new();
            let mut timeouts = timeouts;
            for mut r in raw {
                // Responses to requests the proxy answered itself are failures too.
                let ok = r.class.as_deref() == Some("success");
                let status = r.status;
                let k = key(r.labels());
                if status == Some(504)
                    && let Some(t) = timeouts.as_deref_mut()
                {
                    *t.entry(k.clone()).or_default() += r.count;
                }
                *c.entry((k, ok)).or_default() += r.count;
            }
            c
        };
        let responses = counts(raw.responses, Some(&mut timeouts));
        let actual = counts(raw.actual_responses, None);
        let mut latency: HashMap<Key, Buckets> = HashMap::new();
        for mut l in raw.latency {
            let b = latency.entry(key(l.labels())).or_default();
            for (value, count) in l.buckets {
                if value > MAX_VALUE_US {
                    return Err(StatsError::Histogram(format!("value {value} out of range")));
                }
                let slot = b.entry(value).or_default();
                *slot = slot.saturating_add(count);
            }
        }
        let tcp_open_inbound = raw
            .tcp
            .iter()
            .filter(|t| t.direction == "inbound" && t.peer == "src")
            .map(|t| t.open.saturating_sub(t.close))
            .sum();
        Ok(Self {
            instance: raw.instance,
            started: raw
                .started_unix_ms
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            series: Series {
                responses,
                actual,
                latency,
                timeouts,
            },
            tcp_open_inbound,
        })
    }

    /// What happened between `prev` and this scrape. A proxy that restarted in between
    /// (another instance) counted from zero, so all of its counts are new; with no
    /// previous scrape nothing is attributable to the interval.
    pub fn since(&self, prev: Option<&Snapshot>) -> Series {
        let Some(prev) = prev else {
            return Series::default();
        };
        if prev.instance != self.instance {
            return self.series.clone();
        }
        fn sub<K: Clone + Eq + std::hash::Hash>(
            now: &HashMap<K, u64>,
            before: &HashMap<K, u64>,
        ) -> HashMap<K, u64> {
            now.iter()
                .filter_map(|(k, n)| {
                    // A counter that went down means a reset we could not see: count
                    // what is there now.
                    let b = before.get(k).copied().unwrap_or(0);
                    let d = if *n >= b { n - b } else { *n };
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect()
        }
        let mut latency = HashMap::new();
        for (k, now) in &self.series.latency {
            let d: Buckets = match prev.series.latency.get(k) {
                // Not a superset: a reset we could not see; everything there is new.
                Some(b) if b.iter().any(|(v, n)| now.get(v).copied().unwrap_or(0) < *n) => {
                    now.clone()
                }
                Some(b) => now
                    .iter()
                    .filter_map(|(v, n)| {
                        let d = n - b.get(v).copied().unwrap_or(0);
                        (d > 0).then_some((*v, d))
                    })
                    .collect(),
                None => now.clone(),
            };
            if !d.is_empty() {
                latency.insert(k.clone(), d);
            }
        }
        Series {
            responses: sub(&self.series.responses, &prev.series.responses),
            actual: sub(&self.series.actual, &prev.series.actual),
            latency,
            timeouts: sub(&self.series.timeouts, &prev.series.timeouts),
        }
    }
}

impl Series {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
            && self.actual.is_empty()
            && self.latency.is_empty()
            && self.timeouts.is_empty()
    }

    /// Adds `other` into this series.
    pub fn add(&mut self, other: &Series) {
        for (k, n) in &other.responses {
            *self.responses.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.actual {
            *self.actual.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.timeouts {
            *self.timeouts.entry(k.clone()).or_default() += n;
        }
        for (k, b) in &other.latency {
            let mine = self.latency.entry(k.clone()).or_default();
            for (v, n) in b {
                let slot = mine.entry(*v).or_default();
                *slot = slot.saturating_add(*n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(instance: &str, ok: u64, fail: u64, latencies: &[u64]) -> Vec<u8> {
        let mut h = histogram();
        for l in latencies {
            h.record(*l).expect("record");
        }
        let buckets: Vec<_> = h
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "instance": instance,
            "responses": [
                {"direction": "outbound", "authority": "web:80", "route": "default", "tls": "true", "status": 200, "class": "success", "count": ok},
                {"direction": "outbound", "authority": "web:80", "route": "default", "tls": "true", "status": 500, "class": "failure", "count": fail},
            ],
            "latency": [{"direction": "outbound", "authority": "web:80", "route": "default", "tls": "true", "status_class": 2, "sum_us": 0, "buckets": buckets}],
            "tcp": [{"direction": "inbound", "peer": "src", "tls": "true", "open": 5, "close": 3}],
        }))
        .expect("json")
    }

    fn labels() -> Labels {
        Labels {
            direction: "outbound".into(),
            authority: "web:80".into(),
            route: "default".into(),
            tls: "true".into(),
            ..Labels::default()
        }
    }

    #[test]
    fn deltas_subtract_and_survive_restarts() {
        let a = Snapshot::parse(&stats("1", 10, 1, &[1000, 2000])).expect("a");
        assert_eq!(a.tcp_open_inbound, 2);
        assert!(
            a.since(None).responses.is_empty(),
            "no baseline, nothing new"
        );
        let b = Snapshot::parse(&stats("1", 15, 1, &[1000, 2000, 3000, 3000])).expect("b");
        let d = b.since(Some(&a));
        assert_eq!(d.responses.get(&(Arc::new(labels()), true)), Some(&5));
        assert_eq!(d.responses.get(&(Arc::new(labels()), false)), None);
        assert_eq!(d.latency[&Arc::new(labels())].values().sum::<u64>(), 2);
        // Restarted: the new instance's counts are all new.
        let c = Snapshot::parse(&stats("2", 3, 0, &[500])).expect("c");
        let d = c.since(Some(&b));
        assert_eq!(d.responses.get(&(Arc::new(labels()), true)), Some(&3));
        assert_eq!(d.latency[&Arc::new(labels())].values().sum::<u64>(), 1);
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_everything() {
        let (xs, ys) = ([120u64, 900, 4000, 15_000], [80u64, 900, 77_000]);
        let a = Snapshot::parse(&stats("1", 4, 0, &xs)).expect("a");
        let b = Snapshot::parse(&stats("2", 3, 0, &ys)).expect("b");
        let mut merged = Series::default();
        merged.add(&a.series);
        merged.add(&b.series);
        let mut all = histogram();
        for v in xs.iter().chain(&ys) {
            all.record(*v).expect("record");
        }
        let mut m = histogram();
        for (v, n) in &merged.latency[&Arc::new(labels())] {
            m.record_n(*v, *n).expect("record");
        }
        assert_eq!(m.len(), all.len());
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(m.value_at_quantile(q), all.value_at_quantile(q), "q{q}");
        }
    }

    #[test]
    fn reads_every_field_the_writers_types_write() {
        use mesh_api::stats::{Count, Latency, Stats, Tcp};
        let labels = Labels {
            direction: "outbound".into(),
            authority: "web.ns.svc.cluster.local:80".into(),
            route: "GET /".into(),
            tls: "true".into(),
            peer_id: Some("web.ns.serviceaccount.identity.mesh.cluster.local".into()),
            dst_namespace: Some("ns".into()),
            dst_workload: Some("web".into()),
            dst_service: Some("web".into()),
        };
        let count = |status, class: &str, count| Count {
            labels: labels.clone(),
            status: Some(status),
            class: Some(class.into()),
            count,
        };
        let stats = Stats {
            instance: "9".into(),
            started_unix_ms: Some(5000),
            requests: vec![Count {
                labels: labels.clone(),
                count: 7,
                ..Count::default()
            }],
            responses: vec![count(200, "success", 4), count(504, "failure", 3)],
            actual_responses: vec![count(200, "success", 4), count(503, "failure", 9)],
            latency: vec![Latency {
                labels: labels.clone(),
                status_class: 2,
                sum_us: 10,
                buckets: vec![(100, 2), (200, 5)],
            }],
            tcp: vec![Tcp {
                direction: "inbound".into(),
                peer: "src".into(),
                tls: "true".into(),
                open: 4,
                close: 1,
            }],
        };
        let s = Snapshot::parse(&serde_json::to_vec(&stats).expect("json")).expect("parse");
        let k = Arc::new(labels);
        assert_eq!(s.instance, "9");
        assert_eq!(s.started, Some(UNIX_EPOCH + Duration::from_secs(5)));
        assert_eq!(s.series.responses[&(k.clone(), true)], 4);
        assert_eq!(s.series.responses[&(k.clone(), false)], 3);
        assert_eq!(s.series.actual[&(k.clone(), false)], 9);
        assert_eq!(s.series.timeouts[&k], 3);
        assert_eq!(s.series.latency[&k], Buckets::from([(100, 2), (200, 5)]));
        assert_eq!(s.tcp_open_inbound, 3);
        // One copy of the labels for all of them.
        assert!(
            s.series
                .responses
                .keys()
                .all(|(l, _)| Arc::ptr_eq(l, s.series.latency.keys().next().expect("key")))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Snapshot::parse(b"{").is_err());
        assert!(Snapshot::parse(b"{\"instance\": 1}").is_err());
    }
}
