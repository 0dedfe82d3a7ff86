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
/// The service that takes join requests (anyone with a channel) and decides them (admins
/// and enrollers).
pub const JOIN_SERVICE: &str = "join_requests";

/// The service that serves the revocation feed (anyone with a channel): DESIGN §5.
pub const REVOCATION_SERVICE: &str = "revocations";

/// The attribute an authority adds to every credential: the project's id.
pub const PROJECT_ID_ATTRIBUTE: &str = "project_id";
/// The attribute that makes a member an enroller.
pub const ROLE_ATTRIBUTE: &str = "ockam-role";
/// The value of [`ROLE_ATTRIBUTE`] for enrollers.
pub const ENROLLER_ROLE: &str = "enroller";
/// The attribute naming the relay a member may create.
pub const RELAY_ATTRIBUTE: &str = "ockam-relay";

/// 25 s: the longest the revocation service holds a follower's request waiting for a new
/// statement; well under the idle timeout of the channel it arrives on.
pub const MAX_REVOCATION_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

/// The request to [`REVOCATION_SERVICE`]: the statements after `after`, waiting up to
/// `wait_ms` (at most [`MAX_REVOCATION_WAIT`]) for one if there are none yet; answered
/// with [`RevocationsPage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationsRequest {
    /// The highest sequence number the follower has.
    pub after: u64,
    /// How long to wait for a new statement, milliseconds.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A page of the revocation feed, signed by the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationsPage {
    /// Hex of the signed statements (`SignedRevocations::encode`), in sequence order; at
    /// most one list page of them.
    pub revocations: String,
    /// The highest sequence number in the feed when the page was read: more follow if it
    /// is past the page's last.
    pub head: u64,
}

/// 64 KiB: the largest request any service reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// 200 rows: the most one page of a list holds. A member or a join request is at most a
/// few KiB even with the longest attributes allowed (attribute names and values are capped,
/// and so is their number), so a page stays well inside what one secure-channel message
/// carries (about 230 KiB), and 10,000 rows take 50 round trips.
pub const MAX_PAGE: u32 = 200;

/// One page of a list, and where the next starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The cursor to ask for the next page with; `None` on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

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
    /// List tickets, a page at a time, oldest first; answered with `Page<TicketInfo>`. A
    /// struct variant, not a unit one: serde ignores unknown fields after the tag of a unit
    /// variant, even with `deny_unknown_fields`; on `{}` it refuses them. On the wire it is
    /// `{"op": "list"}` for the first page.
    List {
        /// Start after this cursor (a previous page's `next`); from the first without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (and at most [`MAX_PAGE`]); [`MAX_PAGE`] without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
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
    /// If the caller is a member already, replace its attributes with the ticket's instead
    /// of adding the ticket's to them. Absent (older clients) is `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replace: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
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
        f.debug_struct("RedeemRequest")
            .field("code", &"…")
            .field("replace", &self.replace)
            .finish()
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
    /// At enrollment, if the caller was a member already: its attributes before (without
    /// the project id). Absent for a new member and in other answers, so that older peers
    /// still parse those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<BTreeMap<String, String>>,
    /// At enrollment: this repeated a redemption whose answer was lost; no use of the
    /// ticket was taken. Absent when `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retried: bool,
}

/// The request to [`CREDENTIAL_SERVICE`]; answered with [`Enrolled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {}

/// Requests to [`MEMBERS_SERVICE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MembersRequest {
    /// Members, a page at a time in the order they were added; answered with
    /// `Page<MemberInfo>`. `{}` (all fields optional) so that unknown fields are refused
    /// (see [`TicketRequest::List`]).
    List {
        /// Start after this cursor (a previous page's `next`); from the first without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (and at most [`MAX_PAGE`]); [`MAX_PAGE`] without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
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
    /// Change a member's attributes (admins; enrollers, except [`ROLE_ATTRIBUTE`]): set
    /// those in `set`, then remove those named in `remove`. Answered with [`MemberChange`].
    Update {
        /// Its identifier.
        identifier: String,
        /// Attributes to add or change.
        #[serde(default)]
        set: BTreeMap<String, String>,
        /// Names of attributes to remove; one it does not have is ignored.
        #[serde(default)]
        remove: Vec<String>,
    },
}

/// A member before and after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    /// As it was.
    pub before: MemberInfo,
    /// As it is now.
    pub after: MemberInfo,
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

