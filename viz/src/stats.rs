//! A proxy's `/stats` (cumulative counters and HDR histograms), the change between two
//! scrapes, and sums of changes over a window.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
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
/// holds one copy (see [`Interner`]). Hashed by a hash of its labels computed once, and
/// compared by pointer first: the maps of a scrape round never rehash eight strings.
/// One pointer wide (the hash lives beside the labels), as the maps of a window hold
/// millions.
#[derive(Clone, Debug)]
pub struct Key(Arc<Hashed>);

/// Labels with their hash.
#[derive(Debug)]
struct Hashed {
    hash: u64,
    labels: Labels,
}

impl Key {
    /// A key of its own for `labels` (not shared: see [`Interner::get`]).
    pub fn new(labels: Labels) -> Self {
        let hash = View::of(&labels).hash();
        Self(Arc::new(Hashed { hash, labels }))
    }

    fn hash(&self) -> u64 {
        self.0.hash
    }
}

impl std::ops::Deref for Key {
    type Target = Labels;

    fn deref(&self) -> &Labels {
        &self.0.labels
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.hash() == other.hash() && self.0.labels == other.0.labels)
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.labels.cmp(&other.0.labels)
    }
}

/// A label set as it appears in a `/stats` body, borrowed: looked up without
/// allocating, copied only the first time it is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View<'a> {
    direction: &'a str,
    authority: &'a str,
    route: &'a str,
    tls: &'a str,
    peer_id: Option<&'a str>,
    dst_namespace: Option<&'a str>,
    dst_workload: Option<&'a str>,
    dst_service: Option<&'a str>,
}

impl<'a> View<'a> {
    /// `labels`, borrowed.
    pub fn of(labels: &'a Labels) -> Self {
        Self {
            direction: &labels.direction,
            authority: &labels.authority,
            route: &labels.route,
            tls: &labels.tls,
            peer_id: labels.peer_id.as_deref(),
            dst_namespace: labels.dst_namespace.as_deref(),
            dst_workload: labels.dst_workload.as_deref(),
            dst_service: labels.dst_service.as_deref(),
        }
    }

    /// The same hash for the same labels (`DefaultHasher::new` has fixed keys).
    fn hash(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        Hash::hash(self, &mut h);
        h.finish()
    }

    fn owned(&self) -> Labels {
        Labels {
            direction: self.direction.to_string(),
            authority: self.authority.to_string(),
            route: self.route.to_string(),
            tls: self.tls.to_string(),
            peer_id: self.peer_id.map(str::to_string),
            dst_namespace: self.dst_namespace.map(str::to_string),
            dst_workload: self.dst_workload.map(str::to_string),
            dst_service: self.dst_service.map(str::to_string),
        }
    }
}

/// Response counts by labels and success.
pub type Counts = HashMap<(Key, bool), u64>;

/// The one copy of each label set in use, by hash.
#[derive(Debug, Default)]
pub struct Interner(HashMap<u64, Vec<Key>>);

impl Interner {
    /// The shared copy of the labels `view` shows.
    pub fn get(&mut self, view: &View<'_>) -> Key {
        let hash = view.hash();
        let same = self.0.entry(hash).or_default();
        if let Some(k) = same.iter().find(|k| View::of(k) == *view) {
            return k.clone();
        }
        let k = Key(Arc::new(Hashed {
            hash,
            labels: view.owned(),
        }));
        same.push(k.clone());
        k
    }

    /// Forgets label sets nothing holds any more.
    pub fn collect(&mut self) {
        self.0.retain(|_, same| {
            same.retain(|k| Arc::strong_count(&k.0) > 1);
            !same.is_empty()
        });
    }

    /// How many label sets are held.
    pub fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
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
struct FlatStats<'a> {
    instance: String,
    #[serde(default)]
    started_unix_ms: Option<u64>,
    #[serde(default, borrow)]
    responses: Vec<FlatCount<'a>>,
    #[serde(default, borrow)]
    actual_responses: Vec<FlatCount<'a>>,
    #[serde(default, borrow)]
    latency: Vec<FlatLatency<'a>>,
    #[serde(default)]
    tcp: Vec<mesh_api::stats::Tcp>,
    #[serde(default)]
    authz: Vec<mesh_api::stats::Authz>,
}

