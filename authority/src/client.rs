//! The client side of the authority's services, for the CLI and for nodes that enroll or
//! refresh their credentials (DESIGN §5).
//!
//! [`AuthorityClient::connect`] opens a secure channel to the authority's listener that only
//! the expected authority identity can complete: a handshake with anyone else (a man in the
//! middle, or a project file pointing at the wrong node) fails before we present our own
//! credentials, with [`ClientError::WrongAuthority`]. Each call then sends one request through
//! that channel and waits a bounded time for its answer. Every answer is checked to have come
//! back through the channel, and every credential the authority hands out is verified
//! against the authority's identity before it is returned.
//!
//! A [`JoinWait`] waits for the decision on a join request that was filed: it asks again
//! while the authority holds the request pending, and when the channel ends (the authority
//! restarted, say) it notices at once by the channel's end signal, reconnects with a capped
//! backoff to the same authority identity, and keeps waiting for the same request. It never
//! files a request, so it never files one twice. What it is doing, it tells its caller
//! through [`JoinEvent`]s; showing them is the caller's business.
//!
//! What it does not do: retry single calls (the CLI's `--retry-count` decides that), or
//! store anything.
//!
//! [`AuthorityClient::connect`]: crate::client::AuthorityClient::connect
//! [`ClientError::WrongAuthority`]: crate::client::ClientError::WrongAuthority
//! [`JoinWait`]: crate::client::JoinWait
//! [`JoinEvent`]: crate::client::JoinEvent

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use kith_identity::backoff::Backoff;
use kith_identity::channel::{Admission, HandshakeError};
use kith_identity::secure_channel::{
    self, ChannelSettings, EndSignal, SecureChannel, SecureChannelError,
};
use kith_identity::{CredentialAndPurposeKey, Identifier, Identity, unix_now};
use kith_node::{Address, Node, Origin, RequestError, Route};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    self, ACCEPTOR_SERVICE, AUDIT_SERVICE, AuditEntry, AuditRequest, AutoApproveRule,
    CREDENTIAL_SERVICE, CreatedTicket, CredentialRequest, Enrolled, ErrorKind, JOIN_SERVICE,
    JOIN_WAIT_HOLD, JoinCall, JoinRequestInfo, JoinState, JoinWaited, MEMBERS_SERVICE,
    MemberChange, MemberInfo, MembersRequest, Page, PendingDenied, PendingSelector,
    REVOCATION_SERVICE, RedeemRequest, RevocationsPage, RevocationsRequest, RuleAdded,
    TICKET_SERVICE, TicketInfo, TicketRequest,
};
pub use crate::error::{ClientError, CredentialCheckError, JoinWaitError};

/// 200 ms: how long a failed wait call gives its channel to say it ended. A send that finds
/// the channel's connection gone can fail a moment before the channel marks its end.
const CHANNEL_END_GRACE: Duration = Duration::from_millis(200);
use crate::relay::{RELAY_SERVICE, RelayInfo, RelayRequest};
use crate::ticket::OneTimeCode;
use kith_identity::hex;
use kith_identity::revocation::{Revocation, SignedRevocations};

/// 1 s: how much longer a channel's own handshake deadline runs than the bound a client
/// puts on it, so that a silent authority is reported as [`ClientError::ConnectTimeout`].
/// An abandoned handshake lingers this long at most.
const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// 5 s: how much longer than [`JOIN_WAIT_HOLD`] a join request wait waits for its answer,
/// for the answer's trip back and a busy authority's store.
const WAIT_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// A secure channel to a project's authority, and the calls its services answer. The
/// channel closes when the client is dropped (or [`AuthorityClient::close`]d).
pub struct AuthorityClient {
    node: Node,
    channel: SecureChannel,
    /// Who we are in the channel: the subject of the credentials we get.
    subject: Identifier,
    timeout: Duration,
}