/// The request to [`AUDIT_SERVICE`]: a page of the log, newest first; answered with
/// `Page<AuditEntry>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// At most this many entries (and at most [`MAX_PAGE`] per page).
    pub limit: u32,
    /// Older than this cursor (a previous page's `next`); from the newest without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
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

/// Calls to [`JOIN_SERVICE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum JoinCall {
    /// Ask to become a member (anyone); answered with [`JoinRequestInfo`]. Filing again while
    /// a request of ours is pending updates that request (same id) instead of adding one.
    File {
        /// The attributes asked for.
        attributes: BTreeMap<String, String>,
        /// The credential lifetime asked for, seconds; `None`: the authority's default.
        lifetime: Option<u64>,
        /// Free text for the admin (at most [`MAX_JOIN_NOTE`] bytes).
        note: String,
    },
    /// Wait for a decision on our request `id` (the requester only); answered with
    /// [`JoinWaited`] once it is decided, or after at most [`JOIN_WAIT_HOLD`] with the
    /// request still pending.
    Wait {
        /// The request's id.
        id: String,
    },
    /// Requests (admins and enrollers): pending ones, or all with `all`, a page at a time,
    /// oldest first; answered with `Page<JoinRequestInfo>`.
    List {
        /// Decided and expired ones too.
        all: bool,
        /// Start after this cursor (a previous page's `next`); from the first without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// At most this many (and at most [`MAX_PAGE`]); [`MAX_PAGE`] without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// One request (admins and enrollers); answered with [`JoinRequestInfo`].
    Show {
        /// Its id.
        id: String,
    },
    /// Approve a pending request (admins and enrollers); answered with [`JoinRequestInfo`].
    Approve {
        /// Its id.
        id: String,
        /// The verification code the admin compared with the requester's.
        code: String,
        /// Narrow the attributes to these (each asked for); `None`: as asked.
        attributes: Option<BTreeMap<String, String>>,
        /// Narrow the credential lifetime to this many seconds; `None`: as asked.
        lifetime: Option<u64>,
    },
    /// Deny a pending request (admins and enrollers); answered with [`JoinRequestInfo`].
    Deny {
        /// Its id.
        id: String,
        /// Told to the requester.
        reason: String,
    },
    /// Deny every pending request `select` picks, at once (admins and enrollers): one
    /// decision, audited once, to clear a flood of requests. Answered with
    /// [`PendingDenied`].
    DenyPending {
        /// Which pending requests.
        select: PendingSelector,
        /// Told to each requester, and recorded; must not be blank.
        reason: String,
    },
    /// Add an auto-approval rule (admins and enrollers); answered with [`RuleAdded`].
    AddRule {
        /// Requests from this netblock (CIDR, e.g. `10.0.0.0/8`)…
        netblock: String,
        /// …that ask only for attributes among these…
        attributes: BTreeMap<String, String>,
        /// …get at most this credential lifetime, seconds; `None`: the authority's default.
        max_credential_lifetime: Option<u64>,
        /// The rule itself lasts this many seconds.
        lifetime: u64,
    },
    /// The rules in force (admins and enrollers); answered with `Vec<AutoApproveRule>`.
    ListRules {},
    /// Delete a rule (admins and enrollers); answered with [`AutoApproveRule`].
    DeleteRule {
        /// Its id.
        id: String,
    },
}

/// 1 KiB: the longest note a join request carries.
pub const MAX_JOIN_NOTE: usize = 1024;

/// 10 s: the longest a [`JoinCall::Wait`] is held before it is answered "still pending";
/// the requester then asks again. Bounds how long an answer can be lost in a dead channel.
pub const JOIN_WAIT_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a join request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinState {
    /// Waiting for a decision.
    Pending,
    /// Approved: the requester is a member.
    Approved,
    /// Denied.
    Denied,
    /// Not decided in time.
    Expired,
}

impl JoinState {
    /// `pending`, `approved`, `denied` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinState::Pending => "pending",
            JoinState::Approved => "approved",
            JoinState::Denied => "denied",
            JoinState::Expired => "expired",
        }
    }
}

