//! The command line: one module per command group. Each parses its arguments, calls a node
//! (a daemon over its control socket, or a node embedded for the command's duration) and
//! prints the answer; protocol logic lives in the library crates and the node host.

mod apply;
pub mod args;
mod authority;
mod channels;
mod credentials;
mod demo;
pub mod flags;
mod identities;
mod message;
mod nodes;
pub mod output;
mod portals;
mod projects;
mod reach;
mod relays;
mod requests;
mod status;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::home::Home;
use args::{Cli, Command, MessageCommand, NodeCommand, kith_home};
use output::Output;

fn home() -> Result<Home> {
    let root = kith_home().context("cannot find a state directory: set KITH_HOME or HOME")?;
    Home::open(root)
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let out = Output::new(&cli.global);
    match cli.command {
        Command::Node(cmd) => {
            let home = home()?;
            match cmd {
                NodeCommand::Create(a) => nodes::create(&home, &out, a).await,
                NodeCommand::List => nodes::list(&home, &out).await,
                NodeCommand::Show(a) => nodes::show(&home, &out, &a.name).await,
                NodeCommand::Stop(a) => nodes::stop(&home, &out, a).await,
                NodeCommand::Start(a) => nodes::start(&home, &out, a).await,
                NodeCommand::Delete(a) => nodes::delete(&home, &out, a).await,
                NodeCommand::Logs(a) => nodes::logs(&home, a),
                NodeCommand::Run(a) => {
                    crate::node::run(&home, &a.name, |ready| {
                        // The spawning command reads this one line; nothing else goes to stdout.
                        if let Ok(line) = serde_json::to_string(ready) {
                            println!("{line}");
                        }
                    })
                    .await
                    .map(|_| ())
                }
            }
        }
        Command::Message(MessageCommand::Send(a)) => message::send(&home()?, &out, a).await,
        Command::Identity(cmd) => identities::run(&home()?, &out, cmd).await,
        Command::Authority(cmd) => match *cmd {
            args::AuthorityCommand::Create(a) => authority::create(&home()?, &out, a).await,
        },
        Command::Project(cmd) => projects::run(&home()?, &out, cmd).await,
        Command::Credential(cmd) => credentials::run(&home()?, &out, cmd).await,
        Command::SecureChannel(cmd) => channels::run(&home()?, &out, cmd).await,
        Command::Relay(cmd) => relays::run(&home()?, &out, cmd).await,
        Command::TcpOutlet(cmd) => portals::run_outlet(&home()?, &out, cmd).await,
        Command::TcpInlet(cmd) => portals::run_inlet(&home()?, &out, cmd).await,
        Command::Demo => demo::run(&out).await,
        Command::Status => status::run(&home()?, &out).await,
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kith", &mut script);
            write_stdout(&script)
        }
    }
}

/// Ctrl-C ended the command: `main` exits 130, as shells expect of an interrupted program.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Set once a write to standard output found its reader gone.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Write `bytes` to standard output; a reader that has gone (`kith completion zsh | head`)
/// is not an error, and is remembered ([`stdout_closed`]).
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        other => other.context("cannot write to standard output"),
    }
}

/// Whether standard output's reader has gone.
fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the command runs a long-lived node in this process.
pub fn runs_a_node(cli: &Cli) -> bool {
    matches!(
        &cli.command,
        Command::Node(NodeCommand::Run(_))
            | Command::Node(NodeCommand::Create(args::CreateNode {
                foreground: true,
                ..
            }))
            | Command::Node(NodeCommand::Start(args::StartNode {
                foreground: true,
                ..
            }))
    )
}
