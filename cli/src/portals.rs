//! `kith tcp-outlet …` and `kith tcp-inlet …`: TCP portals kept by a node daemon (DESIGN §3,
//! §6).
//!
//! An outlet is a service on a node next to a TCP server; an inlet is a port on a node next
//! to the server's clients. Every connection the inlet accepts opens fresh secure channels
//! along its route (so a route through a relay that went away and came back works again
//! without recreating anything), checks that the node answering at the end satisfies the
//! inlet's policy, and opens a portal session with the outlet, which checks the same of the
//! inlet's node. Both policies default to "a member of this node's project".
//!
//! The daemon keeps both in the node's configuration and restores them when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_identity::backoff::Backoff;
use kith_identity::policy::{Policy, PolicyAccessControl};
use kith_identity::secure_channel::{ChannelSettings, SharedSettings, ThroughChannel};
use kith_node::{Address, LOCAL, Node, Route};
use kith_transport::portal::{
    ConnectFuture, Connector, Inlet, Outlet, PortalOptions, PortalRoute, StatsView,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::args::{TcpInletCommand, TcpOutletCommand};
use crate::control::{self, Request};
use crate::daemon::{RunningNode, open_channels};
use crate::home::{Home, InletConfig, OutletConfig};
use crate::nodes::{NodeState, probe, running_socket};
use crate::output::Output;

/// The attribute every credential an authority issues carries: whose project it is.
const PROJECT_ID: &str = "project_id";

/// 5 s: the most one attempt at reaching the outlet's node may take; an inlet retries within
/// its open timeout, so a relay that comes back is used as soon as it is.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

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

impl OutletView {
    fn line(&self) -> String {
        format!(
            "{}  node {}  to {}  allow {}  sessions {} open, {} done, {} failed, {} refused",
            self.name,
            self.node,
            self.to,
            self.policy,
            self.sessions.open,
            self.sessions.finished,
            self.sessions.failed,
            self.sessions.refused
        )
    }
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
}

impl InletView {
    fn line(&self) -> String {
        let state = match &self.error {
            None => format!(
                "sessions {} open, {} done, {} failed, {} refused",
                self.sessions.open,
                self.sessions.finished,
                self.sessions.failed,
                self.sessions.refused
            ),
            Some(e) => format!("NOT LISTENING: {e}"),
        };
        format!(
            "{}  node {}  from {}  to {}  allow {}  {state}",
            self.alias, self.node, self.from, self.to, self.policy
        )
    }
}

struct KeptOutlet {
    outlet: Outlet,
    config: OutletConfig,
    policy: String,
}

struct KeptInlet {
    inlet: Option<Inlet>,
    config: InletConfig,
    policy: String,
    error: Option<String>,
}

/// The portals a daemon keeps.
#[derive(Default)]
pub struct Portals {
    outlets: Mutex<BTreeMap<String, KeptOutlet>>,
    inlets: Mutex<BTreeMap<String, KeptInlet>>,
    /// Held by a create or delete for its whole course (which saves the configuration).
    changes: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The projects whose credentials `settings` presents.
fn projects(settings: &ChannelSettings) -> BTreeSet<String> {
    settings
        .local
        .credentials
        .iter()
        .filter_map(|c| c.credential.attributes().get(PROJECT_ID).cloned())
        .collect()
}

/// The policy a portal applies: membership of this node's projects, narrowed by `allow`;
/// `allow` alone for a node that is a member of no project.
fn effective_policy(settings: &ChannelSettings, allow: Option<&str>, what: &str) -> Result<Policy> {
    let allow = allow.map(crate::nodes::parse_allow).transpose()?;
    let projects = projects(settings);
    let membership = match projects.len() {
        0 => None,
        1 => Some(format!(
            "{PROJECT_ID} = {:?}",
            projects.first().map(String::as_str).unwrap_or_default()
        )),
        _ => Some(format!(
            "{PROJECT_ID} in [{}]",
            projects
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    };
    let text = match (membership, &allow) {
        (Some(m), Some(a)) => format!("{m} and ({a})"),
        (Some(m), None) => m,
        (None, Some(a)) => a.to_string(),
        (None, None) => bail!(
            "this node is a member of no project, so its {what} has no one to admit by default; \
             enroll it (`kith project enroll --node …`) or say who may use it with --allow"
        ),
    };
    Policy::parse(&text).map_err(|e| anyhow!("the {what}'s policy is too long: {e}"))
}

/// Bare `PORT` means loopback; otherwise an IP address and port.
fn listen_address(from: &str) -> Result<SocketAddr> {
    if let Ok(port) = from.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    from.parse().map_err(|_| {
        anyhow!(
            "--from takes an IP address and port, like 127.0.0.1:15432 (or a port), not {from:?}"
        )
    })
}

/// `host:port` with a port that is a number other than 0.
fn check_target(to: &str) -> Result<()> {
    let (host, port) = to
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--to takes HOST:PORT, like 127.0.0.1:5432, not {to:?}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("the port in --to {to:?} is not a number from 1 to 65535"))?;
    if port == 0 || host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--to takes HOST:PORT, like 127.0.0.1:5432, not {to:?}");
    }
    Ok(())
}

/// Opens fresh channels along an inlet's route for every session, retrying within the
/// inlet's open timeout, and checks who answered.
struct ChannelConnector {
    node: Node,
    home: Home,
    settings: SharedSettings,
    to: String,
    policy: Policy,
    open_timeout: Duration,
}

/// Why one attempt to reach the outlet failed.
enum Attempt {
    /// The route may work again soon (a relay reconnecting): try again within the budget.
    Retry(anyhow::Error),
    /// Trying again will not help: the node at the end does not satisfy the policy.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        Attempt::Retry(e)
    }
}

impl ChannelConnector {
    async fn attempt(&self, budget: Duration) -> Result<PortalRoute, Attempt> {
        let target = crate::message::resolve_target(&self.home, &self.to).await?;
        let settings = self.settings.get();
        let channels = open_channels(&self.node, &settings, &target.channels, budget).await?;
        let Some(inner) = channels.innermost() else {
            return Err(Attempt::Fatal(anyhow!("the route has no secure channel")));
        };
        let peer = &inner.peer;
        if !self
            .policy
            .allows(&peer.identifier.to_string(), &peer.attributes)
        {
            return Err(Attempt::Fatal(anyhow!(
                "the node at the end of the route, {}, does not satisfy the inlet's policy {}",
                peer.identifier,
                self.policy
            )));
        }
        let mut hops = vec![inner.encryptor.clone()];
        hops.extend(target.route.iter().cloned());
        let route = Route::try_from_iter(hops).map_err(anyhow::Error::from)?;
        let replies = Arc::new(ThroughChannel(inner.handshake_hash));
        Ok(PortalRoute {
            route,
            replies,
            guard: Box::new(channels),
        })
    }
}

impl Connector for ChannelConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            let mut backoff = Backoff::new(self.open_timeout)
                .between(Duration::from_millis(100), Duration::from_secs(2));
            loop {
                let left = self.open_timeout.saturating_sub(backoff.waited());
                let error = match self.attempt(left.min(ATTEMPT_TIMEOUT)).await {
                    Ok(route) => return Ok(route),
                    Err(Attempt::Fatal(e)) => return Err(format!("{e:#}")),
                    Err(Attempt::Retry(e)) => e,
                };
                match backoff.next_pause() {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(format!("cannot reach the outlet: {error:#}")),
                }
            }
        })
    }
}

