//! Relays on the project node (DESIGN §5, §6): a node that accepts no inbound connections
//! keeps a secure channel open to the project node and registers a relay there; anyone
//! allowed then reaches it at `forward_to_NAME`.
//!
//! The [`RELAY_SERVICE`] worker answers four requests, each through a secure channel:
//! create, check (the relayed node's heartbeat), delete and list. Creating relay `N` needs
//! the caller to be an admin, or to present a credential from this project's authority with
//! `ockam-relay=N` and still be a member in the store. A name belongs to the identity that
//! created it until that identity or an admin deletes it; the owner creating it again (after
//! a restart, through a new channel) moves it to the new channel.
//!
//! A relay is a [`MessageSink`] with two addresses, so a message costs no task hand-off on
//! the project node:
//! - `forward_to_N` takes messages from members (a secure-channel origin carrying this
//!   project's id) and sends them through the owner's channel: the onward route becomes
//!   `[owner's encryptor, …rest]`, and the relay puts its back address at the front of the
//!   return route.
//! - the back address takes the owner's answers and passes them on to a client, only into
//!   the encryptor of a channel that sent through this relay: the owner chooses the rest of
//!   the route, so it must not be able to reach this node's other services, dial out, or
//!   speak (as this node) to channels that never asked for it, through us. The
//!   answer's return route then starts at `forward_to_N` instead of the owner's channel, so
//!   the client's next message comes through the relay again.
//!
//! What a relay carries is whatever the sender put in it; for an end-to-end secure channel
//! through the relay that is ciphertext only, which is the point: the project node cannot
//! read it, and anything it (or anyone else) changes fails to open at the far end and tears
//! that channel down.
//!
//! A relay lives as long as its owner's channel to the project node: when that channel
//! ends (the relayed node stopped, its connection dropped, its peer went silent), the relay
//! is removed and its name freed at once, so a sender is told there is no such relay
//! instead of waiting on a dead channel. Registrations live in memory: when the project
//! node restarts, relayed nodes notice their channel ended and register again.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kith_identity::Identifier;
use kith_node::{
    Address, AllowOrigins, ChannelPeer, Context, DirectOrQueue, Message, MessageSink, Node, Origin,
    ReadyFuture, Route, SinkError, SinkHandle, StartError, TryRouteError, Worker, WorkerError,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{
    self, ApiError, ErrorKind, MAX_PAGE, PROJECT_ID_ATTRIBUTE, Page, RELAY_ATTRIBUTE,
};
use crate::error::RelayNameError;
use crate::service::Authority;
use crate::service::answer::{encode_result, send_reply};

/// The relay service's address on the project node.
pub const RELAY_SERVICE: &str = "relay";

/// What a relay's address starts with: relay `db` is at `forward_to_db`.
pub const RELAY_ADDRESS_PREFIX: &str = "forward_to_";

/// 64 bytes: the longest relay name. Names are typed on command lines and are part of
/// routes; the cap keeps `forward_to_NAME` well inside an address's limit.
pub const MAX_RELAY_NAME: usize = 64;

/// 10,000 relays: the most one project node registers. Each costs two addresses and a few
/// hundred bytes; the cap bounds what members with relay rights can make it hold.
pub const MAX_RELAYS: usize = 10_000;

/// 64 messages: what a relay queues for a next hop that cannot take them at once, as a
/// secure channel does; past it, senders wait.
const BACKLOG: usize = 64;

/// Check that `name` can name a relay: 1 to [`MAX_RELAY_NAME`] bytes of `A-Z a-z 0-9 - _ .`,
/// not starting with `.`. Path separators, spaces and control characters are refused.
pub fn check_relay_name(name: &str) -> Result<(), RelayNameError> {
    if name.is_empty() {
        return Err(RelayNameError::Empty);
    }
    for (i, c) in name.chars().enumerate() {
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '-' | '_') || (c == '.' && i > 0);
        if !allowed {
            return Err(RelayNameError::Character {
                character: c,
                position: i + 1,
            });
        }
        if i >= MAX_RELAY_NAME {
            return Err(RelayNameError::TooLong { len: name.len() });
        }
    }
    Ok(())
}

/// The address of relay `name` on the project node.
pub fn relay_address(name: &str) -> String {
    format!("{RELAY_ADDRESS_PREFIX}{name}")
}

