//! A backend's client-side policy (Istio's DestinationRule `trafficPolicy`, merged
//! for its subset and port by the controller): how an endpoint is picked, how many
//! requests may be in flight and waiting before more are refused (`overflow`), and
//! when failing endpoints leave the balancer ([`crate::accrual`]). The state these
//! keep (turns, counts) is per backend and shared by every request of the proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderName;
use mesh_api::policy as pb;
use tokio::sync::Notify;

use crate::error::ProxyError;

/// What in a backend policy this proxy cannot apply (the policy is refused whole).
pub type Invalid = &'static str;

/// How an endpoint is picked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Lb {
    /// The better of two random endpoints by peak-EWMA load (the default).
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Any endpoint, at random.
    Random,
    /// No balancing: the connection's original destination.
    Passthrough,
    /// The same endpoint for the same key while it stays.
    Hash(HashOn),
}

/// What a consistent hash keys on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value; when the request has none and `ttl` is set, the proxy makes
    /// one and sets it on the response (`ttl` zero: a session cookie).
    Cookie {
        /// The cookie's name.
        name: String,
        /// Its path when set.
        path: String,
        /// Its lifetime when the proxy sets it; `None`: never set.
        ttl: Option<Duration>,
    },
    /// A query parameter's value.
    Query(String),
    /// The client's IP address.
    SourceIp,
}

/// Bounds on a backend's requests, counted across its endpoints; 0: none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at once (Istio's `maxConnections`).
    pub max_in_flight: usize,
    /// Requests waiting for one of those (`http1MaxPendingRequests`).
    pub max_pending: usize,
    /// Requests in flight however they wait (`http2MaxRequests`).
    pub max_requests: usize,
}

impl Limits {
    fn is_unbounded(&self) -> bool {
        self.max_in_flight == 0 && self.max_requests == 0
    }
}

/// How a backend's connections are made and used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    /// A connect's longest wait (Istio's `tcp.connectTimeout`); `None`: the proxy's.
    pub connect_timeout: Option<Duration>,
    /// Requests one connection carries before it is closed (`maxRequestsPerConnection`);
    /// `None`: no bound.
    pub max_requests: Option<u32>,
    /// Retries in flight to the backend at once (`maxRetries`); `None`: no bound.
    pub max_retries: Option<usize>,
}

/// One backend's policy as the proxy applies it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendPolicy {
    /// How an endpoint is picked.
    pub lb: Lb,
    /// Bounds on requests; `None`: none.
    pub limits: Option<Limits>,
    /// How connections are made and used.
    pub connections: Connections,
    /// When failing endpoints leave the balancer; `None`: never.
    pub accrual: Option<crate::accrual::Policy>,
    /// Plaintext to meshed endpoints (their proxies see plaintext).
    pub disable_mtls: bool,
}

