//! How an authority is set up: the project it serves, its admins, the lifetime of the
//! credentials it issues, the bounds on join requests, and the clock its rules read.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kith_identity::Identifier;

use crate::clock::Clock;

/// How an authority is set up.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The project's id: every credential carries it as
    /// [`PROJECT_ID_ATTRIBUTE`](crate::api::PROJECT_ID_ATTRIBUTE).
    pub project_id: String,
    /// The identities that may do everything (DESIGN §5 "Admins").
    pub admins: BTreeSet<Identifier>,
    /// How long the credentials it issues are valid.
    pub credential_ttl: Duration,
    /// How join requests are bounded.
    pub join: JoinSettings,
    /// Where every rule reads the time: [`SystemClock`](crate::clock::SystemClock) in an
    /// authority, a [`ManualClock`](crate::clock::ManualClock) in tests of the rules.
    pub clock: Arc<dyn Clock>,
}

/// How join requests are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinSettings {
    /// How long a request stays pending before it expires (default 1 h).
    pub request_ttl: Duration,
    /// How many requests may be pending from one source address (default 5).
    pub max_pending_per_source: u32,
    /// How many may be pending in all (default 1,000).
    pub max_pending: u32,
}

impl Default for JoinSettings {
    fn default() -> Self {
        Self {
            request_ttl: Duration::from_secs(60 * 60),
            max_pending_per_source: 5,
            max_pending: 1000,
        }
    }
}