impl RunningNode {
    fn portal_settings(&self) -> Result<SharedSettings> {
        self.shared_settings()
            .context("this node has no identity, so it cannot carry portals")
    }

    /// Start serving outlet `config` (not saving it).
    fn start_outlet(&self, config: &OutletConfig) -> Result<KeptOutlet> {
        let address = Address::try_new(LOCAL, &config.name)
            .map_err(|e| anyhow!("invalid outlet name {:?}: {e}", config.name))?;
        if self.node.addresses().contains(&address) {
            bail!(
                "node {} already has a service at {:?}; choose another name with --from",
                self.node.name(),
                config.name
            );
        }
        check_target(&config.to)?;
        let settings = self.portal_settings()?.get();
        let policy = effective_policy(&settings, config.allow.as_deref(), "outlet")?;
        let shown = policy.to_string();
        let outlet = Outlet::start(
            &self.node,
            &config.name,
            &config.to,
            Arc::new(PolicyAccessControl(policy)),
            PortalOptions::default(),
        )
        .context("cannot start the outlet")?;
        info!(outlet = %config.name, to = %config.to, policy = %shown, "outlet started");
        Ok(KeptOutlet {
            outlet,
            config: config.clone(),
            policy: shown,
        })
    }

    /// Start listening for inlet `config` (not saving it).
    async fn start_inlet(&self, config: &InletConfig) -> Result<KeptInlet> {
        let settings = self.portal_settings()?;
        let policy = effective_policy(&settings.get(), config.allow.as_deref(), "inlet")?;
        let target = crate::message::resolve_target(self.home()?, &config.to)
            .await
            .with_context(|| format!("--to {:?}", config.to))?;
        if target.channels.is_empty() {
            bail!(
                "route {:?} has no secure channel, and portals carry data only through one: \
                 end it with /secure/api/service/OUTLET (a /project/NAME route has one)",
                config.to
            );
        }
        if target.route.is_empty() {
            bail!(
                "route {:?} has nothing after its last secure channel; end it with /service/OUTLET",
                config.to
            );
        }
        let open_timeout = Duration::from_millis(config.open_timeout_ms);
        let connector = ChannelConnector {
            node: self.node.clone(),
            home: self.home()?.clone(),
            settings,
            to: config.to.clone(),
            policy: policy.clone(),
            open_timeout,
        };
        let from = listen_address(&config.from)?;
        let options = PortalOptions {
            open_timeout,
            ..PortalOptions::default()
        };
        let inlet = Inlet::start(&self.node, &from.to_string(), Arc::new(connector), options)
            .await
            .with_context(|| format!("cannot listen on {from}"))?;
        info!(inlet = %config.alias, from = %inlet.address(), to = %config.to, "inlet started");
        Ok(KeptInlet {
            inlet: Some(inlet),
            config: config.clone(),
            policy: policy.to_string(),
            error: None,
        })
    }

