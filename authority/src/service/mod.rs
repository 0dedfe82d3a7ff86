//! The authority's services on a node (DESIGN §5): tickets, the ticket acceptor, the
//! credential issuer, members, the audit log and join requests, each a worker reachable
//! only through a secure channel.
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
//! requests (over all seven services) run at once, and past that a request is answered
//! "busy" at once instead of queueing without bound.
//!
//! This module starts the services and dispatches each request to the module of its
//! service; the state they share is in `state`, their common answers and refusals in
//! `answer`, and the store records become wire types in `wire` only.
//!
//! What it does not do: open listeners or channels (the node's secure-channel listener
//! admits peers; these services only see what it delivers), or keep state of its own
//! beyond a cached credential signing key and the counts of failed codes (`throttle`; the
//! store is the truth, and several authorities may share one PostgreSQL database).
//!
//! [`MAX_IN_FLIGHT`]: crate::service::MAX_IN_FLIGHT
//! [`api::Reply::Error`]: crate::api::Reply::Error

mod access;
pub(crate) mod answer;
mod audit;
mod checks;
mod config;
mod credentials;
mod enrollment;
pub mod join;
mod keys;
mod members;
pub mod revocations;
mod state;
pub mod throttle;
mod tickets;
mod waiters;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use kith_identity::{Identifier, check_attribute};
use kith_node::{
    Address, AllowOrigins, ChannelPeer, Context, Message, Node, Origin, Route, Worker, WorkerError,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use answer::{Answer, bad_request, busy, encode_result, internal, send_reply};
use join::ChannelSeen;

use crate::api::{
    self, ACCEPTOR_SERVICE, AUDIT_SERVICE, AuditRequest, CREDENTIAL_SERVICE, CredentialRequest,
    JOIN_SERVICE, MEMBERS_SERVICE, PROJECT_ID_ATTRIBUTE, REVOCATION_SERVICE, RedeemRequest,
    RevocationsRequest, TICKET_SERVICE,
};
use crate::error::StartServicesError;

pub use audit::MAX_AUDIT_LIMIT;
pub use checks::MAX_MEMBER_ATTRIBUTES;
pub use config::{AuthorityConfig, JoinSettings};
pub use state::{ABORT_AFTER_ENROLL_COMMIT, Authority, MAX_IN_FLIGHT};
pub use tickets::{MAX_TICKET_LIFETIME, MAX_TICKET_USES, MIN_TICKET_LIFETIME};

/// 2 s: how long a stopping service waits for its requests in flight to finish (and their
/// answers to leave) before it aborts them; under the node's shutdown grace.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The seven services, one worker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Tickets,
    Acceptor,
    Credentials,
    Members,
    Audit,
    Join,
    Revocations,
}

impl Service {
    const ALL: [Service; 7] = [
        Service::Tickets,
        Service::Acceptor,
        Service::Credentials,
        Service::Members,
        Service::Audit,
        Service::Join,
        Service::Revocations,
    ];

    fn address(self) -> &'static str {
        match self {
            Service::Tickets => TICKET_SERVICE,
            Service::Acceptor => ACCEPTOR_SERVICE,
            Service::Credentials => CREDENTIAL_SERVICE,
            Service::Members => MEMBERS_SERVICE,
            Service::Audit => AUDIT_SERVICE,
            Service::Join => JOIN_SERVICE,
            Service::Revocations => REVOCATION_SERVICE,
        }
    }
}

impl Authority {
    /// Start the seven services ([`TICKET_SERVICE`], [`ACCEPTOR_SERVICE`],
    /// [`CREDENTIAL_SERVICE`], [`MEMBERS_SERVICE`], [`AUDIT_SERVICE`], [`JOIN_SERVICE`],
    /// [`REVOCATION_SERVICE`]) on
    /// `node`, each
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
                AllowOrigins(|origin: &Origin| matches!(origin, Origin::SecureChannel(_)));
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
        self.start_feed_watcher(node);
        self.start_guess_reporter(node);
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
        let Some(ChannelPeer {
            identifier,
            handshake_hash,
            source,
            ..
        }) = message.origin().channel_peer()
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
            let refusal = internal();
            send_reply(&node, reply_to, from, encode_result::<()>(Err(refusal))).await;
            return Ok(());
        };
        let span =
            info_span!("authority_request", service = self.service.address(), peer = %caller);
        let Ok(permit) = self.authority.shared.in_flight.clone().try_acquire_owned() else {
            warn!(parent: &span, max = MAX_IN_FLIGHT, "refused a request: too many requests in flight");
            let refusal = busy();
            send_reply(&node, reply_to, from, encode_result::<()>(Err(refusal))).await;
            return Ok(());
        };
        let authority = self.authority.clone();
        let service = self.service;
        let payload = message.payload;
        self.tasks.spawn(
            async move {
                let reply = authority
                    .dispatch(service, &caller, &channel, &payload, permit)
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

/// Answering requests.
impl Authority {
    /// The encoded answer to `payload`, sent to `service` by `caller` through `channel`.
    /// `permit`, the request's share of [`MAX_IN_FLIGHT`], is held until the answer is
    /// ready; a join request wait gives it back while it waits.
    async fn dispatch(
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
                    .redeem(caller, channel, &request.code, request.replace)
                    .await
                    .map(Answer::Enrolled),
                // Serde's message could quote the request, and this one carries a code.
                Err(_) => Err(bad_request(
                    "malformed request: expected {\"code\": \"<64 hex digits>\", \"replace\": false}",
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
            Service::Revocations => match api::decode_request::<RevocationsRequest>(payload) {
                Ok(request) => self
                    .revocations(request, channel.source, permit)
                    .await
                    .map(Answer::Revocations),
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
}
