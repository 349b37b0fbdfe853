//! Rate limiting with governor: a quota per client IP and one for all clients together. A refused
//! request gets `429` in the contract's error shape with `Retry-After` (whole seconds, at least 1).
//! The limits can be replaced while running (configuration reload). Who the client is (a
//! trusted proxy's `X-Forwarded-For`, an IPv6 client's prefix) is [`client`]'s.

mod client;
mod cost;

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;

use super::error::ApiError;
use crate::config::RateLimitSettings;
pub use client::{client_key, ClientIdentity};
use cost::CostBudget;
pub use cost::COMPRESSED_BYTE_COST;

struct Limiters {
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    global: DefaultDirectRateLimiter,
    identity: ClientIdentity,
    cost: CostBudget,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let nz = |v: u32| NonZeroU32::new(v.max(1)).expect("max(1) is non-zero");
    Quota::per_second(nz(per_second)).allow_burst(nz(burst))
}

pub struct Limiter {
    limiters: RwLock<Arc<Limiters>>,
    /// Which limiters are in force, unique in the process (from [`VERSIONS`]): a new value on
    /// every update. Requests use their thread's snapshot of them while it is of this version, so
    /// a request reads this line and writes none of the limiter's own (a lock or a reference
    /// count taken per request is written by every core in turn).
    version: AtomicU64,
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The limiters this thread used last, with their version.
    static SNAPSHOT: RefCell<Option<(u64, Arc<Limiters>)>> = const { RefCell::new(None) };
}

/// The service's limiter; cheap to share.
pub type SharedRateLimiter = Arc<Limiter>;

impl Limiter {
    pub fn new(s: &RateLimitSettings) -> SharedRateLimiter {
        let version = AtomicU64::new(VERSIONS.fetch_add(1, Ordering::Relaxed));
        Arc::new(Self { limiters: RwLock::new(Arc::new(Self::build(s))), version })
    }

    fn build(s: &RateLimitSettings) -> Limiters {
        Limiters {
            per_client: RateLimiter::keyed(quota(s.per_client_per_second, s.per_client_burst)),
            global: RateLimiter::direct(quota(s.global_per_second, s.global_burst)),
            identity: ClientIdentity::new(s),
            cost: CostBudget::new(s.per_client_work_per_second, s.per_client_work_burst),
        }
    }

    /// New limits take effect at once (with fresh buckets).
    pub fn update(&self, s: &RateLimitSettings) {
        *self.limiters.write() = Arc::new(Self::build(s));
        self.version.store(VERSIONS.fetch_add(1, Ordering::Relaxed), Ordering::Release);
    }

    /// Runs `f` on the limiters in force, from this thread's snapshot when it is current.
    fn with_current<T>(&self, f: impl FnOnce(&Limiters) -> T) -> T {
        let version = self.version.load(Ordering::Acquire);
        SNAPSHOT.with_borrow_mut(|snapshot| {
            if snapshot.as_ref().is_none_or(|(v, _)| *v != version) {
                *snapshot = Some((version, self.limiters.read().clone()));
            }
            let (_, limiters) = snapshot.as_ref().expect("set just above");
            f(limiters)
        })
    }

    /// Forgets idle clients; called periodically so the per-client table stays small.
    pub fn shrink(&self) {
        let l = self.limiters.read().clone();
        l.per_client.retain_recent();
        l.per_client.shrink_to_fit();
        l.cost.prune();
    }

    /// Admits or refuses one request.
    pub fn check(&self, remote: Option<SocketAddr>, forwarded_for: Option<&str>) -> Result<(), ApiError> {
        self.admit(remote, forwarded_for).map(|_| ())
    }