    fn outlet_view(&self, k: &KeptOutlet) -> OutletView {
        OutletView {
            node: self.node.name().to_owned(),
            name: k.config.name.clone(),
            to: k.config.to.clone(),
            policy: k.policy.clone(),
            sessions: k.outlet.stats().view(),
        }
    }

    fn inlet_view(&self, k: &KeptInlet) -> InletView {
        InletView {
            node: self.node.name().to_owned(),
            alias: k.config.alias.clone(),
            from: k.config.from.clone(),
            to: k.config.to.clone(),
            policy: k.policy.clone(),
            listening: k.inlet.is_some(),
            error: k.error.clone(),
            sessions: k
                .inlet
                .as_ref()
                .map(|i| i.stats().view())
                .unwrap_or_default(),
        }
    }

    /// Create outlet `config`, serve it, and save it in the node's configuration.
    pub async fn outlet_create(&self, config: OutletConfig) -> Result<OutletView> {
        let _changing = self.portals.changes.lock().await;
        if lock(&self.portals.outlets).contains_key(&config.name) {
            bail!(
                "node {} already has outlet {:?}; delete it first",
                self.node.name(),
                config.name
            );
        }
        let home = self.home()?;
        let kept = self.start_outlet(&config)?;
        let mut saved = home.load_node(self.node.name())?;
        saved.outlets.retain(|o| o.name != config.name);
        saved.outlets.push(config.clone());
        if let Err(e) = home.save_node(&saved) {
            kept.outlet.stop();
            return Err(e);
        }
        let view = self.outlet_view(&kept);
        lock(&self.portals.outlets).insert(config.name, kept);
        Ok(view)
    }

    /// The outlets the node serves.
    pub fn outlet_list(&self) -> Vec<OutletView> {
        lock(&self.portals.outlets)
            .values()
            .map(|k| self.outlet_view(k))
            .collect()
    }

