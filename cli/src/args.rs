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
    #[command(
        subcommand,
        after_help = "Examples:\n  kith node create n1\n  kith node list\n  kith node logs n1 --tail 20"
    )]
    Node(NodeCommand),
    /// Send messages along routes.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith message send hello --to /node/n1/service/echo\n  kith message send hi --from n2 --to /node/n1/secure/api/service/echo"
    )]
    Message(MessageCommand),
    /// Create and inspect identities: who a node is in secure channels.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith identity create alice\n  kith identity list"
    )]
    Identity(IdentityCommand),
    /// Create a project's authority: the node that enrolls members and issues credentials.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith authority create --project acme"
    )]
    Authority(Box<AuthorityCommand>),
    /// Projects: tickets, enrollment, members, audit log.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith project ticket --relay db > db.ticket\n  kith project enroll --ticket-file db.ticket --node db-node\n  kith project member list"
    )]
    Project(ProjectCommand),
    /// Credentials an identity holds; issue, store or verify one by hand.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith credential list\n  kith credential show --node db-node"
    )]
    Credential(CredentialCommand),
    /// Open, list and close end-to-end secure channels kept by a node.
    #[command(
        subcommand,
        name = "secure-channel",
        after_help = "Examples:\n  kith secure-channel create --from n1 --to /node/n2/service/api\n  kith secure-channel list --from n1"
    )]
    SecureChannel(SecureChannelCommand),
    /// Relays: make a node that accepts no connections reachable through the project node.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith relay create db --to db-node\n  kith relay show db\n  kith relay list --at /project/acme"
    )]
    Relay(RelayCommand),
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
    /// Who may use the node's services (echo, …) through a secure channel: a policy over
    /// the peer's attributes and identifier, e.g. 'component = "web"'. Default: anyone.
    #[arg(long, value_name = "POLICY")]
    pub allow: Option<String>,
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

/// `kith relay …`
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Create a relay at the project node towards a node, and keep it up: anyone in the
    /// project may then reach the node at /project/P/service/forward_to_NAME, through an
    /// end-to-end secure channel. Needs a credential with ockam-relay=NAME (a ticket made
    /// with --relay NAME), or to be an admin.
    #[command(after_help = "\
