//! The authority's clock: where every rule that depends on time (ticket and request expiry,
//! credential lifetimes, auto-approval rule expiry, relay timestamps, the join request
//! sweep) reads "now", in Unix seconds.
//!
//! An authority runs on [`SystemClock`]. Tests give it a [`ManualClock`] set to a fixed time
//! and move it forward themselves, so that "an hour later" takes no hour and every
//! timestamp an answer carries is known exactly.
//!
//! What this module does not do: schedule anything. Timers (how long a wait is held, how
//! often requests are swept) run on tokio's clock, which tests pause where they wait on it.
//! The store never reads a clock: its operations take `now` from their caller.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kith_identity::unix_now;

/// A source of the current time, in Unix seconds.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        unix_now()
    }
}

/// A clock that stands still until it is set or advanced: rules tested at fixed times.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock showing `now` (Unix seconds).
    pub fn new(now: u64) -> Self {
        Self {
            now: AtomicU64::new(now),
        }
    }

    /// Show `now` from here on. It may go backwards, as a wall clock can.
    pub fn set(&self, now: u64) {
        self.now.store(now, Ordering::SeqCst);
    }

    /// Move forward by `by` (whole seconds; the rest is dropped), and return the new time.
    pub fn advance(&self, by: Duration) -> u64 {
        let by = by.as_secs();
        let before = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            })
            .unwrap_or_else(|t| t);
        before.saturating_add(by)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_700_000_000);
        assert_eq!(clock.now(), 1_700_000_000);
        assert_eq!(clock.now(), 1_700_000_000);
        assert_eq!(clock.advance(Duration::from_millis(61_900)), 1_700_000_061);
        assert_eq!(clock.now(), 1_700_000_061);
        clock.set(5);
        assert_eq!(clock.now(), 5);
        clock.set(u64::MAX - 1);
        assert_eq!(clock.advance(Duration::from_secs(10)), u64::MAX);
    }

    #[test]
    fn the_system_clock_reads_the_wall_clock() {
        let before = unix_now();
        let read = SystemClock.now();
        assert!(read >= before && read <= unix_now());
    }
}