    /// Stop outlet `name` (closing its sessions) and forget it.
    pub async fn outlet_delete(&self, name: &str) -> Result<OutletView> {
        let _changing = self.portals.changes.lock().await;
        let kept = lock(&self.portals.outlets)
            .remove(name)
            .ok_or_else(|| anyhow!("node {} has no outlet {name:?}", self.node.name()))?;
        kept.outlet.stop();
        let home = self.home()?;
        let mut saved = home.load_node(self.node.name())?;
        saved.outlets.retain(|o| o.name != name);
        home.save_node(&saved)?;
        Ok(self.outlet_view(&kept))
    }

    /// Create inlet `config`, listen, and save it (with the bound port if it asked for 0).
    pub async fn inlet_create(&self, mut config: InletConfig) -> Result<InletView> {
        let _changing = self.portals.changes.lock().await;
        let from = listen_address(&config.from)?;
        config.from = from.to_string();
        if config.alias.is_empty() {
            config.alias = config.from.clone();
        }
        if lock(&self.portals.inlets).contains_key(&config.alias) {
            bail!(
                "node {} already has inlet {:?}; delete it first",
                self.node.name(),
                config.alias
            );
        }
        let home = self.home()?;
        let mut kept = self.start_inlet(&config).await?;
        if let Some(inlet) = &kept.inlet {
            let bound = inlet.address().to_string();
            if from.port() == 0 {
                if config.alias == config.from {
                    config.alias = bound.clone();
                }
                config.from = bound;
                kept.config = config.clone();
            }
        }
        if lock(&self.portals.inlets).contains_key(&config.alias) {
            if let Some(i) = &kept.inlet {
                i.stop();
            }
            bail!(
                "node {} already has inlet {:?}",
                self.node.name(),
                config.alias
            );
        }
        let mut saved = home.load_node(self.node.name())?;
        saved.inlets.retain(|i| i.alias != config.alias);
        saved.inlets.push(config.clone());
        if let Err(e) = home.save_node(&saved) {
            if let Some(i) = &kept.inlet {
                i.stop();
            }
            return Err(e);
        }
        let view = self.inlet_view(&kept);
        lock(&self.portals.inlets).insert(config.alias, kept);
        Ok(view)
    }

    /// The inlets the node listens on.
    pub fn inlet_list(&self) -> Vec<InletView> {
        lock(&self.portals.inlets)
            .values()
            .map(|k| self.inlet_view(k))
            .collect()
    }

    /// Stop inlet `alias` (closing its port and sessions) and forget it.
    pub async fn inlet_delete(&self, alias: &str) -> Result<InletView> {
        let _changing = self.portals.changes.lock().await;
        let kept = lock(&self.portals.inlets)
            .remove(alias)
            .ok_or_else(|| anyhow!("node {} has no inlet {alias:?}", self.node.name()))?;
        if let Some(i) = &kept.inlet {
            i.stop();
        }
        let home = self.home()?;
        let mut saved = home.load_node(self.node.name())?;
        saved.inlets.retain(|i| i.alias != alias);
        home.save_node(&saved)?;
        Ok(self.inlet_view(&kept))
    }

    /// Serve the outlets and inlets of the node's configuration. One that cannot start is
    /// logged; an inlet stays listed with the reason, so `tcp-inlet list` shows it.
    pub async fn restore_portals(&self, outlets: &[OutletConfig], inlets: &[InletConfig]) {
        let _changing = self.portals.changes.lock().await;
        for config in outlets {
            match self.start_outlet(config) {
                Ok(kept) => {
                    lock(&self.portals.outlets).insert(config.name.clone(), kept);
                }
                Err(e) => {
                    warn!(outlet = %config.name, error = %format!("{e:#}"), "cannot serve a saved outlet")
                }
            }
        }
        for config in inlets {
            let kept = match self.start_inlet(config).await {
                Ok(kept) => kept,
                Err(e) => {
                    let error = format!("{e:#}");
                    warn!(inlet = %config.alias, %error, "cannot listen for a saved inlet");
                    KeptInlet {
                        inlet: None,
                        config: config.clone(),
                        policy: config.allow.clone().unwrap_or_default(),
                        error: Some(error),
                    }
                }
            };
            lock(&self.portals.inlets).insert(config.alias.clone(), kept);
        }
    }
}

