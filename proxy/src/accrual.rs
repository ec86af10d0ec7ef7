//! Failure accrual (circuit breaking), per backend: an endpoint that fails a number of
//! times in a row leaves the balancer for a penalty that grows exponentially with each
//! ejection in a row (with jitter, up to a maximum); once it ends the endpoint is on
//! probation: one success restores it, one failure ejects it again for longer. When
//! every endpoint of a backend is out, requests fail at once (503, `unavailable`)
//! instead of queueing. Only endpoints that have failed are remembered, so a healthy
//! backend costs nothing but a lookup.
//!
//! Istio's outlier detection is the same machinery in its `linear` form: 5xx and
//! gateway errors counted apart (either ejects), an ejection as long as the base
//! times the ejections so far, no probation, at least one endpoint ejectable whatever
//! the bound, and a panic threshold below which every endpoint takes requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_api::policy as pb;
use tokio::time::Instant;

/// A service's accrual settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failures in a row that eject an endpoint.
    pub max_failures: u32,
    /// The first ejection's length.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
    /// Up to this share (percent) of an ejection is added at random.
    pub jitter_percent: u32,
    /// At most this share (percent) of the endpoints is out at once; 0: no bound.
    pub max_ejected_percent: u32,
    /// Gateway errors (502, 503, 504 and unreachable endpoints) in a row that eject
    /// an endpoint (Istio's `consecutiveGatewayErrors`); 0: not counted apart.
    pub max_gateway_errors: u32,
    /// Istio's form: ejections last `base` × the times ejected, no probation.
    pub linear: bool,
    /// Below this share (percent) of endpoints available, all take requests (Istio's
    /// `minHealthPercent`); 0: never.
    pub min_health_percent: u32,
    /// Istio's form: ejections end at the next sweep of this interval after their
    /// length (Envoy judges endpoints every `interval`); zero: at their length.
    pub interval: Duration,
}

impl Policy {
    /// The settings of a policy's outlier detection, if it ejects anything.
    pub fn compile(o: &pb::OutlierDetection) -> Option<Self> {
        if o.consecutive_failures == 0 && o.consecutive_gateway_errors == 0 {
            return None;
        }
        let base = Duration::from_millis(o.base_ejection_ms.max(1));
        Some(Self {
            max_failures: o.consecutive_failures,
            base,
            max: Duration::from_millis(o.max_ejection_ms).max(base),
            jitter_percent: o.jitter_percent.min(100),
            max_ejected_percent: o.max_ejection_percent.min(100),
            max_gateway_errors: o.consecutive_gateway_errors,
            linear: o.linear,
            min_health_percent: o.min_health_percent.min(100),
            interval: Duration::from_millis(o.interval_ms),
        })
    }

    /// Whether only gateway errors are counted.
    pub fn gateway_only(&self) -> bool {
        self.max_failures == 0
    }

    /// The length of ejection number `n` in a row (from 0).
    fn penalty(&self, n: u32) -> Duration {
        if self.linear {
            let length = self.base.saturating_mul(n.saturating_add(1));
            // Returned by the first sweep after its length, sweeps every `interval`
            // from the ejection.
            let every = self.interval.as_nanos();
            if every == 0 {
                return length;
            }
            let sweeps = length.as_nanos().div_ceil(every);
            return Duration::from_nanos(
                u64::try_from(sweeps.saturating_mul(every)).unwrap_or(u64::MAX),
            );
        }
        let exp = self.base.saturating_mul(2u32.saturating_pow(n.min(30)));
        let p = exp.min(self.max);
        let jitter = p.mul_f64(f64::from(self.jitter_percent) / 100.0 * fastrand::f64());
        p + jitter
    }
}

/// What is known of one endpoint that has failed.
#[derive(Debug, Default)]
struct State {
    /// Failures in a row.
    failures: u32,
    /// Gateway errors in a row.
    gateway_errors: u32,
    /// Out of the balancer until then.
    ejected_until: Option<Instant>,
    /// Ejections in a row (each one longer).
    ejections: u32,
}

/// One backend's endpoints that have failed, and what it counted.
#[derive(Debug, Default)]
struct Backend {
    states: HashMap<SocketAddr, State>,
    /// Endpoints the backend had when last asked.
    size: usize,
    /// Ejections so far.
    ejected_total: u64,
    /// Istio's form: an endpoint back from an ejection is available, not on
    /// probation (it is remembered only for the length of its next ejection).
    linear: bool,
}

/// The endpoints each backend has seen fail. Shared by every request of the proxy.
#[derive(Debug, Default)]
pub struct Accrual {
    backends: Mutex<HashMap<Arc<str>, Backend>>,
}

/// A backend's endpoints by state, and its ejections so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// The backend's authority.
    pub backend: Arc<str>,
    /// Endpoints per state.
    pub states: [(Health, usize); 3],
    /// Ejections so far.
    pub ejections: u64,
}

/// An endpoint's state, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Taking requests.
    Available,
    /// Out of the balancer.
    Ejected,
    /// Back after an ejection: one success restores it, one failure ejects it again.
    Probation,
}

