//! Secure channels on a node: a listener that answers handshakes, and per channel an
//! encryptor and a decryptor.
//!
//! A route to a remote service through a channel is `[encryptor, …rest]`: the encryptor
//! seals `rest`, the return route and the payload, and sends them along the route to the
//! peer's decryptor, which opens them, stamps the message with the peer's identifier and
//! attested attributes ([`Origin::SecureChannel`]), prepends its own encryptor to the return
//! route, and routes it on. A handshake that does not finish within the timeout is
//! abandoned; anything that fails to decrypt, a replay, or a message older than the window
//! tears the channel down (never the node) with the reason in our log.
//!
//! Both ends are [`MessageSink`]s rather than workers, so a message costs no task hand-off
//! inside the channel: a message routed to the encryptor is sealed in the sender's own task
//! and handed straight to the next hop (usually the connection, which writes it to the
//! socket), and a message that reaches the decryptor is opened in the task that brought it
//! (usually the connection's reader) and handed straight to its destination. Sealing and
//! opening happen under the channel's lock, in nonce order; handing on happens after it is
//! released, so no lock is held while another sink runs. When a next hop cannot take a
//! message without waiting, the channel queues it, in order, for its own task, which routes
//! it with backpressure; while anything is queued, later messages queue behind it, and once
//! [`CHANNEL_BACKLOG`] are queued, senders wait. The channel's task also runs the handshake,
//! its timeout, and the closing.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use kith_node::ErrorClass;
use kith_node::{
    Address, AllowAll, AllowLocal, Context, DirectOrQueue, LocalInfo, Message, MessageKind,
    MessageSink, Node, Origin, ReadyFuture, Route, RouteError, SinkError, SinkHandle,
    TryRouteError, Undeliverable, Worker, WorkerError,
};
use kith_transport::TransportMessage;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::CredentialAndPurposeKey;
use crate::channel::{
    Admission, ChannelMessage, DEFAULT_REKEY_INTERVAL, Decryptor, Encryptor, Established,
    Handshake, HandshakeError, LocalIdentity, MAX_MESSAGE_PAYLOAD, Peer, Presented, Progress,
    Trust, present,
};
use crate::pending::{Arrival, PendingHandshakes, PendingSlot};
pub use crate::pending::{HandshakeLimits, MAX_PENDING_HANDSHAKES};
use crate::revocation::Void;
use crate::unix_now as now;
use kith_transport::source::Source;

/// Channels opened one inside another: a route's `/secure/` hops.
mod stack;
/// An established channel's peer and the origin it stamps on what it delivers.
mod stamp;

pub use stack::{ChannelHop, ChannelStack, ChannelStackError};
use stamp::StampedPeer;

/// 10 s: long enough for a lossy mobile link, short enough that a half-open handshake cannot
/// pin memory (DESIGN §4).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// 64 messages per direction: what a channel queues for a next hop that cannot take them at
/// once (a connection whose socket is backed up, a full mailbox). Enough to ride out a
/// burst; when full, senders wait for room, which pushes back on them (and, inbound, on the
/// connection feeding the channel) instead of buffering without bound. Each message is at
/// most one Noise message, so a channel holds at most 8 MiB this way.
pub const CHANNEL_BACKLOG: usize = 64;

/// 20 s: how long a channel that has sent nothing waits before it sends a keep-alive, so
/// that its peer (and any NAT or firewall between) sees it is alive. Well under
/// [`IDLE_TIMEOUT`], so two keep-alives can be lost before the peer gives up.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// 70 s: how long a channel waits without hearing anything from its peer before it ends
/// (DESIGN §4): a peer whose host vanished without closing its connection is noticed, and
/// its state freed, within about a minute. Three keep-alive intervals and a half.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(70);

/// 1 s: how long a closing channel may take to send what it has queued and its `Close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What every channel encryptor's (random, local) address starts with.
const ENCRYPTOR_PREFIX: &str = "sc-enc";

/// What every channel decryptor's (random, local) address starts with: `sc-` and 16 hex
/// digits, which no encryptor address (`sc-enc-…`) matches.
const DECRYPTOR_PREFIX: &str = "sc";

