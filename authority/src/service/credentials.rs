//! The credential issuer ([`CREDENTIAL_SERVICE`]): a fresh credential for a member, with
//! the attributes the store holds for it, and the signing of every credential the authority
//! gives out (at enrollment and join request approval too).
//!
//! [`CREDENTIAL_SERVICE`]: crate::api::CREDENTIAL_SERVICE

use std::collections::BTreeMap;
use std::sync::Arc;

use kith_identity::{CredentialAndPurposeKey, CredentialSigningKey, Identifier, hex};
use kith_node::DisplayChain;
use tracing::{info, warn};

use super::state::Authority;
use crate::api::{ApiError, Enrolled, ErrorKind, PROJECT_ID_ATTRIBUTE};

impl Authority {
    /// A fresh credential for a member (its stored attributes) or an admin who is not one
    /// (the project id only).
    pub(crate) async fn credential(&self, caller: &Identifier) -> Result<Enrolled, ApiError> {
        let (attributes, ttl, changed_at) = match self.member(caller).await? {
            Some(member) => (member.attributes, member.credential_ttl, member.changed_at),
            None if self.is_admin(caller) => (BTreeMap::new(), None, None),
            None => {
                return Err(ApiError::new(
                    ErrorKind::NotMember,
                    "you are not a member of this project; enroll with a ticket or ask an admin",
                ));
            }
        };
        let now = self.now();
        let key = self.signing_key(now).await?;
        self.issue(&key, caller, attributes, ttl, changed_at, now)
    }

    /// Sign a credential for `subject` with `attributes` plus the project id, for the
    /// configured lifetime, created at `now` — or, if the subject's membership changed at
    /// `changed_at` (its [`Member::changed_at`]), at `changed_at + 1` if that is later: nodes
    /// void every credential created at or before a change of its subject (DESIGN §5), so
    /// a credential issued after the change must be strictly newer, even within the same
    /// second. Credentials may be created up to 60 s ahead of a verifier's clock, which
    /// this never nears but by a clock step.
    ///
    /// [`Member::changed_at`]: crate::store::Member::changed_at
    pub(crate) fn issue(
        &self,
        key: &CredentialSigningKey,
        subject: &Identifier,
        mut attributes: BTreeMap<String, String>,
        ttl: Option<u64>,
        changed_at: Option<u64>,
        now: u64,
    ) -> Result<Enrolled, ApiError> {
        let created_at = changed_at.map_or(now, |at| now.max(at.saturating_add(1)));
        let config = &self.shared.config;
        attributes.insert(PROJECT_ID_ATTRIBUTE.to_owned(), config.project_id.clone());
        // A member approved for less than the default keeps that limit at every refresh.
        let ttl = config
            .credential_ttl
            .as_secs()
            .min(ttl.unwrap_or(u64::MAX))
            .max(1);
        let expires_at = created_at.saturating_add(ttl);
        match CredentialAndPurposeKey::issue(
            key,
            subject,
            attributes.clone(),
            created_at,
            expires_at,
        ) {
            Ok(credential) => {
                info!(expires_at, "credential issued");
                Ok(Enrolled {
                    credential: hex::encode(&credential.encode()),
                    attributes,
                    expires_at,
                    before: None,
                    retried: false,
                })
            }
            Err(e) => {
                // Attributes are checked before they are stored, so only a store edited by
                // hand (or an older authority's data) gets here.
                warn!(error = %DisplayChain(&e), "cannot issue a credential with the stored attributes");
                Err(ApiError::new(
                    ErrorKind::Internal,
                    "the authority cannot issue a credential with your stored attributes; ask an admin",
                ))
            }
        }
    }

    /// The signing key to use at `now`, for credentials of the configured lifetime.
    pub(crate) async fn signing_key(
        &self,
        now: u64,
    ) -> Result<Arc<CredentialSigningKey>, ApiError> {
        let shared = &self.shared;
        let ttl = shared.config.credential_ttl.as_secs();
        shared
            .signing_key
            .signing_key(&shared.vault, &shared.identity_name, ttl, now)
            .await
    }
}