/// A request to the relay service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RelayRequest {
    /// Create relay `name` towards the caller, through the channel the request came by (or
    /// move it there, if the caller already owns it).
    Create {
        /// The relay's name.
        name: String,
    },
    /// Is relay `name` still the caller's, through this channel? The relayed node's
    /// heartbeat; `NotFound` tells it to create the relay again.
    Check {
        /// The relay's name.
        name: String,
    },
    /// Delete relay `name`. Its owner or an admin.
    Delete {
        /// The relay's name.
        name: String,
    },
    /// The relays: all of them for an admin, the caller's own for anyone else; a page at a
    /// time by name, answered with `Page<RelayInfo>`.
    List {
        /// Names after this one (a previous page's `next`); from the first without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
    },
}

/// A relay, as the service describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayInfo {
    /// The relay's name.
    pub name: String,
    /// Its address on the project node: route to it with `/service/ADDRESS`.
    pub address: String,
    /// The identity it relays to.
    pub owner: String,
    /// When it was created (Unix seconds).
    pub created_at: u64,
    /// When it last moved to a new channel (Unix seconds).
    pub updated_at: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Start the relay service of `authority` on `node` (the project node). Relays it creates
/// live until they are deleted or the node shuts down.
pub fn start(authority: &Authority, node: &Node) -> Result<(), StartError> {
    let only_channels = AllowOrigins(|origin: &Origin| matches!(origin, Origin::SecureChannel(_)));
    node.start_worker_with_policy(
        [Address::local(RELAY_SERVICE)],
        Arc::new(only_channels),
        RelayService {
            authority: authority.clone(),
            relays: Relays::default(),
        },
    )?;
    info!(node = %node.name(), "relay service started");
    Ok(())
}

/// The relay service: the registry of relays, shared by its worker and the watchers that
/// remove a relay whose owner's channel ended.
struct RelayService {
    authority: Authority,
    relays: Relays,
}

/// The relays by name. Locked only for moments, never across an await.
#[derive(Clone, Default)]
struct Relays(Arc<Mutex<BTreeMap<String, Registered>>>);

impl Relays {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Registered>> {
        lock(&self.0)
    }

    /// Remove relay `name` once the channel at `channel` ends, if it still forwards there
    /// then; give up when the relay is deleted or moved first (its registration's `gone`).
    fn remove_when_closed(
        &self,
        node: &Node,
        name: &str,
        channel: &Address,
        gone: CancellationToken,
    ) {
        let Some(ended) = node.stop_token(channel) else {
            self.remove_if_through(name, channel);
            return;
        };
        let relays = self.clone();
        let (name, channel) = (name.to_owned(), channel.clone());
        node.spawn(async move {
            tokio::select! {
                () = ended.cancelled() => relays.remove_if_through(&name, &channel),
                () = gone.cancelled() => {}
            }
        });
    }

    fn remove_if_through(&self, name: &str, channel: &Address) {
        let mut relays = self.lock();
        if relays
            .get(name)
            .is_some_and(|held| held.relay.forward() == *channel)
        {
            relays.remove(name);
            info!(
                relay = name,
                "relay removed: its node's channel to the project node ended"
            );
        }
    }
}

/// A relay and its registration; dropping it unregisters the relay's addresses.
struct Registered {
    owner: Identifier,
    created_at: u64,
    updated_at: u64,
    relay: Arc<Relay>,
    /// Cancelled when the registration goes or moves to another channel: the watcher of
    /// the channel it forwarded through stops.
    moved_or_gone: CancellationToken,
    _handle: SinkHandle,
}

impl Registered {
    fn info(&self, name: &str) -> RelayInfo {
        RelayInfo {
            name: name.to_owned(),
            address: relay_address(name),
            owner: self.owner.to_string(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.moved_or_gone.cancel();
        self.relay.close();
    }
}

/// Who sent a request, as its secure channel proved.
struct Caller<'a> {
    identifier: Identifier,
    attributes: &'a BTreeMap<String, String>,
    /// The hop on this node that leads back to the caller: its channel's encryptor.
    channel: Address,
}

impl Worker for RelayService {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        let node = ctx.node().clone();
        let from = Route::from(ctx.address().clone());
        let reply_to = message.return_route.clone();
        let Some(ChannelPeer {
            identifier,
            attributes,
            ..
        }) = message.origin().channel_peer()
        else {
            return Ok(());
        };
        let (Ok(identifier), Some(channel)) = (
            identifier.parse::<Identifier>(),
            message
                .return_route
                .next()
                .filter(|a| a.is_local())
                .cloned(),
        ) else {
            warn!(peer = %identifier, "a relay request came without a way back; ignored it");
            return Ok(());
        };
        let caller = Caller {
            identifier,
            attributes,
            channel,
        };
        let reply = match api::decode_request::<RelayRequest>(&message.payload) {
            Err(refusal) => encode_result::<()>(Err(refusal)),
            Ok(RelayRequest::Create { name }) => {
                encode_result(self.create(&node, &caller, &name).await)
            }
            Ok(RelayRequest::Check { name }) => encode_result(self.check(&caller, &name)),
            Ok(RelayRequest::Delete { name }) => encode_result(self.delete(&caller, &name)),
            Ok(RelayRequest::List { after }) => {
                encode_result(Ok(self.list(&caller, after.as_deref())))
            }
        };
        send_reply(&node, reply_to, from, reply).await;
        Ok(())
    }
}

