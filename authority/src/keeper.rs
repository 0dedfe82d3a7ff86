//! Keeping a relay up, from the relayed node (DESIGN §3, §6): a secure channel to the
//! project node, a relay registered through it, a heartbeat, and when any of it fails, a new
//! channel and registration after a capped, jittered backoff, for as long as the keeper
//! runs.
//!
//! The first registration is made by [`RelayKeeper::start`] itself, so that a relay the
//! project node refuses (a credential without the right `ockam-relay`, a name held by
//! someone else) is an error for the caller, at once, with the project node's reason. After
//! that the keeper reports: [`RelayKeeper::status`] says whether the relay is up, or since
//! when it is reconnecting and why; and [`RelayKeeper::confirm`] has the project node
//! confirm the registration now, for a caller that must not report a relay up on the
//! strength of an older answer.
//!
//! The keeper watches its channel's end signal: when the channel to the project node ends
//! (the project node stopped, the connection was lost), the relay is reported down at once,
//! with the reason, not at the next heartbeat's timeout.
//!
//! Each reconnection takes the node's channel settings as they are then, so a credential
//! renewed in the meantime is the one presented.

use std::sync::Arc;
use std::time::Duration;

use kith_identity::backoff::Backoff;
use kith_identity::secure_channel::{ChannelEnded, SharedSettings};
use kith_identity::{Identifier, unix_now};
use kith_node::{Node, Route};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::api::ErrorKind;
use crate::client::{AuthorityClient, ClientError};
pub use crate::error::ConfirmError;
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

/// 4: confirmations asked of one keeper at once before the next asker waits for room (each
/// asker bounds its own wait). A relay is confirmed by one command at a time in practice.
const CONFIRM_QUEUE: usize = 4;

/// Where a confirmation is answered: the relay as the project node registered it, or why
/// it did not.
type Asker = oneshot::Sender<Result<RelayInfo, Arc<ClientError>>>;

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
    confirms: mpsc::Sender<Asker>,
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

/// Why a relay went down when its channel to the project node ended.
fn channel_ended(how: ChannelEnded) -> String {
    match how {
        ChannelEnded::ConnectionClosed => {
            "the connection to the project node closed (it stopped, or the network failed)"
                .to_owned()
        }
        ChannelEnded::Closed => "the secure channel to the project node was closed".to_owned(),
        ChannelEnded::PeerSilent => {
            "the project node went silent (nothing heard past the channel's idle timeout)"
                .to_owned()
        }
        ChannelEnded::PeerUnreachable => {
            "the project node cannot be reached any more (a hop on the way answered so)".to_owned()
        }
        ChannelEnded::PeerRevoked => {
            "the project node's credential was revoked by an authority this node trusts".to_owned()
        }
    }
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
        let status = RelayStatus {
            name: config.name.clone(),
            state: RelayState::Up { since: unix_now() },
            relay: Some(info),
            last_error: None,
            reconnections: 0,
        };
        Ok(Self::run(
            node,
            settings,
            config,
            status,
            Start::Up(Box::new(client)),
        ))
    }

    /// Keep relay `config.name` up from `node` without a first registration of its own: it
    /// starts reconnecting at once, and never fails. For relays a node had before it
    /// restarted, when the project node may be down too.
    pub fn spawn(node: &Node, settings: SharedSettings, config: KeeperConfig) -> Self {
        let status = Self::never_up(&config, 0, None);
        Self::run(node, settings, config, status, Start::Now)
    }

    /// Keep relay `config.name` up from `node` after a first registration that failed with
    /// `error`: it is reported down with that error, and tries again after a first pause.
    /// For a relay its user asked to keep although the project node could not take it yet.
    pub fn spawn_after_failure(
        node: &Node,
        settings: SharedSettings,
        config: KeeperConfig,
        error: &ClientError,
    ) -> Self {
        let status = Self::never_up(&config, 1, Some((unix_now(), describe(error))));
        Self::run(node, settings, config, status, Start::AfterPause)
    }

    fn never_up(config: &KeeperConfig, attempts: u32, error: Option<(u64, String)>) -> RelayStatus {
        RelayStatus {
            name: config.name.clone(),
            state: RelayState::Reconnecting {
                since: unix_now(),
                attempts,
            },
            relay: None,
            last_error: error,
            reconnections: 0,
        }
    }

    fn run(
        node: &Node,
        settings: SharedSettings,
        config: KeeperConfig,
        status: RelayStatus,
        start: Start,
    ) -> Self {
        let (tx, rx) = watch::channel(status);
        // Bounded: an asker past the queue waits for room, within its own timeout.
        let (confirms, asked) = mpsc::channel(CONFIRM_QUEUE);
        let keeping = Keeping {
            node: node.clone(),
            settings,
            config,
            status: tx,
            asked,
        };
        let task = tokio::spawn(keeping.keep(start));
        Self {
            status: rx,
            confirms,
            task,
        }
    }

    /// The relay's state now.
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// Have the project node confirm the relay now: registered again through the keeper's
    /// channel if it is up (which checks the name is still granted), or registered in a new
    /// channel at once if it is reconnecting. Only an answer the project node gives after
    /// this call began counts. A failure leaves the keeper reconnecting, as any failure
    /// does. The caller bounds the wait.
    /// The future holds no borrow of the keeper, so it can be awaited without holding
    /// whatever holds the keeper. By the time it answers, [`RelayKeeper::status`] reflects
    /// the answer.
    pub fn confirm(&self) -> impl Future<Output = Result<RelayInfo, ConfirmError>> + Send + use<> {
        let confirms = self.confirms.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            confirms.send(tx).await.map_err(|_| ConfirmError::Stopped)?;
            match rx.await {
                Ok(Ok(info)) => Ok(info),
                Ok(Err(e)) => Err(ConfirmError::Failed(e)),
                Err(_) => Err(ConfirmError::Stopped),
            }
        }
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