/// The running local nodes to ask: `at`, or every running one.
async fn nodes_to_ask(home: &Home, at: Option<&str>) -> Result<Vec<String>> {
    match at {
        Some(n) => {
            running_socket(home, n).await?;
            Ok(vec![n.to_owned()])
        }
        None => {
            let mut running = Vec::new();
            for name in home.node_names()? {
                if let NodeState::Running(_) = probe(home, &name).await {
                    running.push(name);
                }
            }
            Ok(running)
        }
    }
}

async fn ask<T: for<'de> Deserialize<'de>>(
    home: &Home,
    node: &str,
    request: &Request,
    timeout: Duration,
) -> Result<T> {
    let v = control::call(&home.socket_path(node), request, timeout)
        .await
        .with_context(|| format!("node {node:?}"))?;
    serde_json::from_value(v).context("unexpected answer from the node")
}

/// Every entry the running nodes (`at`, or all) answer to `list`.
async fn gather<T: for<'de> Deserialize<'de>>(
    home: &Home,
    at: Option<&str>,
    list: &Request,
) -> Result<Vec<T>> {
    let mut all = Vec::new();
    for node in nodes_to_ask(home, at).await? {
        all.extend(ask::<Vec<T>>(home, &node, list, control::STATUS_TIMEOUT).await?);
    }
    Ok(all)
}

/// The first entry `wanted` among the running nodes' (`at`, or all) answers to `list`,
/// with the node that has it.
async fn locate<T: for<'de> Deserialize<'de>>(
    home: &Home,
    at: Option<&str>,
    list: &Request,
    wanted: impl Fn(&T) -> bool,
) -> Result<Option<(String, T)>> {
    for node in nodes_to_ask(home, at).await? {
        let views: Vec<T> = ask(home, &node, list, control::STATUS_TIMEOUT).await?;
        if let Some(v) = views.into_iter().find(&wanted) {
            return Ok(Some((node, v)));
        }
    }
    Ok(None)
}

/// `at`, or the one running node that is not an authority's.
async fn node_or_only(home: &Home, at: Option<String>) -> Result<String> {
    match at {
        Some(at) => Ok(at),
        None => crate::relays::only_member_node(home).await,
    }
}

async fn find_outlet(home: &Home, name: &str, at: Option<&str>) -> Result<(String, OutletView)> {
    locate(home, at, &Request::OutletList, |v: &OutletView| {
        v.name == name
    })
    .await?
    .ok_or_else(|| anyhow!("no running node serves outlet {name:?}; see `kith tcp-outlet list`"))
}

async fn find_inlet(home: &Home, alias: &str, at: Option<&str>) -> Result<(String, InletView)> {
    locate(home, at, &Request::InletList, |v: &InletView| {
        v.alias == alias
    })
    .await?
    .ok_or_else(|| anyhow!("no running node has inlet {alias:?}; see `kith tcp-inlet list`"))
}

