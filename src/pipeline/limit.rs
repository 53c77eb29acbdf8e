//! Limit: readings per second per device key on one dataset (GCRA via `governor`).
//!
//! A request of `n` accepted readings takes `n` cells at once, all or nothing: a request over
//! the limit stores nothing and is told when to come back. A batch larger than the burst can
//! never pass, so it gets its own answer (HTTP 413, which makes Telegraf split the batch).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::model::RateLimit;

/// Over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate limit exceeded; retry in {retry_after:?}")]
    Exceeded { retry_after: Duration },
    #[error("a batch of {batch} readings exceeds the burst of {burst}; send smaller batches")]
    BatchExceedsBurst { batch: usize, burst: u32 },
}

/// Keyed by device key id.
pub(crate) type LimitKey = Arc<str>;

#[derive(Debug)]
pub(crate) struct Limiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<LimitKey, DefaultKeyedStateStore<LimitKey>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    burst: u32,
}

impl Limiter<DefaultClock> {
    pub(crate) fn new(rate: RateLimit) -> Limiter<DefaultClock> {
        Limiter::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock` (tests pass governor's `FakeRelativeClock`).
    pub(crate) fn with_clock(rate: RateLimit, clock: C) -> Limiter<C> {
        // Config validation keeps per_second in (0, 1e9] and burst >= 1; clamp anyway so a
        // limiter is always constructible.
        let period = Duration::from_secs_f64(1.0 / rate.per_second.clamp(1e-9, 1e9));
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Limiter {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            clock,
            burst: burst.get(),
        }
    }

    /// Takes `n` readings from `key`'s allowance, or says when `n` will fit.
    pub(crate) fn check(&self, key: &LimitKey, n: usize) -> Result<(), LimitError> {
        let Some(cells) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return if n == 0 {
                Ok(())
            } else {
                Err(LimitError::BatchExceedsBurst {
                    batch: n,
                    burst: self.burst,
                })
            };
        };
        match self.limiter.check_key_n(key, cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(LimitError::Exceeded {
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            Err(_insufficient) => Err(LimitError::BatchExceedsBurst {
                batch: n,
                burst: self.burst,
            }),
        }
    }

    /// Forgets keys whose allowance is full again, so idle devices cost no memory.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(per_second: f64, burst: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            Limiter::with_clock(RateLimit { per_second, burst }, clock.clone()),
            clock,
        )
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let (l, clock) = limiter(10.0, 20);
        let key: LimitKey = "k1".into();
        assert_eq!(l.check(&key, 20), Ok(()));
        let Err(LimitError::Exceeded { retry_after }) = l.check(&key, 5) else {
            panic!("should be limited");
        };
        assert_eq!(
            retry_after,
            Duration::from_millis(500),
            "5 readings at 10/s"
        );
        clock.advance(Duration::from_millis(499));
        assert!(l.check(&key, 5).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(&key, 5), Ok(()));
    }

    #[test]
    fn keys_are_independent_and_rejected_requests_cost_nothing() {
        let (l, clock) = limiter(1.0, 3);
        let (a, b): (LimitKey, LimitKey) = ("a".into(), "b".into());
        assert_eq!(l.check(&a, 3), Ok(()));
        assert!(l.check(&a, 1).is_err());
        assert_eq!(l.check(&b, 3), Ok(()), "another key has its own allowance");
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            l.check(&a, 2),
            Ok(()),
            "failed checks did not consume cells"
        );
    }

    #[test]
    fn batches_over_the_burst_can_never_pass() {
        let (l, _) = limiter(1000.0, 100);
        let key: LimitKey = "k".into();
        assert_eq!(
            l.check(&key, 101),
            Err(LimitError::BatchExceedsBurst {
                batch: 101,
                burst: 100
            })
        );
        assert_eq!(l.check(&key, 0), Ok(()));
        assert_eq!(l.check(&key, 100), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
