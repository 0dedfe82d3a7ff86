//! The authority's services on a node (DESIGN §5): tickets, the ticket acceptor, the
//! credential issuer, members and the audit log, each a worker reachable only through a
//! secure channel.
//!
//! Who may do what is decided per request from the caller's identifier — the one the secure
//! channel authenticated — and the membership store, never from the attributes the caller's
//! channel carries: a member deleted or demoted a moment ago loses its rights with its next
//! request, not when its credential expires.
//!
//! Every request gets an answer. A refusal is an [`api::Reply::Error`] with a coarse message
//! for the peer; the detail (store errors, which check failed) goes to our log, inside one
//! span per request that names the service and the peer. One-time codes and their hashes are
//! never logged.
//!
//! A worker handles its mailbox one message at a time, so the store round trip of a request
//! runs in a task of its own, owned by the service's worker; at most [`MAX_IN_FLIGHT`]
//! requests (over all five services) run at once, and past that a request is answered
//! "busy" at once instead of queueing without bound.
//!
//! What this module does not do: open listeners or channels (the node's secure-channel
//! listener admits peers; these services only see what it delivers), or keep state of its
//! own beyond a cached credential signing key (the store is the truth, and several
//! authorities may share one PostgreSQL database).
//!
//! [`MAX_IN_FLIGHT`]: crate::service::MAX_IN_FLIGHT
//! [`api::Reply::Error`]: crate::api::Reply::Error

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use kith_identity::vault::Vault;
use kith_identity::{
    CredentialAndPurposeKey, CredentialSigningKey, Identifier, MAX_ATTRIBUTES, check_attribute,
    unix_now,
};
use kith_node::{
    Address, AllowOrigins, Context, DisplayChain, Message, Node, Origin, Route, Worker, WorkerError,
};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{
    self, ACCEPTOR_SERVICE, AUDIT_SERVICE, ApiError, AuditEntry, AuditRequest, AutoApproveRule,
    CREDENTIAL_SERVICE, CreatedTicket, CredentialRequest, ENROLLER_ROLE, Enrolled, ErrorKind,
    JOIN_SERVICE, JoinRequestInfo, JoinWaited, MEMBERS_SERVICE, MemberInfo, MembersRequest,
    PROJECT_ID_ATTRIBUTE, ROLE_ATTRIBUTE, RedeemRequest, Reply, RuleAdded, TICKET_SERVICE,
    TicketInfo, TicketRequest,
};
use crate::error::StartServicesError;
use crate::join::{ChannelSeen, JoinSettings, JoinWaiters};
use crate::store::{
    AuditEvent, Member, MembershipStore, NewTicket, RedeemError, StoreError, TicketRecord,
};
use crate::ticket::{CODE_LEN, OneTimeCode};
use kith_identity::hex;

/// 1,024 requests: how many requests the five services run at once. Each holds at most one
/// store connection and a few kilobytes; past the cap a request is answered "busy, try again"
/// at once, so a flood of requests costs the authority a refusal each, not memory.
pub const MAX_IN_FLIGHT: usize = 1024;

/// 1 s: the shortest ticket lifetime; a ticket must outlive the round trip that creates it.
pub const MIN_TICKET_LIFETIME: Duration = Duration::from_secs(1);

/// 365 days: the longest ticket lifetime. A ticket is a bearer secret; one that outlives a
/// year is better replaced than kept.
pub const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// 100,000 identities: the most one ticket may enroll, far above any fleet rollout, low
/// enough that a typo (an extra zero or three) is caught.
pub const MAX_TICKET_USES: u32 = 100_000;

/// 10,000 entries: the most audit entries one request returns, so one answer stays well
/// under a channel message's size limit per page of the log.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

/// The most attributes a ticket or an admin may give a member: the credential also carries
/// [`PROJECT_ID_ATTRIBUTE`], and must stay within [`MAX_ATTRIBUTES`].
pub const MAX_MEMBER_ATTRIBUTES: usize = MAX_ATTRIBUTES - 1;

