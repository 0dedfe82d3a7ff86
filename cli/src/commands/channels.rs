//! `kith secure-channel …`: channels a running node opens and keeps.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::args::SecureChannelCommand;
use super::output::Output;
use crate::control::{self, ChannelView, Request, running_socket};
use crate::home::Home;
use crate::home::routes::resolve_target;

fn describe(c: &ChannelView) -> String {
    format!(
        "/service/{}  to {} at {} (verification code {})",
        c.address, c.peer, c.to, c.verification_code
    )
}

/// Run a secure-channel command.
pub async fn run(home: &Home, out: &Output, cmd: SecureChannelCommand) -> Result<()> {
    match cmd {
        SecureChannelCommand::Create { from, to, timeout } => {
            let target = resolve_target(home, &to).await?;
            if !target.channels.is_empty() {
                bail!(
                    "--to is the route to a listener, e.g. /node/n2/service/api, without /secure/"
                );
            }
            let socket = running_socket(home, &from).await?;
            let request = Request::ChannelCreate {
                to: target.route.iter().map(ToString::to_string).collect(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            };
            let v = control::call(&socket, &request, timeout + Duration::from_secs(2)).await?;
            let c: ChannelView =
                serde_json::from_value(v).context("unexpected answer from the node")?;
            out.result(|| format!("/service/{}", c.address), &c);
            out.note(format!(
                "(to {} at {}, verification code {}; route through it with /service/{}/service/NAME)",
                c.peer, c.to, c.verification_code, c.address
            ));
        }
        SecureChannelCommand::List { from } => {
            let socket = running_socket(home, &from).await?;
            let v = control::call(&socket, &Request::ChannelList, control::STATUS_TIMEOUT).await?;
            let all: Vec<ChannelView> =
                serde_json::from_value(v).context("unexpected answer from the node")?;
            out.result(
                || {
                    if all.is_empty() {
                        return format!("Node {from} keeps no secure channels.");
                    }
                    all.iter().map(describe).collect::<Vec<_>>().join("\n")
                },
                &all,
            );
        }
        SecureChannelCommand::Delete { address, from } => {
            let socket = running_socket(home, &from).await?;
            let address = address.trim_start_matches("/service/").to_owned();
            let v = control::call(
                &socket,
                &Request::ChannelDelete { address },
                control::STATUS_TIMEOUT,
            )
            .await?;
            let c: ChannelView =
                serde_json::from_value(v).context("unexpected answer from the node")?;
            out.result(|| format!("Closed /service/{}.", c.address), &c);
        }
    }
    Ok(())
}
