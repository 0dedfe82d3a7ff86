//! `kith message send`, and resolving command-line routes against local nodes.

use anyhow::{Context as _, Result, bail};

use super::args::SendMessage;
use super::output::Output;
use crate::control::{self, ChannelSpec, Request, SendReply, running_socket};
use crate::home::Home;
use crate::home::routes::resolve_target;
use crate::node::{RunningNode, channel_settings};

/// `kith message send`
pub async fn send(home: &Home, out: &Output, mut args: SendMessage) -> Result<()> {
    if args.message == "-" {
        args.message = read_stdin()?;
    }
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
            let reply = node.channels.send(target, args.message, args.timeout).await;
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

/// The message from standard input, whole: for text too large for a command line.
fn read_stdin() -> Result<String> {
    use std::io::Read as _;
    let mut message = String::new();
    std::io::stdin()
        .read_to_string(&mut message)
        .context("cannot read the message from standard input (it must be UTF-8 text)")?;
    Ok(message)
}
