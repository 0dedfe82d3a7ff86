//! The credential signing key cache: the key in use, replaced before it runs out, and
//! fetched from the vault by one request at a time.

use std::sync::{Arc, Mutex, PoisonError};

use kith_identity::CredentialSigningKey;
use kith_identity::vault::Vault;
use kith_node::DisplayChain;
use tracing::{debug, warn};

use super::answer::internal;
use crate::api::{ApiError, ErrorKind};

/// 1 day: a cached signing key is used while its attestation outlives the credential being
/// signed by at least this much, so that credentials never outlive the key that vouches for
/// them and a key is replaced well before it runs out.
const KEY_REUSE_MARGIN: u64 = 24 * 60 * 60;

/// 2 days: a key fetched from the vault must last this long beyond the credential lifetime,
/// so that once fetched it stays usable (by [`KEY_REUSE_MARGIN`]) for at least a day rather
/// than being replaced on the next request.
const KEY_FETCH_MARGIN: u64 = 2 * KEY_REUSE_MARGIN;

/// The credential signing key in use, and a lock that makes fetching a new one a
/// single flight: the requests that find the key too short wait for one fetch instead of
/// each attesting a key of its own.
#[derive(Default)]
pub(crate) struct KeyCache {
    current: Mutex<Option<Arc<CredentialSigningKey>>>,
    fetching: tokio::sync::Mutex<()>,
}

impl KeyCache {
    /// The key to sign credentials lasting `ttl` seconds from `now` with: the cached one
    /// while it lasts long enough, else one from `vault` for `identity`, fetched by one
    /// request at a time.
    pub(crate) async fn signing_key(
        &self,
        vault: &Vault,
        identity: &str,
        ttl: u64,
        now: u64,
    ) -> Result<Arc<CredentialSigningKey>, ApiError> {
        let needed = now.saturating_add(ttl).saturating_add(KEY_REUSE_MARGIN);
        if let Some(key) = self.lasting_until(needed) {
            return Ok(key);
        }
        // Held across the vault call on purpose: it is the single-flight lock, and no
        // other lock is taken under it.
        let _one_fetch = self.fetching.lock().await;
        if let Some(key) = self.lasting_until(needed) {
            return Ok(key);
        }
        let until = now.saturating_add(ttl).saturating_add(KEY_FETCH_MARGIN);
        let key = vault
            .credential_signing_key_until(identity, now, until)
            .await
            .map_err(|e| {
                warn!(identity = %identity, error = %DisplayChain(&e), "cannot get a credential signing key from the vault");
                ApiError::new(
                    ErrorKind::Internal,
                    "the authority cannot sign credentials right now; try again later",
                )
            })?;
        if key.attestation().expires_at() < needed {
            warn!(
                expires_at = key.attestation().expires_at(),
                needed, "the vault gave a credential signing key that expires too soon"
            );
            return Err(internal());
        }
        debug!(
            expires_at = key.attestation().expires_at(),
            "credential signing key loaded"
        );
        let key = Arc::new(key);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(key.clone());
        Ok(key)
    }

    /// The cached key, if its attestation lasts until `needed`.
    fn lasting_until(&self, needed: u64) -> Option<Arc<CredentialSigningKey>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|key| key.attestation().expires_at() >= needed)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::task::JoinSet;

    /// 2023-11-14T22:13:20Z: the fixed time these tests run at.
    const NOW: u64 = 1_700_000_000;

    /// 30 days, in seconds.
    const TTL: u64 = 30 * 24 * 60 * 60;

    #[tokio::test]
    async fn the_signing_key_is_reused_while_it_lasts_and_replaced_before_it_runs_out() {
        let dir = tempfile::TempDir::new().unwrap();
        let vault = Vault::open(&dir.path().join("vault.sqlite")).await.unwrap();
        vault.create_identity("authority", NOW).await.unwrap();
        let cache = Arc::new(KeyCache::default());
        // Concurrent first requests wait for one fetch instead of each attesting a key.
        let keys = concurrent_keys(&cache, &vault, NOW, 8).await;
        let first = keys[0].clone();
        assert!(keys.iter().all(|k| Arc::ptr_eq(k, &first)));
        assert!(first.attestation().expires_at() >= NOW + TTL + KEY_REUSE_MARGIN);
        // A day later it still lasts long enough.
        let later = cache
            .signing_key(&vault, "authority", TTL, NOW + KEY_REUSE_MARGIN)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&later, &first));
        // Once it would not outlive a credential by a day, a new one is fetched.
        let much_later = NOW + 2 * KEY_FETCH_MARGIN;
        let next = cache
            .signing_key(&vault, "authority", TTL, much_later)
            .await
            .unwrap();
        assert_ne!(
            next.attestation().public_key(),
            first.attestation().public_key()
        );
        assert!(next.attestation().expires_at() >= much_later + TTL + KEY_REUSE_MARGIN);
        vault.close().await;
    }

    async fn concurrent_keys(
        cache: &Arc<KeyCache>,
        vault: &Vault,
        now: u64,
        n: usize,
    ) -> Vec<Arc<CredentialSigningKey>> {
        let mut set = JoinSet::new();
        for _ in 0..n {
            let (cache, vault) = (cache.clone(), vault.clone());
            set.spawn(async move {
                cache
                    .signing_key(&vault, "authority", TTL, now)
                    .await
                    .unwrap()
            });
        }
        let mut keys = Vec::new();
        while let Some(k) = set.join_next().await {
            keys.push(k.unwrap());
        }
        keys
    }
}
