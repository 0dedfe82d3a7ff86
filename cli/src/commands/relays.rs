//! `kith relay …`: relays a node keeps up at its project node, so that nodes which accept no
//! connections can be reached through it (DESIGN §5, §6).
//!
//! The node daemon does the keeping (`kith_authority::keeper`); these commands ask it over
//! its control socket. `--at` commands talk to the project node directly, from an embedded
//! node, as the default identity: how an admin lists all relays or frees a name.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_authority::client::{AuthorityClient, ClientError};
use kith_authority::keeper::RelayState;
use kith_authority::relay::{RelayInfo, check_relay_name};
use kith_identity::unix_now;
use kith_transport::MultiAddr;

use super::args::RelayCommand;
use super::output::Output;
use super::reach::{Reach, Session};
use crate::control::{self, NodeState, RelayView, Request, probe, running_socket};
use crate::duration::{ago, unix_time};
use crate::home::Home;
use crate::home::routes::resolve_at;
use crate::node::{RELAY_TIMEOUT, refused};

impl RelayView {
    pub(crate) fn line(&self, now: u64) -> String {
        let state = match &self.status.state {
            RelayState::Up { since } => format!("up since {}", ago(*since, now)),
            RelayState::Reconnecting { since, attempts } => {
                format!(
                    "down since {}, reconnecting ({attempts} attempts)",
                    ago(*since, now)
                )
            }
        };
        let mut line = format!(
            "{}  {state}  node {} at {}  route {}",
            self.status.name, self.node, self.at, self.route
        );
        if let Some((at, error)) = &self.status.last_error {
            line.push_str(&format!("\n    last error ({}): {error}", ago(*at, now)));
        }
        line
    }
}

/// `--at` as the relay keeps it: `/project/NAME`, the default project if none is given.
fn normalize_at(home: &Home, at: Option<&str>) -> Result<String> {
    let name = match at {
        None => crate::home::projects::load_project_or_default(home, None, "--project NAME")?.name,
        Some(text) => {
            let m: MultiAddr = text
                .parse()
                .with_context(|| format!("--at {text:?} is not a route"))?;
            let name = m.project().ok_or_else(|| {
                anyhow!(
                    "--at takes a project, /project/NAME (see `kith project list`), not {text:?}"
                )
            })?;
            if m.protocols().len() != 1 {
                bail!("--at is the project alone, /project/{name}, without more hops");
            }
            crate::home::projects::load_project(home, name)?.name
        }
    };
    Ok(format!("/project/{name}"))
}

/// What `--at` (and its old spelling `--to`) says: the local node, and the project node's
/// route when `--at` is one (`/project/NAME`, what `--at` meant for relays before).
fn node_or_route(
    at: Option<String>,
    to: Option<String>,
) -> Result<(Option<String>, Option<String>)> {
    match at {
        Some(route) if route.starts_with('/') => Ok((to, Some(route))),
        Some(node) if to.is_some() => {
            bail!("--at {node:?} and --to both name the node; give it once, with --at NODE")
        }
        Some(node) => Ok((Some(node), None)),
        None => Ok((to, None)),
    }
}