/// 6 bytes: a ticket id is the first 12 hex digits of its code's hash, short to type and
/// telling nothing of the code (48 bits; a clash is retried with a new code, see
/// [`TICKET_ID_ATTEMPTS`]). `Ticket::id` computes the same from the ticket.
const TICKET_ID_BYTES: usize = 6;

/// 3 attempts: how often a ticket is made again with a fresh code when its id is taken. Two
/// clashes in a row among 48-bit ids mean something else is wrong.
const TICKET_ID_ATTEMPTS: usize = 3;

/// 1 day: a cached signing key is used while its attestation outlives the credential being
/// signed by at least this much, so that credentials never outlive the key that vouches for
/// them and a key is replaced well before it runs out.
const KEY_REUSE_MARGIN: u64 = 24 * 60 * 60;

/// 2 days: a key fetched from the vault must last this long beyond the credential lifetime,
/// so that once fetched it stays usable (by [`KEY_REUSE_MARGIN`]) for at least a day rather
/// than being replaced on the next request.
const KEY_FETCH_MARGIN: u64 = 2 * KEY_REUSE_MARGIN;

/// 2 s: how long a stopping service waits for its requests in flight to finish (and their
/// answers to leave) before it aborts them; under the node's shutdown grace.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Refusal messages shared by several services. Coarse on purpose: our log has the detail.
pub(crate) const BUSY: &str = "the authority is busy; try again in a moment";
pub(crate) const INTERNAL: &str = "the authority could not complete the request; try again later";

/// How an authority is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// The project's id: every credential carries it as [`PROJECT_ID_ATTRIBUTE`].
    pub project_id: String,
    /// The identities that may do everything (DESIGN §5 "Admins").
    pub admins: BTreeSet<Identifier>,
    /// How long the credentials it issues are valid.
    pub credential_ttl: Duration,
    /// How join requests are bounded.
    pub join: JoinSettings,
}

/// The authority: the state its services share. Cloning is cheap; clones share the store,
/// the vault, the cached signing key and the cap on requests in flight, so two calls to
/// [`Authority::start`] on two nodes act as one authority.
#[derive(Clone)]
pub struct Authority {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) store: MembershipStore,
    vault: Vault,
    identity_name: String,
    config: AuthorityConfig,
    signing_key: KeyCache,
    pub(crate) in_flight: Arc<Semaphore>,
    /// Join requests: who waits for which decision.
    pub(crate) join: JoinWaiters,
}

/// The credential signing key in use, and a lock that makes fetching a new one a
/// single flight: the requests that find the key too short wait for one fetch instead of
/// each attesting a key of its own.
#[derive(Default)]
struct KeyCache {
    current: std::sync::Mutex<Option<Arc<CredentialSigningKey>>>,
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("Authority")
            .field("project_id", &s.config.project_id)
            .field("admins", &s.config.admins)
            .field("credential_ttl", &s.config.credential_ttl)
            .field("store", &s.store.location())
            .field("identity", &s.identity_name)
            .finish_non_exhaustive()
    }
}

/// The six services, one worker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Tickets,
    Acceptor,
    Credentials,
    Members,
    Audit,
    Join,
}

impl Service {
    const ALL: [Service; 6] = [
        Service::Tickets,
        Service::Acceptor,
        Service::Credentials,
        Service::Members,
        Service::Audit,
        Service::Join,
    ];

    fn address(self) -> &'static str {
        match self {
            Service::Tickets => TICKET_SERVICE,
            Service::Acceptor => ACCEPTOR_SERVICE,
            Service::Credentials => CREDENTIAL_SERVICE,
            Service::Members => MEMBERS_SERVICE,
            Service::Audit => AUDIT_SERVICE,
            Service::Join => JOIN_SERVICE,
        }
    }
}

