//! Running a node: the runtime, the TCP listener, the echo service and the control socket,
//! until Ctrl-C, SIGTERM or a `stop` request, then an orderly shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use kith_authority::keeper::{HEARTBEAT, KeeperConfig, RelayKeeper};
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{
    self, ChannelSettings, ChannelStack, DEFAULT_LISTENER, SharedSettings,
};
use kith_identity::{Identifier, Identity};
use kith_node::{
    Address, AllowAll, AllowOrigins, Echo, IncomingAccessControl, Node, Origin, Route,
};
use kith_transport::{Direction, TcpTransport};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use kith_identity::unix_now;

use crate::control::{
    self, ChannelView, ConnectionView, MAX_LINE, NodeStatus, Request, Response, SendReply,
};
use crate::home::{AdmissionConfig, Home, RelayConfig, write_private_atomic};
use crate::relays::RelayView;

/// What a daemon prints on stdout once it is serving: the spawning command waits for it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Ready {
    /// Node name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Bound TCP listener address.
    pub listener: String,
    /// The node's identifier.
    #[serde(default)]
    pub identifier: String,
}

/// A node running in this process.
pub struct RunningNode {
    /// The runtime.
    pub node: Node,
    /// Its TCP transport.
    pub tcp: TcpTransport,
    /// Bound listener, if any.
    pub listener: Option<String>,
    /// Who the node is in secure channels, if it has an identity; its listener reads them
    /// at every handshake, and reloading the credentials replaces them.
    channels: Option<SharedSettings>,
    /// How to rebuild `channels` from the vault: the home, identity and admission rule.
    reload_from: Option<Reload>,
    /// Notified when the node reloads its credentials (the refresher then looks again).
    pub credentials_changed: tokio::sync::Notify,
    /// Channels opened with `kith secure-channel create`, kept until deleted or torn down.
    kept: std::sync::Mutex<Vec<(secure_channel::SecureChannel, String)>>,
    /// Relays the node keeps up, by name, with where they are (`/project/NAME`). Held only
    /// for moments, never across a wait, so `list` answers while a create is under way.
    relays: std::sync::Mutex<BTreeMap<String, (RelayKeeper, String)>>,
    /// Held by a relay create or delete for its whole course (which talks to the project
    /// node), so that two of them never work on one relay at once.
    relay_changes: tokio::sync::Mutex<()>,
    /// TCP outlets and inlets the node keeps.
    pub(crate) portals: crate::portals::Portals,
    started_at: u64,
}

/// How a daemon rebuilds its channel settings from the vault.
struct Reload {
    home: Home,
    identity: Option<String>,
    admission: AdmissionConfig,
    /// An authority's node trusts the credentials it issues itself.
    trust_self: bool,
}

impl Reload {
    async fn settings(&self) -> Result<(ChannelSettings, String)> {
        let (mut settings, name) =
            channel_settings(&self.home, self.identity.as_deref(), &self.admission).await?;
        if self.trust_self {
            let own = settings.local.identity.clone();
            if !settings
                .trust
                .authorities
                .iter()
                .any(|a| a.identifier() == own.identifier())
            {
                let mut authorities = settings.trust.authorities.clone();
                authorities.push(own);
                settings.trust = Arc::new(Trust {
                    authorities,
                    admission: settings.trust.admission.clone(),
                });
            }
        }
        Ok((settings, name))
    }
}

/// Where a message goes: through secure channels, each opened inside the one before, then
/// along `route` inside the last (or plainly, if there are none).
#[derive(Debug, Clone)]
pub struct Target {
    /// The channels to open first.
    pub channels: Vec<ChannelHop>,
    /// The route (after the last channel's encryptor, if any).
    pub route: Route,
}

/// One secure channel of a [`Target`].
#[derive(Debug, Clone)]
pub struct ChannelHop {
    /// The route to its listener, inside the channel before it.
    pub route: Route,
    /// The only identity that may answer, if known (a project node's).
    pub peer: Option<Identifier>,
}

