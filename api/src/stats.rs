//! The proxy's `/stats` JSON, which viz scrapes: cumulative counters and HDR latency
//! buckets, exact and mergeable, written by the proxy and read by viz with these types.

use serde::{Deserialize, Serialize};

/// The labels a series is kept under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Labels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The request's authority.
    pub authority: String,
    /// The route, or `default`.
    pub route: String,
    /// `true` (mTLS), `no_identity` or `disabled`.
    pub tls: String,
    /// The peer's verified identity (client inbound, server outbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Outbound: the endpoint's namespace, from discovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_namespace: Option<String>,
    /// Outbound: the endpoint's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_workload: Option<String>,
    /// Outbound: the endpoint's service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_service: Option<String>,
}

/// A counter of requests, or of responses with their status and class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Its labels.
    #[serde(flatten)]
    pub labels: Labels,
    /// Responses: the HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Responses: `success` or `failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// How many.
    pub count: u64,
}

impl Count {
    /// Whether this counts successful responses.
    pub fn is_success(&self) -> bool {
        self.class.as_deref() == Some("success")
    }
}

/// An HDR latency histogram (microseconds, two significant digits) of one status class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Its labels.
    #[serde(flatten)]
    pub labels: Labels,
    /// 1 for 1xx … 5 for 5xx.
    #[serde(default)]
    pub status_class: u16,
    /// The exact sum of the latencies, in microseconds.
    #[serde(default)]
    pub sum_us: u64,
    /// Each recorded bucket: the highest value it holds (µs) and its count.
    pub buckets: Vec<(u64, u64)>,
}

/// TCP connections of one direction, peer side and TLS state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `src` (accepted) or `dst` (opened).
    pub peer: String,
    /// As in [`Labels::tls`].
    #[serde(default)]
    pub tls: String,
    /// Connections opened.
    pub open: u64,
    /// Connections closed.
    pub close: u64,
}

/// Inbound authorization outcomes of one port, policy and client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Authz {
    /// `http` (requests) or `tcp` (connections).
    pub protocol: String,
    /// `allow`, `deny`, `audit`, `unauthenticated` (an invalid JWT) or `rate_limited`.
    pub outcome: String,
    /// The application port.
    pub port: u16,
    /// The kind of what decided (`AuthorizationPolicy`, `default`, …).
    pub kind: String,
    /// Its `namespace/name`, or the default policy's name.
    pub name: String,
    /// The client's mTLS identity, if meshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// How many.
    pub count: u64,
}

/// The whole `/stats` document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Changes when the proxy restarts (counters start again from zero).
    pub instance: String,
    /// When the proxy started, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// Requests, counted once each.
    #[serde(default)]
    pub requests: Vec<Count>,
    /// Responses the clients saw.
    #[serde(default)]
    pub responses: Vec<Count>,
    /// Every attempt's response, retries included.
    #[serde(default)]
    pub actual_responses: Vec<Count>,
    /// Latency to response headers.
    #[serde(default)]
    pub latency: Vec<Latency>,
    /// TCP connections.
    #[serde(default)]
    pub tcp: Vec<Tcp>,
    /// Inbound authorization outcomes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authz: Vec<Authz>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_omits_what_is_unknown() {
        let stats = Stats {
            instance: "7".into(),
            started_unix_ms: Some(1),
            requests: vec![Count {
                labels: Labels {
                    direction: "outbound".into(),
                    authority: "web:80".into(),
                    route: "default".into(),
                    tls: "true".into(),
                    peer_id: Some("web.ns.serviceaccount.identity.mesh.cluster.local".into()),
                    ..Labels::default()
                },
                count: 3,
                ..Count::default()
            }],
            ..Stats::default()
        };
        let json = serde_json::to_string(&stats).expect("json");
        assert!(
            !json.contains("dst_workload") && !json.contains("status"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Stats>(&json).expect("parses"), stats);
    }
}