fn clamp(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl BackendPolicy {
    /// Compiles the policy's parts; what this proxy does not do is refused.
    pub fn compile(
        lb: Option<&pb::LoadBalancer>,
        pool: Option<&pb::ConnectionPool>,
        outlier: Option<&pb::OutlierDetection>,
        disable_mtls: bool,
    ) -> Result<Self, Invalid> {
        use pb::load_balancer::Kind;
        let lb = match lb.and_then(|lb| lb.kind.as_ref()) {
            None | Some(Kind::PeakEwma(_)) => Lb::PeakEwma,
            Some(Kind::RoundRobin(_)) => Lb::RoundRobin,
            Some(Kind::Random(_)) => Lb::Random,
            Some(Kind::Passthrough(_)) => Lb::Passthrough,
            Some(Kind::ConsistentHash(h)) => {
                use pb::consistent_hash::Key;
                Lb::Hash(match &h.key {
                    Some(Key::Header(name)) => HeaderName::from_bytes(name.as_bytes())
                        .map(HashOn::Header)
                        .map_err(|_| "a hash on an invalid header name")?,
                    Some(Key::Cookie(c)) if !c.name.is_empty() => HashOn::Cookie {
                        name: c.name.clone(),
                        path: c.path.clone(),
                        ttl: c.ttl_ms.map(Duration::from_millis),
                    },
                    Some(Key::QueryParam(q)) if !q.is_empty() => HashOn::Query(q.clone()),
                    Some(Key::SourceIp(true)) => HashOn::SourceIp,
                    _ => return Err("a consistent hash on nothing"),
                })
            }
        };
        let limits = pool.map(|p| Limits {
            max_in_flight: clamp(p.max_connections),
            max_pending: clamp(p.max_pending_requests),
            max_requests: clamp(p.max_requests),
        });
        if pool.is_some_and(|p| p.idle_timeout_ms > 0) {
            return Err("connection pools bounding idle time");
        }
        let connections = pool.map_or_else(Connections::default, |p| Connections {
            connect_timeout: (p.connect_timeout_ms > 0)
                .then(|| Duration::from_millis(p.connect_timeout_ms)),
            max_requests: (p.max_requests_per_connection > 0)
                .then_some(p.max_requests_per_connection),
            max_retries: (p.max_retries > 0).then(|| clamp(p.max_retries)),
        });
        Ok(Self {
            lb,
            limits: limits.filter(|l| !l.is_unbounded()),
            connections,
            accrual: outlier.and_then(crate::accrual::Policy::compile),
            disable_mtls,
        })
    }

    /// A backend's own policy message.
    pub fn of(p: &pb::BackendPolicy) -> Result<Self, Invalid> {
        Self::compile(
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.disable_mtls,
        )
    }
}

/// One backend's counts.
#[derive(Debug, Default)]
struct State {
    /// The next turn (round robin).
    turn: AtomicUsize,
    /// Requests admitted and not yet done.
    in_flight: AtomicUsize,
    /// Requests waiting to be admitted.
    pending: AtomicUsize,
    /// Woken when a request is done.
    freed: Notify,
    /// Retries in flight.
    retries: AtomicUsize,
}

/// A retry in flight, within a backend's `maxRetries`: done when dropped.
#[derive(Debug)]
pub struct Retrying(Arc<State>);

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every backend's counts, by backend.
#[derive(Debug, Default)]
pub struct Backends {
    states: Mutex<HashMap<Arc<str>, Arc<State>>>,
}

/// A request admitted by a backend's limits: done when dropped.
#[derive(Debug)]
pub struct Admitted(Option<Arc<State>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.freed.notify_waiters();
        }
    }
}

/// A request waiting: no longer counted as pending when dropped (admitted or given
/// up).
struct Waiting<'a>(&'a State);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Backends {
    fn state(&self, backend: &str) -> Arc<State> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = states.get(backend) {
            return s.clone();
        }
        let s = Arc::new(State::default());
        states.insert(Arc::from(backend), s.clone());
        s
    }

    /// A retry to `backend`, if fewer than `max` are in flight.
    pub fn retry(&self, backend: &str, max: usize) -> Option<Retrying> {
        let s = self.state(backend);
        let mut n = s.retries.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match s
                .retries
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Retrying(s)),
                Err(now) => n = now,
            }
        }
    }

    /// The next turn of `backend`'s round robin.
    pub fn turn(&self, backend: &str) -> usize {
        self.state(backend).turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Admits a request to `backend` within `limits`: at once while fewer than
    /// `max_in_flight` are in flight; else it waits while fewer than `max_pending`
    /// wait; else (or past `max_requests`) it is refused at once (`overflow`).
    pub async fn admit(&self, backend: &str, limits: &Limits) -> Result<Admitted, ProxyError> {
        let s = self.state(backend);
        let overflow = || ProxyError::Overflow(backend.to_string());
        let fits = |n: usize| limits.max_in_flight == 0 || n < limits.max_in_flight;
        let try_take = |s: &State| {
            let mut n = s.in_flight.load(Ordering::Acquire);
            loop {
                if !fits(n) || (limits.max_requests > 0 && n >= limits.max_requests) {
                    return false;
                }
                match s
                    .in_flight
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return true,
                    Err(now) => n = now,
                }
            }
        };
        if try_take(&s) {
            return Ok(Admitted(Some(s)));
        }
        if limits.max_requests > 0 && s.in_flight.load(Ordering::Acquire) >= limits.max_requests {
            return Err(overflow());
        }
        let queued = s.pending.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting(&s);
        if limits.max_pending > 0 && queued >= limits.max_pending {
            return Err(overflow());
        }
        loop {
            let freed = s.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if try_take(&s) {
                drop(waiting);
                return Ok(Admitted(Some(s.clone())));
            }
            freed.await;
        }
    }
}