/// Channel settings for the identity `name` (or the default, made if missing) from the vault:
/// its channel key, the credentials it holds that are valid now, whose credentials it
/// trusts (the issuers of its own, and `admission.trusted_authorities`) and whom it admits.
pub async fn channel_settings(
    home: &Home,
    name: Option<&str>,
    admission: &AdmissionConfig,
) -> Result<(ChannelSettings, String)> {
    channel_settings_scoped(home, name, admission, None).await
}

/// As [`channel_settings`], presenting only the credentials whose `project_id` attribute is
/// `scope`, if given.
pub async fn channel_settings_scoped(
    home: &Home,
    name: Option<&str>,
    admission: &AdmissionConfig,
    scope: Option<&str>,
) -> Result<(ChannelSettings, String)> {
    let vault = crate::identities::vault(home).await?;
    let now = unix_now();
    let loaded = async {
        let stored = crate::identities::resolve(&vault, name).await?;
        let key = vault.secure_channel_key(&stored.name, now).await?;
        let held = vault.credentials(&stored.name).await?;
        anyhow::Ok((stored, key, held))
    }
    .await;
    vault.close().await;
    let (stored, key, held) = loaded?;

    let mut authorities: Vec<Identity> = Vec::new();
    for hex in &admission.trusted_authorities {
        let bytes =
            crate::credentials::from_hex(hex, "a trusted authority in the node's configuration")?;
        let identity = Identity::import(&bytes, None)
            .context("a trusted authority in the node's configuration does not verify")?;
        authorities.push(identity);
    }
    let mut credentials = Vec::new();
    for c in held {
        if let Some(scope) = scope {
            let project = c.credential.credential.attributes().get("project_id");
            if project.map(String::as_str) != Some(scope) {
                continue;
            }
        }
        match c.verify(now) {
            Ok(_) => {
                if !authorities
                    .iter()
                    .any(|a| a.identifier() == c.issuer.identifier())
                {
                    authorities.push(c.issuer.clone());
                }
                credentials.push(c.credential);
            }
            Err(e) => warn!(
                issuer = %c.issuer.identifier(),
                error = %e,
                "not presenting a credential that does not verify"
            ),
        }
    }
    let local = LocalIdentity {
        identity: stored.identity.clone(),
        key,
        credentials,
    };
    let admission = if admission.require_credential {
        Admission::CredentialHolders
    } else if !admission.allow_identities.is_empty() {
        let mut ids = std::collections::BTreeSet::new();
        for id in &admission.allow_identities {
            ids.insert(id.parse().with_context(|| {
                format!("the node's allowed identity {id:?} is not an identifier")
            })?);
        }
        Admission::Identifiers(ids)
    } else {
        // Any identity that proves itself; services decide per message with their policies.
        Admission::AnyIdentity
    };
    let trust = Trust {
        authorities,
        admission,
    };
    Ok((
        ChannelSettings::new(Arc::new(local), Arc::new(trust)),
        stored.name,
    ))
}

impl RunningNode {
    /// Start a node named `name` with the echo service, listening on `listen` if given, and
    /// with a secure-channel listener (`api`) if it has channel settings.
    pub async fn start(
        name: &str,
        listen: Option<&str>,
        channels: Option<ChannelSettings>,
    ) -> Result<Self> {
        Self::start_with(name, listen, channels, Arc::new(AllowAll)).await
    }

