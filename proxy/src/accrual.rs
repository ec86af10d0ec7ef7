//! Failure accrual (circuit breaking), per backend: an endpoint that fails a number of
//! times in a row leaves the balancer for a penalty that grows exponentially with each
//! ejection in a row (with jitter, up to a maximum); once it ends the endpoint is on
//! probation: one success restores it, one failure ejects it again for longer. When
//! every endpoint of a backend is out, requests fail at once (503, `unavailable`)
//! instead of queueing. Only endpoints that have failed are remembered, so a healthy
//! backend costs nothing but a lookup.

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
    /// Only gateway errors count (502, 503, 504 and unreachable endpoints), not every
    /// failure (Istio's `consecutiveGatewayErrors`).
    pub gateway_only: bool,
}

impl Policy {
    /// The settings of a policy's outlier detection, if it ejects anything.
    pub fn compile(o: &pb::OutlierDetection) -> Option<Self> {
        let max_failures = match (o.consecutive_failures, o.consecutive_gateway_errors) {
            (0, 0) => return None,
            (0, n) | (n, _) => n,
        };
        let base = Duration::from_millis(o.base_ejection_ms.max(1));
        Some(Self {
            max_failures,
            base,
            max: Duration::from_millis(o.max_ejection_ms).max(base),
            jitter_percent: o.jitter_percent.min(100),
            max_ejected_percent: o.max_ejection_percent.min(100),
            gateway_only: o.consecutive_failures == 0,
        })
    }

    /// The length of ejection number `n` in a row (from 0).
    fn penalty(&self, n: u32) -> Duration {
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
    pub fn available(&self, backend: &str, endpoints: &[SocketAddr], now: Instant) -> Vec<bool> {
        let mut all = self.lock();
        let Some(b) = all.get_mut(backend) else {
            // Nothing has failed there yet.
            return vec![true; endpoints.len()];
        };
        b.size = endpoints.len();
        endpoints
            .iter()
            .map(|a| {
                b.states
                    .get(a)
                    .and_then(|s| s.ejected_until)
                    .is_none_or(|until| until <= now)
            })
            .collect()
    }

    /// Records a success of `addr`: it is healthy again (unless it is out: an answer
    /// to a request sent before its ejection does not bring it back early).
    pub fn success(&self, backend: &str, addr: SocketAddr, now: Instant) {
        let mut all = self.lock();
        let Some(b) = all.get_mut(backend) else {
            return;
        };
        if b.states
            .get(&addr)
            .is_some_and(|s| s.ejected_until.is_some_and(|u| u > now))
        {
            return;
        }
        if b.states.remove(&addr).is_some() && b.states.is_empty() {
            // Keep the backend's count of ejections: only its endpoints are forgotten.
            b.states.shrink_to_fit();
        }
    }

    /// Records a failure of `addr` (one of `size` endpoints); ejects it when it has
    /// failed too often in a row, or at all while on probation. Returns whether it
    /// was ejected.
    pub fn failure(
        &self,
        backend: &str,
        addr: SocketAddr,
        size: usize,
        policy: &Policy,
        now: Instant,
    ) -> bool {
        let mut all = self.lock();
        let b = all.entry(Arc::from(backend)).or_default();
        b.size = size.max(b.size);
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
        let probation = s.ejected_until.is_some();
        s.failures = s.failures.saturating_add(1);
        if !probation && s.failures < policy.max_failures {
            return false;
        }
        let bound = policy.max_ejected_percent;
        if bound > 0 && (out + 1) * 100 > b.size * bound as usize {
            return false;
        }
        let penalty = policy.penalty(if probation { s.ejections } else { 0 });
        s.ejections = if probation { s.ejections + 1 } else { 1 };
        s.ejected_until = Some(now + penalty);
        s.failures = 0;
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
                let probation = b
                    .states
                    .values()
                    .filter(|s| s.ejected_until.is_some_and(|u| u <= now))
                    .count();
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
            gateway_only: false,
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
        assert!(!a.failure("b", e1, 2, &p, now));
        assert!(!a.failure("b", e1, 2, &p, now));
        // A success in between starts the count again.
        a.success("b", e1, now);
        assert!(!a.failure("b", e1, 2, &p, now));
        assert!(!a.failure("b", e1, 2, &p, now));
        assert!(a.failure("b", e1, 2, &p, now), "three in a row");
        assert_eq!(a.available("b", &all, now), [false, true]);
        // An answer to a request sent before the ejection does not end it.
        a.success("b", e1, now);
        assert_eq!(a.available("b", &all, now), [false, true]);
        let snap = a.snapshot(now);
        assert_eq!(snap[0].states[1], (Health::Ejected, 1));
        assert_eq!(snap[0].ejections, 1);

        // After the penalty, on probation: one failure ejects it for twice as long.
        let later = now + Duration::from_secs(1);
        assert_eq!(a.available("b", &all, later), [true, true]);
        assert_eq!(a.snapshot(later)[0].states[2], (Health::Probation, 1));
        assert!(a.failure("b", e1, 2, &p, later));
        assert_eq!(
            a.available("b", &all, later + Duration::from_millis(1999)),
            [false, true]
        );
        let back = later + Duration::from_secs(2);
        assert_eq!(a.available("b", &all, back), [true, true]);
        // One success restores it.
        a.success("b", e1, back);
        assert_eq!(a.snapshot(back)[0].states[0], (Health::Available, 2));
        assert!(!a.failure("b", e1, 2, &p, back), "counting from zero again");

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
        assert!(a.failure("b", e[0], 4, &p, now));
        assert!(a.failure("b", e[1], 4, &p, now));
        assert!(!a.failure("b", e[2], 4, &p, now), "half are out already");
        assert!(Policy::compile(&pb::OutlierDetection::default()).is_none());
    }
}
