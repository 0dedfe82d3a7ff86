//! Running a node: the runtime, the TCP listener, the echo service and the control socket,
//! until Ctrl-C, SIGTERM or a `stop` request, then an orderly shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use kith_identity::Identity;
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER, SharedSettings};
use kith_node::{Address, AllowAll, Echo, Node, Route};
use kith_transport::{Direction, TcpTransport};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::control::{
    self, ChannelView, ConnectionView, MAX_LINE, NodeStatus, Request, Response, SendReply,
};
use crate::home::{AdmissionConfig, Home, write_private_atomic};

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
    reload_from: Option<(Home, Option<String>, AdmissionConfig)>,
    /// Notified when the node reloads its credentials (the refresher then looks again).
    pub credentials_changed: tokio::sync::Notify,
    /// Channels opened with `kith secure-channel create`, kept until deleted or torn down.
    kept: std::sync::Mutex<Vec<(secure_channel::SecureChannel, String)>>,
    started_at: u64,
}

/// Where a message goes: optionally through a secure channel to the listener at the end of
/// `channel`, then along `route` (inside the channel, if there is one).
#[derive(Debug, Clone)]
pub struct Target {
    /// Route to a secure-channel listener to open a channel with first.
    pub channel: Option<Route>,
    /// The route (after the channel's encryptor, if any).
    pub route: Route,
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
        let node = Node::new(name);
        let tcp = TcpTransport::start(&node);
        node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
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
            started_at: unix_now(),
        })
    }

    /// The node's current channel settings, if it has an identity.
    pub fn settings(&self) -> Option<ChannelSettings> {
        self.channels.as_ref().map(SharedSettings::get)
    }

    /// Re-read the identity's credentials and trusted authorities from the vault and serve
    /// them: the secure-channel listener and channels opened from now on use them. Open
    /// channels keep what they were made with.
    pub async fn reload_credentials(&self) -> Result<usize> {
        let (Some((home, identity, admission)), Some(shared)) = (&self.reload_from, &self.channels)
        else {
            bail!("this node does not keep its settings in a vault");
        };
        let (settings, _) = channel_settings(home, identity.as_deref(), admission).await?;
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

    /// Send `payload` to `target` and wait for one reply; through a fresh secure channel
    /// (closed afterwards) if the target asks for one.
    pub async fn send(
        &self,
        target: Target,
        payload: String,
        timeout: Duration,
    ) -> Result<SendReply> {
        let started = Instant::now();
        let (route, channel) = match target.channel {
            None => (target.route, None),
            Some(to_listener) => {
                let settings = self
                    .settings()
                    .context("this node has no identity, so it cannot open secure channels")?;
                let settings = &settings;
                let shown = to_listener.to_string();
                let channel = tokio::time::timeout(
                    timeout,
                    secure_channel::create(&self.node, to_listener, settings),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no secure channel to {shown} within {timeout:?}"))?
                .with_context(|| format!("cannot open a secure channel to {shown}"))?;
                let mut hops = vec![channel.encryptor.clone()];
                hops.extend(target.route.iter().cloned());
                (Route::try_from_iter(hops)?, Some(channel))
            }
        };
        let mut client = self.node.client()?;
        let shown = route.to_string();
        let left = timeout.saturating_sub(started.elapsed());
        let reply = client.request(route, Bytes::from(payload), left).await;
        if let Some(c) = &channel {
            secure_channel::close(&self.node, c);
        }
        let reply = reply.with_context(|| format!("no reply from {shown}"))?;
        Ok(SendReply {
            reply: String::from_utf8_lossy(&reply.payload).into_owned(),
            route: shown,
            return_route: reply.return_route.to_string(),
            round_trip_ms: started.elapsed().as_secs_f64() * 1000.0,
            peer: channel.as_ref().map(|c| c.peer.identifier.to_string()),
            verification_code: channel.map(|c| c.verification_code),
        })
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

fn channel_view(c: &secure_channel::SecureChannel, to: &str) -> ChannelView {
    ChannelView {
        address: c.encryptor.value().to_owned(),
        decryptor: c.decryptor.value().to_owned(),
        peer: c.peer.identifier.to_string(),
        verification_code: c.verification_code.clone(),
        to: to.to_owned(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    let (settings, identity) =
        channel_settings(home, config.identity.as_deref(), &config.admission).await?;
    if config.identity.as_deref() != Some(identity.as_str()) {
        // Keep the identity the node first ran as, even if the default changes later.
        config.identity = Some(identity.clone());
        home.save_node(&config)?;
    }
    let mut running =
        RunningNode::start(name, Some(&config.tcp_listener_address), Some(settings)).await?;
    running.reload_from = Some((
        home.clone(),
        Some(identity.clone()),
        config.admission.clone(),
    ));
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
        Ok(Request::ChannelDelete { address }) => {
            (to_response(running.close_channel(&address)), false)
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
            channel,
        }) => {
            let result = async {
                let target = Target {
                    channel: channel.map(|c| parse_hops(&c)).transpose()?,
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