/// A join request as the authority shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequestInfo {
    /// Short id, e.g. `4KQ7-ZP2M`.
    pub id: String,
    /// Who asks: the identifier its channel authenticated.
    pub requester: String,
    /// The IP address its request came from, or `unknown`.
    pub source: String,
    /// The attributes asked for.
    pub attributes: BTreeMap<String, String>,
    /// The credential lifetime asked for, seconds.
    pub lifetime: u64,
    /// The requester's note.
    pub note: String,
    /// The verification code of the channel it was filed through (see [`join_code`]).
    pub code: String,
    /// Unix seconds.
    pub created_at: u64,
    /// When it expires if undecided, Unix seconds.
    pub expires_at: u64,
    /// Where it stands.
    pub state: JoinState,
    /// When it was decided (or expired).
    pub decided_at: Option<u64>,
    /// Who decided it: an identifier, plus ` (auto-approve rule ID)` for a rule.
    pub decided_by: Option<String>,
    /// Why it was denied.
    pub reason: Option<String>,
    /// The attributes granted, if approved.
    pub granted_attributes: Option<BTreeMap<String, String>>,
    /// The credential lifetime granted, seconds, if approved.
    pub granted_lifetime: Option<u64>,
}

/// The answer to [`JoinCall::Wait`]: the request, and once it is approved, the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinWaited {
    /// The request as it stands.
    pub request: JoinRequestInfo,
    /// The requester's credential, when the request is approved.
    pub credential: Option<Enrolled>,
}

/// An auto-approval rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApproveRule {
    /// Short id.
    pub id: String,
    /// The netblock, as CIDR.
    pub netblock: String,
    /// The attributes a request may ask for and be approved.
    pub attributes: BTreeMap<String, String>,
    /// The longest credential lifetime granted, seconds.
    pub max_credential_lifetime: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// Who added it.
    pub created_by: String,
    /// When it stops applying, Unix seconds.
    pub expires_at: u64,
}

/// Which pending join requests a [`JoinCall::DenyPending`] denies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PendingSelector {
    /// Those filed from an address in this netblock: CIDR (`10.0.0.0/8`, `2001:db8::/32`)
    /// or a single address. On the wire `{"from": "10.0.0.0/8"}`.
    From(String),
    /// Every one. On the wire `"all"`.
    All,
}

/// 10,000 requests: the most one [`JoinCall::DenyPending`] denies (the oldest first), so
/// that its answer, which lists them, fits in one channel message (about 12 bytes an id).
/// More than the authority keeps pending by default; past it, the answer says `more`.
pub const MAX_BULK_DENY: usize = 10_000;

/// The answer to [`JoinCall::DenyPending`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingDenied {
    /// How many were denied.
    pub denied: u32,
    /// Their ids, oldest first.
    pub ids: Vec<String>,
    /// Which requests were picked: the netblock as CIDR, or `all`.
    pub selector: String,
    /// The reason the requesters were told.
    pub reason: String,
    /// Whether more pending requests match than [`MAX_BULK_DENY`]: deny again for them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
}

/// The answer to [`JoinCall::AddRule`]: the rule, and the pending requests it approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleAdded {
    /// The rule.
    pub rule: AutoApproveRule,
    /// Ids of the pending requests it approved at once.
    pub approved: Vec<String>,
}

const JOIN_CODE_TAG: &[u8] = b"kith/join-request-code/1\0";