impl RelayService {
    /// May `caller` hold relay `name`? Admins may hold any; a member needs this project's
    /// credential with `ockam-relay=name`, and to be a member still.
    async fn may_create(&self, caller: &Caller<'_>, name: &str) -> Result<(), ApiError> {
        if self.authority.is_admin(&caller.identifier) {
            return Ok(());
        }
        let needs = format!(
            "creating relay {name:?} needs a credential from this project's authority with {RELAY_ATTRIBUTE}={name}"
        );
        let project = &self.authority.config().project_id;
        if caller.attributes.get(PROJECT_ID_ATTRIBUTE) != Some(project) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("{needs}; your channel presents no valid credential from it"),
            ));
        }
        match caller.attributes.get(RELAY_ATTRIBUTE) {
            None => {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!("{needs}; yours has no {RELAY_ATTRIBUTE} attribute"),
                ));
            }
            Some(granted) if granted != name => {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!("{needs}; yours has {RELAY_ATTRIBUTE}={granted}"),
                ));
            }
            Some(_) => {}
        }
        match self.authority.member(&caller.identifier).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::new(
                ErrorKind::NotMember,
                format!("{needs}; you are no longer a member of the project"),
            )),
        }
    }

    async fn create(
        &mut self,
        node: &Node,
        caller: &Caller<'_>,
        name: &str,
    ) -> Result<RelayInfo, ApiError> {
        check_relay_name(name).map_err(|e| ApiError::new(ErrorKind::BadRequest, e.to_string()))?;
        if let Err(refusal) = self.may_create(caller, name).await {
            warn!(peer = %caller.identifier, relay = name, reason = %refusal, "refused to create a relay");
            return Err(refusal);
        }
        let now = self.authority.now();
        let mut relays = self.relays.lock();
        if let Some(held) = relays.get_mut(name) {
            if held.owner != caller.identifier {
                warn!(peer = %caller.identifier, relay = name, owner = %held.owner, "refused to create a relay held by another identity");
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "relay {name:?} is held by {}; an admin can free it with `kith relay delete {name} --at /project/NAME`",
                        held.owner
                    ),
                ));
            }
            // The owner again, after a restart or a reconnect: move the relay to the
            // channel this request came through.
            held.relay.set_forward(caller.channel.clone());
            held.updated_at = now;
            held.moved_or_gone.cancel();
            held.moved_or_gone = CancellationToken::new();
            let watch = held.moved_or_gone.clone();
            let info = held.info(name);
            drop(relays);
            self.relays
                .remove_when_closed(node, name, &caller.channel, watch);
            info!(peer = %caller.identifier, relay = name, "relay moved to a new channel");
            return Ok(info);
        }
        if relays.len() >= MAX_RELAYS {
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!("the project node holds {MAX_RELAYS} relays, its most; delete unused ones"),
            ));
        }
        let relay = Arc::new(Relay {
            node: node.clone(),
            name: name.to_owned(),
            owner: caller.identifier.to_string(),
            project_id: self.authority.config().project_id.clone(),
            inbound: Address::local(relay_address(name)),
            back: Address::random_local("relay-back"),
            forward: Mutex::new(caller.channel.clone()),
            clients: Clients::default(),
            queue: DirectOrQueue::new(BACKLOG, ()),
        });
        let handle = node
            .register_sink(
                [relay.inbound.clone(), relay.back.clone()],
                Arc::new(AllowOrigins(|origin: &Origin| {
                    matches!(origin, Origin::SecureChannel(_))
                })),
                Arc::new(RelaySink(relay.clone())),
            )
            .map_err(|error| {
                warn!(relay = name, error = %kith_node::DisplayChain(&error), "cannot register a relay");
                ApiError::new(
                    ErrorKind::Internal,
                    "the project node could not create the relay; try again later",
                )
            })?;
        node.spawn(relay.clone().send_queued());
        let watch = CancellationToken::new();
        let registered = Registered {
            owner: caller.identifier,
            created_at: now,
            updated_at: now,
            relay,
            moved_or_gone: watch.clone(),
            _handle: handle,
        };
        let info = registered.info(name);
        relays.insert(name.to_owned(), registered);
        drop(relays);
        self.relays
            .remove_when_closed(node, name, &caller.channel, watch);
        info!(peer = %caller.identifier, relay = name, "relay created");
        Ok(info)
    }

    fn check(&self, caller: &Caller<'_>, name: &str) -> Result<RelayInfo, ApiError> {
        match self.relays.lock().get(name) {
            Some(held)
                if held.owner == caller.identifier && held.relay.forward() == caller.channel =>
            {
                Ok(held.info(name))
            }
            _ => Err(ApiError::new(
                ErrorKind::NotFound,
                format!("relay {name:?} does not lead to you through this channel"),
            )),
        }
    }

    fn delete(&mut self, caller: &Caller<'_>, name: &str) -> Result<RelayInfo, ApiError> {
        let mut relays = self.relays.lock();
        let Some(held) = relays.get(name) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("there is no relay {name:?}"),
            ));
        };
        if held.owner != caller.identifier && !self.authority.is_admin(&caller.identifier) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("relay {name:?} is not yours; only its owner or an admin may delete it"),
            ));
        }
        let info = held.info(name);
        relays.remove(name);
        info!(peer = %caller.identifier, relay = name, "relay deleted");
        Ok(info)
    }

    /// A page of the relays `caller` may see, by name after `after`. Names are the keys,
    /// so relays created or removed during a walk never shift the others.
    fn list(&self, caller: &Caller<'_>, after: Option<&str>) -> Page<RelayInfo> {
        let all = self.authority.is_admin(&caller.identifier);
        let relays = self.relays.lock();
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let limit = usize::try_from(MAX_PAGE).unwrap_or(usize::MAX);
        let items: Vec<RelayInfo> = relays
            .range::<str, _>((from, Bound::Unbounded))
            .filter(|(_, r)| all || r.owner == caller.identifier)
            .take(limit)
            .map(|(name, r)| r.info(name))
            .collect();
        let next = (items.len() >= limit)
            .then(|| items.last().map(|r| r.name.clone()))
            .flatten();
        Page { items, next }
    }
}

