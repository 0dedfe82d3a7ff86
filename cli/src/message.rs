//! `kith message send`, and resolving command-line routes against local nodes.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_node::{Address, Route, TCP};
use kith_transport::{MultiAddr, Protocol};

use crate::args::SendMessage;
use crate::control::{self, ChannelSpec, Request, SendReply};
use crate::daemon::{ChannelHop, RunningNode, Target, channel_settings};
use crate::home::Home;
use crate::nodes::{NodeState, probe, running_socket};
use crate::output::Output;

/// The address that dials a listener bound to `listener`; a wildcard becomes loopback.
fn dialable(listener: &str) -> String {
    if let Some(port) = listener.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = listener.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        listener.to_owned()
    }
}

/// Parse `text` as a target: a route, or routes to secure-channel listeners, each inside the
/// channel before it, followed by the route inside the last channel. `/node/NAME` resolves to
/// that running node's listener; `/project/NAME` to the project node's route, with a channel
/// to its listener that only the project node's identity can answer.
pub async fn resolve_target(home: &Home, text: &str) -> Result<Target> {
    let mut addr: MultiAddr = text
        .parse()
        .with_context(|| format!("invalid route {text:?}"))?;
    let mut pinned = None;
    if let Some(name) = addr.project() {
        let project = crate::projects::load_project(home, Some(name))
            .with_context(|| format!("route {text:?} names project {name:?}"))?;
        pinned = Some(project.project_identifier);
        addr = addr
            .with_project(&project.project_route)
            .with_context(|| format!("the route of project {name:?} cannot be used"))?;
    }
    let (listeners, rest) = addr.secure_split();
    let mut channels = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.iter().enumerate() {
        channels.push(ChannelHop {
            route: resolve(home, text, listener).await?,
            peer: if i == 0 { pinned } else { None },
        });
    }
    Ok(Target {
        channels,
        route: resolve(home, text, &rest).await?,
    })
}

async fn resolve(home: &Home, text: &str, addr: &MultiAddr) -> Result<Route> {
    let mut nodes = HashMap::new();
    for p in addr.protocols() {
        if let Protocol::Node(name) = p {
            if nodes.contains_key(name) {
                continue;
            }
            home.load_node(name)?;
            let listener = match probe(home, name).await {
                NodeState::Running(s) => s.listener,
                NodeState::Stopped { .. } => {
                    bail!(
                        "node {name:?} in route {text:?} is not running; start it with `kith node start {name}`"
                    )
                }
            };
            let address = Address::try_new(TCP, dialable(&listener))?;
            nodes.insert(name.clone(), address);
        }
    }
    addr.to_route(|n| {
        nodes
            .get(n)
            .cloned()
            .ok_or_else(|| anyhow!("unknown node {n:?}"))
    })
}

/// `kith message send`
pub async fn send(home: &Home, out: &Output, args: SendMessage) -> Result<()> {
    let target = resolve_target(home, &args.to).await?;
    if target.route.is_empty() {
        bail!(
            "route {:?} has nothing after its last hop; end it with /service/NAME",
            args.to
        );
    }
    let reply: SendReply = match &args.from {
        Some(from) => {
            let request = Request::Send {
                route: target.route.iter().map(ToString::to_string).collect(),
                payload: args.message,
                timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
                channels: target.channels.iter().map(ChannelSpec::from).collect(),
            };
            let socket = running_socket(home, from).await?;
            let margin = std::time::Duration::from_secs(2);
            let v = control::call(&socket, &request, args.timeout + margin).await?;
            serde_json::from_value(v).context("unexpected answer from the node")?
        }
        None => {
            // An identity only if the route needs one: a plain message needs no vault.
            let channels = match target.channels.first() {
                Some(_) => Some(
                    channel_settings(home, None, &crate::home::AdmissionConfig::default())
                        .await?
                        .0,
                ),
                None => None,
            };
            let node = RunningNode::start("cli", None, channels).await?;
            let reply = node.send(target, args.message, args.timeout).await;
            node.node.shutdown().await;
            reply?
        }
    };
    out.result(|| reply.reply.clone(), &reply);
    if let (Some(peer), Some(code)) = (&reply.peer, &reply.verification_code) {
        out.note(format!(
            "(through a secure channel with {peer}, verification code {code})"
        ));
    }
    Ok(())
}
