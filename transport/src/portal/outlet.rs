//! The outlet: a service that turns each admitted `Open` into a connection to its target.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kith_node::{Address, AllowAll, IncomingAccessControl, Message, Node, Route, StartError};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::session::{self, End, window_ok};
use super::{PortalMessage, PortalOptions, PortalStats, SameOrigin};

/// A running outlet. Dropping the handle leaves it running; [`Outlet::stop`] ends it and
/// its sessions.
#[derive(Clone)]
pub struct Outlet {
    address: Address,
    target: String,
    stats: Arc<PortalStats>,
    stop: CancellationToken,
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
            address: address.clone(),
            target: target.to_owned(),
            stats: Arc::new(PortalStats::default()),
            stop: stop.clone(),
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
                this.on_message(&task_node, &policy, &options, message)
                    .await;
            }
            drop(mailbox);
            this.stop.cancel();
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

    /// Stop accepting sessions and close the open ones.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn on_message(
        &self,
        node: &Node,
        policy: &Arc<dyn IncomingAccessControl>,
        options: &PortalOptions,
        message: Message,
    ) {
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
        let refusal = if !policy.is_authorized(&origin) {
            warn!(outlet = %self.address, from = %who(&origin), "refused a portal session: the outlet's policy does not admit the sender");
            Some("access denied by the outlet's policy".to_owned())
        } else if !window_ok(window) {
            Some(format!("window {window} is out of range"))
        } else if self.stats.open.load(Ordering::Relaxed) as usize >= options.max_sessions {
            warn!(outlet = %self.address, max = options.max_sessions, "refused a portal session: too many open");
            Some(format!(
                "the outlet carries {} sessions already; try again later",
                options.max_sessions
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            refuse(node, reply_to, reason).await;
            return;
        }
        let this = self.clone();
        let node2 = node.clone();
        let options = options.clone();
        node.spawn(async move {
            this.open(node2, origin, reply_to, window, options).await;
        });
    }

    /// Connect to the target and, if that works, run the session.
    async fn open(
        self,
        node: Node,
        origin: kith_node::Origin,
        reply_to: Route,
        window: u32,
        options: PortalOptions,
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
                )
                .await;
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
                )
                .await;
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_peer = stream.peer_addr().ok();
        let mailbox = match node.register_mailbox(
            [session::session_address("portal-out")],
            Arc::new(SameOrigin(origin.clone())),
        ) {
            Ok(m) => m,
            Err(_) => return,
        };
        let opened = Message::new(
            reply_to.clone(),
            Route::from(mailbox.address().clone()),
            PortalMessage::Opened {
                window: options.window,
            }
            .encode(),
        );
        if let Err(e) = node.route(opened).await {
            warn!(outlet = %self.address, error = %e, "cannot answer an Open");
            session::abort(&stream);
            return;
        }
        debug!(outlet = %self.address, from = %who(&origin), "portal session opened");
        session::run(End {
            node,
            mailbox,
            peer: reply_to,
            peer_window: window,
            stream,
            options,
            stats: self.stats.clone(),
            stop: self.stop.clone(),
            local_peer,
            label: format!("outlet {}", self.address.value()),
        })
        .await;
    }
}

async fn refuse(node: &Node, to: Route, reason: String) {
    let message = Message::new(to, Route::new(), PortalMessage::Refused { reason }.encode());
    if let Err(e) = node.route(message).await {
        debug!(error = %e, "cannot deliver a refusal");
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
        kith_node::Origin::SecureChannel { identifier, .. } => identifier.clone(),
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