    /// Admits one request, with the key its client is counted under (to [`Self::charge`] its
    /// cost to), or refuses it: over the client's or the global request rate, or while the
    /// client's work is over its budget.
    pub fn admit(&self, remote: Option<SocketAddr>, forwarded_for: Option<&str>) -> Result<IpAddr, ApiError> {
        self.with_current(|l| {
            let client = l.identity.key(remote, forwarded_for);
            // The limiters' own clock, read only on refusal: building a `DefaultClock` per request
            // recalibrates quanta (cpuid) and cost ~15 µs, most of a cached search's time.
            let refused = match l.per_client.check_key(&client) {
                Err(not_until) => Some(not_until.wait_time_from(l.per_client.clock().now())),
                Ok(()) => match l.cost.check(&client) {
                    Err(wait) => Some(wait),
                    Ok(()) => l.global.check().err().map(|n| n.wait_time_from(l.global.clock().now())),
                },
            };
            match refused {
                None => Ok(client),
                Some(wait) => Err(ApiError::rate_limited(wait.as_secs_f64().ceil().max(1.0) as u64)),
            }
        })
    }

    /// Charges `client` for an answer that built `built` bytes and compressed `compressed`.
    pub fn charge(&self, client: IpAddr, built: usize, compressed: usize) {
        let work = built as u64 + compressed as u64 * COMPRESSED_BYTE_COST;
        if work > 0 {
            self.with_current(|l| l.cost.charge(client, work));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_client: u32, global: u32, trust: bool) -> RateLimitSettings {
        RateLimitSettings {
            per_client_per_second: per_client,
            per_client_burst: per_client,
            global_per_second: global,
            global_burst: global,
            trust_forwarded_for: trust,
            ..RateLimitSettings::default()
        }
    }

    #[test]
    fn per_client_quota_is_per_ip_and_answers_429_with_retry_after() {
        let rl = Limiter::new(&settings(2, 100, false));
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert!(rl.check(Some(a), None).is_ok());
        assert!(rl.check(Some(a), None).is_ok());
        let e = rl.check(Some(a), None).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code, e.retry_after_secs), (429, "rate_limited", Some(1)));
        assert!(rl.check(Some(b), None).is_ok(), "another client has its own quota");
        // X-Forwarded-For is ignored unless trusted.
        assert!(rl.check(Some(a), Some("10.9.9.9")).is_err());
    }

    #[test]
    fn global_quota_caps_all_clients_and_forwarded_for_is_used_when_trusted() {
        let rl = Limiter::new(&settings(100, 3, true));
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
            assert!(rl.check(Some(proxy), Some(ip)).is_ok());
        }
        assert!(rl.check(Some(proxy), Some("4.4.4.4")).is_err());
        rl.update(&settings(1, 100, true));
        assert!(rl.check(Some(proxy), Some("6.6.6.6, 5.5.5.5")).is_ok());
        assert!(
            rl.check(Some(proxy), Some("7.7.7.7, 5.5.5.5")).is_err(),
            "the right-most address is the client"
        );
    }

    #[test]
    fn forged_forwarded_for_behind_a_trusted_proxy_meets_the_real_limit() {
        // One request a second after a burst of 5: the test takes far less than a second.
        let mut s = RateLimitSettings { per_client_per_second: 1, ..settings(5, 1000, false) };
        s.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let rl = Limiter::new(&s);
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let admitted = (0..100)
            .filter(|i| rl.check(Some(proxy), Some(&format!("198.51.100.{i}, 203.0.113.9"))).is_ok())
            .count();
        assert_eq!(admitted, 5, "a fresh forged entry per request is no fresh key");
        assert!(rl.check(Some(proxy), Some("203.0.113.10")).is_ok(), "another real client");
    }

    #[test]
    fn ten_thousand_addresses_of_one_ipv6_64_are_one_client() {
        let rl =
            Limiter::new(&RateLimitSettings { per_client_per_second: 1, ..settings(50, 100_000, false) });
        let addr = |i: u128| {
            SocketAddr::new(std::net::Ipv6Addr::from((0x2001_0db8_0000_0001u128 << 64) | i).into(), 1)
        };
        let admitted = (1..=10_000u128).filter(|i| rl.check(Some(addr(*i * 104_729)), None).is_ok()).count();
        assert_eq!(admitted, 50);
        let other = SocketAddr::new("2001:db8:0:2::1".parse::<IpAddr>().unwrap(), 1);
        assert!(rl.check(Some(other), None).is_ok(), "the next /64 is another client");
    }
}
