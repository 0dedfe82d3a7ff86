//! The command-line surface, as clap derives. Every command's `--help` ends with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Plain,
    /// One JSON document, for scripts.
    Json,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Plain)]
    pub output: OutputFormat,
    /// Print only the result (no progress, no hints).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace). KITH_LOG sets a filter.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No colors in output.
    #[arg(long, global = true)]
    pub no_color: bool,
}

const AFTER_MAIN: &str = "\
Examples:
  kith demo                                         see two nodes talk, step by step
  kith node create n1                               start a node daemon named n1
  kith message send hi --to /node/n1/service/echo   send a message to n1's echo service

State lives in $KITH_HOME (default ~/.kith).";

/// kith: private, authenticated networks of nodes.
#[derive(Debug, Parser)]
#[command(name = "kith", version, about, after_help = AFTER_MAIN)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect and control node daemons.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Send messages along routes.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Create and inspect identities: who a node is in secure channels.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Credentials an identity holds; issue, store or verify one by hand.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Open, list and close end-to-end secure channels kept by a node.
    #[command(subcommand, name = "secure-channel")]
    SecureChannel(SecureChannelCommand),
    /// Run a walkthrough in a temporary KITH_HOME: two nodes, a message between them.
    #[command(after_help = "Examples:\n  kith demo\n  kith demo --output json")]
    Demo,
    /// Print shell completions.
    #[command(
        after_help = "Examples:\n  kith completion bash > /etc/bash_completion.d/kith\n  kith completion zsh > ~/.zfunc/_kith"
    )]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `kith node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Create a node and start it as a daemon (or in the foreground).
    #[command(after_help = "\
Examples:
  kith node create n1
  kith node create n2 --tcp-listener-address 127.0.0.1:4000
  kith node create n3 --foreground          stays attached; Ctrl-C stops it
  kith node create n4 --identity alice      run as identity alice (see `kith identity`)")]
    Create(CreateNode),
    /// List nodes and whether they are running.
    #[command(after_help = "Examples:\n  kith node list\n  kith node list --output json")]
    List,
    /// Show a node: status, listener, services, connections.
    #[command(after_help = "Examples:\n  kith node show n1")]
    Show(NodeName),
    /// Stop a running node (it keeps its state; `kith node start` brings it back).
    #[command(
        after_help = "Examples:\n  kith node stop n1\n  kith node stop n1 --force     kill it if it does not stop in time"
    )]
    Stop(StopNode),
    /// Start a stopped node with its saved configuration and listener address.
    #[command(after_help = "Examples:\n  kith node start n1\n  kith node start n1 --foreground")]
    Start(StartNode),
    /// Stop and delete nodes and their state.
    #[command(after_help = "Examples:\n  kith node delete n1\n  kith node delete --all")]
    Delete(DeleteNode),
    /// Print a node's log.
    #[command(after_help = "Examples:\n  kith node logs n1\n  kith node logs n1 --tail 20")]
    Logs(NodeLogs),
    /// Run a node in this process (used by `create` and `start` to spawn daemons).
    #[command(hide = true)]
    Run(NodeName),
}

/// `kith node create`
#[derive(Debug, Args)]
pub struct CreateNode {
    /// Name of the node (letters, digits, '-', '_'); a random one if omitted.
    pub name: Option<String>,
    /// Address to listen on for TCP connections; port 0 picks a free port once, and the
    /// node keeps it across restarts.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub tcp_listener_address: String,
    /// Run in this process instead of as a daemon; Ctrl-C or SIGTERM stops it.
    #[arg(long)]
    pub foreground: bool,
    /// The identity the node runs as; default: the default identity (created if there is none).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Who may open a secure channel to this node.
    #[command(flatten)]
    pub admission: AdmissionArgs,
}

/// Who may open secure channels to a node, and whose credentials it accepts.
#[derive(Debug, Clone, Default, Args)]
pub struct AdmissionArgs {
    /// Admit only these identities to the node's secure-channel listener (repeatable).
    #[arg(
        long = "allow-identity",
        value_name = "IDENTIFIER",
        conflicts_with = "require_credential"
    )]
    pub allow_identity: Vec<String>,
    /// Admit only peers presenting a valid credential from a trusted authority.
    #[arg(long)]
    pub require_credential: bool,
    /// Trust credentials issued by this authority: an identity name in the vault, or the
    /// `changes_hex` of `kith identity show --full` (repeatable). The issuers of the node
    /// identity's own credentials are always trusted.
    #[arg(long = "trust-authority", value_name = "IDENTITY")]
    pub trust_authority: Vec<String>,
}

/// A node named on the command line.
#[derive(Debug, Args)]
pub struct NodeName {
    /// Name of the node.
    pub name: String,
}

/// `kith node stop`
#[derive(Debug, Args)]
pub struct StopNode {
    /// Name of the node.
    pub name: String,
    /// Kill the process if it has not stopped within the grace period.
    #[arg(long)]
    pub force: bool,
}

/// `kith node start`
#[derive(Debug, Args)]
pub struct StartNode {
    /// Name of the node.
    pub name: String,
    /// Run in this process instead of as a daemon.
    #[arg(long)]
    pub foreground: bool,
}

/// `kith node delete`
#[derive(Debug, Args)]
pub struct DeleteNode {
    /// Name of the node.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Delete every node.
    #[arg(long)]
    pub all: bool,
}

/// `kith node logs`
#[derive(Debug, Args)]
pub struct NodeLogs {
    /// Name of the node.
    pub name: String,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// `kith message …`
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Send a message and print the reply.
    #[command(after_help = "\
Examples:
  kith message send hello --to /node/n1/service/echo
  kith message send hello --from n1 --to /node/n2/service/echo
  kith message send hello --to /ip4/127.0.0.1/tcp/4000/service/echo --timeout 2s
  kith message send hello --to /dnsaddr/localhost/tcp/4000/service/echo --output json
  kith message send hello --from n1 --to /node/n2/secure/api/service/echo

Without --from, the command runs a node of its own for its duration. A /secure/LISTENER hop
opens an end-to-end secure channel to that listener first; the rest of the route travels
inside it, and the reply names the peer's identifier.")]
    Send(SendMessage),
}

/// `kith message send`
#[derive(Debug, Args)]
pub struct SendMessage {
    /// The message text.
    pub message: String,
    /// Where to send it, as a route: /node/NAME/service/S, /ip4/A/tcp/P/service/S, ….
    #[arg(long, value_name = "ROUTE")]
    pub to: String,
    /// Send from this running node instead of an embedded one.
    #[arg(long, value_name = "NODE")]
    pub from: Option<String>,
    /// How long to wait for the reply (ms, s, m, h, d; bare number = seconds).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Where `$KITH_HOME` points, resolved once.
pub fn kith_home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("KITH_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kith"))
}

/// `kith identity …`
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create an identity (the first one becomes the default).
    #[command(
        after_help = "Examples:\n  kith identity create alice\n  kith identity create --output json"
    )]
    Create {
        /// Name (letters, digits, '-', '_'); a random one if omitted.
        name: Option<String>,
    },
    /// List identities.
    #[command(after_help = "Examples:\n  kith identity list\n  kith identity list --output json")]
    List,
    /// Show an identity (the default one if no name is given).
    #[command(after_help = "Examples:\n  kith identity show\n  kith identity show alice --full")]
    Show {
        /// Name; the default identity if omitted.
        name: Option<String>,
        /// Also print the full key-change history, hex-encoded.
        #[arg(long)]
        full: bool,
    },
    /// Show the default identity, or make NAME the default.
    #[command(after_help = "Examples:\n  kith identity default\n  kith identity default alice")]
    Default {
        /// The identity to make the default.
        name: Option<String>,
    },
    /// Delete an identity and its keys (refused while a node uses it).
    #[command(after_help = "Examples:\n  kith identity delete alice")]
    Delete {
        /// Name.
        name: String,
    },
}

/// `kith secure-channel …`
#[derive(Debug, Subcommand)]
pub enum SecureChannelCommand {
    /// Open a channel from a node to a secure-channel listener and keep it; prints the
    /// channel's address, to start routes with.
    #[command(after_help = "\
Examples:
  kith secure-channel create --from n1 --to /node/n2/service/api
  kith secure-channel create --from n1 --to /ip4/127.0.0.1/tcp/4002/service/api
  kith message send hi --from n1 --to /service/sc-enc-0123456789abcdef/service/echo")]
    Create {
        /// The node that opens and keeps the channel.
        #[arg(long, value_name = "NODE")]
        from: String,
        /// Route to the listener (every node serves one at `api`).
        #[arg(long, value_name = "ROUTE")]
        to: String,
        /// How long the handshake may take.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the channels a node keeps.
    #[command(after_help = "Examples:\n  kith secure-channel list --from n1")]
    List {
        /// The node.
        #[arg(long, value_name = "NODE")]
        from: String,
    },
    /// Close a kept channel.
    #[command(
        after_help = "Examples:\n  kith secure-channel delete sc-enc-0123456789abcdef --from n1"
    )]
    Delete {
        /// The channel's address, as `create` or `list` printed it.
        address: String,
        /// The node.
        #[arg(long, value_name = "NODE")]
        from: String,
    },
}

/// Whose credentials a command looks at.
#[derive(Debug, Clone, Default, Args)]
pub struct HolderArgs {
    /// The identity; default: the default identity.
    #[arg(long, value_name = "NAME", conflicts_with = "node")]
    pub identity: Option<String>,
    /// The identity this node runs as.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
}

/// `kith credential …`
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// List the credentials an identity holds, and whether each is valid now.
    #[command(after_help = "\
Examples:
  kith credential list
  kith credential list --node db-node
  kith credential list --identity alice --output json")]
    List {
        /// Whose credentials.
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Show one credential: issuer, subject, attributes, validity.
    #[command(after_help = "\
Examples:
  kith credential show --node db-node
  kith credential show --identity alice --issuer I6c20e814b56579306f55c64e8747e6c1b4a53d9a
  kith credential show --encoded > credential.hex")]
    Show {
        /// Whose credential.
        #[command(flatten)]
        holder: HolderArgs,
        /// The issuer's identifier, when the identity holds credentials from several.
        #[arg(long, value_name = "IDENTIFIER")]
        issuer: Option<String>,
        /// Print only the encoded credential (hex).
        #[arg(long)]
        encoded: bool,
    },
    /// Verify credentials: an identity's own, or one given with --credential and --issuer.
    /// Exits non-zero if any does not verify.
    #[command(after_help = "\
Examples:
  kith credential verify --node db-node
  kith credential verify --credential @credential.hex --issuer authority
  kith credential verify --credential 8282… --issuer 81a2…   (issuer: `kith identity show NAME --full`)")]
    Verify {
        /// Whose credentials (when no --credential is given).
        #[command(flatten)]
        holder: HolderArgs,
        /// A credential, hex or @FILE.
        #[arg(long, value_name = "HEX|@FILE", requires = "issuer")]
        credential: Option<String>,
        /// The identity that issued it: a vault identity name, or its `changes_hex`.
        #[arg(long, value_name = "IDENTITY")]
        issuer: Option<String>,
    },
    /// Issue a credential by hand, signed by one of your identities, and print it (hex).
    /// Authorities do this on enrollment; this is for tests and small setups.
    #[command(after_help = "\
Examples:
  kith credential issue --as authority --for I6c20e814b56579306f55c64e8747e6c1b4a53d9a -a role=db
  kith credential issue --for I6c20e814b56579306f55c64e8747e6c1b4a53d9a --ttl 1h > credential.hex")]
    Issue {
        /// The issuing identity; default: the default identity.
        #[arg(long = "as", value_name = "NAME")]
        as_identity: Option<String>,
        /// The identifier of the identity the credential is about.
        #[arg(long = "for", value_name = "IDENTIFIER")]
        subject: String,
        /// An attribute, key=value (repeatable).
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = crate::credentials::parse_attribute)]
        attributes: Vec<(String, String)>,
        /// How long it is valid (ms, s, m, h, d; bare number = seconds).
        #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Store a credential for an identity, after verifying it against its issuer.
    #[command(after_help = "\
Examples:
  kith credential store --identity alice --issuer authority --credential @credential.hex
  kith credential store --node n1 --issuer 81a2… --credential 8282…")]
    Store {
        /// Whose credential.
        #[command(flatten)]
        holder: HolderArgs,
        /// The identity that issued it: a vault identity name, or its `changes_hex`.
        #[arg(long, value_name = "IDENTITY")]
        issuer: String,
        /// The credential, hex or @FILE.
        #[arg(long, value_name = "HEX|@FILE")]
        credential: String,
    },
}
