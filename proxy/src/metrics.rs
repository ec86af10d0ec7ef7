//! Golden metrics: request and response counters, HDR latency histograms, and TCP
//! connection counters, served as Prometheus text with Linkerd's names and labels.
//!
//! Latency is kept as HDR histograms (microseconds, three significant digits) so that
//! percentiles are exact to the histogram's precision; the Prometheus
//! `response_latency_ms` buckets are computed from the same histograms at scrape time.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Prometheus `response_latency_ms` bucket bounds, as Linkerd publishes them.
const LATENCY_BOUNDS_MS: [u64; 25] = [
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1_000, 2_000, 3_000, 4_000, 5_000,
    10_000, 20_000, 30_000, 40_000, 50_000,
];
/// The highest latency a histogram tracks exactly; longer ones are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Distinct authorities kept as their own label value; the rest share `overflow`.
/// Authorities come from clients, so without a cap they could grow memory without bound.
const MAX_AUTHORITIES: usize = 4_096;
/// The label value used once [`MAX_AUTHORITIES`] is reached.
const OVERFLOW: &str = "overflow";

/// Which side of the pod a request or connection came in on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From a peer to the local application.
    Inbound,
    /// From the local application to a peer.
    Outbound,
}

impl Direction {
    /// The `direction` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Whether a response counts as a success.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A success.
    Success,
    /// A failure: a 5xx, a non-zero `grpc-status`, or a stream that ended in error.
    Failure,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The labels shared by a request and its response.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestLabels {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The request's authority (`host:port`), capped in cardinality.
    pub authority: Arc<str>,
    /// The route name; `default` when no profile route matched.
    pub route: Arc<str>,
}

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
        // Three significant digits from 1 µs to an hour: 0.1% precision everywhere.
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| {
            Histogram::new(3).unwrap_or_else(|_| unreachable!("3 sigfigs is valid"))
        });
        Self {
            histogram,
            sum_us: 0,
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        self.histogram.saturating_record(us);
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

#[derive(Default, Debug)]
struct Store {
    authorities: HashSet<Arc<str>>,
    requests: HashMap<RequestLabels, u64>,
    responses: HashMap<ResponseKey, u64>,
    latencies: HashMap<LatencyKey, Latency>,
}

/// All of a proxy's metrics. Cheap to share; every record is one short critical section.
#[derive(Debug, Default)]
pub struct Metrics {
    store: Mutex<Store>,
    tcp: Mutex<HashMap<(Direction, &'static str), Arc<TcpStats>>>,
}

impl Metrics {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Labels for a request, interning the authority (bounded, see [`MAX_AUTHORITIES`]).
    pub fn labels(&self, direction: Direction, authority: &str, route: &str) -> RequestLabels {
        let mut store = self.store();
        let authority = match store.authorities.get(authority) {
            Some(a) => a.clone(),
            None if store.authorities.len() < MAX_AUTHORITIES => {
                let a: Arc<str> = Arc::from(authority);
                store.authorities.insert(a.clone());
                a
            }
            None => Arc::from(OVERFLOW),
        };
        RequestLabels {
            direction,
            authority,
            route: Arc::from(route),
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

    /// The TCP counters for a direction and peer (`src` or `dst`), counting one open.
    pub fn tcp_open(&self, direction: Direction, peer: &'static str) -> Arc<TcpStats> {
        let mut tcp = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        let stats = tcp.entry((direction, peer)).or_default().clone();
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
    vec![
        ("direction", l.direction.as_str()),
        ("authority", &l.authority),
        ("route", &l.route),
        ("tls", "disabled"),
    ]
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut requests, mut responses, mut latencies) = {
            let store = self.0.store();
            (
                store
                    .requests
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<Vec<_>>(),
                store
                    .responses
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect::<Vec<_>>(),
                store
                    .latencies
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        requests.sort();
        responses.sort_by(|a, b| a.0.cmp(&b.0));
        latencies.sort_by(|a, b| a.0.cmp(&b.0));

        let mut family =
            encoder.encode_descriptor("request", "Requests received", None, MetricType::Counter)?;
        for (labels, n) in &requests {
            family
                .encode_family(&request_labels(labels))?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }

        let mut family =
            encoder.encode_descriptor("response", "Responses sent", None, MetricType::Counter)?;
        for (key, n) in &responses {
            let status = key.status.to_string();
            let mut labels = request_labels(&key.request);
            labels.push(("status_code", &status));
            labels.push(("classification", key.class.as_str()));
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
        for (key, latency) in &latencies {
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
            for ((direction, peer), stats) in &tcp {
                let labels = [
                    ("direction", direction.as_str()),
                    ("peer", peer),
                    ("tls", "disabled"),
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
        for ((direction, peer), stats) in &tcp {
            let labels = [
                ("direction", direction.as_str()),
                ("peer", peer),
                ("tls", "disabled"),
            ];
            let open = stats.open.load(Ordering::Relaxed);
            let open_now = open.saturating_sub(stats.close.load(Ordering::Relaxed)) as i64;
            family.encode_family(&labels)?.encode_gauge(&open_now)?;
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
        let l = m.labels(Direction::Outbound, "web:80", "default");
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
        let a = m.labels(Direction::Outbound, "a:80", "default");
        let b = m.labels(Direction::Outbound, "b:80", "default");
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
    fn authorities_are_capped() {
        let m = Metrics::default();
        for i in 0..MAX_AUTHORITIES {
            m.labels(Direction::Inbound, &format!("h{i}:80"), "default");
        }
        assert_eq!(
            &*m.labels(Direction::Inbound, "one-too-many:80", "default")
                .authority,
            OVERFLOW
        );
        assert_eq!(
            &*m.labels(Direction::Inbound, "h1:80", "default").authority,
            "h1:80"
        );
    }

    #[test]
    fn tcp_counters_render() {
        let m = Arc::new(Metrics::default());
        let s = m.tcp_open(Direction::Inbound, "src");
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
