//! Answers and refusals, shared by every service: the successful answers as the API types
//! each request promises, their encoding on the wire, the coarse refusals a peer is given
//! (the detail goes to our log), and sending an answer back along its request's route.

use std::time::Duration;

use kith_node::{DisplayChain, Message, Node, Route};
use serde::Serialize;
use tracing::{debug, warn};

use crate::api::{
    self, ApiError, AuditEntry, AutoApproveRule, CreatedTicket, Enrolled, ErrorKind,
    JoinRequestInfo, JoinWaited, MemberChange, MemberInfo, Page, PendingDenied, Reply,
    RevocationsPage, RuleAdded, TicketInfo,
};
use crate::store::{PageKey, StoreError};

/// Refusal messages shared by several services. Coarse on purpose: our log has the detail.
pub(crate) const BUSY: &str = "the authority is busy; try again in a moment";
pub(crate) const INTERNAL: &str = "the authority could not complete the request; try again later";

/// Every kind of successful answer, encoded as the API type each request promises.
pub(crate) enum Answer {
    CreatedTicket(CreatedTicket),
    Tickets(Page<TicketInfo>),
    Ticket(TicketInfo),
    Enrolled(Enrolled),
    Members(Page<MemberInfo>),
    Member(MemberInfo),
    MemberChange(MemberChange),
    Audit(Page<AuditEntry>),
    JoinRequest(JoinRequestInfo),
    JoinRequests(Page<JoinRequestInfo>),
    JoinWaited(Box<JoinWaited>),
    Rule(AutoApproveRule),
    Rules(Vec<AutoApproveRule>),
    RuleAdded(RuleAdded),
    Revocations(RevocationsPage),
    PendingDenied(PendingDenied),
}

impl Answer {
    pub(crate) fn encode(self) -> Vec<u8> {
        match self {
            Answer::CreatedTicket(v) => encode_result::<_>(Ok(v)),
            Answer::Tickets(v) => encode_result::<_>(Ok(v)),
            Answer::Ticket(v) => encode_result::<_>(Ok(v)),
            Answer::Enrolled(v) => encode_result::<_>(Ok(v)),
            Answer::Members(v) => encode_result::<_>(Ok(v)),
            Answer::Member(v) => encode_result::<_>(Ok(v)),
            Answer::MemberChange(v) => encode_result::<_>(Ok(v)),
            Answer::Audit(v) => encode_result::<_>(Ok(v)),
            Answer::JoinRequest(v) => encode_result::<_>(Ok(v)),
            Answer::JoinRequests(v) => encode_result::<_>(Ok(v)),
            Answer::JoinWaited(v) => encode_result::<_>(Ok(v)),
            Answer::Rule(v) => encode_result::<_>(Ok(v)),
            Answer::Rules(v) => encode_result::<_>(Ok(v)),
            Answer::RuleAdded(v) => encode_result::<_>(Ok(v)),
            Answer::Revocations(v) => encode_result::<_>(Ok(v)),
            Answer::PendingDenied(v) => encode_result::<_>(Ok(v)),
        }
    }
}

/// 10 s, as long as a secure channel handshake may take: how long an answer may wait to be
/// handed on (to a channel whose peer stopped reading, say) before it is dropped, so a
/// stuck peer cannot hold the request's task, and its share of the requests in flight.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Send an answer back along the route the request came by (through its secure channel),
/// waiting at most [`REPLY_TIMEOUT`] for the route to take it.
pub(crate) async fn send_reply(node: &Node, reply_to: Route, from: Route, reply: Vec<u8>) {
    let message = Message::new(reply_to, from, reply);
    match tokio::time::timeout(REPLY_TIMEOUT, node.route(message)).await {
        Ok(Ok(())) => {}
        // The channel closed while we worked; the node has counted the drop.
        Ok(Err(error)) => {
            debug!(error = %DisplayChain(&error), "could not send an authority answer")
        }
        Err(_) => warn!(
            after = ?REPLY_TIMEOUT,
            "an authority answer was not taken on its way back in time; dropped it"
        ),
    }
}

