//! Secure channels on a node: a listener that answers handshakes, and per channel a
//! decryptor and an encryptor worker.
//!
//! A route to a remote service through a channel is `[encryptor, …rest]`: the encryptor
//! seals `rest`, the return route and the payload, and sends them along the route to the
//! peer's decryptor, which opens them, stamps the message with the peer's identifier and
//! attested attributes ([`Origin::SecureChannel`]), prepends its own encryptor to the return
//! route, and routes it on. A handshake that does not finish within the timeout is
//! abandoned; anything that fails to decrypt, a replay, or a message older than the window
//! tears the channel down (never the node) with the reason in our log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kith_node::{
    Address, AllowAll, AllowLocal, Context, LocalInfo, Message, Node, Origin, Route, Worker,
    WorkerError,
};
use kith_transport::TransportMessage;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::CredentialAndPurposeKey;
use crate::channel::{
    ChannelMessage, DEFAULT_REKEY_INTERVAL, Decryptor, Encryptor, Handshake, HandshakeError,
    LocalIdentity, Peer, Progress, Trust,
};

/// 10 s: long enough for a lossy mobile link, short enough that a half-open handshake cannot
/// pin memory (DESIGN §4).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// 1,024 handshakes: how many responders a listener keeps at once while their handshakes are
/// unfinished. Each holds Noise state until it completes or times out, so without a cap a
/// peer spraying first messages could pin memory; past it, new handshakes are refused.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The default address of a node's secure-channel listener.
pub const DEFAULT_LISTENER: &str = "api";

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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
    /// Unfinished handshakes a listener holds at once.
    pub max_pending_handshakes: usize,
}

impl ChannelSettings {
    /// Settings with the default timeout and rekey interval.
    pub fn new(local: Arc<LocalIdentity>, trust: Arc<Trust>) -> Self {
        Self {
            local,
            trust,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
        }
    }
}

/// What a listener has done, for status and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Handshakes that got a responder.
    pub started: AtomicU64,
    /// First messages refused because the pending-handshake cap was reached.
    pub refused_busy: AtomicU64,
    /// First messages that were not a valid handshake start.
    pub refused_invalid: AtomicU64,
    pending: Arc<AtomicUsize>,
}

