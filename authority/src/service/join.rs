//! Join requests (DESIGN §5): a node without a ticket asks to become a member and waits
//! until an admin or enroller approves it out of band — HTCondor's token-request workflow,
//! made safe against a man in the middle and durable across restarts.
//!
//! - **Filing** (anyone with a channel): the request is stored with the requester's
//!   identifier (authenticated by the channel), the IP address the channel's handshake came
//!   from, and a verification code derived from the channel's handshake hash and the
//!   request ([`join_code`]). The requester computes the same code from its end; a man in
//!   the middle runs two channels with two handshake hashes, so the two codes differ and an
//!   admin comparing them out of band sees it. Filing again while a request is pending
//!   updates that request (same id, the new channel's code): one pending request per
//!   requester identity.
//! - **Bounds**: pending requests expire after [`JoinSettings::request_ttl`]; at most
//!   [`JoinSettings::max_pending_per_source`] pending per source address and
//!   [`JoinSettings::max_pending`] in all, expired ones not counted (the store checks and
//!   inserts in one transaction). A requester waits with [`JoinCall::Wait`], held here for
//!   at most [`JOIN_WAIT_HOLD`], at most [`MAX_WAITS_PER_REQUESTER`] at once per identity and
//!   [`MAX_WAITERS`] in all: polling costs a requester one answer per hold, however fast it
//!   asks.
//! - **Deciding** (admins and enrollers): approval checks the code in constant time, may
//!   narrow the attributes and the lifetime but never widen them, and makes the requester a
//!   member in the same transaction; an enroller cannot approve `ockam-role=enroller`.
//!   Auto-approval rules approve requests from a netblock that ask only for attributes the
//!   rule allows; adding a rule re-checks the pending requests. Every decision and expiry
//!   is in the audit log (the store writes it with the change). A wrong verification code
//!   counts as a guess against the approver's identity and address (`throttle`).
//! - **Clearing a flood**: requests filed from many addresses can fill the global cap.
//!   [`JoinCall::DenyPending`] denies every pending request from a netblock, or all of
//!   them, in one transaction, audited once as one decision; each requester waiting is told
//!   the reason, as by a single denial.
//! - **Durability**: everything is in the membership store, so a restarted authority knows
//!   every request; a waiting requester reconnects and waits again with the same id.
//!
//! Decisions wake the waiters of this process at once; waiters on another authority
//! process sharing the PostgreSQL database learn of a decision at their next hold.
//!
//! [`join_code`]: crate::api::join_code
//! [`JoinCall::Wait`]: crate::api::JoinCall::Wait
//! [`JoinCall::DenyPending`]: crate::api::JoinCall::DenyPending
//! [`JOIN_WAIT_HOLD`]: crate::api::JOIN_WAIT_HOLD

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::time::Duration;

use ipnet::IpNet;
use kith_identity::Identifier;
use kith_node::Node;
use rand::Rng;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::{info, warn};

use super::answer::{
    Answer, bad_request, busy, forbidden, full_page, internal, page_request, store_failed,
};
use super::checks::{check_member_attributes, grants_enroller};
use super::state::Authority;
use super::throttle::GuessKind;
use super::wire::{request_info, rule_info};
use crate::api::{
    self, ApiError, ErrorKind, JOIN_WAIT_HOLD, JoinCall, JoinRequestInfo, JoinWaited,
    MAX_BULK_DENY, MAX_JOIN_NOTE, Page, PendingDenied, PendingSelector, RuleAdded,
};
use crate::store::{
    DecideError, Decision, FileError, JoinLimits, JoinRecord, JoinState, NewJoinRequest, PageKey,
    RuleRecord,
};

pub use super::config::JoinSettings;
pub use super::waiters::{MAX_WAITERS, MAX_WAITS_PER_REQUESTER};

/// 15 s: how often pending requests past their expiry are marked expired (and audited),
/// and their waiters told. Filing sweeps too, so caps never count an expired request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// 3 attempts: how often a fresh random id is tried when the one drawn is taken (40 bits;
/// a clash means something else is wrong).
const ID_ATTEMPTS: usize = 3;

/// 365 days: the longest an auto-approval rule may last.
const MAX_RULE_LIFETIME: u64 = 365 * 24 * 60 * 60;

/// The alphabet of request and rule ids: Crockford's base 32, no I, L, O or U to misread.
const ID_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// What a service knows of the channel a call came through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSeen {
    pub(crate) handshake_hash: [u8; 32],
    pub(crate) source: Option<SocketAddr>,
}

/// A random id: `XXXX-XXXX` in [`ID_ALPHABET`].
fn random_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            id.push('-');
        }
        let c = ID_ALPHABET
            .get(rng.random_range(0..ID_ALPHABET.len()))
            .copied()
            .unwrap_or(b'0');
        id.push(char::from(c));
    }
    id
}

/// An id as typed: upper case, surrounding blanks dropped.
fn normalize_id(id: &str) -> String {
    id.trim().to_ascii_uppercase()
}

/// The source address a request is counted under: the IP (not the port) of the
/// connection its channel's handshake arrived on.
fn source_text(source: Option<SocketAddr>) -> String {
    match source {
        Some(addr) => addr.ip().to_canonical().to_string(),
        None => "unknown".to_owned(),
    }
}

/// Parse a netblock: `10.0.0.0/8`, `2001:db8::/32`, or a single address. Host bits are
/// cleared, so `10.1.2.3/8` is `10.0.0.0/8`.
pub fn parse_netblock(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{:?} is not a netblock; write it as CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32",
        text.chars().take(64).collect::<String>()
    ))
}

