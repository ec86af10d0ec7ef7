//! Endpoint selection: power of two random choices over peak-EWMA latency.
//!
//! Each endpoint's load is its decayed peak round-trip time multiplied by its requests
//! in flight plus one. A latency spike counts at once; lower latencies pull the
//! estimate down over `DECAY`, and an endpoint left idle decays toward zero, so it is
//! soon tried again rather than starved by one slow answer long ago.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How fast a past latency peak is forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The round-trip time assumed for an endpoint nobody has measured yet, per request
/// already in flight to it: an unmeasured endpoint is probed with one request at a time.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// What a failed request (refused connection, reset) counts as: failures are often
/// fast, and must not make a broken endpoint look like the quickest one.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Peak-EWMA load of one endpoint.
#[derive(Debug)]
pub struct PeakEwma {
    /// The estimate in nanoseconds, when it was last updated, and whether it has
    /// been measured at all (until then it is the default guess).
    state: Mutex<(f64, Instant, bool)>,
    pending: AtomicUsize,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            state: Mutex::new((DEFAULT_RTT.as_nanos() as f64, Instant::now(), false)),
            pending: AtomicUsize::new(0),
        }
    }
}

impl PeakEwma {
    /// The current load: decayed RTT estimate × (requests in flight + 1); for an
    /// endpoint never measured, the default guess × requests in flight, so that it is
    /// tried at once but not flooded before its first answer.
    pub fn load(&self, now: Instant) -> f64 {
        let (cost, last, measured) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        if !measured {
            return DEFAULT_RTT.as_nanos() as f64 * pending;
        }
        decay(cost, now.saturating_duration_since(last)) * (pending + 1.0)
    }

    /// Marks a request in flight until the returned guard is dropped or completed.
    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            ewma: self,
            started: Instant::now(),
        }
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (cost, last, measured) = *state;
        let elapsed = now.saturating_duration_since(last);
        let next = if !measured || rtt > cost {
            rtt // a first measurement replaces the guess; a peak is taken at once
        } else {
            let w = (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp();
            cost * w + rtt * (1.0 - w)
        };
        *state = (next, now, true);
    }
}

fn decay(cost: f64, elapsed: Duration) -> f64 {
    cost * (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp()
}

/// A request in flight to an endpoint; dropping it unfinished (the client went away)
/// says nothing about the endpoint.
#[derive(Debug)]
pub struct InFlight<'a> {
    ewma: &'a PeakEwma,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the round-trip time of a request that got its response.
    pub fn complete(self) {
        let now = Instant::now();
        self.ewma.observe(now - self.started, now);
    }

    /// Records a request the endpoint failed.
    pub fn fail(self) {
        let now = Instant::now();
        self.ewma
            .observe((now - self.started).max(FAILURE_PENALTY), now);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ewma.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks one of `endpoints` by comparing two distinct random choices' loads.
pub fn p2c<E>(endpoints: &[E], load: impl Fn(&E) -> f64) -> Option<&E> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first(),
        n => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            Some(if load(ea) <= load(eb) { ea } else { eb })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2c_prefers_the_less_loaded_endpoint() {
        let loads = [10.0, 1.0];
        for _ in 0..100 {
            assert_eq!(*p2c(&[0usize, 1], |&i| loads[i]).expect("some"), 1);
        }
        assert!(p2c::<usize>(&[], |_| 0.0).is_none());
    }

    #[test]
    fn p2c_spreads_over_equal_endpoints() {
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[*p2c(&[0usize, 1, 2, 3], |_| 1.0).expect("some")] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }

    #[test]
    fn peaks_count_at_once_and_pending_multiplies() {
        let e = PeakEwma::default();
        let now = Instant::now();
        e.observe(Duration::from_secs(1), now);
        assert!(e.load(now) >= 0.99e9);
        let _g = e.start();
        assert!(e.load(now) >= 1.98e9);
    }

    #[test]
    fn low_latencies_pull_the_estimate_down_over_time() {
        let e = PeakEwma::default();
        let t0 = Instant::now();
        e.observe(Duration::from_millis(100), t0);
        e.observe(Duration::from_millis(1), t0 + DECAY * 3);
        let cost = e.state.lock().expect("lock").0;
        assert!(cost < 10e6, "{cost}");
    }

    #[test]
    fn unmeasured_endpoints_are_probed_one_request_at_a_time() {
        let e = PeakEwma::default();
        let now = Instant::now();
        assert_eq!(e.load(now), 0.0);
        let _probe = e.start();
        assert!(e.load(now) >= DEFAULT_RTT.as_nanos() as f64);
    }

    #[test]
    fn failures_count_as_slow() {
        let e = PeakEwma::default();
        e.start().fail();
        assert!(e.load(Instant::now()) >= 0.9e9);
        let cancelled = PeakEwma::default();
        drop(cancelled.start());
        assert_eq!(cancelled.load(Instant::now()), 0.0);
    }

    #[test]
    fn a_first_measurement_replaces_the_default_guess() {
        let e = PeakEwma::default();
        let now = Instant::now();
        e.observe(Duration::from_micros(200), now);
        assert!((e.load(now) - 200e3).abs() < 1e3, "{}", e.load(now));
    }

    #[test]
    fn idle_endpoints_decay_toward_zero_and_get_tried_again() {
        let e = PeakEwma::default();
        let t0 = Instant::now();
        e.observe(Duration::from_millis(50), t0);
        assert!(e.load(t0 + DECAY * 5) < 1e6);
    }
}
