//! `kith message send`, and resolving command-line routes against local nodes.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_node::{Address, Route, TCP};
use kith_transport::{MultiAddr, Protocol};

use crate::args::SendMessage;
use crate::control::{self, Request, SendReply};
use crate::daemon::RunningNode;
use crate::home::Home;
use crate::nodes::{NodeState, probe};
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

/// Parse `text` as a route, resolving `/node/NAME` to that running node's listener.
pub async fn resolve_route(home: &Home, text: &str) -> Result<Route> {
    let addr: MultiAddr = text
        .parse()
        .with_context(|| format!("invalid route {text:?}"))?;
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
    let route = resolve_route(home, &args.to).await?;
    if route.is_empty() {
        bail!("route {:?} has no hops", args.to);
    }
    let reply: SendReply = match &args.from {
        Some(from) => {
            home.load_node(from)?;
            let request = Request::Send {
                route: route.iter().map(ToString::to_string).collect(),
                payload: args.message,
                timeout_ms: u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX),
            };
            let socket = home.socket_path(from);
            if let NodeState::Stopped { .. } = probe(home, from).await {
                bail!("node {from:?} is not running; start it with `kith node start {from}`");
            }
            let margin = std::time::Duration::from_secs(2);
            let v = control::call(&socket, &request, args.timeout + margin).await?;
            serde_json::from_value(v).context("unexpected answer from the node")?
        }
        None => {
            let node = RunningNode::start("cli", None).await?;
            let reply = node.send(route, args.message, args.timeout).await;
            node.node.shutdown().await;
            reply?
        }
    };
    out.result(|| reply.reply.clone(), &reply);
    Ok(())
}