/// How a keeper's task begins.
enum Start {
    /// Up, through this client (boxed: it is large, and moved once).
    Up(Box<AuthorityClient>),
    /// Reconnecting, with a first attempt now.
    Now,
    /// Reconnecting, with a first attempt after a pause (one just failed).
    AfterPause,
}

/// A confirmation the heartbeat could not answer itself.
enum Unanswered {
    /// The project node refused it, or the check failed: the asker gets that error once the
    /// relay is marked down.
    Failed(Asker, ClientError),
    /// The channel ended under it: the next registration answers it.
    Retry(Asker),
}

/// A keeper's task and what it owns.
struct Keeping {
    node: Node,
    settings: SharedSettings,
    config: KeeperConfig,
    status: watch::Sender<RelayStatus>,
    /// Confirmations asked by [`RelayKeeper::confirm`].
    asked: mpsc::Receiver<Asker>,
}

impl Keeping {
    /// Heartbeat while the relay is up; reconnect with backoff when it is not.
    async fn keep(mut self, start: Start) {
        let (mut client, mut pause_first) = match start {
            Start::Up(client) => (Some(*client), false),
            Start::Now => (None, false),
            Start::AfterPause => (None, true),
        };
        let name = self.config.name.clone();
        loop {
            let mut waiting = Vec::new();
            if let Some(mut up) = client.take() {
                let (error, unanswered) = self.heartbeat(&mut up).await;
                drop(up);
                warn!(relay = %name, error = %error, "relay down; reconnecting");
                let now = unix_now();
                self.status.send_modify(|s| {
                    s.state = RelayState::Reconnecting {
                        since: now,
                        attempts: 0,
                    };
                    s.last_error = Some((now, error));
                });
                match unanswered {
                    Some(Unanswered::Failed(asker, e)) => {
                        let _ = asker.send(Err(Arc::new(e)));
                    }
                    // Asked as the channel ended: the next attempt, at once, answers.
                    Some(Unanswered::Retry(asker)) => waiting.push(asker),
                    None => {}
                }
                pause_first = false;
            }
            client = Some(self.reconnect(waiting, pause_first).await);
        }
    }

