//! How often the login form may be tried: at most N attempts per source address and M in all within a sliding
//! window; past that an attempt is answered 429 with when to try again. In memory (a restart forgets it); never
//! records what was typed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Login attempts in the window, per address and in all. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LoginLimiter {
    per_address: usize,
    total: usize,
    window: Duration,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
    all: VecDeque<Instant>,
}

fn forget_before(times: &mut VecDeque<Instant>, cutoff: Instant) {
    while times.front().is_some_and(|t| *t <= cutoff) {
        times.pop_front();
    }
}

impl LoginLimiter {
    pub fn new(per_address: usize, total: usize, window: Duration) -> LoginLimiter {
        LoginLimiter { per_address, total, window, seen: Arc::default() }
    }

    /// Counts an attempt from `address` at `now`: `Ok` if it may go on, else how long until one may.
    pub fn attempt(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let cutoff = now.checked_sub(self.window).unwrap_or(now);
        forget_before(&mut seen.all, cutoff);
        seen.by_address.retain(|_, times| {
            forget_before(times, cutoff);
            !times.is_empty()
        });
        let wait = |times: &VecDeque<Instant>| times.front().map_or(self.window, |first| *first + self.window - now);
        if let Some(times) = seen.by_address.get(&address)
            && times.len() >= self.per_address
        {
            return Err(wait(times));
        }
        if seen.all.len() >= self.total {
            return Err(wait(&seen.all));
        }
        seen.by_address.entry(address).or_default().push_back(now);
        seen.all.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_limit_waits_for_its_oldest_attempt_to_leave_the_window() {
        let limiter = LoginLimiter::new(3, 5, Duration::from_secs(60));
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let start = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.attempt(a, start + Duration::from_secs(i)), Ok(()));
        }
        assert_eq!(limiter.attempt(a, start + Duration::from_secs(10)), Err(Duration::from_secs(50)));
        // Others are not held back by one address, until the total is reached.
        assert_eq!(limiter.attempt(b, start + Duration::from_secs(10)), Ok(()));
        assert_eq!(limiter.attempt(b, start + Duration::from_secs(11)), Ok(()));
        assert_eq!(limiter.attempt(c, start + Duration::from_secs(12)), Err(Duration::from_secs(48)));
        // A minute after its first attempt, the address may try again.
        assert_eq!(limiter.attempt(a, start + Duration::from_secs(61)), Ok(()));
    }
}
