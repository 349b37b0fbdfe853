//! The circuit breaker over one provider's consecutive failed fetches: a pure state machine (no
//! clock of its own, no I/O) so it is tested with made-up instants. The supervisor keeps one per
//! provider and lends it to the provider's fetcher, so it outlives a fetcher's restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ProviderSettings;

/// What the breaker allows for the next fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: a normal fetch, with retries.
    Fetch,
    /// The cooldown is over: one request, no retries; its outcome closes or reopens the breaker.
    Probe,
    /// Open: send nothing.
    Skip { remaining: Duration },
}

/// Circuit breaker over consecutive failed fetches of one provider. Shared ([`SharedBreaker`])
/// between the supervisor and the provider's fetcher, so it outlives a fetcher's restart.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    /// `threshold == 0` never opens.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold, cooldown, failures: 0, open_until: None }
    }

    pub fn admit(&self, now: Instant) -> Admission {
        match self.open_until {
            Some(until) if now < until => Admission::Skip { remaining: until - now },
            Some(_) => Admission::Probe,
            None => Admission::Fetch,
        }
    }

    /// Records a fetch's outcome; returns true when this opened (or reopened) the breaker.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        if ok {
            self.failures = 0;
            self.open_until = None;
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        if self.threshold > 0 && self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// New thresholds (configuration reload); the count and an open circuit are kept.
    pub fn configure(&mut self, threshold: u32, cooldown: Duration) {
        self.threshold = threshold;
        self.cooldown = cooldown;
    }

    /// Whether the circuit is open at `now` (no request would be sent).
    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.admit(now), Admission::Skip { .. })
    }
}

/// A provider's breaker, as the supervisor and the fetcher hold it.
pub type SharedBreaker = Arc<parking_lot::Mutex<Breaker>>;

/// A closed breaker for a provider's settings.
pub fn shared_breaker(provider: &ProviderSettings) -> SharedBreaker {
    Arc::new(parking_lot::Mutex::new(Breaker::new(provider.breaker_failures, provider.breaker_cooldown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(60));
        assert!(!b.record(false, t0));
        assert!(!b.record(false, t0));
        assert!(!b.record(true, t0), "a success resets the count");
        assert!(!b.record(false, t0));
        assert!(!b.record(false, t0));
        assert_eq!(b.admit(t0), Admission::Fetch);
        assert!(b.record(false, t0), "third consecutive failure opens");
        assert_eq!(
            b.admit(t0 + Duration::from_secs(59)),
            Admission::Skip { remaining: Duration::from_secs(1) }
        );
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(b.record(false, later), "a failed probe reopens");
        assert_eq!(
            b.admit(later + Duration::from_secs(1)),
            Admission::Skip { remaining: Duration::from_secs(59) }
        );
        assert_eq!(b.admit(later + Duration::from_secs(60)), Admission::Probe);
        assert!(!b.record(true, later + Duration::from_secs(60)));
        assert_eq!(b.admit(later + Duration::from_secs(60)), Admission::Fetch);
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(!b.record(false, t0));
        }
        assert_eq!(b.admit(t0), Admission::Fetch);
    }
}
