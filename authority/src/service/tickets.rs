//! The ticket issuer ([`TICKET_SERVICE`]): admins and enrollers create, list and revoke
//! enrollment tickets. Only SHA-256 of a ticket's one-time code is stored; the code itself
//! leaves in the answer to its creator and nowhere else. Enrollers cannot mint
//! `ockam-role=enroller` tickets; only admins can.
//!
//! [`TICKET_SERVICE`]: crate::api::TICKET_SERVICE

use std::collections::BTreeMap;
use std::time::Duration;

use kith_identity::{Identifier, hex};
use tracing::{debug, info, warn};

use super::answer::{
    Answer, bad_request, forbidden, full_page, internal, page_request, store_failed,
};
use super::checks::{check_member_attributes, grants_enroller};
use super::state::Authority;
use super::wire::ticket_info;
use crate::api::{ApiError, CreatedTicket, ErrorKind, Page, TicketRequest};
use crate::store::{NewTicket, PageKey, StoreError};
use crate::ticket::OneTimeCode;

/// 1 s: the shortest ticket lifetime; a ticket must outlive the round trip that creates it.
pub const MIN_TICKET_LIFETIME: Duration = Duration::from_secs(1);

/// 365 days: the longest ticket lifetime. A ticket is a bearer secret; one that outlives a
/// year is better replaced than kept.
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// 100,000 identities: the most one ticket may enroll, far above any fleet rollout, low
/// enough that a typo (an extra zero or three) is caught.
pub const MAX_TICKET_USES: u32 = 100_000;

/// 6 bytes: a ticket id is the first 12 hex digits of its code's hash, short to type and
/// telling nothing of the code (48 bits; a clash is retried with a new code, see
/// [`TICKET_ID_ATTEMPTS`]). `Ticket::id` computes the same from the ticket.
const TICKET_ID_BYTES: usize = 6;

/// 3 attempts: how often a ticket is made again with a fresh code when its id is taken. Two
/// clashes in a row among 48-bit ids mean something else is wrong.
const TICKET_ID_ATTEMPTS: usize = 3;

/// Check a ticket's lifetime and usage count; returns the lifetime in seconds.
fn check_ticket_terms(expires_in: u64, usage_count: u32) -> Result<u64, ApiError> {
    let (min, max) = (MIN_TICKET_LIFETIME.as_secs(), MAX_TICKET_LIFETIME.as_secs());
    if !(min..=max).contains(&expires_in) {
        return Err(bad_request(format!(
            "a ticket must expire in {min} s to {max} s (365 days); {expires_in} s was asked for"
        )));
    }
    if !(1..=MAX_TICKET_USES).contains(&usage_count) {
        return Err(bad_request(format!(
            "a ticket may enroll 1 to {MAX_TICKET_USES} identities; {usage_count} was asked for"
        )));
    }
    Ok(expires_in)
}

impl Authority {
    pub(super) async fn tickets(
        &self,
        caller: &Identifier,
        request: TicketRequest,
    ) -> Result<Answer, ApiError> {
        const REFUSAL: &str =
            "only the project's admins and enrollers may create, list or revoke tickets";
        let enroller = self.admin_or_enroller(caller, REFUSAL).await?;
        let store = &self.shared.store;
        match request {
            TicketRequest::Create {
                attributes,
                expires_in,
                usage_count,
            } => {
                check_member_attributes(&attributes)?;
                let expires_in = check_ticket_terms(expires_in, usage_count)?;
                if enroller && grants_enroller(&attributes) {
                    return Err(forbidden(
                        "only admins may create tickets with ockam-role=enroller",
                    ));
                }
                self.create_ticket(caller, attributes, expires_in, usage_count)
                    .await
                    .map(Answer::CreatedTicket)
            }
            TicketRequest::List { after, limit } => {
                let (after, limit) = page_request(after.as_deref(), limit)?;
                let tickets = store
                    .tickets_page(after.as_ref(), limit)
                    .await
                    .map_err(|e| store_failed("listing tickets", &e))?;
                let next = full_page(&tickets, limit, |t| PageKey {
                    at: t.created_at,
                    key: t.id.clone(),
                });
                Ok(Answer::Tickets(Page {
                    items: tickets.into_iter().map(ticket_info).collect(),
                    next,
                }))
            }
            TicketRequest::Revoke { id } => {
                let revoked = store
                    .revoke_ticket(&id, caller, self.now())
                    .await
                    .map_err(|e| store_failed("revoking a ticket", &e))?;
                match revoked {
                    Some(ticket) => {
                        info!(ticket = %ticket.id, "ticket revoked");
                        Ok(Answer::Ticket(ticket_info(ticket)))
                    }
                    None => Err(ApiError::new(
                        ErrorKind::NotFound,
                        "there is no ticket with this id; `kith project ticket list` shows them",
                    )),
                }
            }
        }
    }

    async fn create_ticket(
        &self,
        caller: &Identifier,
        attributes: BTreeMap<String, String>,
        expires_in: u64,
        usage_count: u32,
    ) -> Result<CreatedTicket, ApiError> {
        let now = self.now();
        let expires_at = now.saturating_add(expires_in);
        for _ in 0..TICKET_ID_ATTEMPTS {
            let code = OneTimeCode::random();
            let code_hash = code.hash();
            // The id is the start of the code's hash, so a ticket holder sees the same id
            // (`Ticket::id`) as `ticket list` shows; the hash reveals nothing of the code.
            let mut id = hex::encode(&code_hash);
            id.truncate(2 * TICKET_ID_BYTES);
            let ticket = NewTicket {
                id,
                code_hash,
                attributes: attributes.clone(),
                usage_count,
                expires_at,
                created_by: *caller,
            };
            match self.shared.store.create_ticket(&ticket, now).await {
                Ok(()) => {
                    info!(ticket = %ticket.id, usage_count, expires_at, attributes = ?ticket.attributes, "ticket created");
                    return Ok(CreatedTicket {
                        id: ticket.id,
                        code: hex::encode(code.as_bytes()),
                        expires_at,
                        usage_count,
                        attributes,
                    });
                }
                Err(StoreError::TicketExists { id }) => {
                    debug!(ticket = %id, "ticket id taken; trying another code");
                }
                Err(e) => return Err(store_failed("creating a ticket", &e)),
            }
        }
        warn!(
            attempts = TICKET_ID_ATTEMPTS,
            "every random ticket id tried was taken"
        );
        Err(internal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_terms_have_bounds_on_both_sides() {
        assert_eq!(check_ticket_terms(1, 1).unwrap(), 1);
        assert!(check_ticket_terms(MAX_TICKET_LIFETIME.as_secs(), MAX_TICKET_USES).is_ok());
        assert!(check_ticket_terms(0, 1).is_err());
        assert!(check_ticket_terms(MAX_TICKET_LIFETIME.as_secs() + 1, 1).is_err());
        assert!(check_ticket_terms(60, 0).is_err());
        assert!(check_ticket_terms(60, MAX_TICKET_USES + 1).is_err());
    }
}
