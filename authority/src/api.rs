//! What the authority's services accept and answer, over secure channels (DESIGN §5).
//!
//! Every request and reply is one JSON document in one channel message. Requests are parsed
//! strictly (unknown fields and oversized payloads refused); every reply is either
//! `{"ok": …}` or `{"error": {"kind": …, "message": …}}`, so a refusal is always an answer
//! that says why, never a timeout. Messages to the peer are coarse; the authority logs the
//! detail.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The service that creates, lists and revokes tickets (admins and enrollers).
pub const TICKET_SERVICE: &str = "enrollment_token_issuer";
/// The service that redeems a ticket's one-time code (anyone with a channel).
pub const ACCEPTOR_SERVICE: &str = "enrollment_token_acceptor";
/// The service that issues a member a fresh credential (members).
pub const CREDENTIAL_SERVICE: &str = "credential_issuer";
/// The service that lists, shows, adds and deletes members (admins; enrollers read).
pub const MEMBERS_SERVICE: &str = "members";
/// The service that reads the audit log (admins).
pub const AUDIT_SERVICE: &str = "audit";

/// The attribute an authority adds to every credential: the project's id.
pub const PROJECT_ID_ATTRIBUTE: &str = "project_id";
/// The attribute that makes a member an enroller.
pub const ROLE_ATTRIBUTE: &str = "ockam-role";
/// The value of [`ROLE_ATTRIBUTE`] for enrollers.
pub const ENROLLER_ROLE: &str = "enroller";
/// The attribute naming the relay a member may create.
pub const RELAY_ATTRIBUTE: &str = "ockam-relay";

/// 64 KiB: the largest request any service reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Requests to [`TICKET_SERVICE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TicketRequest {
    /// Create a ticket; answered with [`CreatedTicket`].
    Create {
        /// Attributes the member will get.
        attributes: BTreeMap<String, String>,
        /// Seconds until the ticket expires.
        expires_in: u64,
        /// How many identities it may enroll.
        usage_count: u32,
    },
    /// List tickets; answered with `Vec<TicketInfo>`. A struct variant, not a unit one:
    /// serde ignores unknown fields after the tag of a unit variant, even with
    /// `deny_unknown_fields`; on `{}` it refuses them. On the wire it is `{"op": "list"}`.
    List {},
    /// Revoke a ticket by id; answered with [`TicketInfo`].
    Revoke {
        /// The ticket's id.
        id: String,
    },
}

/// A new ticket: the only time its one-time code leaves the authority.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatedTicket {
    /// Non-secret id, for `ticket list|revoke`.
    pub id: String,
    /// The one-time code, 64 hex digits.
    pub code: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// How many identities it may enroll.
    pub usage_count: u32,
    /// What members enrolled with it get.
    pub attributes: BTreeMap<String, String>,
}

/// A ticket as the authority lists it (no code, no hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketInfo {
    /// Non-secret id.
    pub id: String,
    /// What members enrolled with it get.
    pub attributes: BTreeMap<String, String>,
    /// How many identities it may enroll in all.
    pub usage_count: u32,
    /// How many more.
    pub uses_left: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// The request to [`ACCEPTOR_SERVICE`]; answered with [`Enrolled`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    /// The ticket's one-time code, 64 hex digits.
    pub code: String,
}

impl std::fmt::Debug for CreatedTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedTicket")
            .field("id", &self.id)
            .field("code", &"…")
            .field("expires_at", &self.expires_at)
            .field("usage_count", &self.usage_count)
            .field("attributes", &self.attributes)
            .finish()
    }
}

impl std::fmt::Debug for RedeemRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemRequest").field("code", &"…").finish()
    }
}

/// Membership granted: the first credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// The credential (hex of `CredentialAndPurposeKey::encode`).
    pub credential: String,
    /// The member's attributes (as in the credential).
    pub attributes: BTreeMap<String, String>,
    /// When the credential expires, Unix seconds.
    pub expires_at: u64,
}