impl fmt::Debug for AuthorityClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityClient")
            .field("authority", &self.channel.peer.identifier)
            .field("encryptor", &self.channel.encryptor)
            .field("subject", &self.subject)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AuthorityClient {
    /// Open a secure channel to whoever answers at `listener_route`, for a requester that
    /// knows the authority's route but not its identifier: [`AuthorityClient::authority`]
    /// says who answered, and the caller must have that confirmed (by its fingerprint)
    /// before it trusts anything the channel brings.
    pub async fn connect_unpinned(
        node: &Node,
        listener_route: Route,
        settings: &ChannelSettings,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let channel = Self::open(
            node,
            listener_route,
            settings,
            Admission::AnyIdentity,
            timeout,
        )
        .await?;
        Ok(Self::with(node, settings, channel, timeout))
    }

    /// Open a secure channel from `node` to the authority's secure-channel listener at
    /// `listener_route` (the route to the authority node and its `api` listener) as the
    /// identity in `settings`, admitting only `authority` at the other end: anyone else
    /// fails the handshake, before we present our credentials, with
    /// [`ClientError::WrongAuthority`]. `timeout` bounds the handshake and, afterwards, each
    /// request.
    pub async fn connect(
        node: &Node,
        listener_route: Route,
        authority: &Identifier,
        settings: &ChannelSettings,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let only = Admission::Identifiers(BTreeSet::from([*authority]));
        let channel = match Self::open(node, listener_route, settings, only, timeout).await {
            Ok(channel) => channel,
            Err(ClientError::Connect {
                source: SecureChannelError::Handshake(HandshakeError::NotAdmitted(found, _)),
                ..
            }) => {
                return Err(ClientError::WrongAuthority {
                    expected: *authority,
                    found,
                });
            }
            Err(e) => return Err(e),
        };
        // The admission rule already ensures this; checked again because everything below
        // trusts it.
        if channel.peer.identifier != *authority {
            secure_channel::close(node, &channel);
            return Err(ClientError::WrongAuthority {
                expected: *authority,
                found: channel.peer.identifier,
            });
        }
        Ok(Self::with(node, settings, channel, timeout))
    }

    /// A channel to `listener_route` admitting, at the other end, whom `admission` says.
    async fn open(
        node: &Node,
        listener_route: Route,
        settings: &ChannelSettings,
        admission: Admission,
        timeout: Duration,
    ) -> Result<SecureChannel, ClientError> {
        let route = listener_route.to_string();
        let mut ours = settings.admitting(admission);
        // Our bound, not the channel's own deadline, is what expires on silence: that one
        // reports it as an unexpected handshake message. A caller that set a shorter
        // handshake deadline keeps it.
        if ours.handshake_timeout >= timeout {
            ours.handshake_timeout = timeout.saturating_add(HANDSHAKE_GRACE);
        }
        match tokio::time::timeout(timeout, secure_channel::create(node, listener_route, &ours))
            .await
        {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(source)) => Err(ClientError::Connect { route, source }),
            Err(_) => Err(ClientError::ConnectTimeout {
                route,
                after: timeout,
            }),
        }
    }

    fn with(
        node: &Node,
        settings: &ChannelSettings,
        channel: SecureChannel,
        timeout: Duration,
    ) -> Self {
        Self {
            node: node.clone(),
            subject: *settings.local.identity.identifier(),
            channel,
            timeout,
        }
    }

    /// The authority's identity, as it proved it in the handshake: what a member trusts to
    /// verify the project's credentials.
    pub fn authority(&self) -> &Identity {
        &self.channel.peer.identity
    }

    /// The verification code of the channel; the authority's end shows the same one, so an
    /// admin can compare them out of band.
    pub fn verification_code(&self) -> String {
        self.channel.verification_code.clone()
    }

    /// What tells when the channel to the authority has ended (closed, or its connection
    /// lost): a caller waiting on a long call selects on it to notice at once.
    pub fn end_signal(&self) -> EndSignal {
        self.channel.end_signal()
    }

    /// How long each request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Wait `timeout` for each later answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Create a ticket that gives its redeemers `attributes`, expires in `expires_in`
    /// (whole seconds) and may enroll `usage_count` identities. Admins and enrollers only.
    pub async fn create_ticket(
        &mut self,
        attributes: BTreeMap<String, String>,
        expires_in: Duration,
        usage_count: u32,
    ) -> Result<CreatedTicket, ClientError> {
        let request = TicketRequest::Create {
            attributes,
            expires_in: expires_in.as_secs(),
            usage_count,
        };
        self.call(TICKET_SERVICE, &request).await
    }

    /// Every ticket, revoked and expired ones included. Admins and enrollers only.
    pub async fn list_tickets(&mut self) -> Result<Vec<TicketInfo>, ClientError> {
        self.walk(TICKET_SERVICE, |after| TicketRequest::List {
            after,
            limit: None,
        })
        .await
    }

    /// Revoke ticket `id`. Admins and enrollers only.
    pub async fn revoke_ticket(&mut self, id: &str) -> Result<TicketInfo, ClientError> {
        let request = TicketRequest::Revoke { id: id.to_owned() };
        self.call(TICKET_SERVICE, &request).await
    }

    /// Redeem a ticket's one-time code: become a member and get a first credential, verified
    /// against the authority's identity before it is returned.
    /// A member already keeps its attributes and gets the ticket's added to them.
    pub async fn redeem(&mut self, code: &OneTimeCode) -> Result<Enrolled, ClientError> {
        self.redeem_with(code, false).await
    }

    /// [`AuthorityClient::redeem`]; if the caller is a member already, with `replace` its
    /// attributes become the ticket's instead of the ticket's being added to them.
    /// [`Enrolled::before`] says what they were. Redeeming again a ticket whose answer was
    /// lost (while still a member) succeeds without spending another use.
    pub async fn redeem_with(
        &mut self,
        code: &OneTimeCode,
        replace: bool,
    ) -> Result<Enrolled, ClientError> {
        let request = RedeemRequest {
            code: hex::encode(code.as_bytes()),
            replace,
        };
        let enrolled: Enrolled = self.call(ACCEPTOR_SERVICE, &request).await?;
        self.check_credential(&enrolled)?;
        Ok(enrolled)
    }

    /// A fresh credential for a member (or an admin), verified as for
    /// [`AuthorityClient::redeem`].
    pub async fn credential(&mut self) -> Result<Enrolled, ClientError> {
        let enrolled: Enrolled = self.call(CREDENTIAL_SERVICE, &CredentialRequest {}).await?;
        self.check_credential(&enrolled)?;
        Ok(enrolled)
    }

    /// The authority's revocation statements after `after`, signed, verified against its
    /// identity; if there are none yet, the authority holds the request up to `wait` (at
    /// most [`MAX_REVOCATION_WAIT`]) for one. Returns them with the feed's head.
    ///
    /// [`MAX_REVOCATION_WAIT`]: crate::api::MAX_REVOCATION_WAIT
    pub async fn revocations(
        &mut self,
        after: u64,
        wait: Duration,
    ) -> Result<(Vec<Revocation>, u64), ClientError> {
        let wait = wait.min(crate::api::MAX_REVOCATION_WAIT);
        let request = RevocationsRequest {
            after,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        let page: RevocationsPage = self
            .call_within(REVOCATION_SERVICE, &request, wait + self.timeout)
            .await?;
        let bad = |why: String| ClientError::BadRevocations(why);
        let bytes = hex::decode(&page.revocations).map_err(|e| bad(e.to_string()))?;
        let signed = SignedRevocations::decode(&bytes).map_err(|e| bad(e.to_string()))?;
        let statements = signed
            .verify(&self.channel.peer.identity, unix_now())
            .map_err(|e| bad(kith_node::DisplayChain(&e).to_string()))?;
        if let Some(first) = statements.first()
            && first.seq <= after
        {
            return Err(bad(format!(
                "asked for revocations after {after}, got {}",
                first.seq
            )));
        }
        Ok((statements, page.head))
    }

    /// Every member. Admins and enrollers only.
    pub async fn members(&mut self) -> Result<Vec<MemberInfo>, ClientError> {
        self.walk(MEMBERS_SERVICE, |after| MembersRequest::List {
            after,
            limit: None,
        })
        .await
    }

    /// The member `identifier`. Admins and enrollers only.
    pub async fn member(&mut self, identifier: &Identifier) -> Result<MemberInfo, ClientError> {
        let request = MembersRequest::Show {
            identifier: identifier.to_string(),
        };
        self.call(MEMBERS_SERVICE, &request).await
    }

    /// Make `identifier` a member with `attributes` (replacing its attributes if it is one).
    /// Admins only.
    pub async fn add_member(
        &mut self,
        identifier: &Identifier,
        attributes: BTreeMap<String, String>,
    ) -> Result<MemberInfo, ClientError> {
        let request = MembersRequest::Add {
            identifier: identifier.to_string(),
            attributes,
        };
        self.call(MEMBERS_SERVICE, &request).await
    }

    /// Change the attributes of member `identifier`: set those in `set`, then remove those
    /// named in `remove`. Admins, and enrollers for attributes other than the role.
    /// Returns the member before and after.
    pub async fn update_member(
        &mut self,
        identifier: &Identifier,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<MemberChange, ClientError> {
        let request = MembersRequest::Update {
            identifier: identifier.to_string(),
            set,
            remove,
        };
        self.call(MEMBERS_SERVICE, &request).await
    }

    /// Delete the member `identifier`; returns what it was. Admins only.
    pub async fn delete_member(
        &mut self,
        identifier: &Identifier,
    ) -> Result<MemberInfo, ClientError> {
        let request = MembersRequest::Delete {
            identifier: identifier.to_string(),
        };
        self.call(MEMBERS_SERVICE, &request).await
    }

    /// Create relay `name` on the project node towards us, through this client's channel
    /// (or move it to this channel, if it is ours already). Needs `ockam-relay=name` in our
    /// credential, or to be an admin. The client's channel must stay open for the relay to
    /// work: the relay forwards through it.
    pub async fn create_relay(&mut self, name: &str) -> Result<RelayInfo, ClientError> {
        let request = RelayRequest::Create {
            name: name.to_owned(),
        };
        self.call(RELAY_SERVICE, &request).await
    }

    /// Whether relay `name` still leads to us through this channel; refused with
    /// [`crate::api::ErrorKind::NotFound`] if not.
    pub async fn check_relay(&mut self, name: &str) -> Result<RelayInfo, ClientError> {
        let request = RelayRequest::Check {
            name: name.to_owned(),
        };
        self.call(RELAY_SERVICE, &request).await
    }

    /// Delete relay `name`. Its owner or an admin.
    pub async fn delete_relay(&mut self, name: &str) -> Result<RelayInfo, ClientError> {
        let request = RelayRequest::Delete {
            name: name.to_owned(),
        };
        self.call(RELAY_SERVICE, &request).await
    }

    /// The project node's relays: all for an admin, our own for anyone else.
    pub async fn list_relays(&mut self) -> Result<Vec<RelayInfo>, ClientError> {
        self.walk(RELAY_SERVICE, |after| RelayRequest::List { after })
            .await
    }

    /// File a join request for `attributes` and a credential `lifetime` (`None`: the
    /// authority's default), with a `note` for the admin. Returns the request as the
    /// authority stored it and the verification code of this channel, computed here from
    /// what we asked for: the admin must see the same code, or someone sits in between.
    pub async fn file_join_request(
        &mut self,
        attributes: BTreeMap<String, String>,
        lifetime: Option<Duration>,
        note: &str,
    ) -> Result<(JoinRequestInfo, String), ClientError> {
        let call = JoinCall::File {
            attributes: attributes.clone(),
            lifetime: lifetime.map(|l| l.as_secs()),
            note: note.to_owned(),
        };
        let filed: JoinRequestInfo = self.call(JOIN_SERVICE, &call).await?;
        let lifetime = lifetime.map_or(filed.lifetime, |l| l.as_secs());
        let code = api::join_code(
            &self.channel.handshake_hash,
            &filed.id,
            &self.subject.to_string(),
            &attributes,
            lifetime,
        );
        Ok((filed, code))
    }

    /// Wait for a decision on our join request `id`: answered once it is decided, or after
    /// at most [`JOIN_WAIT_HOLD`] with it still pending. A credential in the answer is
    /// verified as for [`AuthorityClient::redeem`].
    pub async fn wait_join_request(&mut self, id: &str) -> Result<JoinWaited, ClientError> {
        let call = JoinCall::Wait { id: id.to_owned() };
        let within = self.timeout.max(JOIN_WAIT_HOLD + WAIT_ANSWER_MARGIN);
        let waited: JoinWaited = self.call_within(JOIN_SERVICE, &call, within).await?;
        if let Some(enrolled) = &waited.credential {
            self.check_credential(enrolled)?;
        }
        Ok(waited)
    }

    /// Join requests: pending ones, or all with `all`. Admins and enrollers only.
    pub async fn join_requests(&mut self, all: bool) -> Result<Vec<JoinRequestInfo>, ClientError> {
        self.walk(JOIN_SERVICE, |after| JoinCall::List {
            all,
            after,
            limit: None,
        })
        .await
    }

    /// Join request `id`. Admins and enrollers only.
    pub async fn join_request(&mut self, id: &str) -> Result<JoinRequestInfo, ClientError> {
        let call = JoinCall::Show { id: id.to_owned() };
        self.call(JOIN_SERVICE, &call).await
    }

    /// Approve join request `id`, whose verification code is `code`, optionally narrowing
    /// its attributes and credential lifetime. Admins and enrollers only.
    pub async fn approve_join_request(
        &mut self,
        id: &str,
        code: &str,
        attributes: Option<BTreeMap<String, String>>,
        lifetime: Option<Duration>,
    ) -> Result<JoinRequestInfo, ClientError> {
        let call = JoinCall::Approve {
            id: id.to_owned(),
            code: code.to_owned(),
            attributes,
            lifetime: lifetime.map(|l| l.as_secs()),
        };
        self.call(JOIN_SERVICE, &call).await
    }

    /// Deny join request `id`, telling the requester `reason`. Admins and enrollers only.
    pub async fn deny_join_request(
        &mut self,
        id: &str,
        reason: &str,
    ) -> Result<JoinRequestInfo, ClientError> {
        let call = JoinCall::Deny {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        self.call(JOIN_SERVICE, &call).await
    }

    /// Deny every pending join request `select` picks, at once, telling each requester
    /// `reason` (not blank); the answer lists them. Admins and enrollers only.
    pub async fn deny_pending_join_requests(
        &mut self,
        select: PendingSelector,
        reason: &str,
    ) -> Result<PendingDenied, ClientError> {
        let call = JoinCall::DenyPending {
            select,
            reason: reason.to_owned(),
        };
        self.call(JOIN_SERVICE, &call).await
    }

    /// Add an auto-approval rule for requests from `netblock` (CIDR) asking only for
    /// attributes among `attributes`, granting at most `max_credential_lifetime`; the rule
    /// lasts `lifetime`. Pending requests it covers are approved at once. Admins and
    /// enrollers only.
    pub async fn add_auto_approve_rule(
        &mut self,
        netblock: &str,
        attributes: BTreeMap<String, String>,
        max_credential_lifetime: Option<Duration>,
        lifetime: Duration,
    ) -> Result<RuleAdded, ClientError> {
        let call = JoinCall::AddRule {
            netblock: netblock.to_owned(),
            attributes,
            max_credential_lifetime: max_credential_lifetime.map(|l| l.as_secs()),
            lifetime: lifetime.as_secs(),
        };
        self.call(JOIN_SERVICE, &call).await
    }

    /// The auto-approval rules in force. Admins and enrollers only.
    pub async fn auto_approve_rules(&mut self) -> Result<Vec<AutoApproveRule>, ClientError> {
        self.call(JOIN_SERVICE, &JoinCall::ListRules {}).await
    }

    /// Delete auto-approval rule `id`. Admins and enrollers only.
    pub async fn delete_auto_approve_rule(
        &mut self,
        id: &str,
    ) -> Result<AutoApproveRule, ClientError> {
        let call = JoinCall::DeleteRule { id: id.to_owned() };
        self.call(JOIN_SERVICE, &call).await
    }

    /// The newest `limit` audit entries, newest last. Admins only.
    pub async fn audit(&mut self, limit: u32) -> Result<Vec<AuditEntry>, ClientError> {
        let mut entries = Vec::new();
        let mut before = None;
        while u32::try_from(entries.len()).is_ok_and(|n| n < limit) {
            let left = limit - u32::try_from(entries.len()).unwrap_or(limit);
            let request = AuditRequest {
                limit: left,
                before: before.clone(),
            };
            let page: Page<AuditEntry> = self.call(AUDIT_SERVICE, &request).await?;
            entries.extend(page.items);
            match page.next {
                None => break,
                Some(next) if before.as_ref() == Some(&next) => {
                    return Err(ClientError::PageStalled {
                        service: AUDIT_SERVICE,
                    });
                }
                Some(next) => before = Some(next),
            }
        }
        // Newest first as paged; the oldest of them first as shown.
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        entries.reverse();
        Ok(entries)
    }

    /// Close the channel (the authority's end is told).
    pub async fn close(self) {
        // Dropping closes; see `Drop`.
        drop(self);
    }

    /// Every row of a paged list of `service`: asks with `request` for the page after each
    /// cursor the last page named, from the first, until a page names none. A page that
    /// names the cursor it was asked with would never end the walk: refused.
    async fn walk<T: DeserializeOwned, R: Serialize>(
        &mut self,
        service: &'static str,
        request: impl Fn(Option<String>) -> R,
    ) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: Page<T> = self.call(service, &request(after.clone())).await?;
            items.extend(page.items);
            match page.next {
                None => return Ok(items),
                Some(next) if after.as_ref() == Some(&next) => {
                    return Err(ClientError::PageStalled { service });
                }
                Some(next) => after = Some(next),
            }
        }
    }

    /// Send `request` to `service` through the channel and decode its answer.
    ///
    /// Each call waits on a mailbox of its own, at a fresh random address that lives only
    /// for this call, so an answer that arrives after its call timed out finds no one and is
    /// dropped instead of being taken for the answer to the next call.
    async fn call<T: DeserializeOwned>(
        &mut self,
        service: &'static str,
        request: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.call_within(service, request, self.timeout).await
    }

    /// [`AuthorityClient::call`], waiting `timeout` for the answer.
    async fn call_within<T: DeserializeOwned>(
        &self,
        service: &'static str,
        request: &impl Serialize,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut mailbox = self.node.client().map_err(ClientError::Mailbox)?;
        let route = Route::from(vec![
            self.channel.encryptor.clone(),
            Address::local(service),
        ]);
        let request =
            api::encode(request).map_err(|source| ClientError::Encode { service, source })?;
        // A channel that ends (the authority stopped, its connection dropped) ends the wait
        // at once, with why.
        let end = self.channel.end_signal();
        let answered = tokio::select! {
            answered = mailbox.request(route, request, timeout) => answered,
            how = end.ended() => return Err(ClientError::ChannelEnded { service, how }),
        };
        let reply = match answered {
            Ok(reply) => reply,
            Err(RequestError::Route(source)) => {
                return Err(ClientError::Send { service, source });
            }
            Err(RequestError::Timeout(after)) => {
                return Err(ClientError::Timeout { service, after });
            }
            Err(RequestError::Closed) => return Err(ClientError::Closed),
            Err(
                source @ (RequestError::Undeliverable(_) | RequestError::MalformedErrorReply(_)),
            ) => return Err(ClientError::NotDelivered { service, source }),
        };
        let through_channel = matches!(
            reply.origin(),
            Origin::SecureChannel(peer)
                if peer.identifier == self.channel.peer.identifier.to_string()
        );
        if !through_channel {
            return Err(ClientError::UnexpectedReply { service });
        }
        api::decode_reply(&reply.payload).map_err(ClientError::Refused)
    }

    /// Check that `enrolled` holds a credential for us, issued by the authority, valid now,
    /// with the attributes the answer lists.
    fn check_credential(&self, enrolled: &Enrolled) -> Result<(), ClientError> {
        let credential = decode_credential(enrolled).map_err(ClientError::BadCredential)?;
        let verified = credential
            .verify(
                &self.subject,
                std::slice::from_ref(&self.channel.peer.identity),
                unix_now(),
            )
            .map_err(|e| ClientError::BadCredential(CredentialCheckError::Verify(e)))?;
        if verified.attributes != enrolled.attributes || verified.expires_at != enrolled.expires_at
        {
            return Err(ClientError::BadCredential(CredentialCheckError::Mismatch));
        }
        Ok(())
    }
}