/// Whether `address` names a channel encryptor on this node: where a route into a secure
/// channel starts.
pub fn is_encryptor(address: &Address) -> bool {
    address.is_local()
        && address
            .value()
            .strip_prefix(ENCRYPTOR_PREFIX)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Whether `address` has the shape of a channel decryptor's ([`DECRYPTOR_PREFIX`]), on
/// whichever node it is.
fn is_decryptor(address: &Address) -> bool {
    address.is_local()
        && address
            .value()
            .strip_prefix(DECRYPTOR_PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `message` carries what a channel nested inside another sealed for its peer:
/// its last hop is the peer's decryptor. Such a message was held to the payload limit
/// when it entered the inner channel, and is carried whatever the seal added to it.
fn carries_sealed(message: &Message) -> bool {
    message.onward_route.iter().last().is_some_and(is_decryptor)
}

/// The default address of a node's secure-channel listener.
pub const DEFAULT_LISTENER: &str = "api";

/// Settings shared by every channel of a node.
#[derive(Clone)]
pub struct ChannelSettings {
    /// Who we are.
    pub local: Arc<LocalIdentity>,
    /// Whom we trust and admit.
    pub trust: Arc<Trust>,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Messages per key.
    pub rekey_interval: u64,
    /// The caps on a listener's unfinished handshakes, node-wide, per source and per
    /// connection, and the rate a source may start them at.
    pub handshake_limits: HandshakeLimits,
    /// A channel that has sent nothing for this long sends a keep-alive.
    pub keepalive_interval: Duration,
    /// A channel that has heard nothing from its peer for this long ends.
    pub idle_timeout: Duration,
    /// The credentials we present, as they are renewed: every open channel pushes the
    /// renewed ones to its peer.
    pub presenting: Presenting,
}

/// The credentials a node presents, encoded, as they change over its life. A channel
/// takes the receiver its settings hold, which has seen exactly the credentials those
/// settings present, and pushes to its peer every set published after.
#[derive(Clone)]
pub struct Presenting {
    publish: Arc<watch::Sender<Arc<[Bytes]>>>,
    seen: watch::Receiver<Arc<[Bytes]>>,
}

impl Presenting {
    fn new(local: &LocalIdentity) -> Self {
        let (publish, seen) = watch::channel(encoded(local));
        Self {
            publish: Arc::new(publish),
            seen,
        }
    }

    /// Publish `local`'s credentials to every channel that follows this, and follow them
    /// from now on.
    fn republish(&self, local: &LocalIdentity) -> Self {
        self.publish.send_replace(encoded(local));
        Self {
            publish: self.publish.clone(),
            seen: self.publish.subscribe(),
        }
    }
}

fn encoded(local: &LocalIdentity) -> Arc<[Bytes]> {
    local
        .credentials
        .iter()
        .map(|c| Bytes::from(c.encode()))
        .collect()
}

/// 10 s: how long a peer whose attributes changed at its authority has to push the
/// credential that says so into an open channel. Until then its old credential gives no
/// attributes; past it, the channel ends.
pub const REFRESH_GRACE: u64 = 10;

impl ChannelSettings {
    /// Settings with the default timeout and rekey interval.
    pub fn new(local: Arc<LocalIdentity>, trust: Arc<Trust>) -> Self {
        Self {
            presenting: Presenting::new(&local),
            local,
            trust,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
            handshake_limits: HandshakeLimits::default(),
            keepalive_interval: KEEPALIVE_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// These settings, admitting at the other end only whom `admission` says; the trusted
    /// authorities stay. For a channel to a peer known in advance (an authority, a project
    /// node): anyone else fails the handshake before we present our credentials.
    pub fn admitting(&self, admission: Admission) -> Self {
        Self {
            trust: Arc::new(Trust {
                authorities: self.trust.authorities.clone(),
                admission,
                revocations: self.trust.revocations.clone(),
            }),
            ..self.clone()
        }
    }
}

/// What a listener has done, for status and tests.
#[derive(Default)]
pub struct ListenerStats {
    /// Handshakes that got a responder.
    pub started: AtomicU64,
    /// First messages refused as busy: a cap on unfinished handshakes (node-wide, per
    /// source or per connection) or a source's handshake rate was reached.
    pub refused_busy: AtomicU64,
    /// First messages that were not a valid handshake start.
    pub refused_invalid: AtomicU64,
    pending: PendingHandshakes,
}

impl fmt::Debug for ListenerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerStats")
            .field("started", &self.started)
            .field("refused_busy", &self.refused_busy)
            .field("refused_invalid", &self.refused_invalid)
            .field("shed", &self.shed())
            .field("established", &self.established())
            .field("failed", &self.failed())
            .field("pending", &self.pending())
            .finish()
    }
}

impl ListenerStats {
    /// Handshakes started and not yet finished or abandoned.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Unfinished handshakes abandoned so far to make room for a newcomer from a lighter
    /// source.
    pub fn shed(&self) -> u64 {
        self.pending.shed()
    }

    /// Handshakes completed: channels the listener opened.
    pub fn established(&self) -> u64 {
        self.pending.established()
    }

    /// Handshakes started and ended without a channel: refused (an untrusted peer, a
    /// credential it could not show), broken or timed out. Shed ones are not counted here.
    pub fn failed(&self) -> u64 {
        self.pending.failed()
    }

    /// Unfinished handshakes from `source` now.
    pub fn pending_from(&self, source: kith_transport::source::Source) -> usize {
        self.pending.from_source(source)
    }
}

/// An established channel, from the side that created it.
#[derive(Debug, Clone)]
pub struct SecureChannel {
    /// Send through the channel by routing to `[encryptor, …]`.
    pub encryptor: Address,
    /// The local decryptor.
    pub decryptor: Address,
    /// Who is at the other end.
    pub peer: Peer,
    /// The verification code both ends can compare.
    pub verification_code: String,
    /// The Noise handshake hash, equal at both ends and unique to this channel; the
    /// peer's services see it in every message's [`Origin::SecureChannel`].
    pub handshake_hash: [u8; 32],
    end: EndSignal,
}

impl SecureChannel {
    /// What tells when this channel has ended (see [`EndSignal`]).
    pub fn end_signal(&self) -> EndSignal {
        self.end.clone()
    }
}

/// How a channel ended, as its [`EndSignal`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelEnded {
    /// Its encryptor and decryptor stopped: it was closed here, closed by the peer or torn
    /// down, or the node shut down.
    Closed,
    /// What it runs over ended — the TCP connection, or the channel it is nested in — so
    /// nothing reaches it any more; it closed itself.
    ConnectionClosed,
    /// Its peer sent nothing, not even a keep-alive, for longer than the idle timeout.
    PeerSilent,
    /// A node on the way answered that the peer's end cannot be reached any more (its
    /// relay or connection is gone); the detail is in our log.
    PeerUnreachable,
    /// The authority that vouched for the peer revoked its credential.
    PeerRevoked,
}

impl fmt::Display for ChannelEnded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelEnded::Closed => "the secure channel was closed",
            ChannelEnded::ConnectionClosed => {
                "the connection (or outer channel) under the secure channel closed"
            }
            ChannelEnded::PeerSilent => "the secure channel's peer went silent",
            ChannelEnded::PeerUnreachable => "the secure channel's peer cannot be reached any more",
            ChannelEnded::PeerRevoked => "the secure channel's peer had its credential revoked",
        })
    }
}

/// Tells the owner of a [`SecureChannel`] once the channel has ended: closed here or by the
/// peer, or because what it runs over ended or its peer went silent (the channel closes
/// itself then). A client waiting on a long call selects on [`EndSignal::ended`] to notice
/// a peer that went away at once, instead of after the call's timeout. Clones watch the
/// same channel.
#[derive(Clone)]
pub struct EndSignal(Arc<EndState>);

/// How a channel ended, written once, and who waits for it. A few dozen bytes: every
/// channel has one for as long as it lives (a `watch` channel costs several times that).
#[derive(Default)]
struct EndState {
    how: OnceLock<ChannelEnded>,
    waiters: Notify,
}

impl EndSignal {
    /// How the channel ended, once it has; at once if it already has.
    pub async fn ended(&self) -> ChannelEnded {
        loop {
            let mut notified = pin!(self.0.waiters.notified());
            // Registered before looking, so an end marked between the look and the wait
            // still wakes us.
            notified.as_mut().enable();
            if let Some(how) = self.has_ended() {
                return how;
            }
            notified.await;
        }
    }

    /// How the channel ended, if it has.
    pub fn has_ended(&self) -> Option<ChannelEnded> {
        self.0.how.get().copied()
    }
}

/// The channel's side of its [`EndSignal`]: marks how it ended, the first cause only.
/// Dropped unmarked (a task dropped before it ran, at node shutdown), it marks
/// [`ChannelEnded::Closed`], so no owner waits for ever.
struct EndMark(Arc<EndState>);

impl EndMark {
    /// A mark, and the signal its channel's owner watches.
    fn new() -> (Self, EndSignal) {
        let state = Arc::new(EndState::default());
        (Self(state.clone()), EndSignal(state))
    }

    /// Record how the channel ended, unless an earlier cause already is.
    fn mark(&self, how: ChannelEnded) {
        self.0.mark(how);
    }
}

impl EndState {
    /// Record how the channel ended, unless an earlier cause already is, and wake the
    /// waiters.
    fn mark(&self, how: ChannelEnded) {
        if self.how.set(how).is_ok() {
            self.waiters.notify_waiters();
        }
    }
}

impl Drop for EndMark {
    fn drop(&mut self) {
        self.mark(ChannelEnded::Closed);
    }
}

impl fmt::Debug for EndSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndSignal").field(&self.has_ended()).finish()
    }
}

/// What `message` arrived over on this node: the local first hop of its return route — the
/// TCP connection's sender, the encryptor of the channel it came through, or (between two
/// channel ends on one node) the other end's decryptor. The channel a handshake message
/// set up lives only as long as that does.
fn arrived_over(message: &Message) -> Option<Address> {
    message
        .return_route
        .next()
        .filter(|hop| hop.is_local())
        .cloned()
}

/// The error a node on the way answered with, if `message` is one; a malformed one is an
/// invalid handshake.
fn undeliverable(message: &Message) -> Option<HandshakeError> {
    message.undeliverable().map(|u| match u {
        Ok(u) => HandshakeError::Refused(u),
        Err(_) => HandshakeError::Unexpected,
    })
}

