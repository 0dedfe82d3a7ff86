//! Shares: how many of something each key (a source, a peer) holds at once, each held one
//! a [`Share`] that gives itself back when dropped. A key leaves the table with its last
//! share, so the table is never larger than the shares held.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Counts of shares held, per key. Clones share the table.
#[derive(Debug)]
pub struct Shares<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for Shares<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for Shares<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Hash + Eq + Clone> Shares<K> {
    /// A share for `key`, if it holds fewer than `max`.
    pub fn take(&self, key: K, max: usize) -> Option<Share<K>> {
        let mut held = self.lock();
        let n = held.entry(key.clone()).or_default();
        if *n >= max {
            if *n == 0 {
                held.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            key,
        })
    }

    /// Shares `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// Keys holding a share now.
    pub fn keys(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        // Every update is one step: a panic elsewhere leaves the counts consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One share of a key, given back when dropped.
#[derive(Debug)]
pub struct Share<K: Hash + Eq + Clone> {
    shares: Shares<K>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_share_and_leaves_with_its_last() {
        let shares = Shares::default();
        let held: Vec<_> = (0..3).map(|_| shares.take("a", 3).unwrap()).collect();
        assert!(shares.take("a", 3).is_none());
        let other = shares.take("b", 3).unwrap();
        assert_eq!((shares.held(&"a"), shares.keys()), (3, 2));
        drop(held);
        assert_eq!(shares.held(&"a"), 0);
        assert!(shares.take("a", 3).is_some());
        drop(other);
        assert_eq!(shares.keys(), 0, "a key with no share leaves the table");
        assert!(shares.take("c", 0).is_none());
        assert_eq!(shares.keys(), 0, "a refused key leaves nothing behind");
    }
}