impl Health {
    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Ejected => "ejected",
            Self::Probation => "probation",
        }
    }
}

impl Accrual {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Backend>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Which of `endpoints` of `backend` may take a request now (`true` at the same
    /// index).
    pub fn available(
        &self,
        backend: &str,
        endpoints: &[SocketAddr],
        policy: &Policy,
        now: Instant,
    ) -> Vec<bool> {
        let mut all = self.lock();
        let Some(b) = all.get_mut(backend) else {
            // Nothing has failed there yet.
            return vec![true; endpoints.len()];
        };
        b.size = endpoints.len();
        let available: Vec<bool> = endpoints
            .iter()
            .map(|a| {
                b.states
                    .get(a)
                    .and_then(|s| s.ejected_until)
                    .is_none_or(|until| until <= now)
            })
            .collect();
        // Too few healthy: the balancer panics and uses them all (Envoy).
        let healthy = available.iter().filter(|a| **a).count();
        if policy.min_health_percent > 0
            && healthy * 100 < endpoints.len() * policy.min_health_percent as usize
        {
            return vec![true; endpoints.len()];
        }
        available
    }

    /// Records a success of `addr`: it is healthy again (unless it is out: an answer
    /// to a request sent before its ejection does not bring it back early). Istio's
    /// form remembers how often it was ejected; Linkerd's forgets it.
    pub fn success(&self, backend: &str, addr: SocketAddr, policy: &Policy, now: Instant) {
        let mut all = self.lock();
        let Some(b) = all.get_mut(backend) else {
            return;
        };
        let Some(s) = b.states.get_mut(&addr) else {
            return;
        };
        if s.ejected_until.is_some_and(|u| u > now) {
            return;
        }
        if policy.linear {
            s.failures = 0;
            s.gateway_errors = 0;
            return;
        }
        b.states.remove(&addr);
        if b.states.is_empty() {
            // Keep the backend's count of ejections: only its endpoints are forgotten.
            b.states.shrink_to_fit();
        }
    }

    /// Records a failure of `addr` (one of `size` endpoints), a gateway error or not;
    /// ejects it when it has failed too often in a row, or at all while on
    /// probation. Returns whether it was ejected.
    pub fn failure(
        &self,
        backend: &str,
        addr: SocketAddr,
        size: usize,
        policy: &Policy,
        gateway: bool,
        now: Instant,
    ) -> bool {
        let mut all = self.lock();
        let b = all.entry(Arc::from(backend)).or_default();
        b.size = size.max(b.size);
        b.linear = policy.linear;
        let out = b
            .states
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| u > now))
            .count();
        let s = b.states.entry(addr).or_default();
        if s.ejected_until.is_some_and(|u| u > now) {
            // Already out (a request sent before the ejection).
            return false;
        }
        let probation = !policy.linear && s.ejected_until.is_some();
        s.failures = s.failures.saturating_add(1);
        s.gateway_errors = if gateway {
            s.gateway_errors.saturating_add(1)
        } else {
            0
        };
        let tripped = (policy.max_failures > 0 && s.failures >= policy.max_failures)
            || (policy.max_gateway_errors > 0 && s.gateway_errors >= policy.max_gateway_errors);
        if !probation && !tripped {
            return false;
        }
        let bound = policy.max_ejected_percent as usize;
        let within = (out + 1) * 100 <= b.size * bound;
        let allowed = if policy.linear {
            // Istio's bound always lets one endpoint out (Envoy's rule).
            out == 0 || within
        } else {
            bound == 0 || within
        };
        if !allowed {
            return false;
        }
        let penalty = if policy.linear {
            policy.penalty(s.ejections)
        } else {
            policy.penalty(if probation { s.ejections } else { 0 })
        };
        s.ejections = if probation || policy.linear {
            s.ejections + 1
        } else {
            1
        };
        s.ejected_until = Some(now + penalty);
        s.failures = 0;
        s.gateway_errors = 0;
        b.ejected_total += 1;
        tracing::info!(%backend, endpoint = %addr, ?penalty, "endpoint ejected after failing");
        true
    }

    /// Each backend's endpoints by state, and its ejections so far: for metrics.
    pub fn snapshot(&self, now: Instant) -> Vec<BackendHealth> {
        let all = self.lock();
        let mut out: Vec<_> = all
            .iter()
            .map(|(name, b)| {
                let ejected = b
                    .states
                    .values()
                    .filter(|s| s.ejected_until.is_some_and(|u| u > now))
                    .count();
                let probation = if b.linear {
                    0
                } else {
                    b.states
                        .values()
                        .filter(|s| s.ejected_until.is_some_and(|u| u <= now))
                        .count()
                };
                let available = b.size.saturating_sub(ejected + probation);
                BackendHealth {
                    backend: name.clone(),
                    states: [
                        (Health::Available, available),
                        (Health::Ejected, ejected),
                        (Health::Probation, probation),
                    ],
                    ejections: b.ejected_total,
                }
            })
            .collect();
        out.sort_by(|a, b| a.backend.cmp(&b.backend));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(4),
            jitter_percent: 0,
            max_ejected_percent: 0,
            max_gateway_errors: 0,
            linear: false,
            min_health_percent: 0,
            interval: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_endpoints_leave_come_back_on_probation_and_are_restored() {
        let a = Accrual::default();
        let p = policy();
        let (e1, e2): (SocketAddr, SocketAddr) =
            (([127, 0, 0, 1], 1).into(), ([127, 0, 0, 2], 1).into());
        let all = [e1, e2];
        let now = Instant::now();
        assert!(!a.failure("b", e1, 2, &p, false, now));
        assert!(!a.failure("b", e1, 2, &p, false, now));
        // A success in between starts the count again.
        a.success("b", e1, &p, now);
        assert!(!a.failure("b", e1, 2, &p, false, now));
        assert!(!a.failure("b", e1, 2, &p, false, now));
        assert!(a.failure("b", e1, 2, &p, false, now), "three in a row");
        assert_eq!(a.available("b", &all, &p, now), [false, true]);
        // An answer to a request sent before the ejection does not end it.
        a.success("b", e1, &p, now);
        assert_eq!(a.available("b", &all, &p, now), [false, true]);
        let snap = a.snapshot(now);
        assert_eq!(snap[0].states[1], (Health::Ejected, 1));
        assert_eq!(snap[0].ejections, 1);

        // After the penalty, on probation: one failure ejects it for twice as long.
        let later = now + Duration::from_secs(1);
        assert_eq!(a.available("b", &all, &p, later), [true, true]);
        assert_eq!(a.snapshot(later)[0].states[2], (Health::Probation, 1));
        assert!(a.failure("b", e1, 2, &p, false, later));
        assert_eq!(
            a.available("b", &all, &p, later + Duration::from_millis(1999)),
            [false, true]
        );
        let back = later + Duration::from_secs(2);
        assert_eq!(a.available("b", &all, &p, back), [true, true]);
        // One success restores it.
        a.success("b", e1, &p, back);
        assert_eq!(a.snapshot(back)[0].states[0], (Health::Available, 2));
        assert!(
            !a.failure("b", e1, 2, &p, false, back),
            "counting from zero again"
        );

        // Penalties stop growing at the maximum.
        assert_eq!(p.penalty(10), Duration::from_secs(4));
    }

    #[test]
    fn a_bound_keeps_some_endpoints_in() {
        let a = Accrual::default();
        let p = Policy {
            max_failures: 1,
            max_ejected_percent: 50,
            ..policy()
        };
        let now = Instant::now();
        let e: Vec<SocketAddr> = (1..=4).map(|i| ([127, 0, 0, i], 1).into()).collect();
        assert!(a.failure("b", e[0], 4, &p, false, now));
        assert!(a.failure("b", e[1], 4, &p, false, now));
        assert!(
            !a.failure("b", e[2], 4, &p, false, now),
            "half are out already"
        );
        assert!(Policy::compile(&pb::OutlierDetection::default()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn istios_form_counts_gateway_errors_apart_and_grows_linearly() {
        let a = Accrual::default();
        let p = Policy {
            max_failures: 5,
            max_gateway_errors: 1,
            base: Duration::from_secs(180),
            max: Duration::from_secs(180),
            max_ejected_percent: 10,
            linear: true,
            ..policy()
        };
        let e: Vec<SocketAddr> = (1..=3).map(|i| ([127, 0, 0, i], 1).into()).collect();
        let now = Instant::now();
        // A 500 is no gateway error; one 503 ejects (httpbin's consecutiveGatewayErrors: 1).
        assert!(!a.failure("b", e[0], 3, &p, false, now));
        assert!(a.failure("b", e[0], 3, &p, true, now), "one gateway error");
        // 10% of three is none, but Envoy always lets one out.
        assert!(!a.failure("b", e[1], 3, &p, true, now), "only one at 10%");
        assert_eq!(a.available("b", &e, &p, now), [false, true, true]);
        // Back after 3 minutes, whole (no probation): one failure does not eject it.
        let back = now + Duration::from_secs(180);
        assert_eq!(a.available("b", &e, &p, back), [true, true, true]);
        assert!(!a.failure("b", e[0], 3, &p, false, back));
        a.success("b", e[0], &p, back);
        // Ejected again: twice as long (base × times ejected).
        assert!(a.failure("b", e[0], 3, &p, true, back));
        let almost = back + Duration::from_secs(359);
        assert_eq!(a.available("b", &e, &p, almost), [false, true, true]);
        assert_eq!(
            a.available("b", &e, &p, back + Duration::from_secs(360)),
            [true, true, true]
        );
        // Ejections end at the interval's sweeps: 2.5 s rounds up to 3 s at 1 s.
        let swept = Policy {
            base: Duration::from_millis(2500),
            interval: Duration::from_secs(1),
            ..p.clone()
        };
        assert_eq!(swept.penalty(0), Duration::from_secs(3));
        assert_eq!(swept.penalty(1), Duration::from_secs(5));
        // Below the panic threshold every endpoint takes requests.
        let panic = Policy {
            min_health_percent: 80,
            ..p
        };
        assert_eq!(a.available("b", &e, &panic, almost), [true, true, true]);
    }
}
