//! Keeping a relay up, from the relayed node (DESIGN §3, §6): a secure channel to the
//! project node, a relay registered through it, a heartbeat, and when any of it fails, a new
//! channel and registration after a capped, jittered backoff, for as long as the keeper
//! runs.
//!
//! The first registration is made by [`RelayKeeper::start`] itself, so that a relay the
//! project node refuses (a credential without the right `ockam-relay`, a name held by
//! someone else) is an error for the caller, at once, with the project node's reason. After
//! that the keeper only reports: [`RelayKeeper::status`] says whether the relay is up, or
//! since when it is reconnecting and why.
//!
//! Each reconnection takes the node's channel settings as they are then, so a credential
//! renewed in the meantime is the one presented.

use std::time::Duration;

use kith_identity::backoff::Backoff;
use kith_identity::secure_channel::SharedSettings;
use kith_identity::{Identifier, unix_now};
use kith_node::{Node, Route};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::ErrorKind;
use crate::client::{AuthorityClient, ClientError};
use crate::relay::RelayInfo;

/// 1 s: how often a relayed node checks that its relay still leads to it. A project node
/// that restarted, or a connection that died silently, is noticed within a heartbeat and a
/// timeout.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// 3 s: how long a heartbeat waits for its answer. Longer than any healthy round trip by far;
/// short enough that a connection that died without a word is noticed within seconds.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// 100 ms: the first pause before reconnecting; a restarting project node is often back
/// this fast.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);

/// 5 s: the longest pause between reconnection attempts, so a relay is back within seconds
/// of its project node, without hammering one that is down for long.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Where and how to keep a relay.
#[derive(Debug, Clone)]
pub struct KeeperConfig {
    /// The relay's name.
    pub name: String,
    /// The route to the project node's secure-channel listener.
    pub listener: Route,
    /// The project node's identifier: no one else may answer.
    pub project_node: Identifier,
    /// How long a handshake or a request may take.
    pub timeout: Duration,
    /// How often to check the relay.
    pub heartbeat: Duration,
}

/// What a relay is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RelayState {
    /// Registered, and the last heartbeat was answered.
    Up {
        /// Since when (Unix seconds).
        since: u64,
    },
    /// The channel or the registration was lost; reconnecting.
    Reconnecting {
        /// Since when (Unix seconds).
        since: u64,
        /// Attempts made so far.
        attempts: u32,
    },
}

/// A relay's state and what it last met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// The relay's name.
    pub name: String,
    /// Its state.
    #[serde(flatten)]
    pub state: RelayState,
    /// The relay as the project node last described it; none before it first came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayInfo>,
    /// The last error, if any, and when (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<(u64, String)>,
    /// How often it reconnected since the keeper started.
    pub reconnections: u32,
}

/// Keeps one relay up while it lives; dropping it stops the keeping (the relay itself stays
/// registered at the project node until it is deleted there).
pub struct RelayKeeper {
    status: watch::Receiver<RelayStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RelayKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayKeeper")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// One line for an error, with its causes.
fn describe(e: &ClientError) -> String {
    kith_node::DisplayChain(e).to_string()
}

/// Open a channel to the project node and register the relay through it.
async fn register(
    node: &Node,
    settings: &SharedSettings,
    config: &KeeperConfig,
) -> Result<(AuthorityClient, RelayInfo), ClientError> {
    let mut client = AuthorityClient::connect(
        node,
        config.listener.clone(),
        &config.project_node,
        &settings.get(),
        config.timeout,
    )
    .await?;
    let info = client.create_relay(&config.name).await?;
    Ok((client, info))
}

impl RelayKeeper {
    /// Register relay `config.name` at the project node and keep it up from `node`, as the
    /// identity in `settings`. Fails, without retrying, if the first registration fails.
    pub async fn start(
        node: &Node,
        settings: SharedSettings,
        config: KeeperConfig,
    ) -> Result<Self, ClientError> {
        let (client, info) = register(node, &settings, &config).await?;
        info!(relay = %config.name, address = %info.address, "relay up");
        let (tx, rx) = watch::channel(RelayStatus {
            name: config.name.clone(),
            state: RelayState::Up { since: unix_now() },
            relay: Some(info),
            last_error: None,
            reconnections: 0,
        });
        let task = tokio::spawn(keep(node.clone(), settings, config, Some(client), tx));
        Ok(Self { status: rx, task })
    }