    /// As [`RunningNode::start`], with `services` deciding who may use the node's services.
    pub async fn start_with(
        name: &str,
        listen: Option<&str>,
        channels: Option<ChannelSettings>,
        services: Arc<dyn IncomingAccessControl>,
    ) -> Result<Self> {
        let node = Node::new(name);
        let tcp = TcpTransport::start(&node);
        node.start_worker_with_policy([Address::local("echo")], services, Echo)
            .context("cannot start the echo service")?;
        let channels = channels.map(SharedSettings::new);
        if let Some(settings) = &channels {
            secure_channel::listen(&node, DEFAULT_LISTENER, settings.clone())
                .context("cannot start the secure channel listener")?;
        }
        let listener = match listen {
            Some(a) => Some(tcp.listen(a).await?.to_string()),
            None => None,
        };
        Ok(Self {
            node,
            tcp,
            listener,
            channels,
            reload_from: None,
            credentials_changed: tokio::sync::Notify::new(),
            kept: std::sync::Mutex::default(),
            relays: std::sync::Mutex::default(),
            relay_changes: tokio::sync::Mutex::default(),
            portals: crate::portals::Portals::default(),
            started_at: unix_now(),
        })
    }

    /// The node's channel settings as shared with its listener, if it has an identity: what
    /// a long-lived user (an inlet) reads afresh for every channel it opens.
    pub(crate) fn shared_settings(&self) -> Option<SharedSettings> {
        self.channels.clone()
    }

    /// The node's current channel settings, if it has an identity.
    pub fn settings(&self) -> Option<ChannelSettings> {
        self.channels.as_ref().map(SharedSettings::get)
    }

    /// Re-read the identity's credentials and trusted authorities from the vault and serve
    /// them: the secure-channel listener and channels opened from now on use them. Open
    /// channels keep what they were made with.
    pub async fn reload_credentials(&self) -> Result<usize> {
        let (Some(reload), Some(shared)) = (&self.reload_from, &self.channels) else {
            bail!("this node does not keep its settings in a vault");
        };
        let (settings, _) = reload.settings().await?;
        let presented = settings.local.credentials.len();
        shared.set(settings);
        info!(credentials = presented, "reloaded credentials");
        self.credentials_changed.notify_one();
        Ok(presented)
    }

    /// Open a channel to the listener at the end of `to` and keep it.
    pub async fn open_channel(&self, to: Route, timeout: Duration) -> Result<ChannelView> {
        let settings = self
            .settings()
            .context("this node has no identity, so it cannot open secure channels")?;
        let settings = &settings;
        let shown = to.to_string();
        let channel =
            tokio::time::timeout(timeout, secure_channel::create(&self.node, to, settings))
                .await
                .map_err(|_| anyhow::anyhow!("no secure channel to {shown} within {timeout:?}"))?
                .with_context(|| format!("cannot open a secure channel to {shown}"))?;
        let view = channel_view(&channel, &shown);
        self.kept_channels().push((channel, shown));
        Ok(view)
    }

