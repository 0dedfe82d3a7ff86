//! `kith tcp-outlet …` and `kith tcp-inlet …`: TCP portals kept by a node daemon (DESIGN §3,
//! §6). The daemon does the keeping (`crate::node`); these commands ask it over its control
//! socket, checking what they can before they do.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;

use super::args::{TcpInletCommand, TcpOutletCommand};
use super::output::Output;
use crate::control::{self, InletView, NodeState, OutletView, Request, probe, running_socket};
use crate::home::{Home, InletConfig, OutletConfig};
use crate::node::{check_target, listen_address, parse_allow};

impl OutletView {
    pub(crate) fn line(&self) -> String {
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

impl InletView {
    /// The line, then why sessions were refused: by class, and the last reason.
    fn detail(&self) -> String {
        let mut shown = self.line();
        if !self.refusals.by_class.is_empty() {
            let classes: Vec<String> = self
                .refusals
                .by_class
                .iter()
                .map(|(class, n)| format!("{class} {n}"))
                .collect();
            shown.push_str(&format!("\nrefused by class: {}", classes.join(", ")));
        }
        if let Some(last) = &self.refusals.last {
            shown.push_str(&format!(
                "\nlast refusal ({}, {}): {}",
                last.class,
                crate::duration::ago(last.at, kith_identity::unix_now()),
                super::output::clean(&last.reason)
            ));
        }
        shown
    }

    pub(crate) fn line(&self) -> String {
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
pub(crate) async fn gather<T: for<'de> Deserialize<'de>>(
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
        None => super::relays::only_member_node(home, "--at").await,
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
                parse_allow(text)?;
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
                parse_allow(text)?;
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
            out.result(|| view.detail(), &view);
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