impl Authority {
    /// An authority keeping its state in `store` and signing credentials with the identity
    /// named `identity_name` in `vault`. Nothing runs until [`Authority::start`].
    pub fn new(
        store: MembershipStore,
        vault: Vault,
        identity_name: String,
        config: AuthorityConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                store,
                vault,
                identity_name,
                config,
                signing_key: KeyCache::default(),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                join: JoinWaiters::default(),
            }),
        }
    }

    /// The membership store.
    pub(crate) fn store(&self) -> &MembershipStore {
        &self.shared.store
    }

    /// How this authority is set up.
    pub fn config(&self) -> &AuthorityConfig {
        &self.shared.config
    }

    /// Start the five services ([`TICKET_SERVICE`], [`ACCEPTOR_SERVICE`],
    /// [`CREDENTIAL_SERVICE`], [`MEMBERS_SERVICE`], [`AUDIT_SERVICE`]) on `node`, each
    /// accepting messages only with a [`Origin::SecureChannel`] origin: a message from this
    /// node or straight off a TCP connection is dropped (and counted) by the node's access
    /// control. They run until the node shuts down.
    pub fn start(&self, node: &Node) -> Result<(), StartServicesError> {
        let config = &self.shared.config;
        check_attribute(PROJECT_ID_ATTRIBUTE, &config.project_id)
            .map_err(StartServicesError::ProjectId)?;
        if config.credential_ttl.as_secs() == 0 {
            return Err(StartServicesError::CredentialTtl {
                ttl: config.credential_ttl,
            });
        }
        let mut started = Vec::new();
        for service in Service::ALL {
            let address = Address::local(service.address());
            let only_channels =
                AllowOrigins(|origin: &Origin| matches!(origin, Origin::SecureChannel { .. }));
            let worker = ServiceWorker {
                authority: self.clone(),
                service,
                tasks: JoinSet::new(),
            };
            if let Err(source) =
                node.start_worker_with_policy([address.clone()], Arc::new(only_channels), worker)
            {
                for address in &started {
                    node.stop_worker(address);
                }
                return Err(StartServicesError::Start {
                    service: service.address(),
                    source,
                });
            }
            started.push(address);
        }
        self.start_join_sweeper(node);
        info!(
            node = %node.name(),
            project = %config.project_id,
            admins = config.admins.len(),
            store = %self.shared.store.location(),
            "authority services started"
        );
        Ok(())
    }
}

/// One service's worker: it admits requests and hands each to a task of its own.
struct ServiceWorker {
    authority: Authority,
    service: Service,
    /// The requests in flight; aborted if they outlast [`DRAIN_GRACE`] at shutdown.
    tasks: JoinSet<()>,
}

impl Worker for ServiceWorker {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(error) = done {
                warn!(service = self.service.address(), %error, "an authority request task failed");
            }
        }
        let Origin::SecureChannel {
            identifier,
            handshake_hash,
            source,
            ..
        } = message.origin()
        else {
            // The access policy admits channel messages only; nothing else can get here.
            debug!(
                service = self.service.address(),
                "ignored a message that did not come through a secure channel"
            );
            return Ok(());
        };
        let channel = ChannelSeen {
            handshake_hash: *handshake_hash,
            source: *source,
        };
        let node = ctx.node().clone();
        let from = Route::from(ctx.address().clone());
        let reply_to = message.return_route.clone();
        let Ok(caller) = identifier.parse::<Identifier>() else {
            warn!(service = self.service.address(), peer = %identifier, "a secure channel delivered a request with an unreadable identifier");
            let refusal = ApiError::new(ErrorKind::Internal, INTERNAL);
            send_reply(&node, reply_to, from, encode_result::<()>(Err(refusal))).await;
            return Ok(());
        };
        let span =
            info_span!("authority_request", service = self.service.address(), peer = %caller);
        let Ok(permit) = self.authority.shared.in_flight.clone().try_acquire_owned() else {
            warn!(parent: &span, max = MAX_IN_FLIGHT, "refused a request: too many requests in flight");
            let refusal = ApiError::new(ErrorKind::Busy, BUSY);
            send_reply(&node, reply_to, from, encode_result::<()>(Err(refusal))).await;
            return Ok(());
        };
        let authority = self.authority.clone();
        let service = self.service;
        let payload = message.payload;
        self.tasks.spawn(
            async move {
                let reply = authority
                    .answer(service, &caller, &channel, &payload, permit)
                    .await;
                send_reply(&node, reply_to, from, reply).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn shutdown(&mut self, _ctx: &mut Context) {
        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                service = self.service.address(),
                left = self.tasks.len(),
                "authority requests still running at shutdown; aborting them"
            );
            self.tasks.shutdown().await;
        }
    }
}