Examples:
  kith project ticket --relay db > db.ticket          # an admin
  kith project enroll --ticket-file db.ticket --node db-node
  kith relay create db --to db-node
  kith message send hi --to /project/acme/service/forward_to_db/secure/api/service/echo")]
    Create {
        /// The relay's name; default: the node's name.
        name: Option<String>,
        /// The node to relay to (it keeps the relay up, across restarts); default: the one
        /// running local node that is not an authority, if there is exactly one.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
        /// The project node to create it at: /project/NAME; default: the default project.
        #[arg(long, value_name = "ROUTE")]
        at: Option<String>,
        /// How long reaching the project node may take.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the relays local nodes keep, with their state; with --at, the relays the
    /// project node holds (all of them for an admin, your own otherwise).
    #[command(after_help = "\
Examples:
  kith relay list
  kith relay list --to db-node --output json
  kith relay list --at /project/acme")]
    List {
        /// Only this node's relays.
        #[arg(long, value_name = "NODE", conflicts_with = "at")]
        to: Option<String>,
        /// Ask the project node instead.
        #[arg(long, value_name = "ROUTE")]
        at: Option<String>,
    },
    /// Show a relay's state: up since when, or reconnecting since when, and its last error.
    #[command(
        after_help = "Examples:\n  kith relay show db\n  kith relay show db --to db-node --output json"
    )]
    Show {
        /// The relay's name.
        name: String,
        /// The node that keeps it; default: whichever local node does.
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// Delete a relay: the node stops keeping it, and the project node frees its name. An
    /// admin frees a name held by someone else with --at.
    #[command(after_help = "\
Examples:
  kith relay delete db
  kith relay delete db --at /project/acme     # an admin, for a relay of another node")]
    Delete {
        /// The relay's name.
        name: String,
        /// The node that keeps it; default: whichever local node does.
        #[arg(long, value_name = "NODE", conflicts_with = "at")]
        to: Option<String>,
        /// Delete it at the project node as an admin (or its owner), with no local node.
        #[arg(long, value_name = "ROUTE")]
        at: Option<String>,
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

/// `kith authority …`
#[derive(Debug, Subcommand)]
pub enum AuthorityCommand {
    /// Create a project and start its authority node (a daemon, like `kith node create`).
    /// The project's description is saved so that `kith project ticket` works at once.
    #[command(after_help = "\
Examples:
  kith authority create --project acme --tcp-listener-address 127.0.0.1:4000
  kith authority create auth2 --project acme2 --admin I6c20e814b56579306f55c64e8747e6c1b4a53d9a
  kith authority create --project acme --database-url postgres://kith:kith@127.0.0.1/acme
  kith authority create --project acme --credential-ttl 7d")]
    Create(CreateAuthority),
}

/// `kith authority create`
#[derive(Debug, Args)]
pub struct CreateAuthority {
    /// Name of the authority node; default: "authority".
    #[arg(default_value = "authority")]
    pub name: String,
    /// The project's name (letters, digits, '-', '_').
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub project: String,
    /// Address to listen on (members reach the project here).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "HOST:PORT")]
    pub tcp_listener_address: String,
    /// An admin's identifier (repeatable); default: the identity creating the authority.
    #[arg(long = "admin", value_name = "IDENTIFIER")]
    pub admins: Vec<String>,
    /// Where members are kept: postgres://USER:PASS@HOST/DB, or an SQLite file in the node's
    /// directory if omitted.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// How long credentials last (ms, s, m, h, d; bare number = seconds).
    #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub credential_ttl: std::time::Duration,
    /// The identity the authority runs as (and signs credentials with); default: a new
    /// identity named after the node.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Use this id for the project (32 hex digits) instead of a new one: for a second
    /// authority node sharing a PostgreSQL database with the first.
    #[arg(long, value_name = "ID", requires = "database_url")]
    pub project_id: Option<String>,
    /// Run in this process instead of as a daemon.
    #[arg(long)]
    pub foreground: bool,
}

/// How to reach a project's authority, and as whom.
#[derive(Debug, Clone, Default, Args)]
pub struct ProjectAccess {
    /// Run the command as this identity; default: the default identity.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// The project; default: the default project.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// The authority's identity (hex key history, as `kith identity show --full` prints),
    /// instead of the project's.
    #[arg(long, value_name = "IDENTITY", requires = "authority_route")]
    pub authority_identity: Option<String>,
    /// The route to the authority node, e.g. /ip4/127.0.0.1/tcp/4000, instead of the project's.
    #[arg(long, value_name = "ROUTE", requires = "authority_identity")]
    pub authority_route: Option<String>,
    /// Present only the stored credential whose project_id is this (default: all valid ones).
    #[arg(long, value_name = "SCOPE")]
    pub credential_scope: Option<String>,
    /// Retry this many times if the authority cannot be reached [env: KITH_RETRY_COUNT].
    #[arg(long, value_name = "N")]
    pub retry_count: Option<u32>,
    /// Wait this long between retries [env: KITH_RETRY_DELAY; default 1s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub retry_delay: Option<std::time::Duration>,
    /// Never retry, whatever the options or environment say.
    #[arg(long)]
    pub no_retry: bool,
    /// How long to wait for the authority, per attempt.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub timeout: std::time::Duration,
}

/// `kith project …`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Show a project's description (the default project if none is named).
    #[command(
        after_help = "Examples:\n  kith project show\n  kith project show acme --output json"
    )]
    Show {
        /// The project.
        name: Option<String>,
    },
    /// List the projects known here.
    #[command(after_help = "Examples:\n  kith project list")]
    List,
    /// Import a project description (from `kith project export`), to reach and trust it.
    #[command(
        after_help = "Examples:\n  kith project import acme.json\n  kith project import - < acme.json"
    )]
    Import {
        /// The file, or - for standard input.
        file: String,
        /// Make it the default project.
        #[arg(long)]
        default: bool,
    },
    /// Print a project's description, for members and admins to import.
    #[command(after_help = "Examples:\n  kith project export acme > acme.json")]
    Export {
        /// The project; default: the default project.
        name: Option<String>,
    },
    /// Create an enrollment ticket (admins and enrollers), or list and revoke tickets.
    #[command(after_help = "\
Examples:
  kith project ticket --attribute component=db --attribute location=sf > ticket.txt
  kith project ticket --relay db --expires-in 1h --usage-count 5
  kith project ticket --enroller --hex
  kith project ticket list
  kith project ticket revoke 3f9a1c2b7d4e

The ticket alone goes to standard output, so `> ticket.txt` or `T=$(kith project ticket)`
captures it. Durations take ms, s, m, h, d; a bare number is seconds.")]
    Ticket(Box<TicketArgs>),
    /// Enroll an identity in a project with a ticket: it becomes a member and gets a credential.
    #[command(after_help = "\