/// [`mesh_api::stats::Labels`]' fields, as they appear in each entry: borrowed from
/// the body (copied only where JSON escapes make them differ from it).
macro_rules! flat {
    ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(serde::Deserialize)]
        struct $name<'a> {
            #[serde(default, borrow)]
            direction: Cow<'a, str>,
            #[serde(default, borrow)]
            authority: Cow<'a, str>,
            #[serde(default, borrow)]
            route: Cow<'a, str>,
            #[serde(default, borrow)]
            tls: Cow<'a, str>,
            #[serde(default, borrow)]
            peer_id: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            dst_namespace: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            dst_workload: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            dst_service: Option<Cow<'a, str>>,
            $($(#[$fm])* $field: $ty,)*
        }

        impl $name<'_> {
            fn view(&self) -> View<'_> {
                View {
                    direction: &self.direction,
                    authority: &self.authority,
                    route: &self.route,
                    tls: &self.tls,
                    peer_id: self.peer_id.as_deref(),
                    dst_namespace: self.dst_namespace.as_deref(),
                    dst_workload: self.dst_workload.as_deref(),
                    dst_service: self.dst_service.as_deref(),
                }
            }
        }
    };
}

flat! {
    /// A response count ([`mesh_api::stats::Count`]).
    struct FlatCount {
        status: Option<u16>,
        #[serde(borrow)]
        class: Option<Cow<'a, str>>,
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
    /// Inbound authorization outcomes, by labels (their `count` is zero: the counts
    /// are the values).
    pub authz: HashMap<mesh_api::stats::Authz, u64>,
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
    pub fn parse_with(
        json: &[u8],
        key: &mut dyn FnMut(&View<'_>) -> Key,
    ) -> Result<Self, StatsError> {
        let raw: FlatStats = serde_json::from_slice(json)?;
        let mut timeouts: HashMap<Key, u64> = HashMap::new();
        let mut counts = |raw: Vec<FlatCount>, timeouts: Option<&mut HashMap<Key, u64>>| {
            let mut c = Counts::new();
            let mut timeouts = timeouts;
            for r in raw {
                // Responses to requests the proxy answered itself are failures too.
                let ok = r.class.as_deref() == Some("success");
                let status = r.status;
                let k = key(&r.view());
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
        for l in raw.latency {
            let b = latency.entry(key(&l.view())).or_default();
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
        let mut authz: HashMap<mesh_api::stats::Authz, u64> = HashMap::new();
        for a in raw.authz {
            let n = a.count;
            *authz
                .entry(mesh_api::stats::Authz { count: 0, ..a })
                .or_default() += n;
        }
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
                authz,
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
            authz: sub(&self.series.authz, &prev.series.authz),
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
            && self.authz.is_empty()
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
        for (k, n) in &other.authz {
            *self.authz.entry(k.clone()).or_default() += n;
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
        assert_eq!(d.responses.get(&(Key::new(labels()), true)), Some(&5));
        assert_eq!(d.responses.get(&(Key::new(labels()), false)), None);
        assert_eq!(d.latency[&Key::new(labels())].values().sum::<u64>(), 2);
        // Restarted: the new instance's counts are all new.
        let c = Snapshot::parse(&stats("2", 3, 0, &[500])).expect("c");
        let d = c.since(Some(&b));
        assert_eq!(d.responses.get(&(Key::new(labels()), true)), Some(&3));
        assert_eq!(d.latency[&Key::new(labels())].values().sum::<u64>(), 1);
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
        for (v, n) in &merged.latency[&Key::new(labels())] {
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
            authz: vec![],
        };
        let s = Snapshot::parse(&serde_json::to_vec(&stats).expect("json")).expect("parse");
        let k = Key::new(labels);
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
                .all(|(l, _)| Arc::ptr_eq(&l.0, &s.series.latency.keys().next().expect("key").0))
        );
    }

    #[test]
    fn escaped_labels_are_the_same_labels_and_one_copy() {
        let body = |authority: &str| {
            format!(
                r#"{{"instance":"i","responses":[{{"direction":"outbound","authority":{authority},"route":"default","tls":"true","status":200,"class":"success","count":1}}]}}"#
            )
        };
        let mut interner = Interner::default();
        let mut parse = |json: String| {
            Snapshot::parse_with(json.as_bytes(), &mut |v| interner.get(v)).expect("parse")
        };
        let plain = parse(body(r#""web:80""#));
        // The same string written with an escape: not borrowed, still the same labels.
        let escaped = parse(body(r#""web:80""#));
        let (a, b) = (
            plain.series.responses.keys().next().expect("key"),
            escaped.series.responses.keys().next().expect("key"),
        );
        assert_eq!(a.0.authority, "web:80");
        assert!(Arc::ptr_eq(&(a.0).0, &(b.0).0), "one copy");
        let other = parse(body(r#""api:80""#));
        let c = other.series.responses.keys().next().expect("key");
        assert_ne!(a.0, c.0);
        assert_eq!(interner.len(), 2);
        // A key made on its own equals the shared one (and hashes alike).
        let own = Key::new((*a.0).clone());
        assert_eq!(own, a.0);
        assert_eq!(plain.series.responses.get(&(own, true)), Some(&1));
        drop((plain, escaped, other));
        interner.collect();
        assert!(interner.is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Snapshot::parse(b"{").is_err());
        assert!(Snapshot::parse(b"{\"instance\": 1}").is_err());
    }
}
