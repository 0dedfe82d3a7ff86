//! The control protocol between the CLI and a local node daemon: one JSON request line, one
//! JSON response line, over the node's Unix socket (in its 0700 directory).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use kith_authority::keeper::RelayStatus;
use kith_authority::relay::relay_address;
use kith_transport::portal::{RefusalsView, StatsView};

use crate::home::Home;

/// 1 MiB: the longest request or response line; a message payload fits with room to spare.
pub const MAX_LINE: u64 = 1024 * 1024;

/// 2 s: a local daemon that does not answer a status request this fast is wedged.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A request to a node daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// What the node is doing.
    Status,
    /// Shut down.
    Stop,
    /// Present the identity's credentials as the vault now holds them (after an enrollment
    /// or a refresh), in channels opened from now on.
    ReloadCredentials,
    /// Send a message and wait for one reply.
    Send {
        /// Hops as `kind#value`.
        route: Vec<String>,
        /// The message text.
        payload: String,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
        /// Secure channels to open first, each inside the one before; `route` then travels
        /// inside the last.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        channels: Vec<ChannelSpec>,
    },
    /// Open a secure channel to the listener at the end of `to` and keep it.
    ChannelCreate {
        /// Hops as `kind#value`.
        to: Vec<String>,
        /// How long the handshake may take, in milliseconds.
        timeout_ms: u64,
    },
    /// The channels this node keeps open.
    ChannelList,
    /// Create relay `name` at the project node `at` and keep it up (saved in the node's
    /// configuration once the project node accepted it). Answered with success only once
    /// the project node registered the relay during this request.
    RelayCreate {
        /// The relay's name.
        name: String,
        /// `/project/NAME`.
        at: String,
        /// How long reaching the project node may take, in milliseconds.
        timeout_ms: u64,
        /// Keep (and save) the relay, retrying it, even if the project node cannot take it
        /// now; the request still fails, saying so.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_on_failure: bool,
    },
    /// The relays this node keeps, with their state.
    RelayList,
    /// Stop keeping relay `name`, forget it, and delete it at the project node.
    RelayDelete {
        /// The relay's name.
        name: String,
    },
    /// Serve a TCP outlet and save it in the node's configuration.
    OutletCreate(crate::home::OutletConfig),
    /// The outlets the node serves.
    OutletList,
    /// Stop and forget an outlet.
    OutletDelete {
        /// Its service address.
        name: String,
    },
    /// Listen for a TCP inlet and save it in the node's configuration.
    InletCreate(crate::home::InletConfig),
    /// The inlets the node listens on.
    InletList,
    /// Stop and forget an inlet.
    InletDelete {
        /// Its alias.
        alias: String,
    },
    /// Close a kept channel by its address (`sc-enc-…`).
    ChannelDelete {
        /// The channel's address.
        address: String,
    },
}

/// A secure channel to open: the hops to its listener (inside the channel before it, if
/// any), and the identifier that alone may answer, if it is known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelSpec {
    /// Hops as `kind#value`.
    pub to: Vec<String>,
    /// The only identity admitted at the other end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// A secure channel a daemon keeps open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelView {
    /// Route through the channel by starting with `/service/<this>`.
    pub address: String,
    /// The channel's decryptor.
    pub decryptor: String,
    /// The peer's identifier.
    pub peer: String,
    /// The code both ends can compare out of band.
    pub verification_code: String,
    /// The route to the listener it was opened with.
    pub to: String,
}

/// A daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success, with a command-specific value.
    Ok(serde_json::Value),
    /// Failure, with one line saying why.
    Error(String),
}

/// A running node's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// The node's identifier.
    #[serde(default)]
    pub identifier: String,
    /// Process id.
    pub pid: u32,
    /// Bound TCP listener address.
    pub listener: String,
    /// Where it serves metrics (`--metrics-address`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Seconds since the Unix epoch when the daemon started.
    pub started_at: u64,
    /// Local addresses with a worker or mailbox.
    pub services: Vec<String>,
    /// Open TCP connections.
    pub connections: Vec<ConnectionView>,
    /// Runtime and transport counters.
    pub stats: serde_json::Value,
    /// What the node knows of its trusted authorities' revocations.
    #[serde(default)]
    pub revocations: Vec<RevocationFeedView>,
}

/// What a node knows of one authority's revocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationFeedView {
    /// The authority's identifier.
    pub authority: String,
    /// The last statement applied (its sequence number; 0 for none).
    pub head: u64,
    /// How many members its statements name (deleted, or changed since).
    pub members: usize,
    /// When the node last heard the authority's feed, Unix seconds, if it follows it.
    pub heard_at: Option<u64>,
    /// How long the feed may go unheard before the authority admits no one here, seconds.
    pub grace: Option<u64>,
    /// `current`, `stale` (unheard past the grace: credentials from it admit no one), or
    /// `not followed` (no known project has this authority).
    pub state: String,
}

