//! TCP outlets and inlets the node keeps (`kith tcp-outlet`, `kith tcp-inlet`), saved in its
//! configuration and restored when it starts (DESIGN §3).
//!
//! An outlet is a service on a node next to a TCP server; an inlet is a port on a node next
//! to the server's clients. Every connection the inlet accepts opens fresh secure channels
//! along its route (so a route through a relay that went away and came back works again
//! without recreating anything), checks that the node answering at the end satisfies the
//! inlet's policy, and opens a portal session with the outlet, which checks the same of the
//! inlet's node. Both policies default to "a member of this node's project".

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_identity::policy::{Policy, PolicyAccessControl};
use kith_identity::portal::PortalConnector;
use kith_identity::secure_channel::{ChannelSettings, SharedSettings};
use kith_node::{Address, LOCAL, Node};
use kith_transport::portal::{Inlet, Outlet, PortalOptions};
use tracing::{info, warn};

use super::kept::{Kept, Saved};
use crate::control::{InletView, OutletView};
use crate::home::routes::resolve_target;
use crate::home::{InletConfig, OutletConfig};

/// The attribute every credential an authority issues carries: whose project it is.
const PROJECT_ID: &str = "project_id";

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

/// 2 s: how long deleting an inlet waits for its listening socket to close (the listener
/// task closes it as soon as it runs).
const INLET_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// 15 s: how long an inlet's new connection waits for its outlet (while a relay reconnects,
/// say) unless told otherwise: `tcp-inlet create --timeout`'s default, and a node file's.
pub const INLET_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// The portals a node keeps, by outlet name and inlet alias.
pub struct Portals {
    node: Node,
    settings: Option<SharedSettings>,
    saved: Option<Saved>,
    outlets: Kept<KeptOutlet>,
    inlets: Kept<KeptInlet>,
}

impl Portals {
    /// None yet, on `node`, with its channel settings (if it has an identity) and its saved
    /// configuration (if it keeps one).
    pub(crate) fn new(node: &Node, settings: Option<SharedSettings>, saved: Option<Saved>) -> Self {
        Self {
            node: node.clone(),
            settings,
            saved,
            outlets: Kept::default(),
            inlets: Kept::default(),
        }
    }

    fn settings(&self) -> Result<SharedSettings> {
        self.settings
            .clone()
            .context("this node has no identity, so it cannot carry portals")
    }