/// Send an answer back along the route the request came by (through its secure channel).
pub(crate) async fn send_reply(node: &Node, reply_to: Route, from: Route, reply: Vec<u8>) {
    let message = Message::new(reply_to, from, reply);
    if let Err(error) = node.route(message).await {
        // The channel closed while we worked; the node has counted the drop.
        debug!(error = %DisplayChain(&error), "could not send an authority answer");
    }
}

/// The reply on the wire for `result`.
pub(crate) fn encode_result<T: Serialize>(result: Result<T, ApiError>) -> Vec<u8> {
    match result {
        Ok(value) => api::encode(&Reply::Ok(value)),
        Err(refusal) => api::encode(&Reply::<()>::Error(refusal)),
    }
}

pub(crate) fn forbidden(message: &str) -> ApiError {
    ApiError::new(ErrorKind::Forbidden, message)
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::BadRequest, message)
}

/// Log a store failure in full and give the peer a coarse answer.
pub(crate) fn store_failed(what: &str, error: &StoreError) -> ApiError {
    warn!(error = %DisplayChain(error), "{what}: the membership store failed");
    match error {
        StoreError::Busy { .. } => ApiError::new(ErrorKind::Busy, BUSY),
        _ => ApiError::new(ErrorKind::Internal, INTERNAL),
    }
}

/// Whether a stored member is an enroller.
pub(crate) fn is_enroller(member: &Member) -> bool {
    member.attributes.get(ROLE_ATTRIBUTE).map(String::as_str) == Some(ENROLLER_ROLE)
}

/// Check the attributes a ticket or an admin gives a member: each name and value valid, no
/// more than [`MAX_MEMBER_ATTRIBUTES`], and no [`PROJECT_ID_ATTRIBUTE`] (the authority sets
/// it).
pub(crate) fn check_member_attributes(
    attributes: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if attributes.len() > MAX_MEMBER_ATTRIBUTES {
        return Err(bad_request(format!(
            "{} attributes; a member may have at most {MAX_MEMBER_ATTRIBUTES}",
            attributes.len()
        )));
    }
    if attributes.contains_key(PROJECT_ID_ATTRIBUTE) {
        return Err(bad_request(format!(
            "the {PROJECT_ID_ATTRIBUTE} attribute is set by the authority; leave it out"
        )));
    }
    for (name, value) in attributes {
        check_attribute(name, value).map_err(|e| bad_request(e.to_string()))?;
    }
    Ok(())
}

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

/// The one-time code in a redeem request: exactly 64 hex digits. Never echoed or logged.
fn parse_code(text: &str) -> Result<OneTimeCode, ApiError> {
    let refusal = || {
        bad_request(format!(
            "the one-time code must be {} hex digits",
            CODE_LEN * 2
        ))
    };
    if text.len() != CODE_LEN * 2 {
        return Err(refusal());
    }
    let bytes = hex::decode(text).map_err(|_| refusal())?;
    let bytes: [u8; CODE_LEN] = bytes.try_into().map_err(|_| refusal())?;
    Ok(OneTimeCode::from_bytes(bytes))
}

pub(crate) fn parse_identifier(text: &str) -> Result<Identifier, ApiError> {
    text.parse()
        .map_err(|e: kith_identity::IdentifierError| bad_request(e.to_string()))
}

