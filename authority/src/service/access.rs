//! Who may call what. Admins come from the configuration; enrollers and members from the
//! store, read at every request, never from the attributes the caller's channel carries: a
//! member deleted or demoted a moment ago loses its rights with its next request, not when
//! its credential expires.

use kith_identity::Identifier;
use tracing::info;

use super::answer::{forbidden, store_failed};
use super::checks::grants_enroller;
use super::state::Authority;
use crate::api::ApiError;
use crate::store::Member;

impl Authority {
    pub(crate) fn is_admin(&self, caller: &Identifier) -> bool {
        self.shared.config.admins.contains(caller)
    }

    /// The caller's membership, read from the store.
    pub(crate) async fn member(&self, caller: &Identifier) -> Result<Option<Member>, ApiError> {
        self.shared
            .store
            .member(caller)
            .await
            .map_err(|e| store_failed("looking up the caller", &e))
    }

    /// Whether the caller may manage tickets and read members: `Ok(false)` for an admin,
    /// `Ok(true)` for an enroller who is no admin, a refusal for anyone else.
    pub(crate) async fn admin_or_enroller(
        &self,
        caller: &Identifier,
        refusal: &str,
    ) -> Result<bool, ApiError> {
        if self.is_admin(caller) {
            return Ok(false);
        }
        match self.member(caller).await? {
            Some(member) if grants_enroller(&member.attributes) => Ok(true),
            Some(_) => {
                info!("the caller is a member but not an enroller");
                Err(forbidden(refusal))
            }
            None => {
                info!("the caller is neither an admin nor a member");
                Err(forbidden(refusal))
            }
        }
    }

    pub(crate) fn admin_only(&self, caller: &Identifier, refusal: &str) -> Result<(), ApiError> {
        if self.is_admin(caller) {
            Ok(())
        } else {
            Err(forbidden(refusal))
        }
    }
}
