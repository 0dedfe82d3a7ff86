//! The audit log service ([`AUDIT_SERVICE`]): admins read the newest entries of the log
//! the store writes with every change.
//!
//! [`AUDIT_SERVICE`]: crate::api::AUDIT_SERVICE

use kith_identity::Identifier;

use super::answer::{bad_request, store_failed};
use super::state::Authority;
use super::wire::audit_entry;
use crate::api::{ApiError, AuditEntry, AuditRequest, MAX_PAGE, Page};

/// 10,000 entries: the most audit entries one request returns, so one answer stays well
/// under a channel message's size limit per page of the log.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

impl Authority {
    pub(super) async fn audit(
        &self,
        caller: &Identifier,
        request: AuditRequest,
    ) -> Result<Page<AuditEntry>, ApiError> {
        self.admin_only(caller, "only the project's admins may read the audit log")?;
        if request.limit > MAX_AUDIT_LIMIT {
            return Err(bad_request(format!(
                "at most {MAX_AUDIT_LIMIT} audit entries per request; {} were asked for",
                request.limit
            )));
        }
        let before = match request.before.as_deref() {
            None => None,
            Some(cursor) => Some(cursor.parse::<i64>().map_err(|_| {
                bad_request(
                    "the page cursor is not one this authority handed out; start the list again",
                )
            })?),
        };
        let limit = request.limit.clamp(1, MAX_PAGE);
        let events = self
            .shared
            .store
            .audit_page(before, limit)
            .await
            .map_err(|e| store_failed("reading the audit log", &e))?;
        let full = u32::try_from(events.len()).is_ok_and(|n| n >= limit);
        let next = events
            .last()
            .filter(|_| full)
            .map(|(seq, _)| seq.to_string());
        Ok(Page {
            items: events.into_iter().map(|(_, e)| audit_entry(e)).collect(),
            next,
        })
    }
}