/// Why a channel could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SecureChannelError {
    /// The handshake failed locally.
    #[error("secure channel handshake failed")]
    Handshake(#[from] HandshakeError),
    /// The first message could not be routed.
    #[error("cannot reach the secure channel listener")]
    Route(#[from] kith_node::RouteError),
    /// No answer within the handshake timeout.
    #[error(
        "no secure channel handshake answer within {0:?}; is a listener at the end of the route, and does it admit us?"
    )]
    Timeout(Duration),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Start the listener `address` on `node`: every handshake that reaches it (over any route)
/// gets its own responder.
pub fn listen(
    node: &Node,
    address: &str,
    settings: impl Into<SharedSettings>,
) -> Result<Arc<ListenerStats>, kith_node::StartError> {
    let settings = settings.into();
    let stats = Arc::new(ListenerStats::default());
    node.start_worker_with_policy(
        [Address::local(address)],
        Arc::new(AllowAll),
        Listener {
            settings,
            stats: stats.clone(),
        },
    )?;
    Ok(stats)
}

/// Open a channel to the listener at the end of `route`, waiting for the handshake.
pub async fn create(
    node: &Node,
    route: Route,
    settings: &ChannelSettings,
) -> Result<SecureChannel, SecureChannelError> {
    let (handshake, first) = Handshake::initiate(
        settings.local.clone(),
        settings.trust.clone(),
        settings.rekey_interval,
    )?;
    let (tx, rx) = oneshot::channel();
    let decryptor = start(node, settings, Box::new(handshake), Some(tx), None, None)
        .map_err(|_| SecureChannelError::ShuttingDown)?;
    let message = Message::new(route, Route::from(decryptor.clone()), first);
    if let Err(e) = node.route(message).await {
        node.stop_worker(&decryptor);
        return Err(e.into());
    }
    match tokio::time::timeout(settings.handshake_timeout, rx).await {
        Ok(Ok(Ok(channel))) => Ok(channel),
        Ok(Ok(Err(HandshakeError::TimedOut))) => {
            Err(SecureChannelError::Timeout(settings.handshake_timeout))
        }
        Ok(Ok(Err(HandshakeError::Abandoned))) => Err(SecureChannelError::ShuttingDown),
        Ok(Ok(Err(e))) => Err(e.into()),
        _ => {
            node.stop_worker(&decryptor);
            Err(SecureChannelError::Timeout(settings.handshake_timeout))
        }
    }
}

/// Stop the channel whose encryptor or decryptor is `address`; returns whether there was one.
pub fn close(node: &Node, channel: &SecureChannel) -> bool {
    let a = node.stop_worker(&channel.encryptor);
    let b = node.stop_worker(&channel.decryptor);
    a || b
}

/// Admits only messages that came through the channel with this handshake hash: the
/// replies to what was sent through one channel, and nothing from any other.
#[derive(Debug, Clone, Copy)]
pub struct ThroughChannel(pub [u8; 32]);

impl kith_node::IncomingAccessControl for ThroughChannel {
    fn is_authorized(&self, origin: &Origin) -> bool {
        origin
            .channel_peer()
            .is_some_and(|peer| peer.handshake_hash == self.0)
    }
}

struct Listener {
    settings: SharedSettings,
    stats: Arc<ListenerStats>,
}

/// A listener's settings, which its owner can replace while it runs (a node that enrolled
/// or renewed a credential presents it from the next handshake on). Channels already open
/// keep the settings they were made with.
#[derive(Clone)]
pub struct SharedSettings(Arc<std::sync::RwLock<ChannelSettings>>);

impl SharedSettings {
    /// Settings to share.
    pub fn new(settings: ChannelSettings) -> Self {
        Self(Arc::new(std::sync::RwLock::new(settings)))
    }

    /// The settings now.
    pub fn get(&self) -> ChannelSettings {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the settings for every handshake from now on. The node's revocations and
    /// what it presents outlive the replaced settings: every open channel pushes the new
    /// credentials to its peer.
    pub fn set(&self, mut settings: ChannelSettings) {
        let mut held = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&settings.trust.revocations, &held.trust.revocations) {
            settings.trust = Arc::new(Trust {
                revocations: held.trust.revocations.clone(),
                ..(*settings.trust).clone()
            });
        }
        settings.presenting = held.presenting.republish(&settings.local);
        // The caps are the node's, not its identity's: they outlive an enrollment.
        settings.handshake_limits = held.handshake_limits;
        *held = settings;
    }

    /// Replace the caps on unfinished handshakes, for every handshake from now on.
    pub fn set_handshake_limits(&self, limits: HandshakeLimits) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .handshake_limits = limits;
    }
}

impl From<ChannelSettings> for SharedSettings {
    fn from(settings: ChannelSettings) -> Self {
        Self::new(settings)
    }
}

impl Worker for Listener {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        let settings = self.settings.get();
        let arrival = match message.origin() {
            Origin::Transport { connection, peer } => Arrival {
                source: peer.map(|p| Source::of(p.ip())),
                connection: Some(connection.clone()),
            },
            Origin::SecureChannel(_) | Origin::Local => Arrival::default(),
        };
        let slot = match self.stats.pending.take(
            &settings.handshake_limits,
            &arrival,
            std::time::Instant::now(),
        ) {
            Ok(slot) => slot,
            Err(refusal) => {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                debug!(
                    source = ?arrival.source.map(|s| s.to_string()),
                    reason = refusal.reason(),
                    "refused a secure channel handshake: busy"
                );
                ctx.node()
                    .answer_undeliverable(message, ctx.address().clone(), ErrorClass::Busy);
                return Ok(());
            }
        };
        let handshake = Handshake::respond(
            settings.local.clone(),
            settings.trust.clone(),
            settings.rekey_interval,
        )?;
        let reply_to = message.return_route.clone();
        // Where this handshake came from: the connection it arrived on, or the source of
        // the outer channel it arrived through.
        let source = match message.origin() {
            Origin::Transport { peer, .. } => *peer,
            Origin::SecureChannel(outer) => outer.source,
            Origin::Local => None,
        };
        let (handshake, second) = match handshake.step(&message.payload, now()) {
            Ok(Progress::Continue(h, second)) => (h, second),
            Ok(Progress::Established { .. } | Progress::Refused { .. }) => {
                return Err("handshake finished on its first message".into());
            }
            Err(e) => {
                self.stats.refused_invalid.fetch_add(1, Ordering::Relaxed);
                slot.refused();
                if let Some(suppressed) = kith_node::LOG_LIMITER.admit(
                    "refused an invalid secure channel handshake",
                    message.origin(),
                ) {
                    warn!(error = %kith_node::DisplayChain(&e), source = ?source, suppressed, "refused a secure channel handshake");
                }
                ctx.node().answer_undeliverable(
                    message,
                    ctx.address().clone(),
                    ErrorClass::InvalidHandshake,
                );
                return Ok(());
            }
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let decryptor = start(ctx.node(), &settings, handshake, None, Some(slot), source)?;
        ctx.send_with_return(reply_to, Route::from(decryptor), second)
            .await?;
        Ok(())
    }
}

