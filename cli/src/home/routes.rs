//! Routes given on the command line, resolved against local state: `/node/NAME` becomes that
//! running node's listener, `/project/NAME` the project node's route with a channel pinned to
//! its identity.

use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_authority::project::Project;
use kith_identity::Identifier;
use kith_identity::secure_channel::ChannelHop;
use kith_node::{Address, Route, TCP};
use kith_transport::{MultiAddr, PROJECT_LISTENER, Protocol};

use super::Home;
use crate::control::{ChannelSpec, NodeState, probe};

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
        let project = crate::home::projects::load_project(home, name)
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

/// Where a message goes: through secure channels, each opened inside the one before, then
/// along `route` inside the last (or plainly, if there are none).
#[derive(Debug, Clone)]
pub struct Target {
    /// The channels to open first.
    pub channels: Vec<ChannelHop>,
    /// The route (after the last channel's encryptor, if any).
    pub route: Route,
}

/// The project node's listener route and identifier for `/project/NAME`.
pub async fn resolve_at(home: &Home, at: &str) -> Result<(Route, Identifier)> {
    let m: MultiAddr = at
        .parse()
        .with_context(|| format!("relay location {at:?} is not a route"))?;
    let name = m
        .project()
        .ok_or_else(|| anyhow!("relay location {at:?} is not /project/NAME"))?;
    let project = crate::home::projects::load_project(home, name)?;
    let text = format!("{}/service/{PROJECT_LISTENER}", project.project_route);
    let target = crate::home::routes::resolve_target(home, &text).await?;
    Ok((target.route, project.project_identifier))
}

/// The route to the project authority's secure-channel listener.
pub async fn api_route(home: &Home, project: &Project) -> Result<Route> {
    let text = format!(
        "{}/service/{}",
        project.authority_route,
        kith_identity::secure_channel::DEFAULT_LISTENER
    );
    let target = crate::home::routes::resolve_target(home, &text).await?;
    Ok(target.route)
}

impl From<&ChannelHop> for ChannelSpec {
    fn from(hop: &ChannelHop) -> Self {
        Self {
            to: hop.route.iter().map(ToString::to_string).collect(),
            peer: hop.peer.map(|p| p.to_string()),
        }
    }
}