/// Whether `rule` approves a request from `source` asking for `attributes`.
fn rule_covers(rule: &RuleRecord, source: &str, attributes: &BTreeMap<String, String>) -> bool {
    let (Ok(net), Ok(ip)) = (parse_netblock(&rule.netblock), source.parse::<IpAddr>()) else {
        return false;
    };
    net.contains(&ip)
        && attributes
            .iter()
            .all(|(k, v)| rule.attributes.get(k) == Some(v))
}

/// Free text from a peer that an admin's terminal will show: bounded, and no control
/// characters (which could rewrite what the terminal displays).
fn check_text(what: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_JOIN_NOTE {
        return Err(bad_request(format!(
            "the {what} is {} bytes; at most {MAX_JOIN_NOTE}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(bad_request(format!(
            "the {what} must not contain control characters"
        )));
    }
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "there is no join request with this id; `kith project requests list --all` shows them",
    )
}

/// The peer's answer to a filing the store refused (`IdTaken`: for the last id tried).
fn file_refusal(error: FileError) -> ApiError {
    match error {
        FileError::PerSource {
            source_address,
            pending,
            max,
        } => {
            warn!(source = %source_address, pending, max, "refused a join request: too many pending from its address");
            ApiError::new(
                ErrorKind::TooManyRequests,
                format!(
                    "{pending} join requests from your address ({source_address}) are waiting for a decision already, the most allowed ({max}); wait until they are decided or expire"
                ),
            )
        }
        FileError::Total { pending, max } => {
            warn!(pending, max, "refused a join request: too many pending");
            ApiError::new(
                ErrorKind::TooManyRequests,
                format!(
                    "the authority has {pending} join requests waiting for a decision, the most it keeps; try again later"
                ),
            )
        }
        FileError::IdTaken { .. } => {
            warn!(
                attempts = ID_ATTEMPTS,
                "every random join request id tried was taken"
            );
            internal()
        }
        FileError::Store(e) => store_failed("filing a join request", &e),
    }
}

/// A credential lifetime asked for, seconds: `None` is `default`, and 0 is refused.
fn lifetime_or(asked: Option<u64>, default: u64) -> Result<u64, ApiError> {
    match asked {
        None => Ok(default),
        Some(0) => Err(bad_request("a credential lifetime of 0 s cannot be used")),
        Some(l) => Ok(l),
    }
}

/// The peer's answer to a decision the store refused.
fn decide_refusal(error: &DecideError) -> ApiError {
    match error {
        DecideError::NotFound => not_found(),
        DecideError::Closed { state } => ApiError::new(
            ErrorKind::RequestClosed,
            format!("this join request is {} already", state.as_str()),
        ),
        DecideError::Expired { expires_at } => ApiError::new(
            ErrorKind::RequestClosed,
            format!(
                "this join request expired (at Unix time {expires_at}) before it was decided; the requester must ask again"
            ),
        ),
        DecideError::CodeChanged => ApiError::new(
            ErrorKind::WrongCode,
            "this join request was filed again meanwhile, with a new verification code; compare the new code with the requester",
        ),
        DecideError::Store(e) => store_failed("deciding a join request", e),
    }
}