impl Drop for AuthorityClient {
    fn drop(&mut self) {
        secure_channel::close(&self.node, &self.channel);
    }
}

/// The credential in an [`Enrolled`] answer (hex of [`CredentialAndPurposeKey::encode`]),
/// decoded but not verified.
pub fn decode_credential(
    enrolled: &Enrolled,
) -> Result<CredentialAndPurposeKey, CredentialCheckError> {
    let bytes = hex::decode(&enrolled.credential).map_err(|_| CredentialCheckError::NotHex)?;
    CredentialAndPurposeKey::decode(&bytes).map_err(CredentialCheckError::Decode)
}

/// 10 s: how long one handshake with the authority may take when a [`JoinWait`]
/// reconnects; as for every other command that reaches it.
pub const JOIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// 200 ms: the first pause before reconnecting while waiting (or before asking a busy
/// authority again); an authority that restarts is often back this fast.
const FIRST_RECONNECT: Duration = Duration::from_millis(200);

/// 15 s: the longest pause between reconnections, so the requester is back within seconds
/// of the authority without hammering one that is down for long.
const MAX_RECONNECT: Duration = Duration::from_secs(15);

/// What a [`JoinWait`] is doing, for its caller to show. The wait starts waiting for a
/// decision, without an event.
#[derive(Debug)]
pub enum JoinEvent<'a> {
    /// Waiting for a decision again: after a reconnection, or after a busy authority's
    /// pause.
    Waiting,
    /// The authority answered that it is busy (or failed inside); asking again on the same
    /// channel after a pause. `message` is the authority's, as it sent it: escape control
    /// characters before showing it.
    Busy {
        /// What the authority said.
        message: &'a str,
    },
    /// The channel to the authority ended (no `error`: its end signal fired) or a wait call
    /// on it failed (`error`); reconnecting.
    Lost {
        /// Why the wait call failed, if one did.
        error: Option<&'a ClientError>,
    },
    /// A reconnection failed; trying again after a pause.
    Unreachable {
        /// Why it failed.
        error: &'a ClientError,
    },
}

