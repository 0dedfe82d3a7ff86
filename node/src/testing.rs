//! Helpers for tests of kith's crates (feature `test-util`, for dev-dependencies only): wait
//! for a condition that another task, thread or process makes true, instead of sleeping a
//! fixed time and hoping.
//!
//! A condition that never holds panics, naming what was awaited: a test helper, so a panic
//! is the failure report. The bounds are generous because they only matter when a test
//! fails; a passing wait returns as soon as the condition holds.

use std::time::{Duration, Instant};

/// 30 s: how long [`until`] waits. In-process nodes get there in milliseconds; only a bug, or
/// a machine far busier than any CI runner, takes this long.
pub const UNTIL_TIMEOUT: Duration = Duration::from_secs(30);

/// 5 ms: how often [`until`] looks. Cheap conditions (a counter, an address table) can be
/// polled this often without slowing what they wait for.
const POLL: Duration = Duration::from_millis(5);

/// 90 s: how long [`until_blocking`] waits. It waits for other processes (a daemon starting,
/// an authority restarted with `kill -9`), which take seconds.
pub const UNTIL_BLOCKING_TIMEOUT: Duration = Duration::from_secs(90);

/// 100 ms: how often [`until_blocking`] looks. Its conditions are costly (each may run a
/// command), so they are polled a few times a second, not hundreds.
const BLOCKING_POLL: Duration = Duration::from_millis(100);

/// Wait until `condition` holds, looking every few milliseconds, for at most
/// [`UNTIL_TIMEOUT`]; panics "timed out … waiting for {what}" past it.
///
/// The clock is tokio's: under paused time the bound is virtual, and elapses as soon as the
/// runtime has nothing else to do.
pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(UNTIL_TIMEOUT, async {
        while !condition() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!("timed out after {UNTIL_TIMEOUT:?} waiting for {what}");
    }
}

/// [`until`] for a test with no runtime, whose condition is slow (it runs a command or reads
/// a file): blocks the thread, looking every 100 ms, for at most [`UNTIL_BLOCKING_TIMEOUT`].
#[track_caller]
pub fn until_blocking(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < UNTIL_BLOCKING_TIMEOUT,
            "timed out after {UNTIL_BLOCKING_TIMEOUT:?} waiting for {what}"
        );
        std::thread::sleep(BLOCKING_POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn until_returns_once_another_task_makes_the_condition_true() {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.store(true, Ordering::SeqCst) }
        });
        until("the flag", || flag.load(Ordering::SeqCst)).await;
        setter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for a condition that never holds")]
    async fn until_names_what_it_waited_for_when_it_times_out() {
        until("a condition that never holds", || false).await;
    }

    #[test]
    fn until_blocking_returns_once_another_thread_makes_the_condition_true() {
        let flag = Arc::new(AtomicBool::new(false));
        let setter = std::thread::spawn({
            let flag = flag.clone();
            move || flag.store(true, Ordering::SeqCst)
        });
        until_blocking("the flag", || flag.load(Ordering::SeqCst));
        setter.join().unwrap();
    }
}