/// What `create` waits for: the channel once the responder has admitted us, or why not.
type OnEstablished = oneshot::Sender<Result<SecureChannel, HandshakeError>>;

/// Register a channel's decryptor, mid-handshake, and start its task. Returns the
/// decryptor's address.
fn start(
    node: &Node,
    settings: &ChannelSettings,
    handshake: Box<Handshake>,
    on_established: Option<OnEstablished>,
    slot: Option<PendingSlot>,
    source: Option<SocketAddr>,
) -> Result<Address, kith_node::StartError> {
    let decryptor = Address::random_local(DECRYPTOR_PREFIX);
    let (ended, end) = EndMark::new();
    let channel = Arc::new(Channel {
        end,
        node: node.clone(),
        source,
        trust: settings.trust.clone(),
        decryptor: decryptor.clone(),
        encryptor: OnceLock::new(),
        inbound: DirectOrQueue::new(CHANNEL_BACKLOG, Phase::Handshaking),
        outbound: DirectOrQueue::new(CHANNEL_BACKLOG, None),
        activity: Activity::new(settings),
    });
    let handle = node.register_sink(
        [decryptor.clone()],
        Arc::new(AllowAll),
        Arc::new(DecryptorSink(channel.clone())),
    )?;
    let deadline = Instant::now() + settings.handshake_timeout;
    let follow = Follow {
        revocations: settings.trust.revocations.subscribe(),
        presenting: settings.presenting.seen.clone(),
    };
    node.spawn(run(
        channel,
        handle,
        handshake,
        on_established,
        Deadline { slot, deadline },
        ended,
        follow,
    ));
    Ok(decryptor)
}

/// One channel, shared by its two sinks and its task.
struct Channel {
    node: Node,
    /// Where a responder's handshake came from (see [`Origin::SecureChannel`]).
    source: Option<SocketAddr>,
    trust: Arc<Trust>,
    decryptor: Address,
    /// Set once, when the handshake completes.
    encryptor: OnceLock<Address>,
    /// The receiving side, which the decryptor sink and the task share: messages for the
    /// task in arrival order, and the phase under the same lock. While the task holds one,
    /// or anything is queued, new arrivals queue too, so messages are delivered in order.
    inbound: DirectOrQueue<VecDeque<Queued>, Phase>,
    /// The sending side, which the encryptor sink and the task share: sealed messages the
    /// next hop could not take at once, in nonce order, and the sealing state (set when the
    /// handshake completes) under the same lock. Closed when the channel is closing: nothing
    /// more is sealed except the final `Close`.
    outbound: DirectOrQueue<VecDeque<Message>, Option<Sending>>,
    /// Handed to the initiator's [`SecureChannel`].
    end: EndSignal,
    /// When the channel last heard from its peer and last sent to it.
    activity: Activity,
}

/// When a channel last heard from its peer and last sent to it, in milliseconds since it
/// started: atomics, so the sinks note it without a lock and the task reads it to send
/// keep-alives and to notice a silent peer.
struct Activity {
    born: Instant,
    heard: AtomicU64,
    sent: AtomicU64,
    keepalive: Duration,
    idle: Duration,
}

impl Activity {
    fn new(settings: &ChannelSettings) -> Self {
        Self {
            born: Instant::now(),
            heard: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            keepalive: settings.keepalive_interval,
            idle: settings.idle_timeout,
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard(&self) {
        self.heard.store(self.now(), Ordering::Relaxed);
    }

    fn sent(&self) {
        self.sent.store(self.now(), Ordering::Relaxed);
    }

    fn at(&self, millis: u64) -> Instant {
        self.born + Duration::from_millis(millis)
    }

    /// When the peer has been silent past the idle timeout, if nothing arrives before.
    fn silent_at(&self) -> Instant {
        self.at(self.heard.load(Ordering::Relaxed)) + self.idle
    }

    /// When a keep-alive is due, if nothing is sent before.
    fn keepalive_at(&self) -> Instant {
        self.at(self.sent.load(Ordering::Relaxed)) + self.keepalive
    }
}

enum Phase {
    /// Messages are handshake messages; the task handles them.
    Handshaking,
    Established(Box<Receiving>),
    Closed,
}

/// A message the decryptor queued for the task.
enum Queued {
    /// As it arrived: a handshake message, or sealed.
    Arrived(Message),
    /// Opened and stamped: only routing is left.
    Opened(Message),
}

/// The established receiving side.
struct Receiving {
    decryptor: Decryptor,
    /// The peer, and the origin stamped on every message delivered.
    peer: StampedPeer,
    /// Our encryptor: the first hop of the return route of everything we deliver.
    encryptor: Address,
    /// The initiator's channel, handed to `create` when the responder's `Ready` arrives.
    on_ready: Option<(OnEstablished, SecureChannel)>,
}

struct Sending {
    encryptor: Encryptor,
    /// The route to the peer's decryptor.
    remote: Route,
}

/// What opening one sealed message calls for.
enum Opened {
    /// Route this on.
    Deliver(Message),
    /// Hand the initiator's channel to `create`.
    Ready(OnEstablished, SecureChannel),
    /// Close the channel.
    TearDown(String),
    /// The peer closed the channel: end ours without answering, as a normal event.
    PeerClosed,
    /// The responder refused us: tell `create` why, and end without answering.
    Refused(OnEstablished, Undeliverable),
    /// The peer's end cannot be reached any more: end the channel.
    Unreachable(Undeliverable),
    /// The peer's credential was revoked: end the channel.
    Revoked(String),
    /// Nothing more to do.
    Done,
}

impl Receiving {
    /// What an error answered along the way calls for: a node between us and the peer
    /// could not deliver what we sealed. Before `Ready`, the peer never admitted us;
    /// after, its end is gone if the hop to it is (the relay, the connection, its
    /// decryptor), and the channel ends. Other classes concern one message only.
    fn undeliverable(&mut self, message: &Message) -> Opened {
        let refusal = match message.undeliverable() {
            Some(Ok(refusal)) => refusal,
            Some(Err(e)) => {
                debug!(peer = %self.peer.identifier, error = %e, "dropped a malformed error reply");
                return Opened::Done;
            }
            None => return Opened::Done,
        };
        if let Some((tx, _)) = self.on_ready.take() {
            return Opened::Refused(tx, refusal);
        }
        match refusal.class {
            ErrorClass::UnknownAddress | ErrorClass::Unreachable | ErrorClass::Closed => {
                Opened::Unreachable(refusal)
            }
            _ => {
                debug!(peer = %self.peer.identifier, error = %refusal, "a message through the channel was refused on the way");
                Opened::Done
            }
        }
    }

    /// What a credential the peer pushed into the channel calls for: it replaces what its
    /// issuer said of the peer before, unless it is older; one from an authority we do not
    /// trust is ignored; a revoked or invalid one ends the channel.
    fn refreshed(&mut self, bytes: &[u8], trust: &Trust) -> Opened {
        let presented = CredentialAndPurposeKey::decode(bytes)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                present(&c, &self.peer.identifier, trust, now()).map_err(|e| e.to_string())
            });
        match presented {
            Ok(Presented::Accepted(credential)) => {
                let newer = self
                    .peer
                    .credentials
                    .iter()
                    .find(|held| held.issuer == credential.issuer)
                    .is_none_or(|held| held.created_at <= credential.created_at);
                if newer {
                    debug!(peer = %self.peer.identifier, issuer = %credential.issuer, "credential refreshed");
                    self.peer.replace(credential, trust);
                }
                Opened::Done
            }
            Ok(Presented::Untrusted(_)) => Opened::Done,
            Ok(Presented::Void(issuer, void @ Void::Revoked { .. })) => {
                Opened::Revoked(format!("its credential from {issuer}: {void}"))
            }
            Ok(Presented::Void(issuer, void)) => {
                debug!(peer = %self.peer.identifier, %issuer, %void, "ignored a pushed credential");
                Opened::Done
            }
            Err(e) => Opened::TearDown(format!("invalid refreshed credential: {e}")),
        }
    }

