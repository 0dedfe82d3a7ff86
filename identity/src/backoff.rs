//! The pause schedule for retrying an operation that met contention (a busy SQLite file, a
//! PostgreSQL serialization failure, two processes migrating one new database): quick at
//! first, doubling, capped, and bounded in total so that contention that does not clear is
//! reported rather than waited out (DESIGN §7).

use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};

/// 10 ms: the first pause; most conflicts clear as soon as the other writer commits.
const FIRST: Duration = Duration::from_millis(10);

/// 500 ms: the longest pause, so a retry still follows soon after a slow writer finishes.
const MAX: Duration = Duration::from_millis(500);

/// Pauses between attempts, within a total budget.
#[derive(Debug)]
pub struct Backoff {
    started: Instant,
    next: Duration,
    max: Duration,
    budget: Duration,
    jitter: bool,
}

impl Backoff {
    /// Start counting now; pauses stop once they would take the total past `budget`.
    pub fn new(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            next: FIRST,
            max: MAX,
            budget,
            jitter: false,
        }
    }

    /// Start at `first` and double up to `max` instead of the contention schedule (for
    /// reconnecting, where the other side may be down for a while).
    pub fn between(mut self, first: Duration, max: Duration) -> Self {
        self.next = first;
        self.max = max.max(first);
        self
    }

    /// Add up to half of each pause at random, so that processes that collided do not
    /// collide again in step.
    pub fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// How long since the first attempt.
    pub fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// The pause before the next attempt, or `None` if that would go past the budget.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let pause = self.next;
        if self.waited().saturating_add(pause) > self.budget {
            return None;
        }
        self.next = pause.saturating_mul(2).min(self.max);
        if self.jitter {
            let half = u64::try_from(pause.as_micros() / 2).unwrap_or(u64::MAX);
            let extra = OsRng.next_u64() % half.max(1);
            return Some(pause.saturating_add(Duration::from_micros(extra)));
        }
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stop_at_the_budget() {
        let mut b = Backoff::new(Duration::from_secs(3600));
        let pauses: Vec<_> = (0..8).map(|_| b.next_pause().unwrap()).collect();
        assert_eq!(pauses[0], FIRST);
        assert_eq!(pauses[1], FIRST * 2);
        assert_eq!(*pauses.last().unwrap(), MAX);
        let mut b = Backoff::new(Duration::from_millis(5));
        assert_eq!(b.next_pause(), None);
        let mut j = Backoff::new(Duration::from_secs(3600)).jittered();
        let p = j.next_pause().unwrap();
        assert!(p >= FIRST && p < FIRST + FIRST / 2, "{p:?}");
        let second = Duration::from_secs(1);
        let mut r = Backoff::new(Duration::MAX).between(second / 10, second);
        let pauses: Vec<_> = (0..6).map(|_| r.next_pause().unwrap()).collect();
        assert_eq!(pauses[0], second / 10);
        assert_eq!(pauses[5], second);
    }
}