/// Run a `kith tcp-outlet` command.
pub async fn run_outlet(home: &Home, out: &Output, cmd: TcpOutletCommand) -> Result<()> {
    match cmd {
        TcpOutletCommand::Create {
            to,
            at,
            from,
            allow,
        } => {
            check_target(&to)?;
            if let Some(text) = &allow {
                crate::nodes::parse_allow(text)?;
            }
            let at = node_or_only(home, at).await?;
            let socket = running_socket(home, &at).await?;
            let request = Request::OutletCreate(OutletConfig {
                name: from,
                to,
                allow,
            });
            let v = control::call(&socket, &request, control::STATUS_TIMEOUT * 5).await?;
            let view: OutletView =
                serde_json::from_value(v).context("unexpected answer from the node")?;
            out.result(
                || {
                    format!(
                        "Outlet {name} on node {node} carries sessions to {to}, for peers that satisfy: {policy}\n\
                         Reach it with an inlet whose route ends /secure/api/service/{name}, e.g.\n  \
                         kith tcp-inlet create --from 127.0.0.1:15432 --to /project/NAME/service/forward_to_RELAY/secure/api/service/{name}",
                        name = view.name,
                        node = view.node,
                        to = view.to,
                        policy = view.policy
                    )
                },
                &view,
            );
        }
        TcpOutletCommand::List { at } => {
            let all: Vec<OutletView> = gather(home, at.as_deref(), &Request::OutletList).await?;
            out.result(
                || {
                    if all.is_empty() {
                        return "No running node serves an outlet; create one with `kith tcp-outlet create --to HOST:PORT`.".to_owned();
                    }
                    all.iter().map(OutletView::line).collect::<Vec<_>>().join("\n")
                },
                &all,
            );
        }
        TcpOutletCommand::Show { name, at } => {
            let (_, view) = find_outlet(home, &name, at.as_deref()).await?;
            out.result(|| view.line(), &view);
        }
        TcpOutletCommand::Delete { name, at } => {
            let (node, _) = find_outlet(home, &name, at.as_deref()).await?;
            let request = Request::OutletDelete { name };
            let view: OutletView = ask(home, &node, &request, control::STATUS_TIMEOUT * 5).await?;
            out.result(
                || format!("Deleted outlet {} on node {}.", view.name, view.node),
                &view,
            );
        }
    }
    Ok(())
}

/// Run a `kith tcp-inlet` command.
pub async fn run_inlet(home: &Home, out: &Output, cmd: TcpInletCommand) -> Result<()> {
    match cmd {
        TcpInletCommand::Create {
            from,
            to,
            at,
            alias,
            allow,
            timeout,
        } => {
            listen_address(&from)?;
            if let Some(text) = &allow {
                crate::nodes::parse_allow(text)?;
            }
            let at = node_or_only(home, at).await?;
            let socket = running_socket(home, &at).await?;
            let request = Request::InletCreate(InletConfig {
                alias: alias.unwrap_or_default(),
                from,
                to,
                allow,
                open_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            });
            let v = control::call(&socket, &request, control::STATUS_TIMEOUT * 5).await?;
            let view: InletView =
                serde_json::from_value(v).context("unexpected answer from the node")?;
            out.result(
                || {
                    format!(
                        "Inlet {alias} on node {node} listens on {from}; each connection goes to {to}\n\
                         through fresh secure channels, to an outlet node that satisfies: {policy}",
                        alias = view.alias,
                        node = view.node,
                        from = view.from,
                        to = view.to,
                        policy = view.policy
                    )
                },
                &view,
            );
        }
        TcpInletCommand::List { at } => {
            let all: Vec<InletView> = gather(home, at.as_deref(), &Request::InletList).await?;
            out.result(
                || {
                    if all.is_empty() {
                        return "No running node has an inlet; create one with `kith tcp-inlet create --from ADDR --to ROUTE`.".to_owned();
                    }
                    all.iter().map(InletView::line).collect::<Vec<_>>().join("\n")
                },
                &all,
            );
        }
        TcpInletCommand::Show { alias, at } => {
            let (_, view) = find_inlet(home, &alias, at.as_deref()).await?;
            out.result(|| view.line(), &view);
        }
        TcpInletCommand::Delete { alias, at } => {
            let (node, _) = find_inlet(home, &alias, at.as_deref()).await?;
            let request = Request::InletDelete { alias };
            let view: InletView = ask(home, &node, &request, control::STATUS_TIMEOUT * 5).await?;
            out.result(
                || format!("Deleted inlet {} on node {}.", view.alias, view.node),
                &view,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_and_targets_are_checked() {
        assert_eq!(
            listen_address("15432").unwrap(),
            "127.0.0.1:15432".parse().unwrap()
        );
        assert!(listen_address("0.0.0.0:80").is_ok());
        assert!(listen_address("localhost").is_err());
        assert!(check_target("127.0.0.1:5432").is_ok());
        assert!(check_target("db.internal:5432").is_ok());
        assert!(check_target("[::1]:5432").is_ok());
        for bad in ["5432", "host:", "host:0", "host:99999", ":5432", "a b:1"] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
    }
}