    /// Look at the peer's credentials against the node's revocations, which changed: a
    /// revoked one ends the channel; one superseded by a change of the peer's attributes
    /// stops giving attributes until the peer pushes the newer one, within
    /// [`REFRESH_GRACE`].
    fn review(&mut self, trust: &Trust) -> Option<String> {
        let now = now();
        let mut superseded = Vec::new();
        for c in &self.peer.credentials {
            match trust
                .revocations
                .check(&c.issuer, &self.peer.identifier, c.created_at, now)
            {
                Ok(()) | Err(Void::Unverifiable { .. }) => {}
                Err(void @ Void::Revoked { .. }) => {
                    return Some(format!("its credential from {}: {void}", c.issuer));
                }
                Err(void @ Void::Superseded { .. }) => {
                    info!(peer = %self.peer.identifier, issuer = %c.issuer, %void, "the peer's attributes changed; waiting for its new credential");
                    superseded.push(c.issuer);
                }
            }
        }
        for issuer in superseded {
            self.peer.withdraw(&issuer, now, REFRESH_GRACE);
        }
        None
    }

    /// Open `sealed` and decide what it calls for.
    fn open(&mut self, sealed: Bytes, trust: &Trust, activity: &Activity) -> Opened {
        let plain = match self.decryptor.open(sealed) {
            Ok(p) => p,
            Err(e) => return Opened::TearDown(e.to_string()),
        };
        activity.heard();
        match ChannelMessage::decode(plain) {
            Ok(ChannelMessage::Payload(TransportMessage {
                onward_route,
                mut return_route,
                payload,
                kind,
            })) => {
                // The attributes a peer's credentials gave it last only as long as they do:
                // once the earliest expires without a refresh, the channel ends (the peer
                // opens a new one with its renewed credential).
                if let Some(expired) = self.peer.expired(now()) {
                    return Opened::TearDown(format!(
                        "the peer's credential expired at {expired} (Unix seconds) and was not refreshed"
                    ));
                }
                return_route.prepend(self.encryptor.clone());
                Opened::Deliver(Message {
                    onward_route,
                    return_route,
                    payload,
                    kind,
                    local_info: LocalInfo {
                        origin: self.peer.origin(),
                    },
                })
            }
            Ok(ChannelMessage::RefreshCredential(bytes)) => self.refreshed(&bytes, trust),
            Ok(ChannelMessage::Close) => Opened::PeerClosed,
            // Its work is done: the peer was heard.
            Ok(ChannelMessage::Ping) => Opened::Done,
            Ok(ChannelMessage::Ready) => match self.on_ready.take() {
                Some((tx, channel)) => Opened::Ready(tx, channel),
                None => Opened::Done,
            },
            Ok(ChannelMessage::Refused(refusal)) => {
                match (self.on_ready.take(), Undeliverable::decode(&refusal)) {
                    (Some((tx, _)), Ok(refusal)) => Opened::Refused(tx, refusal),
                    (_, Err(e)) => Opened::TearDown(format!("undecodable refusal: {e}")),
                    // Refused after it admitted us: only a broken peer does that.
                    (None, Ok(refusal)) => {
                        Opened::TearDown(format!("refused after the handshake: {refusal}"))
                    }
                }
            }
            Err(e) => Opened::TearDown(format!("undecodable channel message: {e}")),
        }
    }
}

impl Channel {
    /// Act on an opened message without waiting: deliver it now, or queue it for the task.
    fn act_now(&self, opened: Opened) {
        match opened {
            Opened::Deliver(m) => match self.node.try_route(m) {
                // The node has counted and logged what it could not deliver.
                Ok(()) | Err(TryRouteError::Failed(_)) => {}
                Err(TryRouteError::WouldBlock(m)) => self.inbound.push(Queued::Opened(m)),
            },
            other => self.act_on_control(other),
        }
    }

    fn act_on_control(&self, opened: Opened) {
        match opened {
            Opened::Ready(tx, channel) => {
                let _ = tx.send(Ok(channel));
            }
            Opened::Unreachable(refusal) => {
                self.end_as(ChannelEnded::PeerUnreachable);
                self.tear_down(&refusal);
            }
            Opened::Refused(tx, refusal) => {
                debug!(decryptor = %self.decryptor, reason = %refusal, "the responder refused the secure channel");
                let _ = tx.send(Err(HandshakeError::Refused(refusal)));
                self.peer_closed();
            }
            Opened::TearDown(why) => self.tear_down(&why),
            Opened::Revoked(why) => {
                self.end_as(ChannelEnded::PeerRevoked);
                self.tear_down(&why);
            }
            Opened::PeerClosed => self.peer_closed(),
            Opened::Deliver(_) | Opened::Done => {}
        }
    }

    /// Stop the channel: from now on nothing is opened or delivered, and the task closes it.
    fn tear_down(&self, why: &dyn fmt::Display) {
        if let Phase::Established(rx) = self.stop_opening() {
            warn!(peer = %rx.peer.identifier, decryptor = %self.decryptor, reason = %why, "secure channel torn down");
        }
        self.stop();
    }

    /// The peer closed the channel: end ours as a normal event, without a `Close` back (it
    /// would only be dropped at the peer's end, which is gone).
    fn peer_closed(&self) {
        {
            let mut out = self.outbound.lock();
            out.mark_closed();
            *out.state_mut() = None;
        }
        if let Phase::Established(rx) = self.stop_opening() {
            debug!(peer = %rx.peer.identifier, decryptor = %self.decryptor, "secure channel closed by the peer");
        }
        self.stop();
    }

    /// Say how the channel ended before its task notices that it has.
    fn end_as(&self, how: ChannelEnded) {
        self.end.0.mark(how);
    }

    /// Open and deliver nothing more; the phase the channel was in.
    fn stop_opening(&self) -> Phase {
        self.inbound
            .close_with(|phase| std::mem::replace(phase, Phase::Closed))
            .1
    }

    /// Unregister both ends; the task notices and closes the channel.
    fn stop(&self) {
        if let Some(encryptor) = self.encryptor.get() {
            self.node.stop_worker(encryptor);
        }
        self.node.stop_worker(&self.decryptor);
    }

    /// Seal `message` for the peer, if the channel is established.
    fn seal(&self, sending: &mut Option<Sending>, message: &ChannelMessage) -> Option<Message> {
        let sending = sending.as_mut()?;
        match sending.encryptor.seal(message) {
            Ok(sealed) => {
                self.activity.sent();
                Some(Message::new(
                    sending.remote.clone(),
                    Route::from(self.decryptor.clone()),
                    sealed,
                ))
            }
            Err(e) => {
                warn!(decryptor = %self.decryptor, error = %e, "dropped a message the channel cannot seal");
                None
            }
        }
    }

