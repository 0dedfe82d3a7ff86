//! The requesters waiting in this process for a decision on their join request: per
//! request id a notification, per requester a count of the waits it holds, and the slots
//! that cap waits in all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use kith_identity::Identifier;
use tokio::sync::{Notify, Semaphore};

/// 2: how many waits one requester identity may have held at once. One is the normal case;
/// the second covers a requester whose old channel died with a wait still held here.
pub const MAX_WAITS_PER_REQUESTER: u32 = 2;

/// 4,096 waits: how many [`JoinCall::Wait`]s are held at once in all, four times the
/// default cap on pending requests. Past it a wait is answered "busy" at once.
///
/// [`JoinCall::Wait`]: crate::api::JoinCall::Wait
pub const MAX_WAITERS: usize = 4096;

/// The waiters of this process: per request id, a notification for its decision; per
/// requester, how many waits it has held.
pub(crate) struct JoinWaiters {
    decided: Mutex<HashMap<String, Arc<Notify>>>,
    per_requester: Mutex<HashMap<Identifier, u32>>,
    /// One per wait held, at most [`MAX_WAITERS`].
    pub(crate) slots: Arc<Semaphore>,
}

impl Default for JoinWaiters {
    fn default() -> Self {
        Self {
            decided: Mutex::default(),
            per_requester: Mutex::default(),
            slots: Arc::new(Semaphore::new(MAX_WAITERS)),
        }
    }
}

impl JoinWaiters {
    /// The notification for request `id`, created if no one waits on it yet.
    pub(crate) fn watch(&self, id: &str) -> Arc<Notify> {
        self.decided
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Drop the notification for `id` if no one else holds it.
    pub(crate) fn unwatch(&self, id: &str, notify: Arc<Notify>) {
        let mut decided = self.decided.lock().unwrap_or_else(PoisonError::into_inner);
        drop(notify);
        if decided.get(id).is_some_and(|n| Arc::strong_count(n) == 1) {
            decided.remove(id);
        }
    }

    /// Wake everyone waiting on request `id`.
    pub(crate) fn wake(&self, id: &str) {
        let notify = self
            .decided
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    /// Count a wait by `requester`; `false` if it has as many as it may.
    pub(crate) fn enter(&self, requester: &Identifier) -> bool {
        let mut counts = self
            .per_requester
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(*requester).or_default();
        if *n >= MAX_WAITS_PER_REQUESTER {
            return false;
        }
        *n += 1;
        true
    }

    pub(crate) fn leave(&self, requester: &Identifier) {
        let mut counts = self
            .per_requester
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(requester) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(requester);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requester_may_hold_two_waits_at_once() {
        let waiters = JoinWaiters::default();
        let me: Identifier = "I0000000000000000000000000000000000000000".parse().unwrap();
        assert!(waiters.enter(&me));
        assert!(waiters.enter(&me));
        assert!(!waiters.enter(&me));
        waiters.leave(&me);
        assert!(waiters.enter(&me));
    }
}