fn ticket_info(record: TicketRecord) -> TicketInfo {
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

fn audit_entry(event: AuditEvent) -> AuditEntry {
    AuditEntry {
        at: event.at,
        actor: event.actor,
        action: event.action,
        subject: event.subject,
        detail: event.detail,
    }
}

/// Answering requests.
impl Authority {
    /// The encoded answer to `payload`, sent to `service` by `caller` through `channel`.
    /// `permit`, the request's share of [`MAX_IN_FLIGHT`], is held until the answer is
    /// ready; a join request wait gives it back while it waits.
    async fn answer(
        &self,
        service: Service,
        caller: &Identifier,
        channel: &ChannelSeen,
        payload: &[u8],
        permit: OwnedSemaphorePermit,
    ) -> Vec<u8> {
        let result = match service {
            Service::Tickets => match api::decode_request(payload) {
                Ok(request) => self.tickets(caller, request).await,
                Err(e) => Err(e),
            },
            Service::Acceptor => match api::decode_request::<RedeemRequest>(payload) {
                Ok(request) => self
                    .redeem(caller, &request.code)
                    .await
                    .map(Answer::Enrolled),
                // Serde's message could quote the request, and this one carries a code.
                Err(_) => Err(bad_request(
                    "malformed request: expected {\"code\": \"<64 hex digits>\"}",
                )),
            },
            Service::Credentials => match api::decode_request::<CredentialRequest>(payload) {
                Ok(CredentialRequest {}) => self.credential(caller).await.map(Answer::Enrolled),
                Err(e) => Err(e),
            },
            Service::Members => match api::decode_request(payload) {
                Ok(request) => self.members(caller, request).await,
                Err(e) => Err(e),
            },
            Service::Audit => match api::decode_request::<AuditRequest>(payload) {
                Ok(request) => self.audit(caller, request).await.map(Answer::Audit),
                Err(e) => Err(e),
            },
            Service::Join => match api::decode_request(payload) {
                Ok(call) => self.join_call(caller, channel, call, permit).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(answer) => answer.encode(),
            Err(refusal) => {
                info!(kind = ?refusal.kind, reason = %refusal.message, "refused a request");
                encode_result::<()>(Err(refusal))
            }
        }
    }

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
            Some(member) if is_enroller(&member) => Ok(true),
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

    fn admin_only(&self, caller: &Identifier, refusal: &str) -> Result<(), ApiError> {
        if self.is_admin(caller) {
            Ok(())
        } else {
            Err(forbidden(refusal))
        }
    }

    async fn tickets(
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
                if enroller
                    && attributes.get(ROLE_ATTRIBUTE).map(String::as_str) == Some(ENROLLER_ROLE)
                {
                    return Err(forbidden(
                        "only admins may create tickets with ockam-role=enroller",
                    ));
                }
                self.create_ticket(caller, attributes, expires_in, usage_count)
                    .await
                    .map(Answer::CreatedTicket)
            }
            TicketRequest::List {} => {
                let tickets = store
                    .list_tickets()
                    .await
                    .map_err(|e| store_failed("listing tickets", &e))?;
                Ok(Answer::Tickets(
                    tickets.into_iter().map(ticket_info).collect(),
                ))
            }
            TicketRequest::Revoke { id } => {
                let revoked = store
                    .revoke_ticket(&id, caller, unix_now())
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
        let now = unix_now();
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
        Err(ApiError::new(ErrorKind::Internal, INTERNAL))
    }

    /// Redeem a one-time code: the caller becomes a member (committed in the store) and gets
    /// its first credential.
    async fn redeem(&self, caller: &Identifier, code: &str) -> Result<Enrolled, ApiError> {
        let code = parse_code(code)?;
        let now = unix_now();
        // The key first: once the ticket is used, nothing that can fail for want of a key
        // stands between the member and its credential.
        let key = self.signing_key(now).await?;
        let redeemed = match self
            .shared
            .store
            .redeem_ticket(&code.hash(), caller, now)
            .await
        {
            Ok(redeemed) => redeemed,
            Err(e) => return Err(redeem_refusal(&e)),
        };
        info!(ticket = %redeemed.ticket_id, "ticket redeemed; the caller is a member");
        self.issue(&key, caller, redeemed.attributes, None, now)
    }

    /// A fresh credential for a member (its stored attributes) or an admin who is not one
    /// (the project id only).
    pub(crate) async fn credential(&self, caller: &Identifier) -> Result<Enrolled, ApiError> {
        let (attributes, ttl) = match self.member(caller).await? {
            Some(member) => (member.attributes, member.credential_ttl),
            None if self.is_admin(caller) => (BTreeMap::new(), None),
            None => {
                return Err(ApiError::new(
                    ErrorKind::NotMember,
                    "you are not a member of this project; enroll with a ticket or ask an admin",
                ));
            }
        };
        let now = unix_now();
        let key = self.signing_key(now).await?;
        self.issue(&key, caller, attributes, ttl, now)
    }

    /// Sign a credential for `subject` with `attributes` plus the project id, valid from
    /// `now` for the configured lifetime.
    pub(crate) fn issue(
        &self,
        key: &CredentialSigningKey,
        subject: &Identifier,
        mut attributes: BTreeMap<String, String>,
        ttl: Option<u64>,
        now: u64,
    ) -> Result<Enrolled, ApiError> {
        let config = &self.shared.config;
        attributes.insert(PROJECT_ID_ATTRIBUTE.to_owned(), config.project_id.clone());
        // A member approved for less than the default keeps that limit at every refresh.
        let ttl = config
            .credential_ttl
            .as_secs()
            .min(ttl.unwrap_or(u64::MAX))
            .max(1);
        let expires_at = now.saturating_add(ttl);
        match CredentialAndPurposeKey::issue(key, subject, attributes.clone(), now, expires_at) {
            Ok(credential) => {
                info!(expires_at, "credential issued");
                Ok(Enrolled {
                    credential: hex::encode(&credential.encode()),
                    attributes,
                    expires_at,
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

    /// The signing key to use at `now`: the cached one while it lasts long enough, else one
    /// from the vault, fetched by one request at a time.
    pub(crate) async fn signing_key(
        &self,
        now: u64,
    ) -> Result<Arc<CredentialSigningKey>, ApiError> {
        let ttl = self.shared.config.credential_ttl.as_secs();
        let needed = now.saturating_add(ttl).saturating_add(KEY_REUSE_MARGIN);
        let cache = &self.shared.signing_key;
        if let Some(key) = cache.lasting_until(needed) {
            return Ok(key);
        }
        // Held across the vault call on purpose: it is the single-flight lock, and no
        // other lock is taken under it.
        let _one_fetch = cache.fetching.lock().await;
        if let Some(key) = cache.lasting_until(needed) {
            return Ok(key);
        }
        let until = now.saturating_add(ttl).saturating_add(KEY_FETCH_MARGIN);
        let key = self
            .shared
            .vault
            .credential_signing_key_until(&self.shared.identity_name, now, until)
            .await
            .map_err(|e| {
                warn!(identity = %self.shared.identity_name, error = %DisplayChain(&e), "cannot get a credential signing key from the vault");
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
            return Err(ApiError::new(ErrorKind::Internal, INTERNAL));
        }
        debug!(
            expires_at = key.attestation().expires_at(),
            "credential signing key loaded"
        );
        let key = Arc::new(key);
        *cache.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(key.clone());
        Ok(key)
    }

    async fn members(
        &self,
        caller: &Identifier,
        request: MembersRequest,
    ) -> Result<Answer, ApiError> {
        const READERS: &str = "only the project's admins and enrollers may list members";
        const WRITERS: &str = "only the project's admins may add or delete members";
        let store = &self.shared.store;
        match request {
            MembersRequest::List {} => {
                self.admin_or_enroller(caller, READERS).await?;
                let members = store
                    .members()
                    .await
                    .map_err(|e| store_failed("listing members", &e))?;
                Ok(Answer::Members(
                    members.into_iter().map(member_info).collect(),
                ))
            }
            MembersRequest::Show { identifier } => {
                self.admin_or_enroller(caller, READERS).await?;
                let identifier = parse_identifier(&identifier)?;
                match self.member(&identifier).await? {
                    Some(member) => Ok(Answer::Member(member_info(member))),
                    None => Err(not_a_member()),
                }
            }
            MembersRequest::Add {
                identifier,
                attributes,
            } => {
                self.admin_only(caller, WRITERS)?;
                let identifier = parse_identifier(&identifier)?;
                check_member_attributes(&attributes)?;
                let now = unix_now();
                let member = Member {
                    identifier,
                    attributes,
                    added_at: now,
                    added_by: *caller,
                    via: Member::VIA_ADMIN.to_owned(),
                    credential_ttl: None,
                };
                store
                    .add_member(&member, caller, now)
                    .await
                    .map_err(|e| store_failed("adding a member", &e))?;
                info!(member = %member.identifier, attributes = ?member.attributes, "member added");
                Ok(Answer::Member(member_info(member)))
            }
            MembersRequest::Delete { identifier } => {
                self.admin_only(caller, WRITERS)?;
                let identifier = parse_identifier(&identifier)?;
                let deleted = store
                    .delete_member(&identifier, caller, unix_now())
                    .await
                    .map_err(|e| store_failed("deleting a member", &e))?;
                match deleted {
                    Some(member) => {
                        info!(member = %member.identifier, "member deleted");
                        Ok(Answer::Member(member_info(member)))
                    }
                    None => Err(not_a_member()),
                }
            }
        }
    }

    async fn audit(
        &self,
        caller: &Identifier,
        request: AuditRequest,
    ) -> Result<Vec<AuditEntry>, ApiError> {
        self.admin_only(caller, "only the project's admins may read the audit log")?;
        if request.limit > MAX_AUDIT_LIMIT {
            return Err(bad_request(format!(
                "at most {MAX_AUDIT_LIMIT} audit entries per request; {} were asked for",
                request.limit
            )));
        }
        let events = self
            .shared
            .store
            .audit_log(request.limit)
            .await
            .map_err(|e| store_failed("reading the audit log", &e))?;
        Ok(events.into_iter().map(audit_entry).collect())
    }
}

impl KeyCache {
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

fn not_a_member() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "there is no member with this identifier",
    )
}

/// The peer's answer to a refused redemption: a kind and message per reason; store failures
/// are logged and answered coarsely.
fn redeem_refusal(error: &RedeemError) -> ApiError {
    match error {
        RedeemError::Unknown => ApiError::new(
            ErrorKind::TicketUnknown,
            "this ticket is not known to the authority; check that it was copied whole and is for this project",
        ),
        RedeemError::Expired { expires_at } => ApiError::new(
            ErrorKind::TicketExpired,
            format!(
                "this ticket has expired (at Unix time {expires_at}); ask an admin for a new one"
            ),
        ),
        RedeemError::Revoked { .. } => ApiError::new(
            ErrorKind::TicketRevoked,
            "this ticket has been revoked; ask an admin for a new one",
        ),
        RedeemError::UsedUp { .. } => ApiError::new(
            ErrorKind::TicketUsedUp,
            "this ticket has been used up: it has enrolled as many identities as it may; ask an admin for a new one",
        ),
        RedeemError::Store(e) => store_failed("redeeming a ticket", e),
    }
}

/// Every kind of successful answer, encoded as the API type each request promises.
pub(crate) enum Answer {
    CreatedTicket(CreatedTicket),
    Tickets(Vec<TicketInfo>),
    Ticket(TicketInfo),
    Enrolled(Enrolled),
    Members(Vec<MemberInfo>),
    Member(MemberInfo),
    Audit(Vec<AuditEntry>),
    JoinRequest(JoinRequestInfo),
    JoinRequests(Vec<JoinRequestInfo>),
    JoinWaited(Box<JoinWaited>),
    Rule(AutoApproveRule),
    Rules(Vec<AutoApproveRule>),
    RuleAdded(RuleAdded),
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
            Answer::Audit(v) => encode_result::<_>(Ok(v)),
            Answer::JoinRequest(v) => encode_result::<_>(Ok(v)),
            Answer::JoinRequests(v) => encode_result::<_>(Ok(v)),
            Answer::JoinWaited(v) => encode_result::<_>(Ok(v)),
            Answer::Rule(v) => encode_result::<_>(Ok(v)),
            Answer::Rules(v) => encode_result::<_>(Ok(v)),
            Answer::RuleAdded(v) => encode_result::<_>(Ok(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_attributes_are_bounded_and_may_not_set_the_project_id() {
        let ok: BTreeMap<String, String> = [("component".into(), "db".into())].into();
        assert!(check_member_attributes(&ok).is_ok());
        let project: BTreeMap<String, String> = [(PROJECT_ID_ATTRIBUTE.into(), "p".into())].into();
        assert_eq!(
            check_member_attributes(&project).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let spaced: BTreeMap<String, String> = [("a b".into(), "c".into())].into();
        assert!(check_member_attributes(&spaced).is_err());
        let full: BTreeMap<String, String> = (0..MAX_MEMBER_ATTRIBUTES)
            .map(|i| (format!("a{i}"), String::new()))
            .collect();
        assert!(check_member_attributes(&full).is_ok());
        let mut over = full;
        over.insert("one-more".into(), String::new());
        assert!(check_member_attributes(&over).is_err());
    }

    #[test]
    fn ticket_terms_have_bounds_on_both_sides() {
        assert_eq!(check_ticket_terms(1, 1).unwrap(), 1);
        assert!(check_ticket_terms(MAX_TICKET_LIFETIME.as_secs(), MAX_TICKET_USES).is_ok());
        assert!(check_ticket_terms(0, 1).is_err());
        assert!(check_ticket_terms(MAX_TICKET_LIFETIME.as_secs() + 1, 1).is_err());
        assert!(check_ticket_terms(60, 0).is_err());
        assert!(check_ticket_terms(60, MAX_TICKET_USES + 1).is_err());
    }

    #[test]
    fn codes_are_64_hex_digits_and_never_echoed() {
        let code = OneTimeCode::random();
        let text = hex::encode(code.as_bytes());
        assert_eq!(parse_code(&text).unwrap(), code);
        assert_eq!(parse_code(&text.to_uppercase()).unwrap(), code);
        for bad in [
            &text[..63],
            &format!("{text}0"),
            &format!("{}g", &text[..63]),
            "é",
        ] {
            let refusal = parse_code(bad).unwrap_err();
            assert_eq!(refusal.kind, ErrorKind::BadRequest);
            assert!(!refusal.message.contains(&text[..16]));
        }
    }

    #[tokio::test]
    async fn the_signing_key_is_reused_while_it_lasts_and_replaced_before_it_runs_out() {
        let dir = tempfile::TempDir::new().unwrap();
        let now = unix_now();
        let vault = Vault::open(&dir.path().join("vault.sqlite")).await.unwrap();
        vault.create_identity("authority", now).await.unwrap();
        let store = MembershipStore::open_sqlite(&dir.path().join("store.sqlite"))
            .await
            .unwrap();
        let ttl = Duration::from_secs(30 * 24 * 60 * 60);
        let authority = Authority::new(
            store.clone(),
            vault.clone(),
            "authority".into(),
            AuthorityConfig {
                project_id: "p".into(),
                admins: BTreeSet::new(),
                credential_ttl: ttl,
                join: JoinSettings::default(),
            },
        );
        // Concurrent first requests wait for one fetch instead of each attesting a key.
        let keys = concurrent_keys(&authority, now, 8).await;
        let first = keys[0].clone();
        assert!(keys.iter().all(|k| Arc::ptr_eq(k, &first)));
        assert!(first.attestation().expires_at() >= now + ttl.as_secs() + KEY_REUSE_MARGIN);
        // A day later it still lasts long enough.
        let later = authority.signing_key(now + KEY_REUSE_MARGIN).await.unwrap();
        assert!(Arc::ptr_eq(&later, &first));
        // Once it would not outlive a credential by a day, a new one is fetched.
        let much_later = now + 2 * KEY_FETCH_MARGIN;
        let next = authority.signing_key(much_later).await.unwrap();
        assert_ne!(
            next.attestation().public_key(),
            first.attestation().public_key()
        );
        assert!(next.attestation().expires_at() >= much_later + ttl.as_secs() + KEY_REUSE_MARGIN);
        store.close().await;
        vault.close().await;
    }

    async fn concurrent_keys(
        authority: &Authority,
        now: u64,
        n: usize,
    ) -> Vec<Arc<CredentialSigningKey>> {
        let mut set = JoinSet::new();
        for _ in 0..n {
            let a = authority.clone();
            set.spawn(async move { a.signing_key(now).await.unwrap() });
        }
        let mut keys = Vec::new();
        while let Some(k) = set.join_next().await {
            keys.push(k.unwrap());
        }
        keys
    }
}