/// One relay: where it forwards, and what it has queued for a next hop that was busy.
struct Relay {
    node: Node,
    name: String,
    /// The owner's identifier, as channel origins carry it.
    owner: String,
    /// The project's id: senders must present a credential carrying it.
    project_id: String,
    /// `forward_to_NAME`.
    inbound: Address,
    /// Where the owner's answers come back.
    back: Address,
    /// The encryptor of the owner's channel on this node.
    forward: Mutex<Address>,
    /// The channels (their encryptors here) that sent through the relay lately: the only
    /// ones the owner's answers may go into.
    clients: Clients,
    /// What a busy next hop could not take at once, for the relay's task; closed when the
    /// relay is deleted.
    queue: DirectOrQueue<VecDeque<Message>>,
}

/// The most recent [`MAX_CLIENTS`] channels that sent through a relay, oldest forgotten
/// first.
#[derive(Default)]
struct Clients(Mutex<(HashSet<Address>, VecDeque<Address>)>);

/// 4,096 channels: how many clients of one relay its owner can answer at once. A client
/// forgotten (after this many newer ones) is remembered again with its next message.
const MAX_CLIENTS: usize = 4096;

impl Clients {
    fn remember(&self, channel: &Address) {
        let mut guard = lock(&self.0);
        let (known, order) = &mut *guard;
        if known.contains(channel) {
            return;
        }
        if order.len() >= MAX_CLIENTS
            && let Some(oldest) = order.pop_front()
        {
            known.remove(&oldest);
        }
        known.insert(channel.clone());
        order.push_back(channel.clone());
    }

    fn contains(&self, channel: &Address) -> bool {
        lock(&self.0).0.contains(channel)
    }
}

impl Relay {
    fn forward(&self) -> Address {
        lock(&self.forward).clone()
    }

    fn set_forward(&self, to: Address) {
        *lock(&self.forward) = to;
    }

    fn close(&self) {
        self.queue.close();
    }

