//! Store records as the API shows them: the one place where the store's types become wire
//! types, so that the store never imports the API and each changes only on purpose.

use crate::api::{self, AuditEntry, AutoApproveRule, JoinRequestInfo, MemberInfo, TicketInfo};
use crate::store::{AuditEvent, JoinRecord, JoinState, Member, RuleRecord, TicketRecord};

pub(crate) fn ticket_info(record: TicketRecord) -> TicketInfo {
    TicketInfo {
        id: record.id,
        attributes: record.attributes,
        usage_count: record.usage_count,
        uses_left: record.uses_left,
        created_at: record.created_at,
        expires_at: record.expires_at,
        created_by: record.created_by.to_string(),
        revoked_at: record.revoked_at,
    }
}

pub(crate) fn member_info(member: Member) -> MemberInfo {
    MemberInfo {
        identifier: member.identifier.to_string(),
        attributes: member.attributes,
        added_at: member.added_at,
        added_by: member.added_by.to_string(),
        via: member.via,
    }
}

pub(crate) fn audit_entry(event: AuditEvent) -> AuditEntry {
    AuditEntry {
        at: event.at,
        actor: event.actor,
        action: event.action,
        subject: event.subject,
        detail: event.detail,
    }
}

/// A join request as it stands at `now`: a pending one past its expiry shows as expired,
/// whether or not a sweep has marked it yet.
pub(crate) fn request_info(record: JoinRecord, now: u64) -> JoinRequestInfo {
    JoinRequestInfo {
        state: api_state(record.state_at(now)),
        id: record.id,
        requester: record.requester.to_string(),
        source: record.source,
        attributes: record.attributes,
        lifetime: record.lifetime,
        note: record.note,
        code: record.code,
        created_at: record.created_at,
        expires_at: record.expires_at,
        decided_at: record.decided_at,
        decided_by: record.decided_by,
        reason: record.reason,
        granted_attributes: record.granted_attributes,
        granted_lifetime: record.granted_lifetime,
    }
}

/// A stored state as the API shows it.
fn api_state(state: JoinState) -> api::JoinState {
    match state {
        JoinState::Pending => api::JoinState::Pending,
        JoinState::Approved => api::JoinState::Approved,
        JoinState::Denied => api::JoinState::Denied,
        JoinState::Expired => api::JoinState::Expired,
    }
}

pub(crate) fn rule_info(rule: RuleRecord) -> AutoApproveRule {
    AutoApproveRule {
        id: rule.id,
        netblock: rule.netblock,
        attributes: rule.attributes,
        max_credential_lifetime: rule.max_credential_lifetime,
        created_at: rule.created_at,
        created_by: rule.created_by.to_string(),
        expires_at: rule.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_states_show_as_the_api_states_of_the_same_name() {
        for state in [
            JoinState::Pending,
            JoinState::Approved,
            JoinState::Denied,
            JoinState::Expired,
        ] {
            assert_eq!(api_state(state).as_str(), state.as_str());
        }
    }
}
