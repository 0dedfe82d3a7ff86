//! The outlet: a service that turns each admitted `Open` into a connection to its target.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kith_node::{
    Address, AllowAll, IncomingAccessControl, Message, MessageKind, Node, Route, Share, Shares,
    StartError, TryRouteError,
};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::inbox::Inbox;
use super::session::{self, End, window_ok};
use super::{PortalMessage, PortalOptions, PortalStats, SameOrigin};

/// A running outlet. Dropping the handle leaves it running; [`Outlet::stop`] ends it and
/// its sessions.
#[derive(Clone)]
pub struct Outlet {
    /// The node it serves on, whose registration of `address` [`Outlet::stop`] ends.
    node: Node,
    address: Address,
    target: String,
    stats: Arc<PortalStats>,
    stop: CancellationToken,
    /// One per session, from the `Open` until the session ends (connecting included).
    permits: Arc<Semaphore>,
    /// Sessions per peer ([`peer_key`]).
    per_peer: Shares<String>,
}

/// A session's place: among the outlet's and among its peer's. Given back when dropped.
struct Place {
    _permit: OwnedSemaphorePermit,
    _share: Share<String>,
}

impl Outlet {
    /// Start an outlet at the local `address` of `node` that connects to `target`
    /// (`host:port`) for every `Open` whose origin `policy` admits. An `Open` the policy
    /// refuses is answered `Refused`, so the inlet learns at once rather than after a timeout.
    pub fn start(
        node: &Node,
        address: &str,
        target: &str,
        policy: Arc<dyn IncomingAccessControl>,
        options: PortalOptions,
    ) -> Result<Self, StartError> {
        let address = Address::local(address);
        // Every origin reaches the mailbox so that a refusal can be answered; the policy is
        // applied to each `Open` below.
        let mut mailbox = node.register_mailbox([address.clone()], Arc::new(AllowAll))?;
        let stop = mailbox.stop_token().child_token();
        let outlet = Self {
            node: node.clone(),
            address: address.clone(),
            target: target.to_owned(),
            stats: Arc::new(PortalStats::default()),
            stop: stop.clone(),
            permits: Arc::new(Semaphore::new(options.max_sessions)),
            per_peer: Shares::default(),
        };
        let this = outlet.clone();
        let task_node = node.clone();
        node.spawn(async move {
            loop {
                let message = tokio::select! {
                    () = this.stop.cancelled() => break,
                    m = mailbox.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                this.on_message(&task_node, &policy, &options, message);
            }
            // Cancelled before the address is freed: a late `stop` of this outlet then
            // leaves alone a new outlet registered at the same address.
            this.stop.cancel();
            drop(mailbox);
            info!(outlet = %this.address, "outlet stopped");
        });
        Ok(outlet)
    }

    /// Its service address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Where it connects.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Its counters.
    pub fn stats(&self) -> &PortalStats {
        &self.stats
    }

    /// Stop accepting sessions and close the open ones. Its address is free when this
    /// returns, so an outlet of the same name can be started at once.
    pub fn stop(&self) {
        if !self.stop.is_cancelled() {
            self.node.stop_worker(&self.address);
        }
        self.stop.cancel();
    }

    /// Admit or refuse one message without waiting, so one slow peer never holds up the
    /// `Open`s of others.
    fn on_message(
        &self,
        node: &Node,
        policy: &Arc<dyn IncomingAccessControl>,
        options: &PortalOptions,
        message: Message,
    ) {
        if message.kind == MessageKind::Undeliverable {
            // An `Opened` or `Refused` of ours that did not reach its inlet: nothing to do.
            debug!(outlet = %self.address, "ignored an error message");
            return;
        }
        let window = match PortalMessage::decode(&message.payload) {
            Ok(PortalMessage::Open { window }) => window,
            Ok(other) => {
                debug!(outlet = %self.address, message = ?kind(&other), "ignored a message that does not open a session");
                return;
            }
            Err(e) => {
                debug!(outlet = %self.address, error = %e, "ignored an undecodable message");
                return;
            }
        };
        let origin = message.origin().clone();
        let reply_to = message.return_route.clone();
        let admitted = if !policy.is_authorized(&origin) {
            warn!(outlet = %self.address, from = %who(&origin), "refused a portal session: the outlet's policy does not admit the sender");
            Err("access denied by the outlet's policy".to_owned())
        } else if !window_ok(window) {
            Err(format!("window {window} is out of range"))
        } else {
            self.place(&origin, options)
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(reason) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                refuse(node, reply_to, reason);
                return;
            }
        };
        let this = self.clone();
        let node2 = node.clone();
        let options = options.clone();
        node.spawn(async move {
            this.open(node2, origin, reply_to, window, options, permit)
                .await;
        });
    }