/// One open connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The local address that sends on it.
    pub address: String,
    /// The peer socket address.
    pub peer: String,
    /// `incoming` or `outgoing`.
    pub direction: String,
}

/// The answer to a sent message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendReply {
    /// The reply payload as text (invalid UTF-8 replaced).
    pub reply: String,
    /// The route the message was sent along.
    pub route: String,
    /// The reply's return route, as seen by the sender.
    pub return_route: String,
    /// Round-trip time in milliseconds.
    pub round_trip_ms: f64,
    /// The identifier of the secure channel's peer, if the message went through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The channel's verification code, if the message went through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_code: Option<String>,
}

/// Send `request` to the daemon listening on `socket` and return its answer.
pub async fn call(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut reader = BufReader::new(stream).take(MAX_LINE);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        if answer.is_empty() {
            bail!("the node closed the control connection without answering");
        }
        let response: Response =
            serde_json::from_str(&answer).context("the node sent an invalid answer")?;
        match response {
            Response::Ok(v) => Ok(v),
            Response::Error(e) => Err(anyhow!(e)),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("the node did not answer within {timeout:?}"))?
}

/// Send `Stop` and wait until the daemon has closed the connection, which it does when its
/// shutdown is complete.
pub async fn stop(socket: &Path, timeout: Duration) -> Result<()> {
    let mut stream = UnixStream::connect(socket).await?;
    let mut line = serde_json::to_vec(&Request::Stop)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut sink = Vec::new();
    tokio::time::timeout(timeout, stream.take(MAX_LINE).read_to_end(&mut sink))
        .await
        .map_err(|_| anyhow!("the node did not stop within {timeout:?}"))??;
    Ok(())
}

/// Whether a node runs.
#[derive(Debug, Clone)]
pub enum NodeState {
    /// It answers on its control socket.
    Running(Box<NodeStatus>),
    /// It does not; `crashed` if it did not shut down cleanly (its pid file is left).
    Stopped {
        /// The last run ended without a clean shutdown.
        crashed: bool,
    },
}

/// Ask node `name` for its status.
pub async fn probe(home: &Home, name: &str) -> NodeState {
    let answer = call(&home.socket_path(name), &Request::Status, STATUS_TIMEOUT).await;
    match answer
        .ok()
        .and_then(|v| serde_json::from_value::<NodeStatus>(v).ok())
    {
        Some(status) => NodeState::Running(Box::new(status)),
        None => NodeState::Stopped {
            crashed: home.pid_path(name).exists(),
        },
    }
}

/// The control socket of node `name`, which must exist and be running.
pub async fn running_socket(home: &Home, name: &str) -> Result<std::path::PathBuf> {
    home.load_node(name)?;
    if let NodeState::Stopped { .. } = probe(home, name).await {
        bail!("node {name:?} is not running; start it with `kith node start {name}`");
    }
    Ok(home.socket_path(name))
}

/// A relay a node keeps, as `list` and `show` print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayView {
    /// The node that keeps it.
    pub node: String,
    /// Where: `/project/NAME`.
    pub at: String,
    /// Its state.
    #[serde(flatten)]
    pub status: RelayStatus,
    /// The route that reaches the node through it.
    pub route: String,
    /// After `delete`: whether the project node freed the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_project_node: Option<String>,
}

impl RelayView {
    /// The view of relay `status` kept by `node` at `at`.
    pub fn new(node: &str, at: &str, status: RelayStatus) -> Self {
        Self {
            node: node.to_owned(),
            at: at.to_owned(),
            route: format!("{at}/service/{}", relay_address(&status.name)),
            status,
            deleted_at_project_node: None,
        }
    }
}

/// An outlet as `list` and `show` print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutletView {
    /// The node that serves it.
    pub node: String,
    /// Its service address on the node.
    pub name: String,
    /// Where it connects.
    pub to: String,
    /// Who may open sessions, as the outlet applies it.
    pub policy: String,
    /// Sessions and bytes.
    pub sessions: StatsView,
}

/// An inlet as `list` and `show` print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InletView {
    /// The node that listens.
    pub node: String,
    /// Its name.
    pub alias: String,
    /// Where it listens.
    pub from: String,
    /// The route to the outlet.
    pub to: String,
    /// Which outlet nodes it accepts, as it applies it.
    pub policy: String,
    /// Whether it is listening; if not, why.
    pub listening: bool,
    /// Why it is not listening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sessions and bytes.
    pub sessions: StatsView,
    /// Sessions that never opened, by class, and the last one.
    #[serde(default)]
    pub refusals: RefusalsView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_form() {
        let r = Request::Send {
            route: vec!["0#echo".into()],
            payload: "hi".into(),
            timeout_ms: 5,
            channels: Vec::new(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"op":"send","route":["0#echo"],"payload":"hi","timeout_ms":5}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