/// A 64-bit hash of `key` with endpoint `addr` (rendezvous hashing: the endpoint
/// with the highest weight takes the key, so an endpoint leaving moves only its own
/// keys).
fn weight(key: u64, addr: SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    // FNV-1a over the key and the address: stable across processes and restarts,
    // unlike the standard library's seeded hasher.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    addr.hash(&mut h);
    // A final mix, so that near keys spread.
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// A stable 64-bit hash of a key's bytes.
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The index of the endpoint (of `addrs`) that takes `key`.
pub fn by_hash(key: u64, addrs: &[SocketAddr]) -> Option<usize> {
    addrs
        .iter()
        .enumerate()
        .max_by_key(|(_, a)| weight(key, **a))
        .map(|(i, _)| i)
}

/// The value of cookie `name` in `req`'s `Cookie` headers.
pub fn cookie<'r, B>(req: &'r http::Request<B>, name: &str) -> Option<&'r str> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A new cookie value for consistent hashing: 16 random hex digits.
pub fn new_cookie_value() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The `Set-Cookie` value for a cookie the proxy made.
pub fn set_cookie(name: &str, value: &str, path: &str, ttl: Duration) -> String {
    let mut out = format!("{name}=\"{value}\"");
    if !path.is_empty() {
        out.push_str(&format!("; Path={path}"));
    }
    if !ttl.is_zero() {
        out.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
    }
    out.push_str("; HttpOnly");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_admit_queue_and_refuse_at_once() {
        let b = Backends::default();
        let one = Limits {
            max_in_flight: 1,
            max_pending: 1,
            max_requests: 0,
        };
        let first = b.admit("web", &one).await.expect("admitted");
        // The second waits; the third overflows at once.
        let b2 = &b;
        let second = b2.admit("web", &one);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), second.as_mut())
                .await
                .is_err(),
            "waits while the first is in flight"
        );
        let third = b.admit("web", &one).await;
        assert!(matches!(third, Err(ProxyError::Overflow(_))), "{third:?}");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("admitted once the first is done")
            .expect("admitted");
        // Another backend counts apart.
        let other = b.admit("db", &one).await.expect("admitted");
        drop((second, other));
        let all = Limits {
            max_requests: 1,
            ..Limits::default()
        };
        let only = b.admit("api", &all).await.expect("admitted");
        assert!(
            b.admit("api", &all).await.is_err(),
            "http2MaxRequests: no queue"
        );
        drop(only);
        assert!(b.admit("api", &all).await.is_ok());
    }

    #[test]
    fn retries_in_flight_are_bounded_per_backend() {
        let b = Backends::default();
        let first = b.retry("web", 1).expect("one");
        assert!(b.retry("web", 1).is_none(), "a second waits its turn");
        assert!(b.retry("db", 1).is_some(), "another backend counts apart");
        drop(first);
        assert!(b.retry("web", 1).is_some());
    }

    #[test]
    fn hashing_is_stable_and_moves_only_the_keys_of_an_endpoint_that_leaves() {
        let addrs: Vec<SocketAddr> = (1..=4).map(|i| ([127, 0, 0, i], 80).into()).collect();
        let keys: Vec<u64> = (0..1000u32).map(|k| key_hash(&k.to_be_bytes())).collect();
        let before: Vec<usize> = keys.iter().filter_map(|k| by_hash(*k, &addrs)).collect();
        let mut counts = [0usize; 4];
        for i in &before {
            counts[*i] += 1;
        }
        assert!(counts.iter().all(|c| (150..350).contains(c)), "{counts:?}");
        let fewer = &addrs[..3];
        for (k, was) in keys.iter().zip(&before) {
            let now = by_hash(*k, fewer).expect("one");
            if *was < 3 {
                assert_eq!(now, *was, "a key stays on an endpoint that stays");
            }
        }
        let req = http::Request::get("/")
            .header("cookie", "a=1; session=abc")
            .body(())
            .expect("request");
        assert_eq!(cookie(&req, "session"), Some("abc"));
        assert_eq!(cookie(&req, "none"), None);
        assert_eq!(
            set_cookie("s", "v", "/", Duration::from_secs(10)),
            "s=\"v\"; Path=/; Max-Age=10; HttpOnly"
        );
    }
}