    /// A place for a session from `origin`, or why there is none: the outlet or the peer
    /// holds as many as it may.
    fn place(&self, origin: &kith_node::Origin, options: &PortalOptions) -> Result<Place, String> {
        let Some(share) = self
            .per_peer
            .take(peer_key(origin), options.max_sessions_per_peer)
        else {
            if let Some(suppressed) = kith_node::LOG_LIMITER
                .admit("refused a portal session: too many from one peer", origin)
            {
                warn!(outlet = %self.address, from = %who(origin), max = options.max_sessions_per_peer, suppressed, "refused a portal session: the peer holds its share");
            }
            return Err(format!(
                "the outlet carries {} sessions of yours already, as many as one peer may; try again later",
                options.max_sessions_per_peer
            ));
        };
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            warn!(outlet = %self.address, max = options.max_sessions, "refused a portal session: too many open");
            format!(
                "the outlet carries {} sessions already; try again later",
                options.max_sessions
            )
        })?;
        Ok(Place {
            _permit: permit,
            _share: share,
        })
    }

    /// Connect to the target and, if that works, run the session.
    async fn open(
        self,
        node: Node,
        origin: kith_node::Origin,
        reply_to: Route,
        window: u32,
        options: PortalOptions,
        _place: Place,
    ) {
        let connected =
            tokio::time::timeout(options.connect_timeout, TcpStream::connect(&self.target)).await;
        let stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(outlet = %self.address, target = %self.target, error = %e, "cannot connect to the outlet's target");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                refuse(
                    &node,
                    reply_to,
                    format!("the outlet cannot connect to {}: {e}", self.target),
                );
                return;
            }
            Err(_) => {
                warn!(outlet = %self.address, target = %self.target, "connecting to the outlet's target timed out");
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                refuse(
                    &node,
                    reply_to,
                    format!(
                        "the outlet could not connect to {} within {:?}",
                        self.target, options.connect_timeout
                    ),
                );
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_peer = stream.peer_addr().ok();
        let stream = Arc::new(stream);
        let inbox = Arc::new(Inbox::new(
            stream.clone(),
            options.window,
            self.stats.clone(),
        ));
        let handle = match node.register_sink(
            [Address::random_local("portal-out")],
            Arc::new(SameOrigin(origin.clone())),
            inbox.clone(),
        ) {
            Ok(h) => h,
            Err(_) => return,
        };
        let opened = Message::new(
            reply_to.clone(),
            Route::from(handle.address().clone()),
            PortalMessage::Opened {
                window: options.window,
            }
            .encode(),
        );
        let answered = tokio::time::timeout(options.open_timeout, node.route(opened)).await;
        if !matches!(answered, Ok(Ok(()))) {
            warn!(outlet = %self.address, "cannot answer an Open");
            session::abort(&stream);
            return;
        }
        debug!(outlet = %self.address, from = %who(&origin), "portal session opened");
        session::run(End {
            node,
            handle,
            inbox,
            peer: reply_to,
            peer_window: window,
            stream,
            options,
            stats: self.stats.clone(),
            stop: self.stop.clone(),
            route_ended: None,
            local_peer,
            label: format!("outlet {}", self.address.value()),
        })
        .await;
    }
}

/// Answer `Refused` without holding up the outlet's loop: at once if the way back can take
/// it, otherwise from a task of its own, for at most a second.
fn refuse(node: &Node, to: Route, reason: String) {
    let message = Message::new(to, Route::new(), PortalMessage::Refused { reason }.encode());
    match node.try_route(message) {
        Ok(()) => {}
        Err(TryRouteError::Failed(e)) => debug!(error = %e, "cannot deliver a refusal"),
        Err(TryRouteError::WouldBlock(message)) => {
            let task_node = node.clone();
            node.spawn(async move {
                let sent = tokio::time::timeout(REFUSAL_TIMEOUT, task_node.route(message)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    debug!("cannot deliver a refusal");
                }
            });
        }
    }
}

/// 1 s: how long a refusal may wait for room on its way back.
const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whom a session's share is counted against: an authenticated peer by its identifier, an
/// unauthenticated one by its source (an IPv4 address, an IPv6 /64), as the listener counts
/// it, so a host cannot take more by opening more connections.
fn peer_key(origin: &kith_node::Origin) -> String {
    match origin {
        kith_node::Origin::Local => "this node".to_owned(),
        kith_node::Origin::Transport { peer, .. } => match peer {
            Some(p) => crate::source::Source::of(p.ip()).to_string(),
            None => "an unknown host".to_owned(),
        },
        kith_node::Origin::SecureChannel(peer) => peer.identifier.clone(),
    }
}

fn who(origin: &kith_node::Origin) -> String {
    match origin {
        kith_node::Origin::Local => "this node".to_owned(),
        kith_node::Origin::Transport { peer, .. } => {
            format!(
                "an unauthenticated connection from {}",
                session::shown(*peer)
            )
        }
        kith_node::Origin::SecureChannel(peer) => peer.identifier.clone(),
    }
}

fn kind(m: &PortalMessage) -> &'static str {
    match m {
        PortalMessage::Open { .. } => "Open",
        PortalMessage::Opened { .. } => "Opened",
        PortalMessage::Refused { .. } => "Refused",
        PortalMessage::Data(_) => "Data",
        PortalMessage::Credit(_) => "Credit",
        PortalMessage::End => "End",
        PortalMessage::Close { .. } => "Close",
        PortalMessage::Ping => "Ping",
    }
}