/// Run a relay command.
pub async fn run(home: &Home, out: &Output, cmd: RelayCommand) -> Result<()> {
    match cmd {
        RelayCommand::Create {
            name,
            at,
            to,
            project,
            timeout,
            keep_on_failure,
        } => {
            let (to, route) = node_or_route(at, to)?;
            let route = match (project, route) {
                (Some(_), Some(route)) => bail!(
                    "--project and --at {route:?} both name the project; give it once, with --project NAME"
                ),
                (Some(project), None) => Some(format!(
                    "/project/{}",
                    crate::home::projects::load_project(home, &project)
                        .with_context(|| format!("--project {project:?}"))?
                        .name
                )),
                (None, route) => route,
            };
            let to = match to {
                Some(to) => to,
                None => only_member_node(home, "--at").await?,
            };
            let name = name.unwrap_or_else(|| to.clone());
            // The error describes the name without repeating it: it may be 10 KB of anything.
            check_relay_name(&name)?;
            let at = normalize_at(home, route.as_deref())?;
            let socket = running_socket(home, &to).await?;
            let spinner = out.spinner(format!("creating relay {name} at {at}"));
            let request = Request::RelayCreate {
                name: name.clone(),
                at: at.clone(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                keep_on_failure,
            };
            let answer =
                control::call(&socket, &request, timeout * 2 + Duration::from_secs(2)).await;
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let view: RelayView =
                serde_json::from_value(answer?).context("unexpected answer from the node")?;
            // The node answers success only for a registration confirmed in this call; a
            // view that is not up anyway is not reported as up.
            if !matches!(view.status.state, RelayState::Up { .. }) {
                bail!(
                    "node {to} answered that relay {name} is not up: {}",
                    view.line(unix_now())
                );
            }
            out.result(
                || {
                    format!(
                        "Relay {name} is up: node {to} is reachable at {route}.\nTry: kith message send hi --to {route}/secure/api/service/echo",
                        route = view.route
                    )
                },
                &view,
            );
        }
        RelayCommand::List { at, to } => match node_or_route(at, to)? {
            (Some(node), Some(route)) => bail!(
                "--at {route:?} asks the project node, --to {node:?} a local one; give one of them"
            ),
            (None, Some(at)) => list_at_project_node(home, out, &at).await?,
            (to, None) => list_kept(home, out, to.as_deref()).await?,
        },
        RelayCommand::Show { name, at, to } => {
            let (to, route) = node_or_route(at, to)?;
            if let Some(route) = route {
                bail!(
                    "--at takes the node that keeps the relay, not {route:?}; to see what a project node holds, use `kith relay list --at {route}`"
                );
            }
            let view = find(home, &name, to.as_deref()).await?;
            let now = unix_now();
            out.result(|| view.line(now), &view);
        }
        RelayCommand::Delete { name, at, to } => match node_or_route(at, to)? {
            (Some(node), Some(route)) => bail!(
                "--at {route:?} deletes at the project node, --to {node:?} through a local one; give one of them"
            ),
            (None, Some(at)) => delete_at_project_node(home, out, &name, &at).await?,
            (to, None) => delete_kept(home, out, &name, to.as_deref()).await?,
        },
    }
    Ok(())
}

/// `relay delete NAME --at /project/NAME`: as an admin (or the owner), at the project node.
async fn delete_at_project_node(home: &Home, out: &Output, name: &str, at: &str) -> Result<()> {
    let at = normalize_at(home, Some(at))?;
    let info = at_project_node(home, out, &at, async |c| c.delete_relay(name).await).await?;
    out.result(
        || {
            format!(
                "Deleted relay {} (owner {}) at {at}.",
                info.name, info.owner
            )
        },
        &info,
    );
    Ok(())
}

/// `relay delete NAME [--at NODE]`: the node that keeps it stops, and frees the name.
async fn delete_kept(home: &Home, out: &Output, name: &str, to: Option<&str>) -> Result<()> {
    let view = find(home, name, to).await?;
    let socket = running_socket(home, &view.node).await?;
    let request = Request::RelayDelete {
        name: name.to_owned(),
    };
    let v = control::call(&socket, &request, RELAY_TIMEOUT * 2).await?;
    let view: RelayView = serde_json::from_value(v).context("unexpected answer from the node")?;
    out.result(
        || {
            format!(
                "Node {} no longer keeps relay {name}; at the project node: {}.",
                view.node,
                view.deleted_at_project_node.as_deref().unwrap_or("unknown")
            )
        },
        &view,
    );
    Ok(())
}

/// `relay list --at /project/NAME`: what the project node holds that we may see.
async fn list_at_project_node(home: &Home, out: &Output, at: &str) -> Result<()> {
    let at = normalize_at(home, Some(at))?;
    let all = at_project_node(home, out, &at, async |c| c.list_relays().await).await?;
    out.result(
        || {
            if all.is_empty() {
                return format!("The project node at {at} holds no relays you may see.");
            }
            all.iter()
                .map(|r| info_line(r, &at))
                .collect::<Vec<_>>()
                .join("\n")
        },
        &all,
    );
    Ok(())
}

/// `relay list [--at NODE]`: the relays local nodes keep.
async fn list_kept(home: &Home, out: &Output, to: Option<&str>) -> Result<()> {
    let all = kept(home, to).await?;
    let now = unix_now();
    out.result(
        || {
            if all.is_empty() {
                return "No local node keeps a relay; create one with `kith relay create NAME --at NODE`.".to_owned();
            }
            all.iter()
                .map(|v| v.line(now))
                .collect::<Vec<_>>()
                .join("\n")
        },
        &all,
    );
    Ok(())
}

fn info_line(r: &RelayInfo, at: &str) -> String {
    format!(
        "{}  owner {}  route {at}/service/{}  created {}",
        r.name,
        r.owner,
        r.address,
        unix_time(r.created_at)
    )
}

/// The one running local node that is not an authority's, for commands given no node.
/// `choose_with` is the calling command's flag for the node, for the hint when there are
/// several.
pub(crate) async fn only_member_node(home: &Home, choose_with: &str) -> Result<String> {
    let mut found = Vec::new();
    for name in home.node_names()? {
        if home.load_node(&name)?.authority.is_some() {
            continue;
        }
        if let NodeState::Running(_) = probe(home, &name).await {
            found.push(name);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no local node is running to relay to; create one with `kith node create`"),
        _ => bail!(
            "several nodes are running ({}); choose one with {choose_with} NODE",
            found.join(", ")
        ),
    }
}

/// The relays kept by node `to`, or by every running local node.
pub(crate) async fn kept(home: &Home, to: Option<&str>) -> Result<Vec<RelayView>> {
    let nodes = match to {
        Some(n) => {
            running_socket(home, n).await?;
            vec![n.to_owned()]
        }
        None => home.node_names()?,
    };
    let mut all = Vec::new();
    for node in nodes {
        if let NodeState::Stopped { .. } = probe(home, &node).await {
            continue;
        }
        let v = control::call(
            &home.socket_path(&node),
            &Request::RelayList,
            control::STATUS_TIMEOUT,
        )
        .await
        .with_context(|| format!("node {node:?}"))?;
        let views: Vec<RelayView> =
            serde_json::from_value(v).context("unexpected answer from the node")?;
        all.extend(views);
    }
    Ok(all)
}

/// Relay `name` as the node that keeps it (`to`, or any running local node) reports it.
async fn find(home: &Home, name: &str, to: Option<&str>) -> Result<RelayView> {
    kept(home, to)
        .await?
        .into_iter()
        .find(|v| v.status.name == name)
        .ok_or_else(|| match to {
            Some(n) => anyhow!("node {n:?} keeps no relay {name:?}; see `kith relay list`"),
            None => anyhow!("no running local node keeps a relay {name:?}; see `kith relay list`"),
        })
}

/// Make one call to the project node at `at` from an embedded node, as the default identity.
async fn at_project_node<T>(
    home: &Home,
    out: &Output,
    at: &str,
    call: impl AsyncFnOnce(&mut AuthorityClient) -> Result<T, ClientError>,
) -> Result<T> {
    let (listener, project_node) = resolve_at(home, at).await?;
    let reach = Reach::project_node(listener, project_node, RELAY_TIMEOUT);
    Session::open(home, out, &reach)
        .await?
        .call(call)
        .await
        .map_err(refused)
}