    fn saved(&self) -> Result<&Saved> {
        self.saved
            .as_ref()
            .context("this node keeps no state, so it cannot keep portals")
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
        let settings = self.settings()?.get();
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
        let settings = self.settings()?;
        let policy = effective_policy(&settings.get(), config.allow.as_deref(), "inlet")?;
        let target = resolve_target(self.saved()?.home(), &config.to)
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
        let connector = PortalConnector::new(
            &self.node,
            settings,
            target.channels,
            target.route,
            policy.clone(),
            open_timeout,
        );
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
            refusals: k
                .inlet
                .as_ref()
                .map(|i| i.stats().refusals())
                .unwrap_or_default(),
        }
    }

    /// Create outlet `config`, serve it, and save it in the node's configuration.
    pub async fn outlet_create(&self, config: OutletConfig) -> Result<OutletView> {
        let change = self.outlets.change(&config.name).await;
        if change.current(|k| k.is_some()) {
            bail!(
                "node {} already has outlet {:?}; delete it first",
                self.node.name(),
                config.name
            );
        }
        let saved = self.saved()?;
        let kept = self.start_outlet(&config)?;
        let saving = saved.update(|c| {
            c.outlets.retain(|o| o.name != config.name);
            c.outlets.push(config.clone());
        });
        if let Err(e) = saving {
            kept.outlet.stop();
            return Err(e);
        }
        let view = self.outlet_view(&kept);
        change.set(kept);
        Ok(view)
    }

    /// The outlets the node serves.
    pub fn outlet_list(&self) -> Vec<OutletView> {
        self.outlets.map(|k| self.outlet_view(k))
    }

    /// Stop outlet `name` (closing its sessions) and forget it.
    pub async fn outlet_delete(&self, name: &str) -> Result<OutletView> {
        let change = self.outlets.change(name).await;
        let kept = change
            .take()
            .ok_or_else(|| anyhow!("node {} has no outlet {name:?}", self.node.name()))?;
        kept.outlet.stop();
        self.saved()?
            .update(|c| c.outlets.retain(|o| o.name != name))?;
        Ok(self.outlet_view(&kept))
    }

    /// Create inlet `config`, listen, and save it (with the bound port if it asked for 0).
    pub async fn inlet_create(&self, mut config: InletConfig) -> Result<InletView> {
        let from = listen_address(&config.from)?;
        config.from = from.to_string();
        if config.alias.is_empty() {
            config.alias = config.from.clone();
        }
        let mut change = self.inlets.change(&config.alias).await;
        if change.current(|k| k.is_some()) {
            bail!(
                "node {} already has inlet {:?}; delete it first",
                self.node.name(),
                config.alias
            );
        }
        let saved = self.saved()?;
        let mut kept = self.start_inlet(&config).await?;
        if let Some(inlet) = &kept.inlet
            && from.port() == 0
        {
            let bound = inlet.address().to_string();
            if config.alias == config.from {
                // Named after the port it got: claim that name too.
                config.alias = bound.clone();
                change = self.inlets.change(&config.alias).await;
            }
            config.from = bound;
            kept.config = config.clone();
        }
        if change.current(|k| k.is_some()) {
            if let Some(i) = &kept.inlet {
                i.stop();
            }
            bail!(
                "node {} already has inlet {:?}",
                self.node.name(),
                config.alias
            );
        }
        let saving = saved.update(|c| {
            c.inlets.retain(|i| i.alias != config.alias);
            c.inlets.push(config.clone());
        });
        if let Err(e) = saving {
            if let Some(i) = &kept.inlet {
                i.stop();
            }
            return Err(e);
        }
        let view = self.inlet_view(&kept);
        change.set(kept);
        Ok(view)
    }

    /// The inlets the node listens on.
    pub fn inlet_list(&self) -> Vec<InletView> {
        self.inlets.map(|k| self.inlet_view(k))
    }

    /// Stop inlet `alias` (closing its port and sessions) and forget it.
    pub async fn inlet_delete(&self, alias: &str) -> Result<InletView> {
        let change = self.inlets.change(alias).await;
        let kept = change
            .take()
            .ok_or_else(|| anyhow!("node {} has no inlet {alias:?}", self.node.name()))?;
        if let Some(i) = &kept.inlet {
            i.stop();
            // Its port is free when the answer comes, so the same port can be taken again.
            let _ = tokio::time::timeout(INLET_CLOSE_TIMEOUT, i.closed()).await;
        }
        self.saved()?
            .update(|c| c.inlets.retain(|i| i.alias != alias))?;
        Ok(self.inlet_view(&kept))
    }

    /// Serve the outlets and inlets of the node's configuration. One that cannot start is
    /// logged; an inlet stays listed with the reason, so `tcp-inlet list` shows it.
    pub(crate) async fn restore(&self, outlets: &[OutletConfig], inlets: &[InletConfig]) {
        for config in outlets {
            let change = self.outlets.change(&config.name).await;
            match self.start_outlet(config) {
                Ok(kept) => change.set(kept),
                Err(e) => {
                    warn!(outlet = %config.name, error = %format!("{e:#}"), "cannot serve a saved outlet")
                }
            }
        }
        for config in inlets {
            let change = self.inlets.change(&config.alias).await;
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
            change.set(kept);
        }
    }
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
    let allow = allow.map(super::settings::parse_allow).transpose()?;
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
             enroll it (`kith project enroll --at …`) or say who may use it with --allow"
        ),
    };
    Policy::parse(&text).map_err(|e| anyhow!("the {what}'s policy is too long: {e}"))
}

/// Bare `PORT` means loopback; otherwise an IP address and port.
pub fn listen_address(from: &str) -> Result<SocketAddr> {
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
pub fn check_target(to: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_inlet_creates_default_timeout_is_the_one_node_files_use() {
        use crate::commands::args::{Cli, Command, TcpInletCommand};
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["kith", "tcp-inlet", "create", "--from", "1", "--to", "/x"])
            .unwrap();
        let Command::TcpInlet(TcpInletCommand::Create { timeout, .. }) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(timeout, INLET_OPEN_TIMEOUT);
    }

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
