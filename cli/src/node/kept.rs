//! What a node keeps by name (relays, outlets, inlets) and in its saved configuration.
//!
//! A change to a kept thing may talk to the network for seconds (a relay asks the project
//! node). It claims its name instead of taking a lock: changes to one name run one at a
//! time, changes to different names and every `list` run meanwhile, and no lock is ever held
//! across a wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::home::{Home, NodeConfig};

/// A mutex whose holder cannot leave its data half-changed (every critical section here is a
/// few map operations), so a poisoned one is used as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Things kept by name, each changed by one [`Change`] at a time.
pub(crate) struct Kept<T> {
    slots: Mutex<BTreeMap<String, Slot<T>>>,
}

struct Slot<T> {
    value: Option<T>,
    /// Set while a [`Change`] holds the name; cancelled when it ends, waking the next one.
    changing: Option<CancellationToken>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<T> Kept<T> {
    /// Wait until no other change to `name` is under way, then claim it.
    pub(crate) async fn change(&self, name: &str) -> Change<'_, T> {
        loop {
            let under_way = {
                let mut slots = lock(&self.slots);
                let slot = slots.entry(name.to_owned()).or_insert(Slot {
                    value: None,
                    changing: None,
                });
                match &slot.changing {
                    Some(token) => token.clone(),
                    None => {
                        let token = CancellationToken::new();
                        slot.changing = Some(token.clone());
                        return Change {
                            kept: self,
                            name: name.to_owned(),
                            token,
                        };
                    }
                }
            };
            under_way.cancelled().await;
        }
    }

    /// `f` of every kept value, in name order (including those being changed).
    pub(crate) fn map<R>(&self, mut f: impl FnMut(&T) -> R) -> Vec<R> {
        lock(&self.slots)
            .values()
            .filter_map(|s| s.value.as_ref())
            .map(&mut f)
            .collect()
    }
}

/// The claim on one name of a [`Kept`]; dropping it lets the next change to that name go.
pub(crate) struct Change<'a, T> {
    kept: &'a Kept<T>,
    name: String,
    token: CancellationToken,
}

impl<T> Change<'_, T> {
    /// `f` of the value kept under the name now, if any.
    pub(crate) fn current<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let slots = lock(&self.kept.slots);
        f(slots.get(&self.name).and_then(|s| s.value.as_ref()))
    }

    /// Keep `value` under the name (replacing what was there).
    pub(crate) fn set(&self, value: T) {
        if let Some(slot) = lock(&self.kept.slots).get_mut(&self.name) {
            slot.value = Some(value);
        }
    }

    /// Stop keeping the value under the name, and return it.
    pub(crate) fn take(&self) -> Option<T> {
        lock(&self.kept.slots)
            .get_mut(&self.name)
            .and_then(|s| s.value.take())
    }
}

impl<T> Drop for Change<'_, T> {
    fn drop(&mut self) {
        let mut slots = lock(&self.kept.slots);
        if let Some(slot) = slots.get_mut(&self.name) {
            slot.changing = None;
            if slot.value.is_none() {
                slots.remove(&self.name);
            }
        }
        self.token.cancel();
    }
}

/// A node's saved configuration, as its parts update it when what they keep changes.
#[derive(Clone)]
pub(crate) struct Saved {
    home: Home,
    name: String,
    /// Serializes read-modify-write of the file between the parts (held for a file read
    /// and write, never across a wait).
    writing: Arc<Mutex<()>>,
}

impl Saved {
    /// The configuration of node `name` in `home`.
    pub(crate) fn new(home: Home, name: &str) -> Self {
        Self {
            home,
            name: name.to_owned(),
            writing: Arc::default(),
        }
    }

    /// The state directory the node lives in.
    pub(crate) fn home(&self) -> &Home {
        &self.home
    }

    /// Read the configuration, let `f` change it, and write it back.
    pub(crate) fn update(&self, f: impl FnOnce(&mut NodeConfig)) -> Result<()> {
        let _writing = lock(&self.writing);
        let mut config = self.home.load_node(&self.name)?;
        f(&mut config);
        self.home.save_node(&config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_change_to_a_name_waits_for_the_first() {
        let kept = Kept::<u32>::default();
        let first = kept.change("a").await;
        first.set(1);
        // A change to another name goes at once, and listing sees the kept value.
        drop(kept.change("b").await);
        assert_eq!(kept.map(|v| *v), vec![1]);
        let second = kept.change("a");
        tokio::pin!(second);
        assert!(
            futures_poll_once(second.as_mut()).await.is_none(),
            "a second change to the same name went ahead while the first held it"
        );
        drop(first);
        let second = second.await;
        assert_eq!(second.current(|v| v.copied()), Some(1));
        assert_eq!(second.take(), Some(1));
        drop(second);
        assert!(kept.map(|v| *v).is_empty());
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