    fn kept_channels(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(secure_channel::SecureChannel, String)>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept channels still up (a channel torn down by its peer drops out).
    pub fn list_channels(&self) -> Vec<ChannelView> {
        let live = self.node.addresses();
        let mut kept = self.kept_channels();
        kept.retain(|(c, _)| live.contains(&c.encryptor));
        kept.iter().map(|(c, to)| channel_view(c, to)).collect()
    }

    /// Close the kept channel at `address` (`sc-enc-…`, with or without `0#`).
    pub fn close_channel(&self, address: &str) -> Result<ChannelView> {
        let wanted = address
            .parse::<Address>()
            .with_context(|| format!("invalid channel address {address:?}"))?;
        let mut kept = self.kept_channels();
        let at = kept
            .iter()
            .position(|(c, _)| c.encryptor == wanted)
            .with_context(|| {
                format!(
                    "no secure channel {address:?} on this node; see `kith secure-channel list`"
                )
            })?;
        let (channel, to) = kept.remove(at);
        secure_channel::close(&self.node, &channel);
        Ok(channel_view(&channel, &to))
    }

    /// Open the channels of `target`, each inside the one before, within `timeout`. On
    /// failure the ones already open are closed.
    pub async fn open_channels(
        &self,
        hops: &[ChannelHop],
        timeout: Duration,
    ) -> Result<ChannelStack> {
        if hops.is_empty() {
            return Ok(ChannelStack::new(&self.node));
        }
        let settings = self
            .settings()
            .context("this node has no identity, so it cannot open secure channels")?;
        open_channels(&self.node, &settings, hops, timeout).await
    }

    /// Send `payload` to `target` and wait for one reply; through fresh secure channels
    /// (closed afterwards) if the target asks for them.
    pub async fn send(
        &self,
        target: Target,
        payload: String,
        timeout: Duration,
    ) -> Result<SendReply> {
        let started = Instant::now();
        let channels = self.open_channels(&target.channels, timeout).await?;
        let route = match channels.innermost() {
            None => target.route,
            Some(inner) => {
                let mut hops = vec![inner.encryptor.clone()];
                hops.extend(target.route.iter().cloned());
                Route::try_from_iter(hops)?
            }
        };
        let mut client = self.node.client()?;
        let shown = route.to_string();
        let left = timeout.saturating_sub(started.elapsed());
        let reply = client.request(route, Bytes::from(payload), left).await;
        let inner = channels.innermost().cloned();
        drop(channels);
        let reply = reply.with_context(|| format!("no reply from {shown}"))?;
        Ok(SendReply {
            reply: String::from_utf8_lossy(&reply.payload).into_owned(),
            route: shown,
            return_route: reply.return_route.to_string(),
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
            peer: inner.as_ref().map(|c| c.peer.identifier.to_string()),
            verification_code: inner.map(|c| c.verification_code),
        })
    }

    pub(crate) fn home(&self) -> Result<&Home> {
        self.reload_from
            .as_ref()
            .map(|r| &r.home)
            .context("this node keeps no state, so it cannot keep relays")
    }

    /// Where relay `name` at `at` connects: the project node's listener and identifier.
    async fn keeper_config(&self, name: &str, at: &str, timeout: Duration) -> Result<KeeperConfig> {
        let (listener, project_node) = crate::relays::resolve_at(self.home()?, at).await?;
        Ok(KeeperConfig {
            name: name.to_owned(),
            listener,
            project_node,
            timeout,
            heartbeat: HEARTBEAT,
        })
    }

    /// Create relay `name` at `at` and keep it up; remembered in the node's configuration
    /// once the project node accepted it.
    pub async fn relay_create(&self, name: &str, at: &str, timeout: Duration) -> Result<RelayView> {
        kith_authority::relay::check_relay_name(name)?;
        let shared = self
            .channels
            .clone()
            .context("this node has no identity, so it cannot keep relays")?;
        let _changing = self.relay_changes.lock().await;
        if let Some((keeper, kept_at)) = self.kept_relays().get(name) {
            if kept_at != at {
                bail!("this node already keeps relay {name:?} at {kept_at}; delete it first");
            }
            return Ok(RelayView::new(self.node.name(), kept_at, keeper.status()));
        }
        let config = self.keeper_config(name, at, timeout).await?;
        let keeper = RelayKeeper::start(&self.node, shared, config)
            .await
            .map_err(crate::relays::refused)?;
        let home = self.home()?;
        let mut saved = home.load_node(self.node.name())?;
        saved.relays.retain(|r| r.name != name);
        saved.relays.push(RelayConfig {
            name: name.to_owned(),
            at: at.to_owned(),
        });
        home.save_node(&saved)?;
        let view = RelayView::new(self.node.name(), at, keeper.status());
        self.kept_relays()
            .insert(name.to_owned(), (keeper, at.to_owned()));
        Ok(view)
    }

    fn kept_relays(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (RelayKeeper, String)>> {
        self.relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep the relays of the node's configuration up, without waiting for them.
    async fn restore_relays(&self, saved: &[RelayConfig]) {
        let Some(shared) = self.channels.clone() else {
            return;
        };
        let _changing = self.relay_changes.lock().await;
        for r in saved {
            match self
                .keeper_config(&r.name, &r.at, crate::relays::RELAY_TIMEOUT)
                .await
            {
                Ok(config) => {
                    let keeper = RelayKeeper::spawn(&self.node, shared.clone(), config);
                    self.kept_relays()
                        .insert(r.name.clone(), (keeper, r.at.clone()));
                }
                Err(e) => {
                    warn!(relay = %r.name, at = %r.at, error = %format!("{e:#}"), "cannot keep a saved relay")
                }
            }
        }
    }

    /// The relays the node keeps.
    pub fn relay_list(&self) -> Vec<RelayView> {
        self.kept_relays()
            .values()
            .map(|(k, at)| RelayView::new(self.node.name(), at, k.status()))
            .collect()
    }

    /// Stop keeping relay `name`, forget it, and delete it at the project node.
    pub async fn relay_delete(&self, name: &str) -> Result<RelayView> {
        let _changing = self.relay_changes.lock().await;
        let removed = self.kept_relays().remove(name);
        let Some((keeper, at)) = removed else {
            bail!("node {} keeps no relay {name:?}", self.node.name());
        };
        let mut view = RelayView::new(self.node.name(), &at, keeper.status());
        keeper.stop();
        let home = self.home()?;
        let mut saved = home.load_node(self.node.name())?;
        saved.relays.retain(|r| r.name != name);
        home.save_node(&saved)?;
        let deleted = async {
            let config = self
                .keeper_config(name, &at, crate::relays::RELAY_TIMEOUT)
                .await?;
            let settings = self.settings().context("this node has no identity")?;
            let mut client = kith_authority::client::AuthorityClient::connect(
                &self.node,
                config.listener,
                &config.project_node,
                &settings,
                config.timeout,
            )
            .await?;
            client.delete_relay(name).await?;
            anyhow::Ok(())
        }
        .await;
        view.deleted_at_project_node = Some(match deleted {
            Ok(()) => "deleted".to_owned(),
            Err(e) => format!("not deleted: {e:#}"),
        });
        Ok(view)
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        let n = self.node.stats();
        let t = self.tcp.stats();
        NodeStatus {
            identifier: self
                .settings()
                .map(|c| c.local.identity.identifier().to_string())
                .unwrap_or_default(),
            name: self.node.name().to_owned(),
            pid: std::process::id(),
            listener: self.listener.clone().unwrap_or_default(),
            started_at: self.started_at,
            services: self
                .node
                .addresses()
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
                "frames_in": t.frames_in,
                "frames_out": t.frames_out,
            }),
        }
    }
}

/// Open the channels `hops` from `node` with `settings`, each inside the one before, each
/// within `timeout`. On failure the ones already open are closed.
pub async fn open_channels(
    node: &Node,
    settings: &ChannelSettings,
    hops: &[ChannelHop],
    timeout: Duration,
) -> Result<ChannelStack> {
    let mut open = ChannelStack::new(node);
    for hop in hops {
        let mut settings = settings.clone();
        if let Some(peer) = hop.peer {
            settings.trust = Arc::new(Trust {
                authorities: settings.trust.authorities.clone(),
                admission: Admission::Identifiers([peer].into()),
            });
        }
        let mut hops = Vec::new();
        if let Some(outer) = open.innermost() {
            hops.push(outer.encryptor.clone());
        }
        hops.extend(hop.route.iter().cloned());
        let route = Route::try_from_iter(hops)?;
        let shown = hop.route.to_string();
        let channel = tokio::time::timeout(timeout, secure_channel::create(node, route, &settings))
            .await
            .map_err(|_| anyhow::anyhow!("no secure channel to {shown} within {timeout:?}"))?
            .with_context(|| format!("cannot open a secure channel to {shown}"))?;
        open.push(channel);
    }
    Ok(open)
}

/// Who may use a node's services: anyone, or local workers and the secure-channel peers
/// that satisfy the node's `--allow` policy.
fn services_policy(admission: &AdmissionConfig) -> Result<Arc<dyn IncomingAccessControl>> {
    let Some(text) = &admission.allow else {
        return Ok(Arc::new(AllowAll));
    };
    let policy = kith_identity::policy::Policy::parse(text)
        .map_err(|e| anyhow::anyhow!("the node's --allow policy does not parse: {e}"))?;
    Ok(Arc::new(AllowOrigins(
        move |origin: &Origin| match origin {
            Origin::Local => true,
            Origin::SecureChannel {
                identifier,
                attributes,
                ..
            } => policy.allows(identifier, attributes),
            Origin::Transport { .. } => false,
        },
    )))
}

fn channel_view(c: &secure_channel::SecureChannel, to: &str) -> ChannelView {
    ChannelView {
        address: c.encryptor.value().to_owned(),
        decryptor: c.decryptor.value().to_owned(),
        peer: c.peer.identifier.to_string(),
        verification_code: c.verification_code.clone(),
        to: to.to_owned(),
    }
}

/// Run node `name` from `home` until it is told to stop. `on_ready` is called once it serves.
pub async fn run(home: &Home, name: &str, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let mut config = home.load_node(name)?;
    let socket = home.socket_path(name);
    if control::call(&socket, &Request::Status, control::STATUS_TIMEOUT)
        .await
        .is_ok()
    {
        bail!("node {name:?} is already running");
    }
    // A socket file left by a node that died is stale: nobody answers on it.
    let _ = std::fs::remove_file(&socket);

    let mut reload = Reload {
        home: home.clone(),
        identity: config.identity.clone(),
        admission: config.admission.clone(),
        trust_self: config.authority.is_some(),
    };
    let (settings, identity) = reload.settings().await?;
    reload.identity = Some(identity.clone());
    if config.identity.as_deref() != Some(identity.as_str()) {
        // Keep the identity the node first ran as, even if the default changes later.
        config.identity = Some(identity.clone());
        home.save_node(&config)?;
    }
    let services = services_policy(&config.admission)?;
    let mut running = RunningNode::start_with(
        name,
        Some(&config.tcp_listener_address),
        Some(settings),
        services,
    )
    .await?;
    running.reload_from = Some(reload);
    let authority = match &config.authority {
        Some(a) => match crate::authority::start_services(home, &running.node, &config, a).await {
            Ok(held) => Some(held),
            Err(e) => {
                running.node.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    let listener = running.listener.clone().unwrap_or_default();
    if config.tcp_listener_address.ends_with(":0") {
        // Keep the port we were given, so the node's address survives restarts.
        config.tcp_listener_address = listener.clone();
        home.save_node(&config)?;
    }
    let control = UnixListener::bind(&socket)
        .with_context(|| format!("cannot create the control socket {}", socket.display()))?;
    write_private_atomic(
        &home.pid_path(name),
        std::process::id().to_string().as_bytes(),
    )?;
    info!(node = name, %listener, identity = %identity, pid = std::process::id(), "node started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let identifier = running
        .settings()
        .map(|c| c.local.identity.identifier().to_string())
        .unwrap_or_default();
    on_ready(&Ready {
        name: name.to_owned(),
        pid: std::process::id(),
        listener,
        identifier,
    });

    let running = Arc::new(running);
    running.restore_relays(&config.relays).await;
    running
        .restore_portals(&config.outlets, &config.inlets)
        .await;
    let refresher = tokio::spawn(crate::refresh::run(
        home.clone(),
        identity.clone(),
        running.clone(),
    ));
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("interrupted"); break; }
            _ = sigterm.recv() => { info!("terminated"); break; }
            _ = stop_rx.recv() => { info!("stop requested"); break; }
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    // Reap finished sessions so the set holds only live ones.
                    while sessions.try_join_next().is_some() {}
                    sessions.spawn(serve_control(stream, running.clone(), stop_tx.clone()));
                }
                Err(e) => warn!(error = %e, "control socket accept failed"),
            },
        }
    }
    drop(control);
    refresher.abort();
    running.node.shutdown().await;
    if let Some((store, vault)) = authority {
        store.close().await;
        vault.close().await;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(home.pid_path(name));
    info!(node = name, "node stopped");
    // Dropping the sessions closes their connections; a waiting `kith node stop` then sees
    // the end of its stream and knows the shutdown is complete.
    sessions.shutdown().await;
    Ok(())
}

async fn serve_control(stream: UnixStream, running: Arc<RunningNode>, stop: mpsc::Sender<()>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let (response, stopping) = match serde_json::from_str::<Request>(&line) {
        Err(e) => (
            Response::Error(format!("invalid control request: {e}")),
            false,
        ),
        Ok(Request::Status) => (to_response(Ok(running.status())), false),
        Ok(Request::ChannelCreate { to, timeout_ms }) => {
            let result = async {
                let to = parse_hops(&to)?;
                running
                    .open_channel(to, Duration::from_millis(timeout_ms))
                    .await
            }
            .await;
            (to_response(result), false)
        }
        Ok(Request::ChannelList) => (to_response(Ok(running.list_channels())), false),
        Ok(Request::RelayCreate {
            name,
            at,
            timeout_ms,
        }) => (
            to_response(
                running
                    .relay_create(&name, &at, Duration::from_millis(timeout_ms))
                    .await,
            ),
            false,
        ),
        Ok(Request::RelayList) => (to_response(Ok(running.relay_list())), false),
        Ok(Request::RelayDelete { name }) => {
            (to_response(running.relay_delete(&name).await), false)
        }
        Ok(Request::ChannelDelete { address }) => {
            (to_response(running.close_channel(&address)), false)
        }
        Ok(Request::OutletCreate(config)) => {
            (to_response(running.outlet_create(config).await), false)
        }
        Ok(Request::OutletList) => (to_response(Ok(running.outlet_list())), false),
        Ok(Request::OutletDelete { name }) => {
            (to_response(running.outlet_delete(&name).await), false)
        }
        Ok(Request::InletCreate(config)) => {
            (to_response(running.inlet_create(config).await), false)
        }
        Ok(Request::InletList) => (to_response(Ok(running.inlet_list())), false),
        Ok(Request::InletDelete { alias }) => {
            (to_response(running.inlet_delete(&alias).await), false)
        }
        Ok(Request::Stop) => (Response::Ok(serde_json::Value::Null), true),
        Ok(Request::ReloadCredentials) => (
            to_response(
                running
                    .reload_credentials()
                    .await
                    .map(|n| serde_json::json!({ "credentials": n })),
            ),
            false,
        ),
        Ok(Request::Send {
            route,
            payload,
            timeout_ms,
            channels,
        }) => {
            let result = async {
                let target = Target {
                    channels: channels
                        .iter()
                        .map(|c| {
                            Ok(ChannelHop {
                                route: parse_hops(&c.to)?,
                                peer: c
                                    .peer
                                    .as_deref()
                                    .map(str::parse)
                                    .transpose()
                                    .context("invalid channel peer")?,
                            })
                        })
                        .collect::<Result<_>>()?,
                    route: parse_hops(&route)?,
                };
                running
                    .send(target, payload, Duration::from_millis(timeout_ms))
                    .await
            }
            .await;
            (to_response(result), false)
        }
    };
    let mut bytes = serde_json::to_vec(&response).unwrap_or_default();
    bytes.push(b'\n');
    let _ = write.write_all(&bytes).await;
    if stopping {
        let _ = stop.send(()).await;
        // Hold the connection open until the daemon drops it at the end of its shutdown.
        std::future::pending::<()>().await;
    }
}

fn parse_hops(hops: &[String]) -> Result<Route> {
    let hops = hops
        .iter()
        .map(|h| {
            h.parse::<Address>()
                .with_context(|| format!("invalid hop {h:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Route::try_from_iter(hops)?)
}

fn to_response<T: Serialize>(r: Result<T>) -> Response {
    match r.and_then(|v| serde_json::to_value(v).map_err(Into::into)) {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(format!("{e:#}")),
    }
}