    /// `node.route`, boxed: only queued messages take this path, and the future is large.
    fn route(
        &self,
        message: Message,
    ) -> Pin<Box<dyn Future<Output = Result<(), RouteError>> + Send + '_>> {
        Box::pin(self.node.route(message))
    }

    /// Route what is queued for the peer, in order, until the sending side closes.
    ///
    /// `let … else`, not `while let`: a `while let` keeps its scrutinee (the `pop` future and
    /// the message) alive through the body, doubling the size of this future, which every
    /// idle channel holds for as long as it lives.
    async fn send_queued(&self) {
        loop {
            let Some(sealed) = self.outbound.pop().await else {
                return;
            };
            // The node counts and logs what it cannot deliver.
            let _ = self.route(sealed).await;
        }
    }

    /// Open and route what the decryptor queued, in order, until the receiving side closes.
    async fn receive_queued(&self) {
        loop {
            // `let … else` for the reason `send_queued` gives.
            let Some(queued) = self.inbound.pop().await else {
                return;
            };
            match self.open_queued(queued) {
                Opened::Deliver(m) => {
                    let _ = self.route(m).await;
                }
                other => self.act_on_control(other),
            }
        }
    }

    /// What the task does with a message the decryptor queued. Synchronous, so that the
    /// message and the opening state are not part of `receive_queued`'s future.
    fn open_queued(&self, queued: Queued) -> Opened {
        match queued {
            Queued::Opened(m) => Opened::Deliver(m),
            Queued::Arrived(m) => match self.inbound.lock().state_mut() {
                Phase::Established(rx) if m.kind != MessageKind::Data => rx.undeliverable(&m),
                Phase::Established(rx) => rx.open(m.payload, &self.trust, &self.activity),
                // A second handshake message, or anything after the channel closed.
                Phase::Handshaking | Phase::Closed => Opened::Done,
            },
        }
    }

    /// Run the handshake's last step on `message` and set the channel up. Returns the
    /// encryptor's registration.
    async fn finish_handshake(
        self: &Arc<Self>,
        handshake: Box<Handshake>,
        message: Message,
        on_established: &mut Option<OnEstablished>,
    ) -> Result<SinkHandle, HandshakeError> {
        if let Some(refusal) = undeliverable(&message) {
            // A node on the way (or the responder's listener) answered instead of the peer.
            return Err(refusal);
        }
        let (reply, channel) = match handshake.step(&message.payload, now())? {
            Progress::Continue(..) => return Err(HandshakeError::Unexpected),
            Progress::Refused {
                error,
                mut encryptor,
            } => {
                let refusal = Undeliverable {
                    node: self.node.name().to_owned(),
                    address: self.decryptor.clone(),
                    class: error.class(),
                };
                match encryptor.seal(&ChannelMessage::Refused(refusal.encode().into())) {
                    Ok(sealed) => {
                        let refused = Message::new(message.return_route, Route::new(), sealed);
                        if let Err(e) = self.node.route(refused).await {
                            debug!(decryptor = %self.decryptor, error = %e, "the refusal was not sent");
                        }
                    }
                    Err(e) => {
                        debug!(decryptor = %self.decryptor, error = %e, "the refusal cannot be sealed");
                    }
                }
                return Err(error);
            }
            Progress::Established { reply, channel } => (reply, *channel),
        };
        let remote = message.return_route;
        if let Some(reply) = reply {
            let m3 = Message::new(remote.clone(), Route::from(self.decryptor.clone()), reply);
            if let Err(e) = self.node.route(m3).await {
                debug!(decryptor = %self.decryptor, error = %e, "the last handshake message was not sent");
            }
        }
        let code = channel.verification_code();
        let Established {
            encryptor,
            decryptor,
            peer,
            handshake_hash,
        } = channel;
        let address = Address::random_local(ENCRYPTOR_PREFIX);
        *self.outbound.lock().state_mut() = Some(Sending { encryptor, remote });
        let handle = self
            .node
            .register_sink(
                [address.clone()],
                Arc::new(AllowLocal),
                Arc::new(EncryptorSink(self.clone())),
            )
            .map_err(|_| HandshakeError::Unexpected)?;
        let _ = self.encryptor.set(address.clone());
        info!(
            peer = %peer.identifier,
            decryptor = %self.decryptor,
            encryptor = %address,
            "secure channel established"
        );
        // The responder's first message tells the initiator it was admitted; the initiator
        // hands its channel to `create` when that arrives.
        let initiator = on_established.is_some();
        let on_ready = on_established.take().map(|tx| {
            let channel = SecureChannel {
                encryptor: address.clone(),
                decryptor: self.decryptor.clone(),
                peer: peer.clone(),
                verification_code: code,
                handshake_hash,
                end: self.end.clone(),
            };
            (tx, channel)
        });
        *self.inbound.lock().state_mut() = Phase::Established(Box::new(Receiving {
            decryptor,
            peer: StampedPeer::new(peer, handshake_hash, self.source),
            encryptor: address,
            on_ready,
        }));
        if !initiator {
            let ready = self.seal(self.outbound.lock().state_mut(), &ChannelMessage::Ready);
            if let Some(ready) = ready {
                let _ = self.node.route(ready).await;
            }
        }
        Ok(handle)
    }

    /// Send a keep-alive whenever the channel has sent nothing for the keep-alive interval;
    /// return once the peer has been silent past the idle timeout.
    async fn keep_alive(&self) -> ChannelEnded {
        loop {
            let now = Instant::now();
            let silent = self.activity.silent_at();
            if now >= silent {
                return ChannelEnded::PeerSilent;
            }
            let due = self.activity.keepalive_at();
            if now >= due {
                self.send_keepalive();
                continue;
            }
            tokio::time::sleep_until(silent.min(due)).await;
        }
    }

    /// Follow the node's revocations and the credentials it presents for as long as the
    /// channel is open: a peer whose credential is revoked ends the channel (returned), and
    /// renewed credentials of ours are pushed to the peer, which replaces what it holds
    /// from their issuers with them.
    async fn follow(
        &self,
        mut revocations: watch::Receiver<u64>,
        mut presenting: watch::Receiver<Arc<[Bytes]>>,
    ) -> ChannelEnded {
        let (mut revocations_open, mut presenting_open) = (true, true);
        loop {
            tokio::select! {
                changed = revocations.changed(), if revocations_open => {
                    if changed.is_err() {
                        revocations_open = false;
                        continue;
                    }
                    let revoked = match self.inbound.lock().state_mut() {
                        Phase::Established(rx) => rx.review(&self.trust),
                        Phase::Handshaking | Phase::Closed => None,
                    };
                    if let Some(why) = revoked {
                        self.tear_down(&why);
                        return ChannelEnded::PeerRevoked;
                    }
                }
                changed = presenting.changed(), if presenting_open => {
                    if changed.is_err() {
                        presenting_open = false;
                        continue;
                    }
                    let credentials = presenting.borrow_and_update().clone();
                    self.push_credentials(&credentials);
                }
                () = std::future::pending::<()>(), if !revocations_open && !presenting_open => {}
            }
        }
    }

    /// Queue our renewed `credentials` for the peer, behind whatever is queued.
    fn push_credentials(&self, credentials: &[Bytes]) {
        for c in credentials {
            // Sealed and queued under one lock, so the queue keeps nonce order.
            let mut lane = self.outbound.lock();
            if lane.refusal().is_some() {
                return;
            }
            if let Some(sealed) = self.seal(
                lane.state_mut(),
                &ChannelMessage::RefreshCredential(c.clone()),
            ) {
                lane.push(sealed);
            }
        }
        debug!(decryptor = %self.decryptor, credentials = credentials.len(), "pushed renewed credentials to the peer");
    }

    /// Queue a keep-alive behind whatever is queued, so nonces stay in order. A full queue
    /// is sending already, and a closing channel sends nothing more: either counts as sent.
    fn send_keepalive(&self) {
        let mut lane = self.outbound.lock();
        if lane.refusal().is_none()
            && let Some(ping) = self.seal(lane.state_mut(), &ChannelMessage::Ping)
        {
            lane.push(ping);
        }
        self.activity.sent();
    }

    /// Send what is still queued for the peer, then `Close`, within [`CLOSE_TIMEOUT`].
    async fn close(&self) {
        let queued = self.outbound.close();
        let close = self.seal_close();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            for m in queued.into_iter().chain(close) {
                let _ = self.node.route(m).await;
            }
        })
        .await;
    }

    /// The sealed `Close`, once: whoever closes the channel first sends it.
    fn seal_close(&self) -> Option<Message> {
        let mut out = self.outbound.lock();
        out.mark_closed();
        let close = self.seal(out.state_mut(), &ChannelMessage::Close);
        *out.state_mut() = None;
        close
    }
}

