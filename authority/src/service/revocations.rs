//! The revocation feed ([`REVOCATION_SERVICE`], DESIGN §5): the store appends a statement
//! whenever a member is deleted or its attributes change, in the transaction of the change;
//! this module serves the statements, signed, to the members that follow them, and applies
//! them to the authority's own node at once.
//!
//! A follower asks for the statements after the last it has, and if there are none yet its
//! request is held (at most [`MAX_REVOCATION_WAIT`]) until one is committed, so a deletion
//! reaches every follower within one store read of its commit. One watcher task per
//! authority process reads the feed's new statements: at once when a service of this
//! process committed one ([`Feed::poke`]), and every [`FEED_POLL`] for those other
//! processes sharing the database committed; it wakes the held requests and applies the
//! statements to the node's revocations, which closes the revoked members' channels here —
//! and with the relay owners' channels, their relays.
//!
//! [`REVOCATION_SERVICE`]: crate::api::REVOCATION_SERVICE
//! [`MAX_REVOCATION_WAIT`]: crate::api::MAX_REVOCATION_WAIT

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kith_identity::hex;
use kith_identity::revocation::{Revocation, RevocationKind, Revocations, SignedRevocations};
use kith_node::{Node, Shares};
use kith_transport::source::Source;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, info};

use super::answer::store_failed;
use super::state::Authority;
use crate::api::{ApiError, MAX_PAGE, MAX_REVOCATION_WAIT, RevocationsPage, RevocationsRequest};
use crate::store::{FeedEntry, FeedKind};

/// 1 s: how often the watcher reads the feed for statements other authority processes
/// (sharing a PostgreSQL database) committed; this process's own wake it at once.
pub const FEED_POLL: Duration = Duration::from_secs(1);

/// 4,096 requests: how many followers' requests are held waiting at once. Past it a request
/// is answered at once with what there is, and the follower asks again.
pub const MAX_FOLLOWERS: usize = 4096;

/// 64 requests: how many of the held requests may come from one source (an IPv4 address,
/// an IPv6 /64). A node holds one; 64 leaves room for many nodes behind one address, and
/// 64 sources are needed to take every slot. Past it a request is answered at once.
pub const MAX_FOLLOWERS_PER_SOURCE: usize = 64;

/// The feed as this process knows it: the highest sequence number read, who waits for it
/// to grow, and the node revocations to apply it to.
pub(crate) struct Feed {
    head: watch::Sender<u64>,
    poke: Notify,
    local: Mutex<Option<Arc<Revocations>>>,
    followers: Arc<Semaphore>,
    /// Held requests per source.
    by_source: Shares<Source>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            head: watch::Sender::new(0),
            poke: Notify::new(),
            local: Mutex::default(),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            by_source: Shares::default(),
        }
    }
}

impl Feed {
    /// A service of this process committed a statement: read the feed now.
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }
}

fn statement(entry: &FeedEntry) -> Revocation {
    Revocation {
        seq: entry.seq,
        subject: entry.subject,
        at: entry.at,
        kind: match entry.kind {
            FeedKind::Revoked => RevocationKind::Revoked,
            FeedKind::Changed => RevocationKind::Changed,
        },
    }
}

impl Authority {
    /// Apply every statement of the feed to `revocations` (the node the authority runs
    /// on), from now on as soon as it is read: the node closes the channels of members
    /// deleted here at once, and refuses their new ones.
    pub fn apply_revocations_to(&self, revocations: Arc<Revocations>) {
        *self
            .shared
            .feed
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(revocations);
        self.shared.feed.poke();
    }

    /// Start the watcher that reads new statements as they are committed.
    pub(crate) fn start_feed_watcher(&self, node: &Node) {
        let authority = self.clone();
        node.spawn(async move {
            let mut read = 0;
            loop {
                read = authority.read_feed(read).await;
                let feed = &authority.shared.feed;
                let _ = tokio::time::timeout(FEED_POLL, feed.poke.notified()).await;
            }
        });
    }

