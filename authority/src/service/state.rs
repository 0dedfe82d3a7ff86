//! The state the services share, behind the [`Authority`] handle: the store, the vault and
//! the name of the identity that signs credentials, the configuration, the signing key
//! cache, the cap on requests in flight, the join request waiters and the counts of failed
//! codes.
//!
//! Every service module works on this handle; none of them reaches the dispatcher.

use std::fmt;
use std::sync::Arc;

use kith_identity::vault::Vault;
use tokio::sync::Semaphore;

use super::config::AuthorityConfig;
use super::keys::KeyCache;
use super::revocations::Feed;
use super::throttle::Guesses;
use super::waiters::JoinWaiters;
use crate::store::MembershipStore;

/// 1,024 requests: how many requests the seven services run at once. Each holds at most one
/// store connection and a few kilobytes; past the cap a request is answered "busy, try again"
/// at once, so a flood of requests costs the authority a refusal each, not memory.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The authority: the state its services share. Cloning is cheap; clones share the store,
/// the vault, the cached signing key and the cap on requests in flight, so two calls to
/// [`Authority::start`] on two nodes act as one authority.
#[derive(Clone)]
pub struct Authority {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store: MembershipStore,
    pub(crate) vault: Vault,
    pub(crate) identity_name: String,
    pub(crate) config: AuthorityConfig,
    pub(crate) signing_key: KeyCache,
    pub(crate) in_flight: Arc<Semaphore>,
    /// Join requests: who waits for which decision.
    pub(crate) join: JoinWaiters,
    /// Test hook: abort the process right after a redemption commits, before answering
    /// ([`ABORT_AFTER_ENROLL_COMMIT`]).
    pub(crate) abort_after_enroll_commit: bool,
    /// The revocation feed: what this process has read of it, and who waits for more.
    pub(crate) feed: Feed,
    /// Failed codes per identity and source (in memory: a restart forgets them).
    pub(crate) guesses: Guesses,
}

/// Test hook: when this environment variable is `1` as the authority starts, the process
/// aborts right after the store commits a redemption and before the answer is sent. It
/// simulates a crash between commit and answer, so that integration tests can show that
/// the enrolling client's retry spends no second use of the ticket. Read once, in
/// [`Authority::new`]; never set it in production.
pub const ABORT_AFTER_ENROLL_COMMIT: &str = "KITH_TEST_ABORT_AFTER_ENROLL_COMMIT";

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("Authority")
            .field("project_id", &s.config.project_id)
            .field("admins", &s.config.admins)
            .field("credential_ttl", &s.config.credential_ttl)
            .field("clock", &s.config.clock)
            .field("store", &s.store.location())
            .field("identity", &s.identity_name)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// An authority keeping its state in `store` and signing credentials with the identity
    /// named `identity_name` in `vault`. Nothing runs until [`Authority::start`].
    pub fn new(
        store: MembershipStore,
        vault: Vault,
        identity_name: String,
        config: AuthorityConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                vault,
                identity_name,
                config,
                signing_key: KeyCache::default(),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                join: JoinWaiters::default(),
                abort_after_enroll_commit: std::env::var_os(ABORT_AFTER_ENROLL_COMMIT)
                    .is_some_and(|value| value == "1"),
                feed: Feed::default(),
                guesses: Guesses::default(),
            }),
        }
    }

    /// The membership store.
    pub(crate) fn store(&self) -> &MembershipStore {
        &self.shared.store
    }

    /// How this authority is set up.
    pub fn config(&self) -> &AuthorityConfig {
        &self.shared.config
    }

    /// Now, in Unix seconds, by the configured clock: the time every rule is checked at.
    pub(crate) fn now(&self) -> u64 {
        self.shared.config.clock.now()
    }
}
