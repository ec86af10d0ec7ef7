//! Counts of inbound authorization outcomes, in Linkerd's shape
//! (`inbound_http_authz_allow_total`, `inbound_http_authz_deny_total`, the TCP ones,
//! rate-limited and unauthenticated requests), by port, policy and client identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::Label;

/// What happened to a request or connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Admitted.
    Allow,
    /// Refused by an authorization or the default policy.
    Deny,
    /// Matched an AUDIT authorization, or admitted by the `audit` default only.
    Audit,
    /// Refused for bearing an invalid JWT (401).
    Unauthenticated,
    /// Refused by a rate limit (429).
    RateLimited,
}

impl Outcome {
    /// The outcome's name in `/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
            Self::Unauthenticated => "unauthenticated",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// One counter's labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// HTTP requests, else TCP connections.
    pub http: bool,
    /// What happened.
    pub outcome: Outcome,
    /// The application port.
    pub port: u16,
    /// What decided.
    pub by: Label,
    /// The client's mTLS identity, if meshed.
    pub client: Option<Arc<str>>,
}

/// The counters.
#[derive(Debug, Default)]
pub struct AuthzMetrics {
    counts: Mutex<HashMap<Key, u64>>,
}

impl AuthzMetrics {
    /// Counts one outcome.
    pub fn count(&self, key: Key) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(key).or_default() += 1;
    }

    /// Every counter, sorted.
    pub fn snapshot(&self) -> Vec<(Key, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_unstable();
        all
    }

    /// Writes the counter families.
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = self.snapshot();
        let families = [
            (
                true,
                Outcome::Allow,
                "inbound_http_authz_allow",
                "HTTP requests authorized",
            ),
            (
                true,
                Outcome::Deny,
                "inbound_http_authz_deny",
                "HTTP requests denied",
            ),
            (
                true,
                Outcome::Audit,
                "inbound_http_authz_audit",
                "HTTP requests audited",
            ),
            (
                true,
                Outcome::Unauthenticated,
                "inbound_http_authn_deny",
                "HTTP requests refused for an invalid JWT",
            ),
            (
                true,
                Outcome::RateLimited,
                "inbound_http_local_ratelimit_rejected",
                "HTTP requests refused by a local rate limit",
            ),
            (
                false,
                Outcome::Allow,
                "inbound_tcp_authz_allow",
                "TCP connections authorized",
            ),
            (
                false,
                Outcome::Deny,
                "inbound_tcp_authz_deny",
                "TCP connections denied",
            ),
            (
                false,
                Outcome::Audit,
                "inbound_tcp_authz_audit",
                "TCP connections audited",
            ),
        ];
        for (http, outcome, name, help) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (k, n) in all
                .iter()
                .filter(|(k, _)| k.http == http && k.outcome == outcome)
            {
                let port = k.port.to_string();
                let mut labels = vec![
                    ("target_port", port.as_str()),
                    ("authz_kind", &*k.by.kind),
                    ("authz_name", &*k.by.name),
                ];
                if let Some(id) = &k.client {
                    labels.push(("client_id", id));
                }
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        Ok(())
    }
}