/// Join requests.
impl Authority {
    /// The answer to `call`. `permit` is this call's share of the authority's requests in
    /// flight, held until the answer is ready; a wait gives it back while it waits.
    pub(crate) async fn join_call(
        &self,
        caller: &Identifier,
        channel: &ChannelSeen,
        call: JoinCall,
        permit: OwnedSemaphorePermit,
    ) -> Result<Answer, ApiError> {
        const DECIDERS: &str = "only the project's admins and enrollers may list, approve or deny join requests, or manage auto-approval rules";
        match call {
            JoinCall::File {
                attributes,
                lifetime,
                note,
            } => self
                .file(caller, channel, attributes, lifetime, note)
                .await
                .map(Answer::JoinRequest),
            JoinCall::Wait { id } => self.wait(caller, &normalize_id(&id), permit).await,
            JoinCall::List { all, after, limit } => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                let (after, limit) = page_request(after.as_deref(), limit)?;
                let now = self.now();
                let records = self
                    .store()
                    .join_requests_page(all, now, after.as_ref(), limit)
                    .await
                    .map_err(|e| store_failed("listing join requests", &e))?;
                let next = full_page(&records, limit, |r| PageKey {
                    at: r.created_at,
                    key: r.id.clone(),
                });
                Ok(Answer::JoinRequests(Page {
                    items: records.into_iter().map(|r| request_info(r, now)).collect(),
                    next,
                }))
            }
            JoinCall::Show { id } => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                let record = self.request(&normalize_id(&id)).await?;
                Ok(Answer::JoinRequest(request_info(record, self.now())))
            }
            JoinCall::Approve {
                id,
                code,
                attributes,
                lifetime,
            } => {
                let enroller = self.admin_or_enroller(caller, DECIDERS).await?;
                self.approve(
                    caller,
                    channel.source,
                    enroller,
                    &normalize_id(&id),
                    &code,
                    attributes,
                    lifetime,
                )
                .await
                .map(Answer::JoinRequest)
            }
            JoinCall::Deny { id, reason } => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                self.deny(caller, &normalize_id(&id), &reason)
                    .await
                    .map(Answer::JoinRequest)
            }
            JoinCall::DenyPending { select, reason } => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                self.deny_pending(caller, &select, &reason)
                    .await
                    .map(Answer::PendingDenied)
            }
            JoinCall::AddRule {
                netblock,
                attributes,
                max_credential_lifetime,
                lifetime,
            } => {
                let enroller = self.admin_or_enroller(caller, DECIDERS).await?;
                self.add_rule(
                    caller,
                    enroller,
                    &netblock,
                    attributes,
                    max_credential_lifetime,
                    lifetime,
                )
                .await
                .map(Answer::RuleAdded)
            }
            JoinCall::ListRules {} => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                let rules = self
                    .store()
                    .rules(self.now())
                    .await
                    .map_err(|e| store_failed("listing auto-approval rules", &e))?;
                Ok(Answer::Rules(rules.into_iter().map(rule_info).collect()))
            }
            JoinCall::DeleteRule { id } => {
                self.admin_or_enroller(caller, DECIDERS).await?;
                let deleted = self
                    .store()
                    .delete_rule(&normalize_id(&id), caller, self.now())
                    .await
                    .map_err(|e| store_failed("deleting an auto-approval rule", &e))?;
                match deleted {
                    Some(rule) => {
                        info!(rule = %rule.id, "auto-approval rule deleted");
                        Ok(Answer::Rule(rule_info(rule)))
                    }
                    None => Err(ApiError::new(
                        ErrorKind::NotFound,
                        "there is no auto-approval rule with this id; `kith project requests auto-approve list` shows them",
                    )),
                }
            }
        }
    }

    async fn request(&self, id: &str) -> Result<JoinRecord, ApiError> {
        self.store()
            .join_request(id)
            .await
            .map_err(|e| store_failed("reading a join request", &e))?
            .ok_or_else(not_found)
    }

    /// File (or file again) the caller's request.
    async fn file(
        &self,
        caller: &Identifier,
        channel: &ChannelSeen,
        attributes: BTreeMap<String, String>,
        lifetime: Option<u64>,
        note: String,
    ) -> Result<JoinRequestInfo, ApiError> {
        check_member_attributes(&attributes)?;
        check_text("note", &note)?;
        let default_ttl = self.config().credential_ttl.as_secs();
        let lifetime = lifetime_or(lifetime, default_ttl)?;
        if lifetime > default_ttl {
            return Err(bad_request(format!(
                "this project's credentials last at most {default_ttl} s; {lifetime} s was asked for"
            )));
        }
        let settings = self.config().join;
        let limits = JoinLimits {
            per_source: settings.max_pending_per_source,
            total: settings.max_pending,
        };
        let source = source_text(channel.source);
        let requester = caller.to_string();
        let code_for = |id: &str| {
            api::join_code(
                &channel.handshake_hash,
                id,
                &requester,
                &attributes,
                lifetime,
            )
        };
        let now = self.now();
        let expires_at = now.saturating_add(settings.request_ttl.as_secs());
        let mut attempt = 1;
        let filed = loop {
            let request = NewJoinRequest {
                id: random_id(),
                requester: *caller,
                source: source.clone(),
                attributes: attributes.clone(),
                lifetime,
                note: note.clone(),
                expires_at,
            };
            match self
                .store()
                .file_join_request(&request, &code_for, limits, now)
                .await
            {
                Err(FileError::IdTaken { .. }) if attempt < ID_ATTEMPTS => attempt += 1,
                outcome => break outcome.map_err(file_refusal)?,
            }
        };
        let record = filed.record;
        info!(request = %record.id, source = %record.source, refiled = filed.refiled, attributes = ?record.attributes, lifetime = record.lifetime, "join request filed");
        // The admins may have said yes in advance.
        let record = match self.auto_approve(&record, now).await {
            Some(approved) => approved,
            None => record,
        };
        Ok(request_info(record, now))
    }

    /// Approve `record` by the first rule in force that covers it; the approved request,
    /// or `None` if no rule does (or the approval failed, which is logged: the request
    /// stays pending for an admin).
    async fn auto_approve(&self, record: &JoinRecord, now: u64) -> Option<JoinRecord> {
        let rules = match self.store().rules(now).await {
            Ok(rules) => rules,
            Err(e) => {
                store_failed("reading auto-approval rules", &e);
                return None;
            }
        };
        let rule = rules
            .iter()
            .find(|rule| rule_covers(rule, &record.source, &record.attributes))?;
        self.approve_by_rule(rule, record, now).await
    }

    async fn approve_by_rule(
        &self,
        rule: &RuleRecord,
        record: &JoinRecord,
        now: u64,
    ) -> Option<JoinRecord> {
        let decision = Decision::Approve {
            attributes: record.attributes.clone(),
            lifetime: record.lifetime.min(rule.max_credential_lifetime),
        };
        let decided_by = format!("{} (auto-approve rule {})", rule.created_by, rule.id);
        match self
            .decide(record, &decision, &rule.created_by, &decided_by, now)
            .await
        {
            Ok(approved) => {
                info!(request = %approved.id, rule = %rule.id, "join request approved by an auto-approval rule");
                Some(approved)
            }
            Err(e) => {
                let refusal = decide_refusal(&e);
                info!(request = %record.id, rule = %rule.id, reason = %refusal.message, "an auto-approval rule did not approve a request");
                None
            }
        }
    }

    /// Approve request `id` if `code` is its verification code. A wrong code is a failed
    /// guess by the caller's identity and by `source` (`throttle`); while either must wait,
    /// the approval is refused at once.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, which has each from the call"
    )]
    async fn approve(
        &self,
        caller: &Identifier,
        source: Option<SocketAddr>,
        enroller: bool,
        id: &str,
        code: &str,
        attributes: Option<BTreeMap<String, String>>,
        lifetime: Option<u64>,
    ) -> Result<JoinRequestInfo, ApiError> {
        let attempt = self.admit_guess(GuessKind::Approve, caller, source).await?;
        let record = self.request(id).await?;
        let now = self.now();
        let state = record.state_at(now);
        if state != JoinState::Pending {
            return Err(decide_refusal(&match state {
                JoinState::Expired => DecideError::Expired {
                    expires_at: record.expires_at,
                },
                state => DecideError::Closed { state },
            }));
        }
        if !api::codes_match(code, &record.code) {
            warn!(request = %id, "approval with a wrong verification code refused: a mistyped code, or someone between the requester and us");
            attempt.failed().await;
            return Err(ApiError::new(
                ErrorKind::WrongCode,
                "the verification code does not match this request's; the request stays pending. Compare the code with the requester again: if theirs differs from the one `kith project requests show` prints, someone sits between them and the authority",
            ));
        }
        let granted = match attributes {
            None => record.attributes.clone(),
            Some(narrowed) => {
                if let Some((k, v)) = narrowed
                    .iter()
                    .find(|(k, v)| record.attributes.get(*k) != Some(*v))
                {
                    return Err(bad_request(format!(
                        "{k}={v} was not asked for; approval may narrow the attributes asked for, never widen them"
                    )));
                }
                narrowed
            }
        };
        let granted_lifetime = lifetime_or(lifetime, record.lifetime)?;
        if granted_lifetime > record.lifetime {
            return Err(bad_request(format!(
                "the request asked for credentials lasting {} s; approval may shorten that, never lengthen it ({granted_lifetime} s)",
                record.lifetime
            )));
        }
        if enroller && grants_enroller(&granted) {
            return Err(forbidden(
                "only admins may approve a request for ockam-role=enroller; approve it without that attribute (-a) or ask an admin",
            ));
        }
        let decision = Decision::Approve {
            attributes: granted,
            lifetime: granted_lifetime,
        };
        let approved = self
            .decide(&record, &decision, caller, &caller.to_string(), now)
            .await
            .map_err(|e| decide_refusal(&e))?;
        info!(request = %id, requester = %approved.requester, attributes = ?approved.granted_attributes, lifetime = ?approved.granted_lifetime, "join request approved");
        Ok(request_info(approved, now))
    }

    async fn deny(
        &self,
        caller: &Identifier,
        id: &str,
        reason: &str,
    ) -> Result<JoinRequestInfo, ApiError> {
        check_text("reason", reason)?;
        let record = self.request(id).await?;
        let now = self.now();
        let decision = Decision::Deny {
            reason: reason.to_owned(),
        };
        let denied = self
            .decide(&record, &decision, caller, &caller.to_string(), now)
            .await
            .map_err(|e| decide_refusal(&e))?;
        info!(request = %id, requester = %denied.requester, "join request denied");
        Ok(request_info(denied, now))
    }

    /// Deny every pending request `select` picks (at most [`MAX_BULK_DENY`], the oldest
    /// first) in one transaction, audited once, and wake whoever waits on them: they are
    /// told `reason`, as by a single denial.
    async fn deny_pending(
        &self,
        caller: &Identifier,
        select: &PendingSelector,
        reason: &str,
    ) -> Result<PendingDenied, ApiError> {
        check_text("reason", reason)?;
        if reason.trim().is_empty() {
            return Err(bad_request(
                "denying many requests at once needs a reason: the requesters are told it, and the audit log keeps it",
            ));
        }
        let net = match select {
            PendingSelector::From(text) => Some(parse_netblock(text).map_err(bad_request)?),
            PendingSelector::All => None,
        };
        let selector = net.map_or_else(|| "all".to_owned(), |net| net.to_string());
        let picks = |record: &JoinRecord| match &net {
            Some(net) => record
                .source
                .parse::<IpAddr>()
                .is_ok_and(|ip| net.contains(&ip.to_canonical())),
            None => true,
        };
        let now = self.now();
        let done = self
            .store()
            .deny_join_requests(&picks, &selector, reason, MAX_BULK_DENY, caller, now)
            .await
            .map_err(|e| store_failed("denying pending join requests", &e))?;
        for record in &done.denied {
            self.shared.join.wake(&record.id);
        }
        info!(selector = %selector, denied = done.denied.len(), more = done.more, "pending join requests denied at once");
        Ok(PendingDenied {
            denied: u32::try_from(done.denied.len()).unwrap_or(u32::MAX),
            ids: done.denied.into_iter().map(|r| r.id).collect(),
            selector,
            reason: reason.to_owned(),
            more: done.more,
        })
    }

    /// Decide `record` as read (a refiling since changes its code, and the decision is
    /// refused), and wake whoever waits on it.
    async fn decide(
        &self,
        record: &JoinRecord,
        decision: &Decision,
        actor: &Identifier,
        decided_by: &str,
        now: u64,
    ) -> Result<JoinRecord, DecideError> {
        let decided = self
            .store()
            .decide_join_request(&record.id, &record.code, decision, actor, decided_by, now)
            .await?;
        self.shared.join.wake(&decided.id);
        Ok(decided)
    }

    async fn add_rule(
        &self,
        caller: &Identifier,
        enroller: bool,
        netblock: &str,
        attributes: BTreeMap<String, String>,
        max_credential_lifetime: Option<u64>,
        lifetime: u64,
    ) -> Result<RuleAdded, ApiError> {
        let net = parse_netblock(netblock).map_err(bad_request)?;
        check_member_attributes(&attributes)?;
        if enroller && grants_enroller(&attributes) {
            return Err(forbidden(
                "only admins may add a rule that approves ockam-role=enroller",
            ));
        }
        let default_ttl = self.config().credential_ttl.as_secs();
        let max_credential_lifetime =
            lifetime_or(max_credential_lifetime, default_ttl)?.min(default_ttl);
        if !(1..=MAX_RULE_LIFETIME).contains(&lifetime) {
            return Err(bad_request(format!(
                "a rule must last 1 s to {MAX_RULE_LIFETIME} s (365 days); {lifetime} s was asked for"
            )));
        }
        let now = self.now();
        let rule = RuleRecord {
            id: random_id(),
            netblock: net.to_string(),
            attributes,
            max_credential_lifetime,
            created_at: now,
            created_by: *caller,
            expires_at: now.saturating_add(lifetime),
        };
        // A clash of 40-bit ids among an authority's few rules is not worth a retry: it
        // fails as a store error, and the admin runs the command again.
        self.store()
            .add_rule(&rule, now)
            .await
            .map_err(|e| store_failed("adding an auto-approval rule", &e))?;
        info!(rule = %rule.id, netblock = %rule.netblock, attributes = ?rule.attributes, "auto-approval rule added");
        // The rule applies to the requests already waiting, too.
        let pending = self
            .store()
            .join_requests(false, now)
            .await
            .map_err(|e| store_failed("listing join requests", &e))?;
        let mut approved = Vec::new();
        for record in pending
            .iter()
            .filter(|r| rule_covers(&rule, &r.source, &r.attributes))
        {
            if let Some(done) = self.approve_by_rule(&rule, record, now).await {
                approved.push(done.id);
            }
        }
        Ok(RuleAdded {
            rule: rule_info(rule),
            approved,
        })
    }

    /// Answer the requester's wait for request `id`: at once if it is decided, else when
    /// it is, or after [`JOIN_WAIT_HOLD`].
    async fn wait(
        &self,
        caller: &Identifier,
        id: &str,
        permit: OwnedSemaphorePermit,
    ) -> Result<Answer, ApiError> {
        let waiters = &self.shared.join;
        if !waiters.enter(caller) {
            return Err(ApiError::new(
                ErrorKind::Busy,
                format!(
                    "you are waiting on {MAX_WAITS_PER_REQUESTER} calls already; wait for their answers"
                ),
            ));
        }
        let notify = waiters.watch(id);
        let result = self.hold(caller, id, &notify, permit).await;
        waiters.unwatch(id, notify);
        waiters.leave(caller);
        result
    }

    async fn hold(
        &self,
        caller: &Identifier,
        id: &str,
        notify: &Notify,
        permit: OwnedSemaphorePermit,
    ) -> Result<Answer, ApiError> {
        // Listen before reading, so that a decision between the read and the wait wakes us.
        let mut decided = pin!(notify.notified());
        decided.as_mut().enable();
        let mut record = self.own_request(caller, id).await?;
        let now = self.now();
        if record.state_at(now) == JoinState::Pending {
            drop(permit);
            let Ok(_slot) = self.shared.join.slots.clone().try_acquire_owned() else {
                return Err(busy());
            };
            let until_expiry = Duration::from_secs(record.expires_at.saturating_sub(now));
            let hold = JOIN_WAIT_HOLD.min(until_expiry.saturating_add(Duration::from_secs(1)));
            let _ = tokio::time::timeout(hold, decided).await;
            // As for any request: past the cap, "busy" at once rather than a queue.
            let _permit = self
                .shared
                .in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| busy())?;
            record = self.own_request(caller, id).await?;
            return self.waited(caller, record).await;
        }
        let _permit = permit;
        self.waited(caller, record).await
    }

    /// The caller's request `id`: someone else's is not found, as if it did not exist.
    async fn own_request(&self, caller: &Identifier, id: &str) -> Result<JoinRecord, ApiError> {
        match self.store().join_request(id).await {
            Ok(Some(record)) if record.requester == *caller => Ok(record),
            Ok(_) => Err(ApiError::new(
                ErrorKind::NotFound,
                "you have no join request with this id; file one with `kith project request`",
            )),
            Err(e) => Err(store_failed("reading a join request", &e)),
        }
    }

    /// The answer to a wait: the request, and the credential once it is approved.
    async fn waited(&self, caller: &Identifier, record: JoinRecord) -> Result<Answer, ApiError> {
        let now = self.now();
        let credential = match record.state_at(now) {
            JoinState::Approved => Some(self.credential(caller).await?),
            _ => None,
        };
        Ok(Answer::JoinWaited(Box::new(JoinWaited {
            request: request_info(record, now),
            credential,
        })))
    }

    /// Mark expired requests now and every [`SWEEP_INTERVAL`] while `node` runs, waking
    /// their waiters (the store audits each expiry).
    pub(crate) fn start_join_sweeper(&self, node: &Node) {
        let authority = self.clone();
        node.spawn(every(SWEEP_INTERVAL, move || {
            let authority = authority.clone();
            async move { authority.sweep_join_requests().await }
        }));
    }

    /// Mark the pending requests past their expiry by the authority's clock expired, and
    /// wake whoever waits on them here.
    async fn sweep_join_requests(&self) {
        match self.store().expire_join_requests(self.now()).await {
            Ok(expired) => {
                for record in expired {
                    info!(request = %record.id, requester = %record.requester, "join request expired undecided");
                    self.shared.join.wake(&record.id);
                }
            }
            Err(e) => {
                store_failed("expiring join requests", &e);
            }
        }
    }
}