/// The request to [`CREDENTIAL_SERVICE`]; answered with [`Enrolled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {}

/// Requests to [`MEMBERS_SERVICE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MembersRequest {
    /// Every member; answered with `Vec<MemberInfo>`. `{}` so that unknown fields are
    /// refused (see [`TicketRequest::List`]).
    List {},
    /// One member; answered with [`MemberInfo`].
    Show {
        /// Its identifier.
        identifier: String,
    },
    /// Add (or update) a member (admins); answered with [`MemberInfo`].
    Add {
        /// Its identifier.
        identifier: String,
        /// Its attributes.
        attributes: BTreeMap<String, String>,
    },
    /// Delete a member (admins); answered with [`MemberInfo`].
    Delete {
        /// Its identifier.
        identifier: String,
    },
}

/// A member as the authority lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInfo {
    /// Its identifier.
    pub identifier: String,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// Unix seconds.
    pub added_at: u64,
    /// Who added it.
    pub added_by: String,
    /// How: `ticket:ID`, `admin`, ….
    pub via: String,
}

/// The request to [`AUDIT_SERVICE`]; answered with `Vec<AuditEntry>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// At most this many of the newest entries.
    pub limit: u32,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    /// Who did it (an identifier).
    pub actor: String,
    /// What, e.g. `ticket.created`.
    pub action: String,
    /// To what (a ticket id, an identifier).
    pub subject: String,
    /// More, never secrets.
    pub detail: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request does not parse or is not acceptable.
    BadRequest,
    /// The caller may not do this.
    Forbidden,
    /// No such ticket or member.
    NotFound,
    /// The caller is not a member (for credentials).
    NotMember,
    /// No ticket has this code.
    TicketUnknown,
    /// The ticket has expired.
    TicketExpired,
    /// The ticket was revoked.
    TicketRevoked,
    /// The ticket has enrolled as many identities as it may.
    TicketUsedUp,
    /// The authority failed; try again.
    Internal,
}

/// A refusal: a kind for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of refusal.
    pub kind: ErrorKind,
    /// What to tell the user.
    pub message: String,
}

impl ApiError {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A reply on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply<T> {
    /// Success.
    Ok(T),
    /// Refusal.
    Error(ApiError),
}

/// Encode a request or reply.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these types (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decode a request, refusing oversized or malformed input with a [`ErrorKind::BadRequest`].
pub fn decode_request<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.len() > MAX_REQUEST {
        return Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("request of {} bytes; at most {MAX_REQUEST}", bytes.len()),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorKind::BadRequest, format!("malformed request: {e}")))
}

/// Decode a reply into the result it carries.
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice::<Reply<T>>(bytes) {
        Ok(Reply::Ok(v)) => Ok(v),
        Ok(Reply::Error(e)) => Err(e),
        Err(e) => Err(ApiError::new(
            ErrorKind::Internal,
            format!("the authority's answer does not parse: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = TicketRequest::Create {
            attributes: [("a".to_owned(), "b".to_owned())].into(),
            expires_in: 600,
            usage_count: 1,
        };
        let bytes = encode(&r);
        assert_eq!(decode_request::<TicketRequest>(&bytes).unwrap(), r);
        let e = decode_request::<TicketRequest>(br#"{"op":"list","x":1}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = decode_request::<RedeemRequest>(&vec![b' '; MAX_REQUEST + 1]).unwrap_err();
        assert!(e.message.contains("at most"));
        let reply: Vec<u8> = encode(&Reply::<CreatedTicket>::Error(ApiError::new(
            ErrorKind::Forbidden,
            "no",
        )));
        assert_eq!(
            decode_reply::<CreatedTicket>(&reply).unwrap_err().kind,
            ErrorKind::Forbidden
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request::<TicketRequest>(&bytes);
            let _ = decode_request::<MembersRequest>(&bytes);
            let _ = decode_request::<RedeemRequest>(&bytes);
            let _ = decode_reply::<Enrolled>(&bytes);
        }
    }
}