    /// Check the relay every heartbeat, and whenever a confirmation is asked, until
    /// something fails or the channel ends; returns what failed, and who asked for a
    /// confirmation the failure left unanswered.
    async fn heartbeat(&mut self, client: &mut AuthorityClient) -> (String, Option<Unanswered>) {
        let name = self.config.name.clone();
        let ended = client.end_signal();
        client.set_timeout(self.config.timeout.min(HEARTBEAT_TIMEOUT));
        loop {
            let asker = tokio::select! {
                how = ended.ended() => return (channel_ended(how), None),
                () = tokio::time::sleep(self.config.heartbeat) => None,
                Some(asker) = self.asked.recv() => Some(asker),
            };
            let checked = tokio::select! {
                how = ended.ended() => return (channel_ended(how), asker.map(Unanswered::Retry)),
                checked = check(client, &name, asker.is_some()) => checked,
            };
            match checked {
                Ok(info) => {
                    if let Some(asker) = asker {
                        let _ = asker.send(Ok(info.clone()));
                    }
                    if self.status.borrow().relay.as_ref() != Some(&info) {
                        self.status.send_modify(|s| s.relay = Some(info));
                    }
                }
                Err(e) => {
                    let error = describe(&e);
                    return (error, asker.map(|a| Unanswered::Failed(a, e)));
                }
            }
        }
    }

    /// Open a new channel and register the relay, pausing between attempts, until it works.
    /// A confirmation asked during a pause ends it; one asked during an attempt is answered
    /// by that attempt. `waiting` are askers already waiting for the next attempt.
    async fn reconnect(&mut self, mut waiting: Vec<Asker>, pause_first: bool) -> AuthorityClient {
        let name = self.config.name.clone();
        let (since, mut attempts) = match self.status.borrow().state {
            RelayState::Reconnecting { since, attempts } => (since, attempts),
            RelayState::Up { .. } => (unix_now(), 0),
        };
        let mut backoff = Backoff::new(Duration::MAX)
            .between(FIRST_RETRY, MAX_RETRY)
            .jittered();
        let mut pause = pause_first.then(|| backoff.next_pause().unwrap_or(MAX_RETRY));
        loop {
            if let Some(pause) = pause.filter(|_| waiting.is_empty()) {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    Some(asker) = self.asked.recv() => waiting.push(asker),
                }
            }
            attempts = attempts.saturating_add(1);
            let attempt = register(&self.node, &self.settings, &self.config);
            tokio::pin!(attempt);
            let registered = loop {
                tokio::select! {
                    registered = &mut attempt => break registered,
                    Some(asker) = self.asked.recv() => waiting.push(asker),
                }
            };
            match registered {
                Ok((client, info)) => {
                    info!(relay = %name, attempts, "relay up");
                    self.status.send_modify(|s| {
                        if s.relay.is_some() {
                            s.reconnections = s.reconnections.saturating_add(1);
                        }
                        s.state = RelayState::Up { since: unix_now() };
                        s.relay = Some(info.clone());
                    });
                    for asker in waiting.drain(..) {
                        let _ = asker.send(Ok(info.clone()));
                    }
                    return client;
                }
                Err(e) => {
                    let error = describe(&e);
                    debug!(relay = %name, attempts, error = %error, "relay reconnection failed");
                    self.status.send_modify(|s| {
                        s.state = RelayState::Reconnecting { since, attempts };
                        s.last_error = Some((unix_now(), error));
                    });
                    let e = Arc::new(e);
                    for asker in waiting.drain(..) {
                        let _ = asker.send(Err(e.clone()));
                    }
                }
            }
            pause = Some(backoff.next_pause().unwrap_or(MAX_RETRY));
        }
    }
}

/// Check relay `name` through `client`. A confirmation registers it again (which the
/// project node answers only if the name is still granted); a heartbeat only checks that it
/// still leads here, and registers it again if the project node lost it (it restarted, or
/// an admin deleted it).
async fn check(
    client: &mut AuthorityClient,
    name: &str,
    confirming: bool,
) -> Result<RelayInfo, ClientError> {
    if confirming {
        return client.create_relay(name).await;
    }
    match client.check_relay(name).await {
        Err(ClientError::Refused(e)) if e.kind == ErrorKind::NotFound => {
            debug!(
                relay = name,
                "relay gone at the project node; registering again"
            );
            client.create_relay(name).await
        }
        checked => checked,
    }
}