impl ListenerStats {
    /// Handshakes started and not yet finished or abandoned.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One unfinished handshake counted against a listener's cap; released when dropped.
struct PendingSlot(Arc<AtomicUsize>);

impl PendingSlot {
    fn take(pending: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(pending.clone()))
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
    settings: ChannelSettings,
) -> Result<Arc<ListenerStats>, kith_node::StartError> {
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
    let decryptor = Address::random_local("sc");
    let (tx, rx) = oneshot::channel();
    let established = Arc::new(AtomicBool::new(false));
    let worker = ChannelWorker {
        state: State::Handshaking(Some(Box::new(handshake))),
        settings: settings.clone(),
        on_established: Some(tx),
        established: established.clone(),
        pending: None,
        slot: None,
    };
    node.start_worker_with_policy([decryptor.clone()], Arc::new(AllowAll), worker)
        .map_err(|_| SecureChannelError::ShuttingDown)?;
    arm_handshake_timeout(node, &decryptor, settings.handshake_timeout, established);
    let message = Message::new(route, Route::from(decryptor.clone()), first);
    if let Err(e) = node.route(message).await {
        node.stop_worker(&decryptor);
        return Err(e.into());
    }
    match tokio::time::timeout(settings.handshake_timeout, rx).await {
        Ok(Ok(Ok(channel))) => Ok(channel),
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

/// Abandon a handshake that has not finished in time: stop its decryptor unless
/// `established` was set first.
fn arm_handshake_timeout(
    node: &Node,
    decryptor: &Address,
    timeout: Duration,
    established: Arc<AtomicBool>,
) {
    let node2 = node.clone();
    let decryptor = decryptor.clone();
    node.spawn(async move {
        tokio::time::sleep(timeout).await;
        if !established.load(Ordering::Acquire) && node2.stop_worker(&decryptor) {
            warn!(decryptor = %decryptor, "secure channel handshake timed out; abandoned");
        }
    });
}

struct Listener {
    settings: ChannelSettings,
    stats: Arc<ListenerStats>,
}

impl Worker for Listener {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        let Some(slot) =
            PendingSlot::take(&self.stats.pending, self.settings.max_pending_handshakes)
        else {
            self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
            warn!(
                max = self.settings.max_pending_handshakes,
                "refused a secure channel handshake: too many unfinished handshakes"
            );
            return Ok(());
        };
        let handshake = Handshake::respond(
            self.settings.local.clone(),
            self.settings.trust.clone(),
            self.settings.rekey_interval,
        )?;
        let decryptor = Address::random_local("sc");
        let reply_to = message.return_route.clone();
        let (handshake, second) = match handshake.step(&message.payload, now()) {
            Ok(Progress::Continue(h, second)) => (h, second),
            Ok(Progress::Established { .. }) => {
                return Err("handshake finished on its first message".into());
            }
            Err(e) => {
                self.stats.refused_invalid.fetch_add(1, Ordering::Relaxed);
                warn!(error = %kith_node::DisplayChain(&e), "refused a secure channel handshake");
                return Ok(());
            }
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        let established = Arc::new(AtomicBool::new(false));
        let worker = ChannelWorker {
            state: State::Handshaking(Some(handshake)),
            settings: self.settings.clone(),
            on_established: None,
            established: established.clone(),
            pending: None,
            slot: Some(slot),
        };
        ctx.node()
            .start_worker_with_policy([decryptor.clone()], Arc::new(AllowAll), worker)?;
        arm_handshake_timeout(
            ctx.node(),
            &decryptor,
            self.settings.handshake_timeout,
            established,
        );
        ctx.send_with_return(reply_to, Route::from(decryptor), second)
            .await?;
        Ok(())
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one state per channel, held in place by its worker; the size is the cipher state itself"
)]
enum State {
    Handshaking(Option<Box<Handshake>>),
    Established {
        decryptor: Decryptor,
        peer: Peer,
        encryptor: Address,
    },
    Closed,
}

struct ChannelWorker {
    state: State,
    settings: ChannelSettings,
    on_established: Option<oneshot::Sender<Result<SecureChannel, HandshakeError>>>,
    /// Set once established, so the handshake timeout leaves the channel alone.
    established: Arc<AtomicBool>,
    /// The initiator's channel, handed to `create` when the responder's `Ready` arrives.
    pending: Option<SecureChannel>,
    /// A responder's place under its listener's cap, given back when the handshake ends
    /// one way or the other (established, failed, or the worker stopped).
    slot: Option<PendingSlot>,
}

impl ChannelWorker {
    async fn handshake(
        &mut self,
        ctx: &mut Context,
        handshake: Handshake,
        message: Message,
    ) -> Result<(), WorkerError> {
        match handshake.step(&message.payload, now()) {
            Ok(Progress::Continue(..)) => {
                self.fail(ctx, HandshakeError::Unexpected);
                Ok(())
            }
            Ok(Progress::Established { reply, channel }) => {
                let remote = message.return_route;
                if let Some(reply) = reply {
                    ctx.send(remote.clone(), reply).await?;
                }
                let channel = *channel;
                let code = channel.verification_code();
                let encryptor = Address::random_local("sc-enc");
                let initiator = self.on_established.is_some();
                ctx.node().start_worker_with_policy(
                    [encryptor.clone()],
                    Arc::new(AllowLocal),
                    EncryptorWorker {
                        encryptor: channel.encryptor,
                        remote,
                        decryptor: ctx.address().clone(),
                        // The responder's first message tells the initiator it was admitted.
                        send_ready: !initiator,
                    },
                )?;
                self.established.store(true, Ordering::Release);
                self.slot = None;
                info!(
                    peer = %channel.peer.identifier,
                    decryptor = %ctx.address(),
                    %encryptor,
                    "secure channel established"
                );
                self.pending = Some(SecureChannel {
                    encryptor: encryptor.clone(),
                    decryptor: ctx.address().clone(),
                    peer: channel.peer.clone(),
                    verification_code: code,
                });
                self.state = State::Established {
                    decryptor: channel.decryptor,
                    peer: channel.peer,
                    encryptor,
                };
                Ok(())
            }
            Err(e) => {
                self.fail(ctx, e);
                Ok(())
            }
        }
    }

    fn fail(&mut self, ctx: &mut Context, e: HandshakeError) {
        warn!(decryptor = %ctx.address(), error = %kith_node::DisplayChain(&e), "secure channel handshake failed");
        if let Some(tx) = self.on_established.take() {
            let _ = tx.send(Err(e));
        }
        self.state = State::Closed;
        ctx.stop_worker(&ctx.address().clone());
    }

    fn tear_down(&mut self, ctx: &mut Context, why: &dyn std::fmt::Display) {
        if let State::Established {
            peer, encryptor, ..
        } = &self.state
        {
            warn!(peer = %peer.identifier, decryptor = %ctx.address(), reason = %why, "secure channel torn down");
            ctx.stop_worker(&encryptor.clone());
        }
        self.state = State::Closed;
        ctx.stop_worker(&ctx.address().clone());
    }
}

impl Worker for ChannelWorker {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        match &mut self.state {
            State::Handshaking(h) => match h.take() {
                Some(h) => self.handshake(ctx, *h, message).await,
                None => Ok(()),
            },
            State::Closed => Ok(()),
            State::Established {
                decryptor,
                peer,
                encryptor,
            } => {
                let plain = match decryptor.decrypt(&message.payload) {
                    Ok(p) => p,
                    Err(e) => {
                        self.tear_down(ctx, &e);
                        return Ok(());
                    }
                };
                match ChannelMessage::decode(Bytes::from(plain)) {
                    Ok(ChannelMessage::Payload(TransportMessage {
                        onward_route,
                        mut return_route,
                        payload,
                    })) => {
                        return_route.prepend(encryptor.clone());
                        let inner = Message {
                            onward_route,
                            return_route,
                            payload,
                            local_info: LocalInfo {
                                origin: Origin::SecureChannel {
                                    identifier: peer.identifier.to_string(),
                                    attributes: peer.attributes.clone(),
                                },
                            },
                        };
                        // The node counts and logs what it cannot deliver.
                        let _ = ctx.forward(inner).await;
                        Ok(())
                    }
                    Ok(ChannelMessage::RefreshCredential(bytes)) => {
                        let refreshed = CredentialAndPurposeKey::decode(&bytes)
                            .map_err(|e| e.to_string())
                            .and_then(|c| {
                                c.verify(&peer.identifier, &self.settings.trust.authorities, now())
                                    .map_err(|e| e.to_string())
                            });
                        match refreshed {
                            Ok(v) => {
                                debug!(peer = %peer.identifier, "credential refreshed");
                                peer.attributes.extend(v.attributes);
                                peer.credentials_expire_at = Some(v.expires_at);
                                Ok(())
                            }
                            Err(e) => {
                                self.tear_down(ctx, &format!("invalid refreshed credential: {e}"));
                                Ok(())
                            }
                        }
                    }
                    Ok(ChannelMessage::Close) => {
                        self.tear_down(ctx, &"closed by the peer");
                        Ok(())
                    }
                    Ok(ChannelMessage::Ready) => {
                        if let (Some(tx), Some(channel)) =
                            (self.on_established.take(), self.pending.take())
                        {
                            let _ = tx.send(Ok(channel));
                        }
                        Ok(())
                    }
                    Err(e) => {
                        self.tear_down(ctx, &format!("undecodable channel message: {e}"));
                        Ok(())
                    }
                }
            }
        }
    }

    async fn shutdown(&mut self, ctx: &mut Context) {
        if let State::Established { encryptor, .. } = &self.state {
            ctx.stop_worker(&encryptor.clone());
        }
        if let Some(tx) = self.on_established.take() {
            let _ = tx.send(Err(HandshakeError::Unexpected));
        }
    }
}

struct EncryptorWorker {
    encryptor: Encryptor,
    /// The route to the peer's decryptor.
    remote: Route,
    decryptor: Address,
    send_ready: bool,
}

impl EncryptorWorker {
    async fn seal_and_send(
        &mut self,
        ctx: &Context,
        m: &ChannelMessage,
    ) -> Result<(), WorkerError> {
        let sealed = self.encryptor.encrypt(&m.encode())?;
        ctx.send_with_return(
            self.remote.clone(),
            Route::from(self.decryptor.clone()),
            sealed,
        )
        .await?;
        Ok(())
    }
}

impl Worker for EncryptorWorker {
    async fn initialize(&mut self, ctx: &mut Context) -> Result<(), WorkerError> {
        if self.send_ready {
            self.seal_and_send(ctx, &ChannelMessage::Ready).await?;
        }
        Ok(())
    }

    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        mut message: Message,
    ) -> Result<(), WorkerError> {
        message.onward_route.step();
        let inner = ChannelMessage::Payload(TransportMessage {
            onward_route: message.onward_route,
            return_route: message.return_route,
            payload: message.payload,
        });
        self.seal_and_send(ctx, &inner).await
    }

    async fn shutdown(&mut self, ctx: &mut Context) {
        let _ = self.seal_and_send(ctx, &ChannelMessage::Close).await;
        ctx.stop_worker(&self.decryptor.clone());
    }
}
