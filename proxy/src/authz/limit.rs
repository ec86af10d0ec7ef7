//! A port's rate limits: token buckets (governor's GCRA) for all requests together,
//! per client identity, and for listed clients. Buckets live as long as the policy
//! they were compiled from.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use mesh_api::policy as pb;

use super::Label;

/// The quota a limit stands for: `requests` per period, up to `burst` at once.
fn quota(l: &pb::Limit) -> Option<Quota> {
    let requests = NonZeroU32::new(l.requests)?;
    let period = Duration::from_millis(if l.period_ms == 0 { 1000 } else { l.period_ms });
    let burst = NonZeroU32::new(l.burst).unwrap_or(requests);
    Quota::with_period(period / requests.get()).map(|q| q.allow_burst(burst))
}

struct Limit {
    label: Label,
    total: Option<DefaultDirectRateLimiter>,
    per_identity: Option<DefaultKeyedRateLimiter<Option<Arc<str>>>>,
    overrides: Vec<(Vec<super::Str>, DefaultDirectRateLimiter)>,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// A port's limits, all of which apply.
#[derive(Debug, Default)]
pub struct Limits {
    limits: Vec<Limit>,
}

/// A request over a limit: which, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The limit's object.
    pub label: Label,
    /// How long until the bucket has a token again.
    pub retry_after: Duration,
}

impl Limits {
    /// Compiles a port's limits.
    pub fn compile(limits: &[pb::RateLimit]) -> Self {
        Self {
            limits: limits
                .iter()
                .map(|l| Limit {
                    label: Label::of(l.source.as_ref()),
                    total: l.total.as_ref().and_then(quota).map(RateLimiter::direct),
                    per_identity: l
                        .per_identity
                        .as_ref()
                        .and_then(quota)
                        .map(RateLimiter::keyed),
                    overrides: l
                        .overrides
                        .iter()
                        .filter_map(|o| {
                            let q = o.limit.as_ref().and_then(quota)?;
                            Some((super::strs(&o.clients), RateLimiter::direct(q)))
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether the port has no limits.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Takes a token for a request from `identity` (unmeshed: `None`) from every
    /// bucket it draws on: the total first, then its own.
    pub fn check(&self, identity: Option<&Arc<str>>) -> Result<(), Exceeded> {
        let clock = DefaultClock::default();
        for l in &self.limits {
            let exceeded = |n: governor::NotUntil<<DefaultClock as Clock>::Instant>| Exceeded {
                label: l.label.clone(),
                retry_after: n.wait_time_from(clock.now()),
            };
            if let Some(total) = &l.total {
                total.check().map_err(exceeded)?;
            }
            let listed = identity.and_then(|id| {
                l.overrides
                    .iter()
                    .find(|(clients, _)| clients.iter().any(|c| c.matches(id)))
            });
            match (listed, &l.per_identity) {
                (Some((_, own)), _) => own.check().map_err(exceeded)?,
                (None, Some(each)) => each.check_key(&identity.cloned()).map_err(exceeded)?,
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Forgets the buckets of clients that have not been seen for a while.
    pub fn shrink(&self) {
        for l in &self.limits {
            if let Some(each) = &l.per_identity {
                each.retain_recent();
                each.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, period_ms: u64) -> Option<pb::Limit> {
        Some(pb::Limit {
            requests,
            period_ms,
            burst: 0,
        })
    }

    #[test]
    fn buckets_hold_one_periods_worth_per_identity_and_in_total() {
        let limits = Limits::compile(&[pb::RateLimit {
            source: None,
            total: limit(5, 60_000),
            per_identity: limit(2, 60_000),
            overrides: vec![pb::LimitOverride {
                limit: limit(3, 60_000),
                clients: vec![pb::StringMatch {
                    kind: Some(pb::string_match::Kind::Exact("vip".into())),
                }],
            }],
        }]);
        let a: Arc<str> = "a".into();
        let vip: Arc<str> = "vip".into();
        assert!(limits.check(Some(&a)).is_ok());
        assert!(limits.check(Some(&a)).is_ok());
        let over = limits.check(Some(&a)).expect_err("a's own bucket is empty");
        assert!(over.retry_after > Duration::from_secs(1), "{over:?}");
        // The refusal above took a token from the total: 3 taken, 2 left for vip.
        assert!(limits.check(Some(&vip)).is_ok());
        assert!(limits.check(Some(&vip)).is_ok());
        assert!(limits.check(None).is_err(), "the total is spent");
    }

    #[test]
    fn a_limit_of_nothing_limits_nothing() {
        let limits = Limits::compile(&[pb::RateLimit::default()]);
        for _ in 0..100 {
            assert!(limits.check(None).is_ok());
        }
    }
}
