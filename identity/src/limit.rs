//! Rate limits on certificate requests: per source address before the token is
//! checked (a flood never reaches the token reviewer, the API server in a cluster),
//! and per token after (one leaked token cannot mint certificates at will: a proxy
//! needs one at start and one per renewal).

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The per-source and per-token limiters.
#[derive(Debug)]
pub struct Limits {
    source: DefaultKeyedRateLimiter<IpAddr>,
    token: DefaultKeyedRateLimiter<u64>,
    /// Tokens are keyed by a keyed hash: the limiter never holds a token itself.
    hasher: RandomState,
}

impl Limits {
    /// Allows each source `per_source` and each token `per_token` requests a minute,
    /// each as a burst too.
    pub fn new(per_source: NonZeroU32, per_token: NonZeroU32) -> Self {
        Self {
            source: RateLimiter::keyed(Quota::per_minute(per_source)),
            token: RateLimiter::keyed(Quota::per_minute(per_token)),
            hasher: RandomState::new(),
        }
    }

    /// Whether a request from `ip` may go on (it is counted). IPv6 sources count by
    /// their /64, which one host usually holds whole.
    pub fn allow_source(&self, ip: IpAddr) -> bool {
        let key = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
            v4 => v4,
        };
        self.source.check_key(&key).is_ok()
    }

    /// Whether a request with `token` may go on (it is counted).
    pub fn allow_token(&self, token: &[u8]) -> bool {
        self.token.check_key(&self.hasher.hash_one(token)).is_ok()
    }

    /// Forgets keys whose limits have fully recovered, so that memory follows the
    /// recent callers, not every caller ever.
    pub fn prune(&self) {
        self.source.retain_recent();
        self.source.shrink_to_fit();
        self.token.retain_recent();
        self.token.shrink_to_fit();
    }

    /// The number of sources and tokens remembered.
    pub fn len(&self) -> (usize, usize) {
        (self.source.len(), self.token.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_and_token_has_its_own_budget() {
        let n = |v| NonZeroU32::new(v).expect("non-zero");
        let limits = Limits::new(n(3), n(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!((0..3).all(|_| limits.allow_source(a)));
        assert!(!limits.allow_source(a), "a's burst is spent");
        let mapped: IpAddr = std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().into();
        assert!(
            !limits.allow_source(mapped),
            "the same source spelled as IPv6"
        );
        assert!(limits.allow_source(b), "b is not a");
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!((0..3).all(|i| limits.allow_source(v6(&format!("2001:db8::{i}")))));
        assert!(
            !limits.allow_source(v6("2001:db8::ffff:1")),
            "one /64 is one source"
        );
        assert!(limits.allow_token(b"t1") && limits.allow_token(b"t1"));
        assert!(!limits.allow_token(b"t1"));
        assert!(limits.allow_token(b"t2"));
        assert_eq!(limits.len(), (3, 2));
    }
}
