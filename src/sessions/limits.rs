//! How many offers (WHIP, WHEP, and any later signalling) one client address may make:
//! `offer_rate_per_address` per second with bursts of twice that, kept by `governor`'s keyed
//! rate limiter. The table of addresses is pruned as it grows, so no client can make it
//! grow without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Addresses remembered before the table is pruned of those back at a full bucket.
const PRUNE_ABOVE: usize = 10_000;

/// The limiter in force, rebuilt when the rate in the settings changes.
struct InForce {
    rate: u32,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

/// The offer rate limit of the whole server.
#[derive(Default)]
pub struct OfferLimiter {
    in_force: ArcSwapOption<InForce>,
    checks: AtomicU64,
}

impl OfferLimiter {
    /// Whether `address` may make one more offer now at `rate` per second (`0`: no limit);
    /// `Err` says how long it should wait.
    pub fn check(&self, address: IpAddr, rate: u32) -> Result<(), Duration> {
        let Some(per_second) = NonZeroU32::new(rate) else {
            return Ok(());
        };
        let current = self.in_force.load_full();
        let in_force = match current {
            Some(in_force) if in_force.rate == rate => in_force,
            _ => {
                let burst = per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1));
                let fresh = Arc::new(InForce {
                    rate,
                    limiter: DefaultKeyedRateLimiter::keyed(
                        Quota::per_second(per_second).allow_burst(burst),
                    ),
                });
                self.in_force.store(Some(fresh.clone()));
                fresh
            }
        };
        let limiter = &in_force.limiter;
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
            && limiter.len() > PRUNE_ABOVE
        {
            limiter.retain_recent();
        }
        limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_of_twice_the_rate_then_refused_per_address() {
        let limiter = OfferLimiter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..10 {
            assert!(limiter.check(a, 5).is_ok());
        }
        let wait = limiter.check(a, 5).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            limiter.check(b, 5).is_ok(),
            "another address has its own bucket"
        );
        assert!(limiter.check(a, 0).is_ok(), "0 turns the limit off");
    }
}