/// What the channel's task owns, so that however the task ends (even dropped at node
/// shutdown), the peer is told, the addresses are released and the owner's [`EndSignal`]
/// fires.
struct Owner {
    channel: Arc<Channel>,
    decryptor: SinkHandle,
    encryptor: Option<SinkHandle>,
    end: EndMark,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.end.mark(ChannelEnded::Closed);
        let ch = &self.channel;
        ch.stop_opening();
        // Best effort, without waiting: only if the task was dropped before it could close.
        if let Some(close) = ch.seal_close() {
            let _ = ch.node.try_route(close);
        }
        ch.outbound.wake_senders();
    }
}

/// What bounds a handshake: its deadline, and (a responder's) its slot among the
/// listener's unfinished handshakes, given back when it ends.
struct Deadline {
    slot: Option<PendingSlot>,
    deadline: Instant,
}

/// What an open channel follows: the node's revocations, and the credentials it presents
/// (as its settings presented them when the channel started).
struct Follow {
    revocations: watch::Receiver<u64>,
    presenting: watch::Receiver<Arc<[Bytes]>>,
}

/// A channel's task: the handshake under its deadline, then the queues, until either end is
/// stopped (by `close`, a tear-down, a timed-out `create`, or node shutdown); then it closes.
async fn run(
    channel: Arc<Channel>,
    decryptor: SinkHandle,
    handshake: Box<Handshake>,
    mut on_established: Option<OnEstablished>,
    Deadline { slot, deadline }: Deadline,
    end: EndMark,
    follow: Follow,
) {
    let mut owner = Owner {
        channel: channel.clone(),
        decryptor,
        encryptor: None,
        end,
    };
    let stopped = owner.decryptor.stop_token().clone();
    // Boxed, and so are the routes below: a channel lives long and mostly idle, and its
    // task's future is as large as its largest state, so the handshake (Noise state and
    // all) and a route in progress are kept out of it.
    let handshake = Box::pin(async {
        let first = loop {
            match channel.inbound.pop().await {
                Some(Queued::Arrived(m)) => break m,
                Some(Queued::Opened(_)) => {}
                // Only an established channel stops opening; nothing else closes this side.
                None => return Err(HandshakeError::Unexpected),
            }
        };
        let via = arrived_over(&first);
        channel
            .finish_handshake(handshake, first, &mut on_established)
            .await
            .map(|encryptor| (encryptor, via))
    });
    let shed = slot.as_ref().map(|s| s.abandoned().clone());
    let outcome = tokio::select! {
        biased;
        () = stopped.cancelled() => Some(Err(HandshakeError::Abandoned)),
        () = async {
            match &shed {
                Some(shed) => shed.cancelled().await,
                None => std::future::pending().await,
            }
        } => {
            debug!(decryptor = %channel.decryptor, "secure channel handshake abandoned for a lighter source");
            Some(Err(HandshakeError::Abandoned))
        }
        () = tokio::time::sleep_until(deadline) => {
            if let Some(suppressed) = kith_node::LOG_LIMITER
                .admit("secure channel handshake timed out", channel.source)
            {
                warn!(decryptor = %channel.decryptor, source = ?channel.source, suppressed, "secure channel handshake timed out; abandoned");
            }
            Some(Err(HandshakeError::TimedOut))
        }
        r = handshake => Some(r),
    };
    // An established channel keeps its place among the listener's channels until it ends.
    let _place = match (&outcome, slot) {
        (Some(Ok(_)), Some(slot)) => Some(slot.established()),
        _ => None,
    };
    match outcome {
        Some(Ok((encryptor, via))) => {
            let encryptor_stopped = encryptor.stop_token().clone();
            owner.encryptor = Some(encryptor);
            // What the channel runs over: a channel outlives neither its connection nor
            // the channel it is nested in.
            let under = via.map(|via| channel.node.stop_token(&via));
            let ended = if let Some(None) = under {
                ChannelEnded::ConnectionClosed
            } else {
                let under = under.flatten();
                tokio::select! {
                    biased;
                    () = stopped.cancelled() => ChannelEnded::Closed,
                    () = encryptor_stopped.cancelled() => ChannelEnded::Closed,
                    () = async {
                        match &under {
                            Some(under) => under.cancelled().await,
                            None => std::future::pending().await,
                        }
                    } => ChannelEnded::ConnectionClosed,
                    how = channel.keep_alive() => how,
                    how = channel.follow(follow.revocations, follow.presenting) => how,
                    () = async { tokio::join!(channel.send_queued(), channel.receive_queued()); } => {
                        ChannelEnded::Closed
                    }
                }
            };
            if ended != ChannelEnded::Closed {
                info!(decryptor = %channel.decryptor, reason = %ended, "secure channel ended");
            }
            // Ended now, not once the `Close` below is out.
            owner.end.mark(ended);
            channel.stop();
            channel.stop_opening();
            Box::pin(channel.close()).await;
        }
        Some(Err(e)) => {
            if !matches!(e, HandshakeError::Abandoned | HandshakeError::TimedOut)
                && let Some(suppressed) =
                    kith_node::LOG_LIMITER.admit("secure channel handshake failed", channel.source)
            {
                warn!(decryptor = %channel.decryptor, source = ?channel.source, error = %kith_node::DisplayChain(&e), suppressed, "secure channel handshake failed");
            }
            if let Some(tx) = on_established.take() {
                let _ = tx.send(Err(e));
            }
            channel.stop();
        }
        None => channel.stop(),
    }
    drop(owner);
}