/// The reply on the wire for `result`. An answer that does not encode is logged and
/// answered with [`internal`], so the caller learns the request failed instead of waiting
/// on a reply it cannot read.
/// A list request's cursor and page size, checked: the page starts after the row the
/// cursor names, and holds at most [`api::MAX_PAGE`] rows.
pub(crate) fn page_request(
    after: Option<&str>,
    limit: Option<u32>,
) -> Result<(Option<PageKey>, u32), ApiError> {
    let after = match after {
        None => None,
        Some(cursor) => Some(PageKey::from_cursor(cursor).ok_or_else(|| {
            ApiError::new(
                ErrorKind::BadRequest,
                "the page cursor is not one this authority handed out; start the list again",
            )
        })?),
    };
    let limit = limit.unwrap_or(api::MAX_PAGE).clamp(1, api::MAX_PAGE);
    Ok((after, limit))
}

/// The cursor of the page after `rows`, if the page is full (there may be more).
pub(crate) fn full_page<T>(rows: &[T], limit: u32, key: impl Fn(&T) -> PageKey) -> Option<String> {
    let full = u32::try_from(rows.len()).is_ok_and(|n| n >= limit);
    if full {
        rows.last().map(|r| key(r).to_cursor())
    } else {
        None
    }
}

pub(crate) fn encode_result<T: Serialize>(result: Result<T, ApiError>) -> Vec<u8> {
    let encoded = match result {
        Ok(value) => api::encode(&Reply::Ok(value)),
        Err(refusal) => api::encode(&Reply::<()>::Error(refusal)),
    };
    encoded.unwrap_or_else(|error| {
        warn!(error = %DisplayChain(&error), "an authority answer does not encode; answering with an internal error");
        api::encode(&Reply::<()>::Error(internal())).unwrap_or_else(|_| INTERNAL_REPLY.to_vec())
    })
}

/// [`internal`] as it is on the wire, for when even that does not encode (it always does: a
/// kind and a fixed text). A test keeps the two the same.
const INTERNAL_REPLY: &[u8] = br#"{"error":{"kind":"internal","message":"the authority could not complete the request; try again later"}}"#;

pub(crate) fn forbidden(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Forbidden, message)
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, message)
}

/// The answer when the authority itself failed; our log says how.
pub(crate) fn internal() -> ApiError {
    ApiError::new(ErrorKind::Internal, INTERNAL)
}

/// The answer past a cap on work in flight.
pub(crate) fn busy() -> ApiError {
    ApiError::new(ErrorKind::Busy, BUSY)
}

/// Log a store failure in full and give the peer a coarse answer.
pub(crate) fn store_failed(what: &str, error: &StoreError) -> ApiError {
    warn!(error = %DisplayChain(error), "{what}: the membership store failed");
    match error {
        StoreError::Busy { .. } => busy(),
        _ => internal(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_answer_that_does_not_encode_is_answered_with_an_internal_error() {
        // JSON maps need text keys: this answer cannot be encoded.
        let answer: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let reply = encode_result(Ok(answer));
        assert!(!reply.is_empty());
        let refusal = api::decode_reply::<BTreeMap<String, u8>>(&reply).unwrap_err();
        assert_eq!(refusal, internal());
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_nobody_takes_is_dropped_after_the_reply_timeout() {
        let node = Node::new("authority");
        let full = node
            .register_mailbox(
                [kith_node::Address::local("requester")],
                std::sync::Arc::new(kith_node::AllowAll),
            )
            .unwrap();
        let to = || Route::from(kith_node::Address::local("requester"));
        for _ in 0..kith_node::MAILBOX_CAPACITY {
            node.try_route(Message::new(to(), Route::new(), "queued"))
                .unwrap();
        }
        let started = tokio::time::Instant::now();
        let sent = tokio::time::timeout(
            REPLY_TIMEOUT * 2,
            send_reply(&node, to(), Route::new(), b"answer".to_vec()),
        )
        .await;
        assert!(sent.is_ok(), "the answer waited past twice its timeout");
        assert!(started.elapsed() >= REPLY_TIMEOUT);
        drop(full);
    }

    #[test]
    fn the_fixed_internal_reply_is_what_internal_encodes_to() {
        assert_eq!(
            api::encode(&Reply::<()>::Error(internal())).unwrap(),
            INTERNAL_REPLY
        );
    }
}