/// The decision a [`JoinWait`] waited for: the request approved, and the credential it
/// brought, verified against the authority.
#[derive(Debug)]
pub struct JoinApproved {
    /// The request as the authority decided it.
    pub request: JoinRequestInfo,
    /// The credential, for the requester's identity.
    pub credential: Enrolled,
}

/// A wait for the decision on a filed join request, until a deadline: reconnecting (pinned
/// to the authority that answered first) whenever the channel ends, never filing again.
pub struct JoinWait {
    node: Node,
    listener: Route,
    settings: ChannelSettings,
    id: String,
    timeout: Duration,
    deadline: Instant,
    connect_timeout: Duration,
}

impl fmt::Debug for JoinWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinWait")
            .field("id", &self.id)
            .field("listener", &self.listener)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl JoinWait {
    /// A wait from `node`, as the identity in `settings`, for request `id` at the
    /// authority's listener `listener` (the route it was filed through), for at most
    /// `timeout` from now.
    pub fn new(
        node: &Node,
        listener: Route,
        settings: &ChannelSettings,
        id: &str,
        timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            node: node.clone(),
            listener,
            settings: settings.clone(),
            id: id.to_owned(),
            timeout,
            // A timeout too large for the clock is as good as none.
            deadline: now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(u32::MAX.into())),
            connect_timeout: JOIN_CONNECT_TIMEOUT,
        }
    }

    /// Give each reconnection's handshake `timeout` instead of [`JOIN_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// When the wait gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Wait through `client` (the channel the request was filed on, or one to the same
    /// authority) until the request is approved (its credential, verified), denied or
    /// expired, or the deadline passes; telling `on_event` what it is doing. Reconnections
    /// are pinned to `client`'s authority.
    pub async fn run(
        &self,
        client: AuthorityClient,
        mut on_event: impl FnMut(JoinEvent<'_>),
    ) -> Result<JoinApproved, JoinWaitError> {
        let authority = *client.authority().identifier();
        let mut client = Some(client);
        // Set while the authority answers "busy" (or "you are waiting already", right after
        // a reconnection while the old channel's wait is still held there): ask again after
        // a pause, on the same channel.
        let mut busy: Option<Backoff> = None;
        loop {
            let left = self.left().ok_or_else(|| self.timed_out(None))?;
            let Some(c) = client.as_mut() else {
                client = Some(self.reconnect(&authority, &mut on_event).await?);
                on_event(JoinEvent::Waiting);
                continue;
            };
            // A wait call is held by the authority for up to `JOIN_WAIT_HOLD`, and its
            // answer waited for a while longer; the end signal notices an authority that
            // went away (a restart) at once instead.
            let end = c.end_signal();
            let waited = tokio::select! {
                w = tokio::time::timeout(left, c.wait_join_request(&self.id)) => Some(w),
                _ = end.ended() => None,
            };
            let waited = match waited {
                Some(Err(_)) => return Err(self.timed_out(None)),
                // The call noticed the channel's end first: the same as the signal.
                Some(Ok(Err(ClientError::ChannelEnded { .. }))) | None => {
                    // Dropping the client closes what is left of its channel.
                    client = None;
                    on_event(JoinEvent::Lost { error: None });
                    continue;
                }
                Some(Ok(w)) => w,
            };
            if waited.is_ok() {
                busy = None;
            }
            match waited {
                Ok(w) => {
                    if let Some(decided) = self.decided(w) {
                        return decided;
                    }
                }
                Err(ClientError::Refused(e))
                    if matches!(e.kind, ErrorKind::Busy | ErrorKind::Internal) =>
                {
                    on_event(JoinEvent::Busy {
                        message: &e.message,
                    });
                    let backoff = busy.get_or_insert_with(|| {
                        Backoff::new(left)
                            .between(FIRST_RECONNECT, MAX_RECONNECT)
                            .jittered()
                    });
                    match backoff.next_pause() {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => return Err(self.timed_out(None)),
                    }
                    on_event(JoinEvent::Waiting);
                }
                Err(ClientError::Refused(refusal)) => {
                    return Err(JoinWaitError::Refused {
                        id: self.id.clone(),
                        refusal,
                    });
                }
                // The call failed because the channel is ending (its connection closed
                // and the send found it gone a moment before the channel marked its end):
                // lost the way the end signal tells it.
                Err(_)
                    if tokio::time::timeout(CHANNEL_END_GRACE, end.ended())
                        .await
                        .is_ok() =>
                {
                    client = None;
                    on_event(JoinEvent::Lost { error: None });
                }
                Err(e) => {
                    tracing::debug!(error = %e, request = %self.id, "lost the authority while waiting");
                    client = None;
                    on_event(JoinEvent::Lost { error: Some(&e) });
                }
            }
        }
    }

    /// What an answer to a wait call decides, if anything (`None`: still pending).
    fn decided(&self, waited: JoinWaited) -> Option<Result<JoinApproved, JoinWaitError>> {
        let id = self.id.clone();
        let request = waited.request;
        Some(match request.state {
            JoinState::Pending => return None,
            JoinState::Approved => match waited.credential {
                Some(credential) => Ok(JoinApproved {
                    request,
                    credential,
                }),
                None => Err(JoinWaitError::NoCredential { id }),
            },
            JoinState::Denied => Err(JoinWaitError::Denied(Box::new(request))),
            JoinState::Expired => Err(JoinWaitError::Expired {
                id,
                at: request.decided_at.unwrap_or(request.expires_at),
            }),
        })
    }

    /// A new channel to `authority`, after a capped backoff, until the deadline. Even the
    /// first attempt waits a first pause: the connection the old channel ran over may still
    /// be closing (the authority's `Close` arrives just ahead of it), and a handshake sent
    /// on it would be lost and waited for in vain.
    async fn reconnect(
        &self,
        authority: &Identifier,
        on_event: &mut impl FnMut(JoinEvent<'_>),
    ) -> Result<AuthorityClient, JoinWaitError> {
        let left = self.left().ok_or_else(|| self.timed_out(None))?;
        let mut backoff = Backoff::new(left)
            .between(FIRST_RECONNECT, MAX_RECONNECT)
            .jittered();
        let mut last = None;
        loop {
            match backoff.next_pause() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(self.timed_out(last)),
            }
            let Some(left) = self.left() else {
                return Err(self.timed_out(last));
            };
            let tried = AuthorityClient::connect(
                &self.node,
                self.listener.clone(),
                authority,
                &self.settings,
                self.connect_timeout.min(left),
            )
            .await;
            match tried {
                Ok(c) => return Ok(c),
                Err(source @ ClientError::WrongAuthority { .. }) => {
                    return Err(JoinWaitError::AuthorityChanged {
                        id: self.id.clone(),
                        source,
                    });
                }
                Err(e) => {
                    on_event(JoinEvent::Unreachable { error: &e });
                    last = Some(e);
                }
            }
        }
    }

    /// The time left before the deadline, if any.
    fn left(&self) -> Option<Duration> {
        Some(self.deadline.saturating_duration_since(Instant::now())).filter(|d| !d.is_zero())
    }

    fn timed_out(&self, last: Option<ClientError>) -> JoinWaitError {
        JoinWaitError::TimedOut {
            id: self.id.clone(),
            after: self.timeout,
            last,
        }
    }
}