/// The verification code of join request `id`, filed by `requester` through the channel
/// whose handshake hash is `handshake_hash`, asking for `attributes` and `lifetime`
/// seconds: `1234-5678`. Both ends compute it from what they saw; a man in the middle runs
/// two channels with two handshake hashes, so the requester and the admin see different
/// codes. Eight digits: a middleman would have to grind handshakes, within one handshake
/// timeout, to one in 10^8.
pub fn join_code(
    handshake_hash: &[u8; 32],
    id: &str,
    requester: &str,
    attributes: &BTreeMap<String, String>,
    lifetime: u64,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(JOIN_CODE_TAG);
    h.update(handshake_hash);
    for part in [id, requester] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update((attributes.len() as u64).to_be_bytes());
    for (k, v) in attributes {
        for part in [k, v] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    h.update(lifetime.to_be_bytes());
    kith_identity::channel::code_of_digest(&h.finalize().into())
}

/// Whether two verification codes are equal, in time independent of where they differ.
/// Dashes and spaces are ignored, so `12345678` matches `1234-5678`.
pub fn codes_match(given: &str, expected: &str) -> bool {
    let digits = |s: &str| -> Vec<u8> { s.bytes().filter(|b| *b != b'-' && *b != b' ').collect() };
    kith_identity::channel::constant_time_eq(&digits(given), &digits(expected))
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
    /// Too many join requests are pending (from this address, or in all).
    TooManyRequests,
    /// The join request was decided already, or has expired.
    RequestClosed,
    /// The verification code given does not match the request's.
    WrongCode,
    /// The authority failed; try again.
    Internal,
    /// The authority is busy (too many requests at once, or the store is contended); the
    /// same request may succeed in a moment.
    Busy,
    /// Too many wrong codes (one-time codes at enrollment, verification codes at approval)
    /// from this identity or address: wait [`ApiError::retry_after`] seconds before the
    /// next attempt. An attempt before then is refused again, and lengthens the wait.
    Throttled,
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
    /// For [`ErrorKind::Throttled`]: seconds to wait before trying again. Absent from every
    /// other refusal, so that they read as before to older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An [`ErrorKind::Throttled`] refusal saying `message`: try again in `retry_after`
    /// seconds.
    pub fn throttled(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            kind: ErrorKind::Throttled,
            message: message.into(),
            retry_after: Some(retry_after),
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

/// Encode a request or reply. The API's own types always encode; a value that does not (a
/// map with keys that are not text, say) is an error for the caller to answer, never an
/// empty message.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
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
        let bytes = encode(&r).unwrap();
        assert_eq!(decode_request::<TicketRequest>(&bytes).unwrap(), r);
        let e = decode_request::<TicketRequest>(br#"{"op":"list","x":1}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = decode_request::<RedeemRequest>(&vec![b' '; MAX_REQUEST + 1]).unwrap_err();
        assert!(e.message.contains("at most"));
        let reply: Vec<u8> = encode(&Reply::<CreatedTicket>::Error(ApiError::new(
            ErrorKind::Forbidden,
            "no",
        )))
        .unwrap();
        assert_eq!(
            decode_reply::<CreatedTicket>(&reply).unwrap_err().kind,
            ErrorKind::Forbidden
        );
    }

    #[test]
    fn only_a_throttled_refusal_carries_a_retry_after() {
        let plain = encode(&Reply::<()>::Error(ApiError::new(
            ErrorKind::WrongCode,
            "no",
        )))
        .unwrap();
        assert_eq!(
            plain,
            br#"{"error":{"kind":"wrong_code","message":"no"}}"#.to_vec()
        );
        let throttled = ApiError::throttled("too many failed attempts; retry after 4s", 4);
        let wire = encode(&Reply::<()>::Error(throttled.clone())).unwrap();
        assert_eq!(
            String::from_utf8(wire.clone()).unwrap(),
            r#"{"error":{"kind":"throttled","message":"too many failed attempts; retry after 4s","retry_after":4}}"#
        );
        assert_eq!(decode_reply::<PendingDenied>(&wire).unwrap_err(), throttled);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request::<TicketRequest>(&bytes);
            let _ = decode_request::<MembersRequest>(&bytes);
            let _ = decode_request::<RedeemRequest>(&bytes);
            let _ = decode_reply::<Enrolled>(&bytes);
            let _ = decode_request::<JoinCall>(&bytes);
            let _ = decode_reply::<JoinWaited>(&bytes);
            let _ = decode_reply::<PendingDenied>(&bytes);
        }

        #[test]
        fn join_codes_depend_on_every_input(hh in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
            let attrs: BTreeMap<String, String> = [("component".to_owned(), "worker".to_owned())].into();
            let code = join_code(&hh, "4KQ7-ZP2M", "I00", &attrs, 600);
            prop_assert_eq!(code.len(), 9);
            prop_assert!(codes_match(&code, &code.replace('-', "")));
            if hh != other {
                // 1 in 10^8 chance of a clash; proptest's few hundred cases never hit it.
                prop_assert_ne!(&code, &join_code(&other, "4KQ7-ZP2M", "I00", &attrs, 600));
            }
            prop_assert_ne!(&code, &join_code(&hh, "4KQ7-ZP2N", "I00", &attrs, 600));
            prop_assert_ne!(&code, &join_code(&hh, "4KQ7-ZP2M", "I00", &attrs, 601));
            prop_assert_ne!(&code, &join_code(&hh, "4KQ7-ZP2M", "I00", &BTreeMap::new(), 600));
            prop_assert!(!codes_match(&code, "0000-000"));
        }
    }
}
