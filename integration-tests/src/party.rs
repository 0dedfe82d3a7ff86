//! An identity for in-process benches: created in memory (no vault), with a fresh attested
//! channel key for each set of channel settings it is given.

use std::sync::Arc;
use std::time::Duration;

use kith_identity::channel::{LocalIdentity, Trust};
use kith_identity::secure_channel::ChannelSettings;
use kith_identity::{
    CredentialAndPurposeKey, Identifier, Identity, IdentitySecret, SecureChannelKey, unix_now,
};

/// 1 hour: how long a party's channel keys last, far beyond any bench run.
pub const KEY_LIFETIME: Duration = Duration::from_secs(3600);

/// 10 s: the handshake timeout of a party's channels. Loopback answers in milliseconds;
/// only a bug takes this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An identity and its secret.
pub struct Party {
    identity: Identity,
    secret: IdentitySecret,
}

impl Party {
    /// A new identity.
    pub fn new() -> Self {
        let (identity, secret) = Identity::create(unix_now());
        Self { identity, secret }
    }

    /// Its identifier.
    pub fn identifier(&self) -> Identifier {
        *self.identity.identifier()
    }

    /// Channel settings presenting `credentials` and trusting as `trust` says, with a
    /// channel key attested for [`KEY_LIFETIME`].
    pub fn settings(
        &self,
        credentials: Vec<CredentialAndPurposeKey>,
        trust: Arc<Trust>,
    ) -> ChannelSettings {
        let now = unix_now();
        let key = SecureChannelKey::generate(
            &self.identity,
            &self.secret,
            now - 5,
            now + KEY_LIFETIME.as_secs(),
        );
        let local = LocalIdentity {
            identity: self.identity.clone(),
            key,
            credentials,
        };
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = HANDSHAKE_TIMEOUT;
        settings
    }
}

impl Default for Party {
    fn default() -> Self {
        Self::new()
    }
}