Examples:
  kith project enroll --ticket-file ticket.txt --node db-node
  kith project enroll \"$TICKET\"
  KITH_ENROLLMENT_TICKET=$(cat ticket.txt) kith project enroll --identity alice
  kith project ticket | kith project enroll -")]
    Enroll(Box<EnrollArgs>),
    /// List, show, add and delete members (admins; enrollers may list and show).
    #[command(
        subcommand,
        after_help = "Examples:\n  kith project member list\n  kith project member add I6c20e814b56579306f55c64e8747e6c1b4a53d9a -a role=db"
    )]
    Member(MemberCommand),
    /// Read the project's audit log (admins).
    #[command(
        after_help = "Examples:\n  kith project audit\n  kith project audit --limit 20 --output json"
    )]
    Audit {
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
        /// At most this many of the newest entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `kith project ticket`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TicketArgs {
    /// `list` or `revoke`; without one, a new ticket is created.
    #[command(subcommand)]
    pub command: Option<TicketCommand>,
    /// How to reach the authority.
    #[command(flatten)]
    pub access: ProjectAccess,
    /// An attribute for the member, key=value (repeatable).
    #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = crate::credentials::parse_attribute)]
    pub attributes: Vec<(String, String)>,
    /// How long the ticket stays valid.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub expires_in: std::time::Duration,
    /// How many identities may enroll with it.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub usage_count: u32,
    /// Let the member create the relay NAME (--attribute ockam-relay=NAME).
    #[arg(long, value_name = "NAME")]
    pub relay: Option<String>,
    /// Make the member an enroller (--attribute ockam-role=enroller); admins only.
    #[arg(long)]
    pub enroller: bool,
    /// Give the member the project's TLS certificate (--attribute ockam-tls-certificate=true).
    #[arg(long)]
    pub tls: bool,
    /// Print the ticket hex-encoded.
    #[arg(long, conflicts_with = "legacy")]
    pub hex: bool,
    /// Print the ticket in the legacy encoding (hex of JSON).
    #[arg(long)]
    pub legacy: bool,
}

/// `kith project ticket list|revoke`
#[derive(Debug, Subcommand)]
pub enum TicketCommand {
    /// List the project's tickets (no codes).
    #[command(
        after_help = "Examples:\n  kith project ticket list\n  kith project ticket list --output json"
    )]
    List {
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Show what a ticket says (project, authority, attributes, expiry) without using it.
    #[command(
        after_help = "Examples:\n  kith project ticket show --ticket-file ticket.txt\n  kith project ticket show \"$TICKET\" --output json"
    )]
    Show {
        /// The ticket (any encoding), or - for standard input. Default: --ticket-file, then
        /// KITH_ENROLLMENT_TICKET.
        #[arg(value_name = "TICKET")]
        ticket: Option<String>,
        /// Read the ticket from this file.
        #[arg(long, value_name = "FILE", conflicts_with = "ticket")]
        ticket_file: Option<PathBuf>,
    },
    /// Revoke a ticket so that it enrolls nobody more.
    #[command(after_help = "Examples:\n  kith project ticket revoke 3f9a1c2b7d4e")]
    Revoke {
        /// The ticket's id, as `list` shows it.
        id: String,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
}

/// `kith project enroll`
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The ticket (any encoding), or - to read it from standard input. Default:
    /// --ticket-file, then KITH_ENROLLMENT_TICKET.
    #[arg(value_name = "TICKET")]
    pub ticket: Option<String>,
    /// Read the ticket from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "ticket")]
    pub ticket_file: Option<PathBuf>,
    /// Enroll this identity; default: the default identity.
    #[arg(long, value_name = "NAME", conflicts_with = "node")]
    pub identity: Option<String>,
    /// Enroll the identity this node runs as (a running node starts presenting the credential).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// How long to wait for the authority.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub timeout: std::time::Duration,
    /// Retry this many times if the authority cannot be reached [env: KITH_RETRY_COUNT].
    #[arg(long, value_name = "N")]
    pub retry_count: Option<u32>,
    /// Wait this long between retries [env: KITH_RETRY_DELAY; default 1s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub retry_delay: Option<std::time::Duration>,
    /// Never retry.
    #[arg(long)]
    pub no_retry: bool,
}

/// `kith project member …`
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List members.
    #[command(
        after_help = "Examples:\n  kith project member list\n  kith project member list --output json"
    )]
    List {
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Show a member.
    #[command(
        after_help = "Examples:\n  kith project member show I6c20e814b56579306f55c64e8747e6c1b4a53d9a"
    )]
    Show {
        /// The member's identifier.
        identifier: String,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Add a member directly, with attributes (admins).
    #[command(
        after_help = "Examples:\n  kith project member add I6c20e814b56579306f55c64e8747e6c1b4a53d9a -a role=db"
    )]
    Add {
        /// The member's identifier.
        identifier: String,
        /// An attribute, key=value (repeatable).
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = crate::credentials::parse_attribute)]
        attributes: Vec<(String, String)>,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Delete a member: the authority issues it no more credentials (admins).
    #[command(
        after_help = "Examples:\n  kith project member delete I6c20e814b56579306f55c64e8747e6c1b4a53d9a"
    )]
    Delete {
        /// The member's identifier.
        identifier: String,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
}