    /// Keep relay `config.name` up from `node` without a first registration of its own: it
    /// starts reconnecting at once, and never fails. For relays a node had before it
    /// restarted, when the project node may be down too.
    pub fn spawn(node: &Node, settings: SharedSettings, config: KeeperConfig) -> Self {
        let (tx, rx) = watch::channel(RelayStatus {
            name: config.name.clone(),
            state: RelayState::Reconnecting {
                since: unix_now(),
                attempts: 0,
            },
            relay: None,
            last_error: None,
            reconnections: 0,
        });
        let task = tokio::spawn(keep(node.clone(), settings, config, None, tx));
        Self { status: rx, task }
    }

    /// The relay's state now.
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// Wait until the relay's state satisfies `f`, or `timeout` passes; returns the state
    /// then.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        f: impl Fn(&RelayStatus) -> bool,
    ) -> RelayStatus {
        let _ = tokio::time::timeout(timeout, self.status.wait_for(|s| f(s))).await;
        self.status()
    }

    /// Stop keeping the relay up. Its channel to the project node closes.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for RelayKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Heartbeat while the relay is up; reconnect with backoff when it is not.
async fn keep(
    node: Node,
    settings: SharedSettings,
    config: KeeperConfig,
    mut client: Option<AuthorityClient>,
    status: watch::Sender<RelayStatus>,
) {
    let name = config.name.as_str();
    loop {
        if let Some(mut up) = client.take() {
            let error = heartbeat(&mut up, &config, &status).await;
            drop(up);
            warn!(relay = name, error = %error, "relay down; reconnecting");
            let now = unix_now();
            status.send_modify(|s| {
                s.state = RelayState::Reconnecting {
                    since: now,
                    attempts: 0,
                };
                s.last_error = Some((now, error));
            });
        }
        client = Some(reconnect(&node, &settings, &config, &status).await);
    }
}

/// Check the relay every heartbeat until something fails; returns what failed.
async fn heartbeat(
    client: &mut AuthorityClient,
    config: &KeeperConfig,
    status: &watch::Sender<RelayStatus>,
) -> String {
    let name = config.name.as_str();
    client.set_timeout(config.timeout.min(HEARTBEAT_TIMEOUT));
    loop {
        tokio::time::sleep(config.heartbeat).await;
        match client.check_relay(name).await {
            Ok(_) => {}
            Err(ClientError::Refused(e)) if e.kind == ErrorKind::NotFound => {
                // The project node restarted or an admin deleted the relay: register again
                // through the same channel.
                debug!(
                    relay = name,
                    "relay gone at the project node; registering again"
                );
                match client.create_relay(name).await {
                    Ok(info) => status.send_modify(|s| s.relay = Some(info)),
                    Err(e) => return describe(&e),
                }
            }
            Err(e) => return describe(&e),
        }
    }
}

/// Open a new channel and register the relay, pausing between attempts, until it works.
async fn reconnect(
    node: &Node,
    settings: &SharedSettings,
    config: &KeeperConfig,
    status: &watch::Sender<RelayStatus>,
) -> AuthorityClient {
    let name = config.name.as_str();
    let since = match status.borrow().state {
        RelayState::Reconnecting { since, .. } => since,
        RelayState::Up { .. } => unix_now(),
    };
    let mut backoff = Backoff::new(Duration::MAX)
        .between(FIRST_RETRY, MAX_RETRY)
        .jittered();
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        match register(node, settings, config).await {
            Ok((client, info)) => {
                info!(relay = name, attempts, "relay up");
                status.send_modify(|s| {
                    if s.relay.is_some() {
                        s.reconnections = s.reconnections.saturating_add(1);
                    }
                    s.state = RelayState::Up { since: unix_now() };
                    s.relay = Some(info);
                });
                return client;
            }
            Err(e) => {
                let error = describe(&e);
                debug!(relay = name, attempts, error = %error, "relay reconnection failed");
                status.send_modify(|s| {
                    s.state = RelayState::Reconnecting { since, attempts };
                    s.last_error = Some((unix_now(), error));
                });
            }
        }
        tokio::time::sleep(backoff.next_pause().unwrap_or(MAX_RETRY)).await;
    }
}
