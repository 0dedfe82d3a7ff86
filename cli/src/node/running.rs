//! A node running in this process, and the parts it keeps: each part owns its state, the
//! node assembles them and answers for its own status.

use crate::limits::LimitsConfig;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, Result};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::unix_now;
use kith_node::{Address, AllowAll, Echo, IncomingAccessControl, Node};
use kith_transport::{Direction, TcpTransport};

use super::channels::Channels;
use super::kept::Saved;
use super::portals::Portals;
use super::relays::Relays;
use super::settings::NodeIdentity;
use crate::control::{ConnectionView, NodeStatus, RevocationFeedView};

/// A node running in this process, and the parts it keeps. Each part owns its state; the
/// node only assembles them and answers for its own status.
pub struct RunningNode {
    /// The runtime.
    pub node: Node,
    /// Its TCP transport.
    pub tcp: TcpTransport,
    /// Bound listener, if any.
    pub listener: Option<String>,
    /// Where it serves metrics, if it does.
    pub metrics: Option<String>,
    /// Who the node is in secure channels, if it has an identity.
    pub identity: NodeIdentity,
    /// Channels opened with `kith secure-channel create`.
    pub channels: Channels,
    /// Relays the node keeps up at project nodes.
    pub relays: Relays,
    /// TCP outlets and inlets the node keeps.
    pub portals: Portals,
    started_at: u64,
    /// What the secure-channel listener has done, if the node has one.
    handshakes: Option<Arc<secure_channel::ListenerStats>>,
}

impl RunningNode {
    /// Start a node named `name` with the echo service, listening on `listen` if given, and
    /// with a secure-channel listener (`api`) if it has channel settings. It keeps no state:
    /// what a command runs for its own duration.
    pub async fn start(
        name: &str,
        listen: Option<&str>,
        channels: Option<ChannelSettings>,
    ) -> Result<Self> {
        Self::assemble(
            name,
            listen,
            NodeIdentity::fixed(channels),
            Arc::new(AllowAll),
            None,
            &LimitsConfig::default(),
        )
        .await
    }

    /// Start the runtime and its parts: `identity` for channels, `services` deciding who
    /// may use the node's services, `saved` where kept things are remembered (a daemon's),
    /// `limits` the caps on what peers may hold.
    pub(crate) async fn assemble(
        name: &str,
        listen: Option<&str>,
        identity: NodeIdentity,
        services: Arc<dyn IncomingAccessControl>,
        saved: Option<Saved>,
        limits: &LimitsConfig,
    ) -> Result<Self> {
        let node = Node::new(name);
        let tcp = TcpTransport::start_with(&node, limits.tcp_options());
        node.start_worker_with_policy([Address::local("echo")], services, Echo)
            .context("cannot start the echo service")?;
        let shared = identity.shared();
        let mut handshakes = None;
        if let Some(settings) = &shared {
            settings.set_handshake_limits(limits.handshake_limits());
            handshakes = Some(
                secure_channel::listen(&node, DEFAULT_LISTENER, settings.clone())
                    .context("cannot start the secure channel listener")?,
            );
        }
        let listener = match listen {
            Some(a) => Some(tcp.listen(a).await?.to_string()),
            None => None,
        };
        Ok(Self {
            channels: Channels::new(&node, shared.clone()),
            relays: Relays::new(&node, shared.clone(), saved.clone()),
            portals: Portals::new(&node, shared, saved),
            node,
            tcp,
            listener,
            metrics: None,
            handshakes,
            identity,
            started_at: unix_now(),
        })
    }

    /// Listen for TCP connections on `address` (for a node assembled without a listener);
    /// the bound address becomes [`RunningNode::listener`].
    pub(crate) async fn listen(&mut self, address: &str) -> Result<()> {
        self.listener = Some(self.tcp.listen(address).await?.to_string());
        Ok(())
    }

    /// The node's current channel settings, if it has an identity.
    pub fn settings(&self) -> Option<ChannelSettings> {
        self.identity.settings()
    }

    /// What the node knows of its authorities' revocations, for its status.
    fn revocations(&self) -> Vec<RevocationFeedView> {
        let Some(settings) = self.settings() else {
            return Vec::new();
        };
        let now = unix_now();
        settings
            .trust
            .revocations
            .overview()
            .into_iter()
            .map(|(authority, head, members, followed)| RevocationFeedView {
                authority: authority.to_string(),
                head,
                members,
                heard_at: followed.map(|f| f.heard_at),
                grace: followed.map(|f| f.grace),
                state: match followed {
                    None => "not followed",
                    Some(f) if now > f.heard_at.saturating_add(f.grace) => "stale",
                    Some(_) => "current",
                }
                .to_owned(),
            })
            .collect()
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        let n = self.node.stats();
        let t = self.tcp.stats();
        let h = self.handshakes.as_deref();
        let addresses = self.node.addresses();
        // A channel is one decryptor (registered at its first handshake message, so an
        // unfinished handshake counts too) and, once established, one encryptor: counting
        // decryptors counts channels, whichever side opened them.
        let channels = addresses
            .iter()
            .filter(|a| a.value().starts_with("sc-") && !secure_channel::is_encryptor(a))
            .count();
        NodeStatus {
            identifier: self
                .settings()
                .map(|c| c.local.identity.identifier().to_string())
                .unwrap_or_default(),
            name: self.node.name().to_owned(),
            pid: std::process::id(),
            listener: self.listener.clone().unwrap_or_default(),
            metrics: self.metrics.clone(),
            started_at: self.started_at,
            services: addresses
                .into_iter()
                .filter(|a| {
                    !a.value().starts_with("tcp-")
                        && !a.value().starts_with("client-")
                        && !a.value().starts_with("sc-")
                })
                .map(|a| a.to_string())
                .collect(),
            connections: self
                .tcp
                .connections()
                .into_iter()
                .map(|c| ConnectionView {
                    address: c.address.to_string(),
                    peer: c.peer.to_string(),
                    direction: match c.direction {
                        Direction::Incoming => "incoming",
                        Direction::Outgoing => "outgoing",
                    }
                    .to_owned(),
                })
                .collect(),
            revocations: self.revocations(),
            stats: serde_json::json!({
                "delivered": n.delivered,
                "dropped": n.dropped(),
                "dropped_unknown_address": n.dropped_unknown_address,
                "dropped_denied": n.dropped_denied,
                "dropped_unreachable": n.dropped_unreachable,
                "worker_errors": n.worker_errors,
                "connections_accepted": t.accepted,
                "connections_dialed": t.dialed,
                "connections_refused": t.refused,
                "connections_closed_invalid": t.invalid,
                "connections_refused_busy": t.refused_busy,
                "connections_shed": t.shed,
                "handshakes_started": h.map_or(0, |h| h.started.load(Ordering::Relaxed)),
                "handshakes_pending": h.map_or(0, |h| h.pending()),
                "handshakes_refused_busy": h.map_or(0, |h| h.refused_busy.load(Ordering::Relaxed)),
                "handshakes_refused_invalid": h.map_or(0, |h| h.refused_invalid.load(Ordering::Relaxed)),
                "handshakes_shed": h.map_or(0, |h| h.shed()),
                "handshakes_established": h.map_or(0, |h| h.established()),
                "handshakes_failed": h.map_or(0, |h| h.failed()),
                "frames_in": t.frames_in,
                "frames_out": t.frames_out,
                "channels": channels,
            }),
        }
    }
}
