//! The budget of `/ready` and `/metrics` (`server.probe_limit`), apart from the searches': a storm
//! of probes or scrapes is refused with a `429` before it costs store pings or renders, and never
//! takes from the searches' budget. Keyed by the peer address only: load balancers, orchestrators
//! and Prometheus reach a replica directly, and a header would let a client pick a fresh key.
//! `/health` is never limited: a liveness probe answered `429` would get a healthy process
//! restarted.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;

use super::error::ApiError;
use crate::config::ProbeLimitSettings;

struct Limiters {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
}

/// The probe endpoints' limiter; its limits change on reload.
pub struct ProbeLimiter {
    limiters: RwLock<Arc<Limiters>>,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let nz = |v: u32| NonZeroU32::new(v.max(1)).expect("max(1) is non-zero");
    Quota::per_second(nz(per_second)).allow_burst(nz(burst))
}

impl ProbeLimiter {
    pub fn new(s: &ProbeLimitSettings) -> Arc<Self> {
        Arc::new(Self { limiters: RwLock::new(Arc::new(Self::build(s))) })
    }

    fn build(s: &ProbeLimitSettings) -> Limiters {
        Limiters {
            per_client: RateLimiter::keyed(quota(s.per_client_per_second, s.per_client_burst)),
            global: RateLimiter::direct(quota(s.global_per_second, s.global_burst)),
        }
    }

    /// New limits take effect at once, with fresh buckets.
    pub fn update(&self, s: &ProbeLimitSettings) {
        *self.limiters.write() = Arc::new(Self::build(s));
    }

    /// Forgets idle clients (called with the search limiter's pruning).
    pub fn shrink(&self) {
        let l = self.limiters.read().clone();
        l.per_client.retain_recent();
        l.per_client.shrink_to_fit();
    }

    /// Admits or refuses one probe from `remote`.
    pub fn check(&self, remote: Option<SocketAddr>) -> Result<(), ApiError> {
        let l = self.limiters.read().clone();
        let client = remote.map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let refused = match l.per_client.check_key(&client) {
            Err(not_until) => Some(not_until.wait_time_from(l.per_client.clock().now())),
            Ok(()) => l.global.check().err().map(|n| n.wait_time_from(l.global.clock().now())),
        };
        match refused {
            None => Ok(()),
            Some(wait) => {
                crate::metrics::record_probe_refused();
                Err(ApiError::rate_limited(wait.as_secs_f64().ceil().max(1.0) as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_budget_under_a_global_one_and_reload_replaces_both() {
        let s = ProbeLimitSettings {
            per_client_per_second: 1,
            per_client_burst: 2,
            global_per_second: 1,
            global_burst: 3,
        };
        let limiter = ProbeLimiter::new(&s);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert!(limiter.check(Some(a)).is_ok() && limiter.check(Some(a)).is_ok());
        let e = limiter.check(Some(a)).unwrap_err();
        assert_eq!((e.status.as_u16(), e.retry_after_secs), (429, Some(1)));
        assert!(limiter.check(Some(b)).is_ok(), "another client has its own budget");
        assert!(limiter.check(Some(b)).is_err(), "the global budget is spent");
        limiter.update(&ProbeLimitSettings { per_client_burst: 5, global_burst: 10, ..s });
        assert!(limiter.check(Some(a)).is_ok(), "fresh buckets");
    }
}