    /// Read the statements after `read`, apply them to the node and wake the followers;
    /// returns the highest sequence number read.
    async fn read_feed(&self, mut read: u64) -> u64 {
        let local = self
            .shared
            .feed
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let authority = match self.signing_key(self.now()).await {
            Ok(key) => *key.attestation().subject(),
            Err(_) => return read,
        };
        loop {
            let page = match self.store().feed_page(read, MAX_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    store_failed("reading the revocation feed", &e);
                    return read;
                }
            };
            let Some(last) = page.last() else {
                return read;
            };
            read = last.seq;
            let statements: Vec<Revocation> = page.iter().map(statement).collect();
            if let Some(local) = &local {
                let applied = local.apply(&authority, &statements);
                if applied > 0 {
                    info!(applied, head = read, "applied revocations to this node");
                }
            }
            self.shared.feed.head.send_replace(read);
            if page.len() < MAX_PAGE as usize {
                return read;
            }
        }
    }

    /// The statements after `request.after`, waiting for one if there are none yet.
    ///
    /// Anyone with a channel may follow: a node that trusts the authority without being a
    /// member (`--trust-authority`) needs the feed as much as a member does, or it would
    /// fail closed at the end of its grace; and the feed names only identifiers, which are
    /// not secret. What a follower costs is bounded by [`MAX_FOLLOWERS`], and what the
    /// followers at one source (the channel's `source`) hold by [`MAX_FOLLOWERS_PER_SOURCE`].
    pub(super) async fn revocations(
        &self,
        request: RevocationsRequest,
        source: Option<SocketAddr>,
        permit: OwnedSemaphorePermit,
    ) -> Result<RevocationsPage, ApiError> {
        let wait = Duration::from_millis(request.wait_ms).min(MAX_REVOCATION_WAIT);
        let mut head = self.shared.feed.head.subscribe();
        if *head.borrow_and_update() <= request.after && !wait.is_zero() {
            // Waiting costs a follower slot, not one of the requests in flight.
            drop(permit);
            let feed = &self.shared.feed;
            let of_source = match source {
                Some(s) => feed
                    .by_source
                    .take(Source::of(s.ip()), MAX_FOLLOWERS_PER_SOURCE)
                    .map(Some),
                None => Some(None),
            };
            if let Some(_of_source) = of_source
                && let Ok(_slot) = feed.followers.clone().try_acquire_owned()
            {
                let grown = head.wait_for(|h| *h > request.after);
                if tokio::time::timeout(wait, grown).await.is_err() {
                    debug!(
                        after = request.after,
                        "no new revocation while the follower waited"
                    );
                }
            }
        }
        let page = self
            .store()
            .feed_page(request.after, MAX_PAGE)
            .await
            .map_err(|e| store_failed("reading the revocation feed", &e))?;
        let store_head = page.last().map_or(request.after, |e| e.seq);
        let head = (*self.shared.feed.head.borrow()).max(store_head);
        let key = self.signing_key(self.now()).await?;
        let statements: Vec<Revocation> = page.iter().map(statement).collect();
        let signed = SignedRevocations::sign(&key, &statements);
        if !statements.is_empty() {
            debug!(
                after = request.after,
                count = statements.len(),
                head,
                "served revocations"
            );
        }
        Ok(RevocationsPage {
            revocations: hex::encode(&signed.encode()),
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_holds_at_most_its_share_of_followers() {
        let feed = Feed::default();
        let source = Source::of(std::net::IpAddr::from([127, 0, 0, 2]));
        let held: Vec<_> = (0..MAX_FOLLOWERS_PER_SOURCE)
            .map(|_| {
                feed.by_source
                    .take(source, MAX_FOLLOWERS_PER_SOURCE)
                    .unwrap()
            })
            .collect();
        assert!(
            feed.by_source
                .take(source, MAX_FOLLOWERS_PER_SOURCE)
                .is_none()
        );
        drop(held);
        assert!(
            feed.by_source
                .take(source, MAX_FOLLOWERS_PER_SOURCE)
                .is_some()
        );
    }
}