/// The decryptor: opens what arrives in the caller's task and hands it on.
struct DecryptorSink(Arc<Channel>);

impl MessageSink for DecryptorSink {
    fn try_deliver(&self, message: Message) -> Result<(), SinkError> {
        let ch = &self.0;
        let opened = {
            let mut lane = ch.inbound.lock();
            if let Some(refuse) = lane.refusal() {
                return Err(refuse(message));
            }
            let in_order = lane.is_idle();
            match lane.state_mut() {
                Phase::Closed => return Err(SinkError::Closed(message)),
                Phase::Established(rx) if in_order && message.kind != MessageKind::Data => {
                    rx.undeliverable(&message)
                }
                Phase::Established(rx) if in_order => {
                    rx.open(message.payload, &ch.trust, &ch.activity)
                }
                Phase::Established(_) | Phase::Handshaking => {
                    lane.push(Queued::Arrived(message));
                    return Ok(());
                }
            }
        };
        ch.act_now(opened);
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(self.0.inbound.ready())
    }
}

/// The encryptor: seals what is routed to it in the caller's task and hands it on.
struct EncryptorSink(Arc<Channel>);

impl MessageSink for EncryptorSink {
    fn try_deliver(&self, mut message: Message) -> Result<(), SinkError> {
        let ch = &self.0;
        let sealed = {
            let mut lane = ch.outbound.lock();
            if lane.state().is_none() {
                return Err(SinkError::Closed(message));
            }
            if let Some(refuse) = lane.refusal() {
                return Err(refuse(message));
            }
            let len = message.payload.len();
            if len > MAX_MESSAGE_PAYLOAD && !carries_sealed(&message) {
                return Err(SinkError::too_large(message, len, MAX_MESSAGE_PAYLOAD));
            }
            message.onward_route.step();
            let inner = ChannelMessage::Payload(TransportMessage {
                onward_route: message.onward_route,
                return_route: message.return_route,
                payload: message.payload,
                kind: message.kind,
            });
            let Some(sealed) = ch.seal(lane.state_mut(), &inner) else {
                return Ok(());
            };
            // The sender hands its sealed message on itself, outside the lock, holding the
            // turn: until it is done, later messages queue and the task routes none, so
            // nonces leave in order even when several tasks send on one channel (a slow
            // hand-on overtaken by more than a replay window's worth of messages would end
            // the channel at the peer).
            let Some(sealed) = lane.claim_direct(sealed) else {
                return Ok(());
            };
            sealed
        };
        let blocked = match ch.node.try_route(sealed) {
            // The node has counted and logged what it could not deliver.
            Ok(()) | Err(TryRouteError::Failed(_)) => None,
            Err(TryRouteError::WouldBlock(sealed)) => Some(sealed),
        };
        // Ahead of whatever was sealed after it.
        ch.outbound.finish_direct(blocked);
        Ok(())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(self.0.outbound.ready())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::{Mutex, MutexGuard};

    use tokio::sync::Notify;

    use kith_node::testing::until;
    use kith_node::{AllowOrigins, MAILBOX_CAPACITY};

    use super::*;
    use crate::channel::Admission;

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }
    use crate::{Identity, SecureChannelKey};

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn decryptor_addresses_are_told_from_every_other_address() {
        // The size check lets a sealed inner message through by its last hop's shape: the
        // shape must be exactly what `start` names decryptors.
        for _ in 0..100 {
            assert!(is_decryptor(&Address::random_local(DECRYPTOR_PREFIX)));
            assert!(!is_decryptor(&Address::random_local(ENCRYPTOR_PREFIX)));
        }
        for other in [
            "echo",
            "sc",
            "sc-",
            "sc-0123",
            "sc-0123456789abcdefg",
            "api",
        ] {
            assert!(!is_decryptor(&Address::local(other)), "{other}");
        }
        let remote = Address::try_new(kith_node::TCP, "sc-0123456789abcdef").unwrap();
        assert!(!is_decryptor(&remote));
    }

    fn settings() -> ChannelSettings {
        let (identity, secret) = Identity::create(now());
        let key = SecureChannelKey::generate(&identity, &secret, now() - 5, now() + 3600);
        ChannelSettings::new(
            Arc::new(LocalIdentity {
                identity,
                key,
                credentials: vec![],
            }),
            Arc::new(Trust {
                authorities: vec![],
                admission: Admission::AnyIdentity,
                revocations: Default::default(),
            }),
        )
    }

    /// Takes its first message, then waits for the gate before it takes any more; records
    /// the numbers it is sent, in the order they come.
    struct Gated {
        gate: Arc<Notify>,
        shut: bool,
        seen: Arc<Mutex<Vec<u32>>>,
    }

    impl Worker for Gated {
        async fn handle_message(&mut self, _: &mut Context, m: Message) -> Result<(), WorkerError> {
            if !matches!(m.origin(), Origin::SecureChannel(_)) {
                return Err("not through the channel".into());
            }
            let n = u32::from_be_bytes(m.payload.as_ref().try_into()?);
            lock(&self.seen).push(n);
            if self.shut {
                self.gate.notified().await;
                self.shut = false;
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_receiver_fills_both_backlogs_then_everything_arrives_in_order() {
        // Both ends on one node: every hop is a sink or a mailbox, so the capacities are exact.
        let node = Node::new("one");
        listen(&node, DEFAULT_LISTENER, settings()).unwrap();
        let gate = Arc::new(Notify::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        node.start_worker_with_policy(
            [Address::local("gated")],
            Arc::new(AllowOrigins(|o: &Origin| {
                matches!(o, Origin::SecureChannel(_))
            })),
            Gated {
                gate: gate.clone(),
                shut: true,
                seen: seen.clone(),
            },
        )
        .unwrap();
        let channel = tokio::time::timeout(
            WAIT,
            create(&node, Route::from(DEFAULT_LISTENER), &settings()),
        )
        .await
        .unwrap()
        .unwrap();

        const N: u32 = 1_000;
        let sent = Arc::new(AtomicU32::new(0));
        let client = node.client().unwrap();
        let through = Route::from(vec![channel.encryptor.clone(), Address::local("gated")]);
        let sender = tokio::spawn({
            let sent = sent.clone();
            async move {
                for i in 0..N {
                    client
                        .send(through.clone(), i.to_be_bytes().to_vec())
                        .await?;
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, kith_node::RouteError>(())
            }
        });
        // One message held by the worker, a full mailbox, and both channel backlogs: the
        // sender is then made to wait, not buffered for.
        let capacity = (1 + MAILBOX_CAPACITY + 2 * CHANNEL_BACKLOG) as u32;
        until("the backlogs to fill", || {
            sent.load(Ordering::SeqCst) >= capacity
        })
        .await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let stalled = sent.load(Ordering::SeqCst);
        assert!(
            (capacity..capacity + 4).contains(&stalled),
            "{stalled} sent past a closed gate; expected about {capacity}"
        );
        gate.notify_one();
        tokio::time::timeout(WAIT, sender)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        until("every message to arrive", || {
            lock(&seen).len() == N as usize
        })
        .await;
        assert_eq!(*lock(&seen), (0..N).collect::<Vec<_>>());
        assert!(close(&node, &channel));
        node.shutdown().await;
    }
}