    /// Rewrite `message` for its next hop, or say why it is dropped.
    fn rewrite(&self, message: &mut Message) -> Result<(), &'static str> {
        let Some(ChannelPeer {
            identifier,
            attributes,
            ..
        }) = message.origin().channel_peer()
        else {
            return Err("not from a secure channel");
        };
        let from_owner = *identifier == self.owner;
        let member = attributes.get(PROJECT_ID_ATTRIBUTE) == Some(&self.project_id);
        let backwards = message.onward_route.next() == Some(&self.back);
        message.onward_route.step();
        if backwards {
            if !from_owner {
                return Err("an answer from someone other than the relay's owner");
            }
            let into_channel = message
                .onward_route
                .next()
                .is_some_and(kith_identity::secure_channel::is_encryptor);
            if !into_channel {
                return Err("an answer not addressed to a secure channel on this node");
            }
            let to_a_client = message
                .onward_route
                .next()
                .is_some_and(|a| self.clients.contains(a));
            if !to_a_client {
                return Err("an answer into a channel that never sent through this relay");
            }
            // The owner's channel put its encryptor here first; the client must answer
            // through the relay instead, which sends on through the owner's channel.
            message.return_route.step();
            message.return_route.prepend(self.inbound.clone());
        } else {
            if !member {
                return Err("a sender without a credential from this project");
            }
            // The channel this came through may now be answered through the relay.
            if let Some(channel) = message.return_route.next() {
                self.clients.remember(channel);
            }
            message.onward_route.prepend(self.forward());
            message.return_route.prepend(self.back.clone());
        }
        // From here on the message is ours to pass on, into a channel's encryptor, which
        // takes messages from this node only.
        message.local_info.origin = Origin::Local;
        Ok(())
    }

    /// Route what is queued, in order, until the relay is deleted or the node stops.
    /// `Node::spawn` drops this task at shutdown; `close` ends it once nothing is left.
    async fn send_queued(self: Arc<Self>) {
        // `let … else`, not `while let`, which would keep the `pop` future and the message
        // alive through the body, in a future every relay holds for as long as it lives.
        loop {
            let Some(message) = self.queue.pop().await else {
                return;
            };
            // The node counts and logs what it cannot deliver.
            let _ = Box::pin(self.node.route(message)).await;
        }
    }
}

struct RelaySink(Arc<Relay>);

impl MessageSink for RelaySink {
    fn try_deliver(&self, mut message: Message) -> Result<(), SinkError> {
        let relay = &self.0;
        if let Some(refuse) = relay.queue.lock().refusal() {
            return Err(refuse(message));
        }
        if let Err(why) = relay.rewrite(&mut message) {
            debug!(relay = %relay.name, reason = why, "a relay dropped a message");
            return Ok(());
        }
        let Some(message) = relay.queue.lock().direct_or_push(message) else {
            return Ok(());
        };
        match relay.node.try_route(message) {
            // The node has counted and logged what it could not deliver.
            Ok(()) | Err(TryRouteError::Failed(_)) => {}
            Err(TryRouteError::WouldBlock(message)) => relay.queue.push(message),
        }
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(self.0.queue.ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked() {
        for ok in ["db", "db-1", "a.b", "A_Z", &"x".repeat(MAX_RELAY_NAME)] {
            assert_eq!(check_relay_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_relay_name(""), Err(RelayNameError::Empty));
        assert!(matches!(
            check_relay_name(&"x".repeat(10_000)),
            Err(RelayNameError::TooLong { len: 10_000 })
        ));
        for (bad, character, position) in [
            ("a/b", '/', 2),
            ("../db", '.', 1),
            ("db\n", '\n', 3),
            ("d\u{7}b", '\u{7}', 2),
            ("d b", ' ', 2),
            ("dé", 'é', 2),
        ] {
            assert_eq!(
                check_relay_name(bad),
                Err(RelayNameError::Character {
                    character,
                    position
                }),
                "{bad:?}"
            );
        }
        let shown = check_relay_name("db\u{1b}[2J").unwrap_err().to_string();
        assert!(shown.contains("'\\u{1b}'"), "{shown}");
    }

    #[test]
    fn requests_have_a_stable_json_form() {
        let r = RelayRequest::Create { name: "db".into() };
        let j = String::from_utf8(api::encode(&r).unwrap()).unwrap();
        assert_eq!(j, r#"{"op":"create","name":"db"}"#);
        assert_eq!(
            api::decode_request::<RelayRequest>(j.as_bytes()).unwrap(),
            r
        );
        assert!(api::decode_request::<RelayRequest>(br#"{"op":"list","x":1}"#).is_err());
    }

    proptest! {
        #[test]
        fn accepted_names_make_valid_addresses(name in "\\PC{0,80}") {
            if check_relay_name(&name).is_ok() {
                prop_assert!(Address::try_new(0, relay_address(&name)).is_ok());
                prop_assert!(name.len() <= MAX_RELAY_NAME);
                prop_assert!(!name.contains('/'));
            }
        }

        #[test]
        fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = api::decode_request::<RelayRequest>(&bytes);
        }
    }
}
