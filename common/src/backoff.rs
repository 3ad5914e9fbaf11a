//! Exponential backoff: the ceiling before jitter, shared by every retry loop (lease retries, GMS writes, SQS
//! calls, agent reconnects). Each caller applies its own jitter to it.

use std::time::Duration;

/// `base · 2^attempt`, capped at `max` (attempt 0 is `base`).
pub fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(30)).min(max)
}

/// The ceiling for `attempt` with "equal jitter": a random delay between half the ceiling and the ceiling (retries
/// of many callers spread out, none comes back at once).
pub fn equal_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    ceiling(base, max, attempt).mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u64> = (0..6).map(|n| crate::duration::millis(ceiling(base, max, n))).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ceiling(base, max, 1000), max, "no overflow");
    }

    #[test]
    fn equal_jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 0..6 {
            let delay = equal_jitter(base, max, attempt);
            let top = ceiling(base, max, attempt);
            assert!(delay >= top / 2 && delay <= top, "{delay:?} for a ceiling of {top:?}");
        }
    }
}