/// Run `step` at once, then again `pause` after each run ends, for as long as the task
/// runs: a slow step delays the next one rather than letting runs bunch up.
pub(super) async fn every<F, Fut>(pause: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        step().await;
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JoinState as ShownState;
    use crate::api::PendingSelector;
    use crate::clock::ManualClock;
    use crate::service::{AuthorityConfig, MAX_IN_FLIGHT};
    use crate::store::{AuditEvent, MembershipStore, StoreOwner};
    use kith_identity::vault::Vault;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::sync::Arc;

    /// 2023-11-14T22:13:20Z: the fixed time the rule tests start at.
    const NOW: u64 = 1_700_000_000;

    /// 30 s: bounds every wait for something that should happen at once.
    const WAIT: Duration = Duration::from_secs(30);

    /// An authority on a fresh SQLite store and vault in `dir`, reading `clock`.
    async fn authority_at(dir: &Path, clock: Arc<ManualClock>) -> Authority {
        let owner = StoreOwner {
            project_id: "p".into(),
            authority: None,
        };
        let store = MembershipStore::create_sqlite(&dir.join("store.sqlite"), &owner, NOW)
            .await
            .unwrap();
        let vault = Vault::open(&dir.join("vault.sqlite")).await.unwrap();
        Authority::new(
            store,
            vault,
            "authority".into(),
            AuthorityConfig {
                project_id: "p".into(),
                admins: BTreeSet::new(),
                credential_ttl: Duration::from_secs(3600),
                join: JoinSettings::default(),
                clock,
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sweep_at_the_clocks_time_expires_a_request_and_answers_its_held_wait() {
        let dir = tempfile::TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(NOW));
        let authority = authority_at(dir.path(), clock.clone()).await;
        let ttl = JoinSettings::default().request_ttl;
        let requester: Identifier = format!("I{:040x}", 0xa1).parse().unwrap();
        let request = NewJoinRequest {
            id: "AAAA-0001".into(),
            requester,
            source: "192.0.2.1".into(),
            attributes: BTreeMap::new(),
            lifetime: 60,
            note: String::new(),
            expires_at: NOW + ttl.as_secs(),
        };
        let limits = JoinLimits {
            per_source: 5,
            total: 10,
        };
        let id = authority
            .store()
            .file_join_request(&request, &|_| "CODE".to_owned(), limits, NOW)
            .await
            .unwrap()
            .record
            .id;

        // The requester waits, an hour from the expiry: the wait holds for all of
        // `JOIN_WAIT_HOLD`, and gives its permit back while it does.
        let in_flight = authority.shared.in_flight.clone();
        let permit = in_flight.clone().try_acquire_owned().unwrap();
        let waiter = {
            let (authority, id) = (authority.clone(), id.clone());
            tokio::spawn(async move { authority.wait(&requester, &id, permit).await })
        };
        let every_permit = u32::try_from(MAX_IN_FLIGHT).unwrap();
        drop(
            tokio::time::timeout(WAIT, in_flight.acquire_many(every_permit))
                .await
                .expect("the wait holds")
                .unwrap(),
        );

        // A second short of its expiry, a sweep leaves it pending.
        clock.advance(ttl - Duration::from_secs(1));
        authority.sweep_join_requests().await;
        let record = authority.store().join_request(&id).await.unwrap().unwrap();
        assert_eq!(record.state, JoinState::Pending);
        assert!(!waiter.is_finished());

        // At its expiry the sweep marks it, and the held wait is answered at once, well
        // before its hold would end.
        let expired_at = clock.advance(Duration::from_secs(1));
        authority.sweep_join_requests().await;
        let answered = tokio::time::timeout(JOIN_WAIT_HOLD / 2, waiter)
            .await
            .expect("the sweep woke the wait")
            .unwrap();
        let Ok(Answer::JoinWaited(waited)) = answered else {
            panic!("expected the wait's answer");
        };
        assert_eq!(waited.request.state, ShownState::Expired);
        assert_eq!(waited.request.decided_at, Some(expired_at));
        assert!(waited.credential.is_none());
        let audit = authority.store().audit_log(10).await.unwrap();
        assert!(
            audit.iter().any(|e| e.action == AuditEvent::REQUEST_EXPIRED
                && e.subject == id
                && e.at == expired_at),
            "{audit:?}"
        );
        authority.store().close().await;
        authority.shared.vault.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_denial_denies_exactly_what_it_picks_once_audited_and_wakes_the_waiters() {
        let dir = tempfile::TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(NOW));
        let authority = authority_at(dir.path(), clock.clone()).await;
        let admin: Identifier = format!("I{:040x}", 0xad).parse().unwrap();
        let limits = JoinLimits {
            per_source: 5,
            total: 10,
        };
        // Ten requests, the global cap: four from 10.1.0.0/16, three from 2001:db8::/32,
        // two from 192.0.2.0/24 and one of unknown source.
        let sources = [
            "10.1.0.1",
            "10.1.0.2",
            "10.1.7.7",
            "10.1.255.9",
            "2001:db8::1",
            "2001:db8:5::1",
            "2001:db8:ffff::2",
            "192.0.2.1",
            "192.0.2.2",
            "unknown",
        ];
        let mut ids = BTreeMap::new();
        for (n, source) in sources.iter().enumerate() {
            let request = NewJoinRequest {
                id: format!("AAAA-{n:04}"),
                requester: format!("I{:040x}", 0x100 + n).parse().unwrap(),
                source: (*source).to_owned(),
                attributes: BTreeMap::new(),
                lifetime: 60,
                note: String::new(),
                expires_at: NOW + 3600,
            };
            let filed = authority
                .store()
                .file_join_request(&request, &|_| "CODE".to_owned(), limits, NOW)
                .await
                .unwrap();
            ids.insert(*source, (filed.record.id, request.requester));
        }
        let full = NewJoinRequest {
            id: "AAAA-9999".into(),
            requester: format!("I{:040x}", 0x999).parse().unwrap(),
            source: "198.51.100.1".into(),
            attributes: BTreeMap::new(),
            lifetime: 60,
            note: String::new(),
            expires_at: NOW + 3600,
        };
        let refused = authority
            .store()
            .file_join_request(&full, &|_| "CODE".to_owned(), limits, NOW)
            .await;
        assert!(
            matches!(refused, Err(FileError::Total { .. })),
            "{refused:?}"
        );

        // The requester from 10.1.7.7 waits for a decision.
        let (waiting_id, waiting_requester) = ids["10.1.7.7"].clone();
        let permit = authority
            .shared
            .in_flight
            .clone()
            .try_acquire_owned()
            .unwrap();
        let waiter = {
            let authority = authority.clone();
            tokio::spawn(async move {
                authority
                    .wait(&waiting_requester, &waiting_id, permit)
                    .await
            })
        };

        // Blank reasons and bad netblocks are refused, and deny nothing.
        let from = |text: &str| PendingSelector::From(text.to_owned());
        for (select, reason) in [
            (from("10.0.0.0/8"), ""),
            (from("10.0.0.0/8"), "   "),
            (from("10.0.0.0/33"), "flood"),
            (from("ten"), "flood"),
            (PendingSelector::All, "\u{1b}[2J"),
        ] {
            let refusal = authority
                .deny_pending(&admin, &select, reason)
                .await
                .unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::BadRequest, "{select:?} {reason:?}");
        }
        assert_eq!(
            authority
                .store()
                .join_requests(false, NOW)
                .await
                .unwrap()
                .len(),
            10
        );

        // Host bits are cleared: 10.1.2.3/16 is 10.1.0.0/16.
        let denied = authority
            .deny_pending(&admin, &from("10.1.2.3/16"), "flood from the lab")
            .await
            .unwrap();
        assert_eq!(denied.selector, "10.1.0.0/16");
        assert_eq!(denied.denied, 4);
        let expected: Vec<String> = sources[..4].iter().map(|s| ids[s].0.clone()).collect();
        assert_eq!(denied.ids, expected);
        assert!(!denied.more);

        let answered = tokio::time::timeout(WAIT, waiter)
            .await
            .expect("the denial woke the wait")
            .unwrap();
        let Ok(Answer::JoinWaited(waited)) = answered else {
            panic!("expected the wait's answer");
        };
        assert_eq!(waited.request.state, ShownState::Denied);
        assert_eq!(waited.request.reason.as_deref(), Some("flood from the lab"));
        assert_eq!(waited.request.decided_by, Some(admin.to_string()));

        // One address picks one request; IPv6 netblocks pick IPv6 sources.
        let one = authority
            .deny_pending(&admin, &from("192.0.2.2"), "this host")
            .await
            .unwrap();
        assert_eq!(one.ids, [ids["192.0.2.2"].0.clone()]);
        let v6 = authority
            .deny_pending(&admin, &from("2001:db8::/32"), "flood")
            .await
            .unwrap();
        assert_eq!(v6.denied, 3);
        let none = authority
            .deny_pending(&admin, &from("10.0.0.0/8"), "again")
            .await
            .unwrap();
        assert_eq!((none.denied, none.ids.len()), (0, 0));
        let rest = authority
            .deny_pending(&admin, &PendingSelector::All, "clearing")
            .await
            .unwrap();
        assert_eq!(rest.selector, "all");
        assert_eq!(
            rest.ids,
            [ids["192.0.2.1"].0.clone(), ids["unknown"].0.clone()]
        );
        assert!(
            authority
                .store()
                .join_requests(false, NOW)
                .await
                .unwrap()
                .is_empty()
        );

        // One audit row per denial that denied something; none per request.
        let audit = authority.store().audit_log(100).await.unwrap();
        let bulk: Vec<&AuditEvent> = audit
            .iter()
            .filter(|e| e.action == AuditEvent::REQUESTS_BULK_DENIED)
            .collect();
        assert_eq!(bulk.len(), 4, "{audit:#?}");
        assert_eq!(bulk[0].subject, "10.1.0.0/16");
        assert_eq!(bulk[0].actor, admin.to_string());
        assert_eq!(
            bulk[0].detail,
            format!(
                "count=4 reason=\"flood from the lab\" ids={}",
                expected.join(",")
            )
        );
        assert!(!audit.iter().any(|e| e.action == AuditEvent::REQUEST_DENIED));

        // The cap has room again.
        authority
            .store()
            .file_join_request(&full, &|_| "CODE".to_owned(), limits, NOW)
            .await
            .unwrap();
        authority.store().close().await;
        authority.shared.vault.close().await;
    }

    #[tokio::test]
    async fn a_bulk_denial_stops_at_its_limit_and_says_more_match() {
        let dir = tempfile::TempDir::new().unwrap();
        let clock = Arc::new(ManualClock::new(NOW));
        let authority = authority_at(dir.path(), clock).await;
        let admin: Identifier = format!("I{:040x}", 0xad).parse().unwrap();
        let limits = JoinLimits {
            per_source: 10,
            total: 10,
        };
        for n in 0..3 {
            let request = NewJoinRequest {
                id: format!("AAAA-{n:04}"),
                requester: format!("I{:040x}", 0x100 + n).parse().unwrap(),
                source: "192.0.2.1".into(),
                attributes: BTreeMap::new(),
                lifetime: 60,
                note: String::new(),
                expires_at: NOW + 3600,
            };
            authority
                .store()
                .file_join_request(&request, &|_| "CODE".to_owned(), limits, NOW + n)
                .await
                .unwrap();
        }
        let done = authority
            .store()
            .deny_join_requests(&|_| true, "all", "flood", 2, &admin, NOW + 5)
            .await
            .unwrap();
        let ids: Vec<&str> = done.denied.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["AAAA-0000", "AAAA-0001"]);
        assert!(done.more);
        authority.store().close().await;
        authority.shared.vault.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_run_at_once_then_one_interval_after_each_ends() {
        /// 2 s: how long each sweep takes here, as a slow store's would.
        const SWEEP_TAKES: Duration = Duration::from_secs(2);
        let (ran, mut runs) = tokio::sync::mpsc::channel(4);
        let started = tokio::time::Instant::now();
        let sweeper = tokio::spawn(every(SWEEP_INTERVAL, move || {
            let ran = ran.clone();
            async move {
                let at = tokio::time::Instant::now();
                tokio::time::sleep(SWEEP_TAKES).await;
                let _ = ran.send(at - started).await;
            }
        }));
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(runs.recv().await.unwrap());
        }
        sweeper.abort();
        let period = SWEEP_TAKES + SWEEP_INTERVAL;
        assert_eq!(seen, [Duration::ZERO, period, 2 * period]);
    }

    #[test]
    fn ids_are_nine_characters_of_the_alphabet() {
        for _ in 0..100 {
            let id = random_id();
            assert_eq!(id.len(), 9);
            assert_eq!(id.as_bytes()[4], b'-');
            assert!(
                id.bytes()
                    .enumerate()
                    .all(|(i, b)| i == 4 || ID_ALPHABET.contains(&b))
            );
            assert_eq!(normalize_id(&format!(" {} ", id.to_lowercase())), id);
        }
    }

    #[test]
    fn netblocks_parse_as_cidr_or_single_addresses() {
        assert_eq!(
            parse_netblock("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_netblock("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_netblock("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8", "1.2.3.4/-1"] {
            assert!(parse_netblock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_covers_its_netblock_and_at_most_its_attributes() {
        let attrs = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let rule = RuleRecord {
            id: "R".into(),
            netblock: "10.0.0.0/8".into(),
            attributes: attrs(&[("component", "worker"), ("zone", "a")]),
            max_credential_lifetime: 60,
            created_at: 0,
            created_by: "I0000000000000000000000000000000000000000".parse().unwrap(),
            expires_at: 100,
        };
        // Source address, attributes asked for, whether the rule covers them.
        type Case = (&'static str, &'static [(&'static str, &'static str)], bool);
        let cases: [Case; 6] = [
            ("10.9.8.7", &[], true),
            ("10.9.8.7", &[("component", "worker")], true),
            ("11.0.0.1", &[("component", "worker")], false),
            ("10.0.0.1", &[("component", "db")], false),
            (
                "10.0.0.1",
                &[("component", "worker"), ("ockam-role", "enroller")],
                false,
            ),
            ("unknown", &[], false),
        ];
        for (source, asked, covered) in cases {
            assert_eq!(
                rule_covers(&rule, source, &attrs(asked)),
                covered,
                "{source} asking for {asked:?}"
            );
        }
    }

    #[test]
    fn notes_with_control_characters_are_refused() {
        assert!(check_text("note", "rack 4, host 12").is_ok());
        assert!(check_text("note", "\u{1b}[2Jgotcha").is_err());
        assert!(check_text("note", &"x".repeat(MAX_JOIN_NOTE + 1)).is_err());
    }

    proptest! {
        #[test]
        fn netblock_parsing_never_panics(text in ".{0,64}") {
            let _ = parse_netblock(&text);
        }

        /// A bulk denial's selector: what parses is a netblock whose text parses to itself
        /// and contains the address it was written from; the selector survives the wire.
        #[test]
        fn bulk_denial_selectors_parse_to_netblocks_that_round_trip(
            octets in any::<[u8; 4]>(),
            segments in any::<[u16; 8]>(),
            v4_prefix in 0u8..=40,
            v6_prefix in 0u8..=140,
        ) {
            let v4 = std::net::Ipv4Addr::from(octets);
            let v6 = std::net::Ipv6Addr::from(segments);
            for (ip, prefix, max) in [(IpAddr::V4(v4), v4_prefix, 32), (IpAddr::V6(v6), v6_prefix, 128)] {
                let text = format!("{ip}/{prefix}");
                match parse_netblock(&text) {
                    Ok(net) => {
                        prop_assert!(prefix <= max);
                        prop_assert!(net.contains(&ip));
                        prop_assert_eq!(parse_netblock(&net.to_string()), Ok(net));
                    }
                    Err(e) => {
                        prop_assert!(prefix > max);
                        prop_assert!(e.contains("not a netblock"), "{}", e);
                    }
                }
                prop_assert_eq!(parse_netblock(&ip.to_string()).map(|n| n.addr()), Ok(ip));
            }
            let select = PendingSelector::From(format!("{v4}/{v4_prefix}"));
            let call = JoinCall::DenyPending { select, reason: "flood".into() };
            let wire = api::encode(&call).unwrap();
            prop_assert_eq!(api::decode_request::<JoinCall>(&wire).unwrap(), call);
        }
    }
}
