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
        after_help = "Examples:\n  kith message send hello --to /node/n1/service/echo\n  kith message send hi --at n2 --to /node/n1/secure/api/service/echo"
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
        after_help = "Examples:\n  kith project ticket --relay db > db.ticket\n  kith project enroll --ticket-file db.ticket --at db-node\n  kith project member list"
    )]
    Project(ProjectCommand),
    /// Credentials an identity holds; issue, store or verify one by hand.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith credential list\n  kith credential show --at db-node"
    )]
    Credential(CredentialCommand),
    /// Open, list and close end-to-end secure channels kept by a node.
    #[command(
        subcommand,
        name = "secure-channel",
        after_help = "Examples:\n  kith secure-channel create --at n1 --to /node/n2/service/api\n  kith secure-channel list --at n1"
    )]
    SecureChannel(SecureChannelCommand),
    /// Relays: make a node that accepts no connections reachable through the project node.
    #[command(
        subcommand,
        after_help = "Examples:\n  kith relay create db --at db-node\n  kith relay show db\n  kith relay list --at /project/acme"
    )]
    Relay(RelayCommand),
    /// TCP outlets: carry portal sessions from inlets to a TCP server next to a node.
    #[command(
        subcommand,
        name = "tcp-outlet",
        after_help = "Examples:\n  kith tcp-outlet create --at db-node --to 127.0.0.1:5432 --allow 'component = \"web\"'\n  kith tcp-outlet list"
    )]
    TcpOutlet(TcpOutletCommand),
    /// TCP inlets: local ports whose connections are carried to an outlet, through secure
    /// channels and relays.
    #[command(
        subcommand,
        name = "tcp-inlet",
        after_help = "Examples:\n  kith tcp-inlet create --at web-node --from 127.0.0.1:15432 --to /project/acme/service/forward_to_db/secure/api/service/outlet\n  kith tcp-inlet list"
    )]
    TcpInlet(TcpInletCommand),
    /// One screen of what runs here: nodes, the relays they keep, outlets and inlets, the
    /// projects known here, and when each node's credentials expire.
    #[command(after_help = "Examples:\n  kith status\n  kith status --output json")]
    Status,
    /// Run a walkthrough in a temporary KITH_HOME: a project, two members, a relay, a message
    /// and a web page through a TCP portal between them.
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
  kith node create n4 --identity alice      run as identity alice (see `kith identity`)
  kith node create n5 --metrics-address 127.0.0.1:9464    Prometheus metrics at /metrics
  kith node create --config db-node.yaml    as the file declares (again: only what changed)
  kith node create --config db-node.yaml --dry-run    print the plan, change nothing
  kith node create --config db-node.yaml --foreground for containers and service managers

A node's file (YAML; ${VAR} is taken from the environment):
  name: db-node
  identity: db                      # made if missing
  tcp-listener-address: 127.0.0.1:0
  require-credential: true
  ticket: ${DB_TICKET}              # or a file holding it; used once, to become a member
  relays: [db]
  tcp-outlets:
    postgres: {to: 127.0.0.1:5432, allow: 'component = \"web\"'}
  tcp-inlets:
    psql: {from: 127.0.0.1:15432, via: db, to: postgres}   # via: the other node's relay
Also: allow-identities, trust-authorities, allow, revocation-grace, limits (a map),
project (for relays and via; default: the ticket's). Applying a file again changes only
what differs; relays, outlets and inlets it no longer lists are deleted.")]
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
    #[command(after_help = "\
`--all` keeps authority nodes: an authority node holds its project's store (members,
tickets, join requests), and deleting it ends the project. Name one to delete it, or add
--include-authorities.

Examples:
  kith node delete n1
  kith node delete --all                          every node but authority nodes
  kith node delete --all --include-authorities    every node, projects' authorities too")]
    Delete(DeleteNode),
    /// Print a node's log, its rotated files included, oldest first.
    #[command(after_help = "\
A daemon rotates its log when it reaches KITH_LOG_MAX_BYTES (default 10485760, 10 MiB) and
keeps KITH_LOG_FILES files (default 5: node.log and node.log.1 to .4), as set when the node
is created or started.

Examples:
  kith node logs n1
  kith node logs n1 --tail 20
  kith node logs n1 --tail 20 --follow    the last 20 lines, then each new one (Ctrl-C ends)")]
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
    /// Address to listen on for TCP connections [default: 127.0.0.1:0]; port 0 picks a free
    /// port once, and the node keeps it across restarts.
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp_listener_address: Option<String>,
    /// Run in this process instead of as a daemon; Ctrl-C or SIGTERM stops it. With
    /// --config, it exits non-zero if the file cannot be applied.
    #[arg(long)]
    pub foreground: bool,
    /// Create the node, or bring an existing one, to what this YAML file declares (see
    /// below). Options the file can hold are not also taken from the command line.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// With --config: print what applying the file would change, and change nothing.
    #[arg(long, requires = "config")]
    pub dry_run: bool,
    /// Serve metrics in the Prometheus text format at http://HOST:PORT/metrics (off unless
    /// given; port 0 picks a free port once, and the node keeps it).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
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
    /// How long the node trusts what it knows of an authority's revocations when it cannot
    /// reach the authority: past it, credentials from that authority admit no one (the
    /// peer is told "revocations out of date") until the node hears the authority again.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub revocation_grace: Option<std::time::Duration>,
    /// Change one of the caps on what peers may hold at the node (repeatable):
    /// connections (4096), connections-per-source (256), handshakes (1024),
    /// handshakes-per-source (128), handshakes-per-connection (64),
    /// handshake-rate-per-source (500 per second), handshake-burst-per-source (1000),
    /// channels (16384), channels-per-source (1024), frame-timeout (30s). A source is one
    /// IPv4 address or one IPv6 /64.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    pub limits: Vec<String>,
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
    /// Delete every node but authority nodes.
    #[arg(long)]
    pub all: bool,
    /// With --all: delete authority nodes too, and with them their projects' stores.
    #[arg(long, requires = "all")]
    pub include_authorities: bool,
}

/// `kith node logs`
#[derive(Debug, Args)]
pub struct NodeLogs {
    /// Name of the node.
    pub name: String,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Keep printing lines as the node writes them, across rotations, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `kith message …`
#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Send a message and print the reply.
    #[command(after_help = "\
Examples:
  kith message send hello --to /node/n1/service/echo
  kith message send hello --at n1 --to /node/n2/service/echo
  kith message send hello --to /ip4/127.0.0.1/tcp/4000/service/echo --timeout 2s
  kith message send hello --to /dnsaddr/localhost/tcp/4000/service/echo --output json
  kith message send hello --at n1 --to /node/n2/secure/api/service/echo
  kith message send - --at n1 --to /node/n2/secure/api/service/echo < message.txt

Without --from, the command runs a node of its own for its duration. A /secure/LISTENER hop
opens an end-to-end secure channel to that listener first; the rest of the route travels
inside it, and the reply names the peer's identifier.")]
    Send(SendMessage),
}

/// `kith message send`
#[derive(Debug, Args)]
pub struct SendMessage {
    /// The message text; `-` reads it from standard input (for text too large for a command
    /// line: a secure channel carries up to about 230 KiB).
    pub message: String,
    /// Where to send it, as a route: /node/NAME/service/S, /ip4/A/tcp/P/service/S, ….
    #[arg(long, value_name = "ROUTE")]
    pub to: String,
    /// Send from this running node instead of an embedded one (`--from` is the old spelling).
    #[arg(long = "at", alias = "from", value_name = "NODE")]
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
  kith secure-channel create --at n1 --to /node/n2/service/api
  kith secure-channel create --at n1 --to /ip4/127.0.0.1/tcp/4002/service/api
  kith message send hi --at n1 --to /service/sc-enc-0123456789abcdef/service/echo")]
    Create {
        /// The node that opens and keeps the channel.
        #[arg(long = "at", alias = "from", value_name = "NODE")]
        from: String,
        /// Route to the listener (every node serves one at `api`).
        #[arg(long, value_name = "ROUTE")]
        to: String,
        /// How long the handshake may take.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the channels a node keeps.
    #[command(after_help = "Examples:\n  kith secure-channel list --at n1")]
    List {
        /// The node.
        #[arg(long = "at", alias = "from", value_name = "NODE")]
        from: String,
    },
    /// Close a kept channel.
    #[command(
        after_help = "Examples:\n  kith secure-channel delete sc-enc-0123456789abcdef --at n1"
    )]
    Delete {
        /// The channel's address, as `create` or `list` printed it.
        address: String,
        /// The node.
        #[arg(long = "at", alias = "from", value_name = "NODE")]
        from: String,
    },
}

/// `kith relay …`
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Create a relay at the project node towards a node, and keep it up: anyone in the
    /// project may then reach the node at /project/P/service/forward_to_NAME, through an
    /// end-to-end secure channel. Needs a credential with ockam-relay=NAME (a ticket made
    /// with `kith project ticket --relay NAME`), or to be an admin.
    ///
    /// Succeeds only once the project node has registered the relay during this command
    /// (for a relay the node keeps already, it is registered again). If the project node
    /// cannot be reached or refuses, the command fails with the reason and nothing is kept
    /// or saved, unless --keep-on-failure asks for the relay to be kept and retried anyway.
    #[command(after_help = "\
Examples:
  kith project ticket --relay db > db.ticket          # an admin
  kith project enroll --ticket-file db.ticket --at db-node
  kith relay create db --at db-node
  kith message send hi --to /project/acme/service/forward_to_db/secure/api/service/echo
  kith relay create db --at db-node --project acme --keep-on-failure  # project node may be down")]
    Create {
        /// The relay's name; default: the node's name.
        name: Option<String>,
        /// The node to relay to (it keeps the relay up, across restarts); default: the one
        /// running local node that is not an authority, if there is exactly one. A route,
        /// /project/NAME, is read as --project NAME (the old meaning of --at here).
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// The old spelling of --at NODE.
        #[arg(long, value_name = "NODE", hide = true)]
        to: Option<String>,
        /// The project whose node takes the relay; default: the default project.
        #[arg(long, value_name = "NAME")]
        project: Option<String>,
        /// How long reaching the project node may take.
        #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
        /// If the project node cannot take the relay now, keep it anyway: the node saves it
        /// and retries it in the background (`kith relay show` tells when it is up). The
        /// command still fails, with the reason.
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// List the relays local nodes keep, with their state; with --at, the relays the
    /// project node holds (all of them for an admin, your own otherwise).
    #[command(after_help = "\
Examples:
  kith relay list
  kith relay list --at db-node --output json
  kith relay list --at /project/acme")]
    List {
        /// Only this node's relays; or, given a route /project/NAME, ask that project node.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// The old spelling of --at NODE.
        #[arg(long, value_name = "NODE", hide = true)]
        to: Option<String>,
    },
    /// Show a relay's state: up since when, or down since when (and reconnecting), and its
    /// last error.
    #[command(
        after_help = "Examples:\n  kith relay show db\n  kith relay show db --at db-node --output json"
    )]
    Show {
        /// The relay's name.
        name: String,
        /// The node that keeps it; default: whichever local node does.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// The old spelling of --at NODE.
        #[arg(long, value_name = "NODE", hide = true)]
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
        /// The node that keeps it; default: whichever local node does. Given a route,
        /// /project/NAME: delete it at that project node as an admin (or its owner), with no
        /// local node.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// The old spelling of --at NODE.
        #[arg(long, value_name = "NODE", hide = true)]
        to: Option<String>,
    },
}

/// `kith tcp-outlet …`
#[derive(Debug, Subcommand)]
pub enum TcpOutletCommand {
    /// Serve an outlet on a node: every portal session an inlet opens to it becomes a
    /// connection to HOST:PORT. Only peers that are members of the node's project (and
    /// satisfy --allow, if given) may open sessions. Kept across node restarts.
    #[command(after_help = "\
Examples:
  # next to PostgreSQL, on a host with no inbound connections
  kith tcp-outlet create --at db-node --to 127.0.0.1:5432 --allow 'component = \"web\"'
  kith relay create db --at db-node
  # an HTTP server, reachable only by one identity
  kith tcp-outlet create --to 127.0.0.1:8080 --from web --allow 'identifier = \"I6c20…\"'")]
    Create {
        /// Where sessions connect: HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
        /// The node; default: the one running node that is not an authority.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// The outlet's service name on the node (routes end /service/NAME).
        #[arg(long, value_name = "NAME", default_value = "outlet")]
        from: String,
        /// Who else must be satisfied: a policy over the peer's attested attributes, e.g.
        /// 'component = "web"'; on a node in no project, the whole rule.
        #[arg(long, value_name = "POLICY")]
        allow: Option<String>,
    },
    /// List the outlets running nodes serve, with their sessions.
    #[command(
        after_help = "Examples:\n  kith tcp-outlet list\n  kith tcp-outlet list --at db-node --output json"
    )]
    List {
        /// Only this node's.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
    },
    /// Show an outlet: its target, policy and sessions.
    #[command(
        after_help = "Examples:\n  kith tcp-outlet show outlet\n  kith tcp-outlet show web --at web-node --output json"
    )]
    Show {
        /// The outlet's name.
        name: String,
        /// The node; default: whichever running node serves it.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
    },
    /// Delete an outlet: its open sessions are closed, and it is not restored again.
    #[command(
        after_help = "Examples:\n  kith tcp-outlet delete outlet\n  kith tcp-outlet delete web --at web-node"
    )]
    Delete {
        /// The outlet's name.
        name: String,
        /// The node; default: whichever running node serves it.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
    },
}

/// `kith tcp-inlet …`
#[derive(Debug, Subcommand)]
pub enum TcpInletCommand {
    /// Listen on a local port and carry every connection to an outlet: each connection
    /// opens fresh secure channels along --to, so it works again as soon as a relay that
    /// went away is back. The node at the end must be a member of this node's project (and
    /// satisfy --allow, if given). Kept across node restarts.
    #[command(after_help = "\
Examples:
  # next to the app; the outlet's node is reached through relay db
  kith tcp-inlet create --at web-node --from 127.0.0.1:15432 \\
      --to /project/acme/service/forward_to_db/secure/api/service/outlet
  psql -h 127.0.0.1 -p 15432 -U app app
  # straight to a local node
  kith tcp-inlet create --from 8080 --to /node/db-node/secure/api/service/outlet --alias web")]
    Create {
        /// Where to listen: IP:PORT, or a port on 127.0.0.1 (0 picks one).
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// The route to the outlet, through at least one secure channel.
        #[arg(long, value_name = "ROUTE")]
        to: String,
        /// The node; default: the one running node that is not an authority.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
        /// A name for the inlet; default: the address it listens on.
        #[arg(long, value_name = "NAME")]
        alias: Option<String>,
        /// What the outlet's node must also satisfy: a policy over its attested attributes.
        #[arg(long, value_name = "POLICY")]
        allow: Option<String>,
        /// How long a new connection may wait for the outlet (while a relay reconnects, say)
        /// before it is reset.
        // The default is `node::INLET_OPEN_TIMEOUT`, a node file's too; a test keeps them one.
        #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the inlets running nodes listen on, with their sessions.
    #[command(
        after_help = "Examples:\n  kith tcp-inlet list\n  kith tcp-inlet list --at web-node --output json"
    )]
    List {
        /// Only this node's.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
    },
    /// Show an inlet: where it listens, its route, policy and sessions.
    #[command(
        after_help = "Examples:\n  kith tcp-inlet show 127.0.0.1:15432\n  kith tcp-inlet show web --output json"
    )]
    Show {
        /// The inlet's alias (its listen address, unless `kith tcp-inlet create --alias NAME`
        /// named it).
        alias: String,
        /// The node; default: whichever running node has it.
        #[arg(long, value_name = "NODE")]
        at: Option<String>,
    },
    /// Delete an inlet: its port closes, its open sessions are closed, and it is not
    /// restored again.
    #[command(
        after_help = "Examples:\n  kith tcp-inlet delete 127.0.0.1:15432\n  kith tcp-inlet delete web --at web-node"
    )]
    Delete {
        /// The inlet's alias.
        alias: String,
        /// The node; default: whichever running node has it.
        #[arg(long, value_name = "NODE")]
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
    #[arg(long = "at", alias = "node", value_name = "NODE")]
    pub node: Option<String>,
}

/// `kith credential …`
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// List the credentials an identity holds, and whether each is valid now.
    #[command(after_help = "\
Examples:
  kith credential list
  kith credential list --at db-node
  kith credential list --identity alice --output json")]
    List {
        /// Whose credentials.
        #[command(flatten)]
        holder: HolderArgs,
    },
    /// Show one credential: issuer, subject, attributes, validity.
    #[command(after_help = "\
Examples:
  kith credential show --at db-node
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
  kith credential verify --at db-node
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
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// How long it is valid (ms, s, m, h, d; bare number = seconds).
        #[arg(long, default_value = "30d", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Store a credential for an identity, after verifying it against its issuer.
    #[command(after_help = "\
Examples:
  kith credential store --identity alice --issuer authority --credential @credential.hex
  kith credential store --at n1 --issuer 81a2… --credential 8282…")]
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
  kith authority create --project acme --credential-ttl 7d
  kith authority create --project acme --request-ttl 2h --max-pending-per-address 20")]
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
    /// Serve metrics in the Prometheus text format at http://HOST:PORT/metrics (off unless
    /// given; port 0 picks a free port once, and the node keeps it).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
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
    /// How long a join request (`kith project request`) waits for a decision before it
    /// expires.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub request_ttl: std::time::Duration,
    /// How many join requests may wait from one address at once.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_address: u32,
    /// How many join requests may wait in all.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_requests: u32,
    /// The identity the authority runs as (and signs credentials with); default: a new
    /// identity named after the node.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Join the existing project with this id (32 hex digits) instead of creating a new
    /// one: for a second authority node sharing a PostgreSQL database with the first. The
    /// database must already hold that project's store.
    #[arg(long, value_name = "ID", requires = "database_url")]
    pub project_id: Option<String>,
    /// Change one of the caps on what peers may hold at the project node (repeatable), as
    /// `kith node create --limit` takes them, e.g. connections-per-source=512.
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    pub limits: Vec<String>,
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
  kith project enroll --ticket-file ticket.txt --at db-node
  kith project enroll \"$TICKET\"
  KITH_ENROLLMENT_TICKET=$(cat ticket.txt) kith project enroll --identity alice
  kith project ticket | kith project enroll -")]
    Enroll(Box<EnrollArgs>),
    /// Ask to join a project without a ticket: file a join request with its authority and
    /// wait until an admin approves it; the identity then holds its credential.
    #[command(after_help = "\
Examples:
  kith project request --project-file acme.json -a component=worker --lifetime 7d
  kith project request --at worker-1 --note \"rack 4, ticket INC-1234\"
  kith project request --authority-route /ip4/10.0.0.5/tcp/4000 --accept-authority I6c20e814b56579306f55c64e8747e6c1b4a53d9a
  ID=$(kith project request --no-wait) && kith project request --resume \"$ID\"
  kith project request --file - > credential.hex

The request ID and the verification code go to standard error: tell the admin the ID, and
approve only if the admin sees the same code (someone sitting in between makes them differ).
The credential is stored for the identity, as `kith project enroll` does; --file writes it
to a file (- for standard output) instead. The authority is the default project's unless
--project-file, --project or --authority-route says otherwise; with --authority-route and no
--authority-identity, the identifier of whoever answers is shown for you to confirm (or
checked against --accept-authority). While waiting, a lost connection is re-established,
for the same request, until --timeout.")]
    Request(Box<RequestArgs>),
    /// Join requests: list, show, approve and deny them; rules that approve them
    /// automatically (admins and enrollers).
    #[command(
        subcommand,
        after_help = "\
Examples:
  kith project requests list
  kith project requests approve 4KQ7-ZP2M --code 3184-4213
  kith project requests deny 4KQ7-ZP2M --reason \"unknown host\"
  kith project requests deny --from 203.0.113.0/24 --reason \"flood\"
  kith project requests auto-approve add --netblock 10.1.0.0/16 --lifetime 1h"
    )]
    Requests(RequestsCommand),
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
    #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
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
    #[arg(long = "at", alias = "node", value_name = "NODE")]
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
    /// If the identity is a member already, replace its attributes with the ticket's
    /// (default: add the ticket's to them; the ticket's win a clash).
    #[arg(long)]
    pub replace: bool,
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
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Change a member's attributes: set some, remove some (admins; enrollers may change
    /// anything but ockam-role). The whole project learns of the change at once.
    #[command(
        after_help = "Examples:\n  kith project member update I6c20e814b56579306f55c64e8747e6c1b4a53d9a -a component=db\n  kith project member update I6c20e814b56579306f55c64e8747e6c1b4a53d9a -a zone=eu -a tier=2 --remove legacy\n  kith project member update I6c20e814b56579306f55c64e8747e6c1b4a53d9a --remove ockam-relay --output json"
    )]
    Update {
        /// The members' identifiers (each gets the same change).
        #[arg(required = true, num_args = 1..)]
        identifiers: Vec<String>,
        /// An attribute to add or change, key=value (repeatable).
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// An attribute to remove (repeatable); one the member does not have is ignored.
        #[arg(long = "remove", value_name = "KEY")]
        remove: Vec<String>,
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

/// `kith project request`
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// An attribute asked for, key=value (repeatable); the admin may grant fewer.
    #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
    pub attributes: Vec<(String, String)>,
    /// The credential lifetime asked for (ms, s, m, h, d); default: the authority's.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub lifetime: Option<std::time::Duration>,
    /// A note for the admin (who you are, why), at most 1 KiB.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub note: String,
    /// Ask as this identity; default: the default identity.
    #[arg(long, value_name = "NAME", conflicts_with = "node")]
    pub identity: Option<String>,
    /// Ask as the identity this node runs as (a running node then presents the credential).
    #[arg(long = "at", alias = "node", value_name = "NODE")]
    pub node: Option<String>,
    /// The project's description, as `kith project export` prints it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["project", "authority_route"])]
    pub project_file: Option<PathBuf>,
    /// A project known here; default: the default project.
    #[arg(long, value_name = "NAME", conflicts_with = "authority_route")]
    pub project: Option<String>,
    /// The route to the authority node, e.g. /ip4/10.0.0.5/tcp/4000, for a project not
    /// known here.
    #[arg(long, value_name = "ROUTE")]
    pub authority_route: Option<String>,
    /// The authority's identifier (I…), or its identity (a vault name, or the hex key
    /// history); only it may answer at --authority-route.
    #[arg(long, value_name = "IDENTIFIER", requires = "authority_route")]
    pub authority_identity: Option<String>,
    /// Trust whoever answers at --authority-route if its identifier is this one (the
    /// fingerprint the admin reads from `kith project show`), without asking.
    #[arg(
        long,
        value_name = "IDENTIFIER",
        requires = "authority_route",
        conflicts_with = "authority_identity"
    )]
    pub accept_authority: Option<String>,
    /// Write the credential (hex) to this file, or - for standard output, instead of
    /// storing it for the identity.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How long to wait for a decision.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub timeout: std::time::Duration,
    /// File the request, print its ID, and return; wait later with --resume ID.
    #[arg(long, conflicts_with_all = ["resume", "file"])]
    pub no_wait: bool,
    /// Wait for a request filed earlier (with --no-wait, or a wait that timed out) instead
    /// of filing one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["attributes", "lifetime", "note"])]
    pub resume: Option<String>,
    /// Retry this many times if the authority cannot be reached at first [env:
    /// KITH_RETRY_COUNT]. (Once the request is filed, a lost connection is always retried.)
    #[arg(long, value_name = "N")]
    pub retry_count: Option<u32>,
    /// Wait this long between retries [env: KITH_RETRY_DELAY; default 1s].
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
    pub retry_delay: Option<std::time::Duration>,
    /// Never retry reaching the authority at first.
    #[arg(long)]
    pub no_retry: bool,
}

/// `kith project requests …`
#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// List pending join requests (all of them with --all).
    #[command(after_help = "\
Examples:
  kith project requests list
  kith project requests list --all --output json")]
    List {
        /// Approved, denied and expired requests too.
        #[arg(long)]
        all: bool,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Show one join request: who, from where, what it asks for, its code and its state.
    #[command(after_help = "Examples:\n  kith project requests show 4KQ7-ZP2M")]
    Show {
        /// The request's ID.
        id: String,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Approve a pending join request: the requester becomes a member and receives its
    /// credential. Compare the verification code with the requester's first.
    #[command(after_help = "\
Examples:
  kith project requests approve 4KQ7-ZP2M --code 3184-4213
  kith project requests approve 4KQ7-ZP2M                      shows the code, asks to confirm
  kith project requests approve 4KQ7-ZP2M --code 3184-4213 -a component=worker --lifetime 1d

-a and --lifetime narrow what was asked for (exactly these attributes, each one asked for;
a shorter lifetime); they never widen it.")]
    Approve {
        /// The request's ID.
        id: String,
        /// The verification code the requester sees; without it, the request's code is
        /// shown and you are asked to confirm (on a terminal).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// Grant exactly these attributes, key=value (repeatable); default: as asked.
        #[arg(long = "attribute", short = 'a', value_name = "KEY=VALUE", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// Grant this credential lifetime (ms, s, m, h, d); default: as asked.
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        lifetime: Option<std::time::Duration>,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Deny a pending join request, or every pending one from an address or netblock
    /// (--from), or all of them (--all-pending); the requesters are told the reason.
    #[command(
        group(
            clap::ArgGroup::new("which")
                .required(true)
                .args(["id", "from", "all_pending"])
        ),
        after_help = "\
Examples:
  kith project requests deny 4KQ7-ZP2M
  kith project requests deny 4KQ7-ZP2M --reason \"not one of our hosts\"
  kith project requests deny --from 203.0.113.0/24 --reason \"flood from one network\"
  kith project requests deny --from 2001:db8::7 --reason \"not one of our hosts\"
  kith project requests deny --all-pending --reason \"clearing a flood; ask again\" --output json

Give exactly one of ID, --from and --all-pending. --from and --all-pending deny every
matching pending request in one decision, audited once (request.bulk_denied), and need
--reason; with a full queue (\"the authority has N join requests waiting\"), they make room
for new requests at once."
    )]
    Deny {
        /// The request's ID.
        id: Option<String>,
        /// Deny every pending request filed from this address or netblock: CIDR such as
        /// 10.1.0.0/16 or 2001:db8::/32, or one address.
        #[arg(long, value_name = "ADDRESS|NETBLOCK", requires = "reason")]
        from: Option<String>,
        /// Deny every pending request.
        #[arg(long, requires = "reason")]
        all_pending: bool,
        /// Why, for the requesters (and the audit log); needed with --from and
        /// --all-pending.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Rules that approve join requests from a netblock automatically, for a while.
    #[command(
        subcommand,
        name = "auto-approve",
        after_help = "\
Examples:
  kith project requests auto-approve add --netblock 10.1.0.0/16 --lifetime 1h --allow-attribute component=worker
  kith project requests auto-approve list
  kith project requests auto-approve delete 7Q2M-X4KD"
    )]
    AutoApprove(AutoApproveCommand),
}

/// `kith project requests auto-approve …`
#[derive(Debug, Subcommand)]
pub enum AutoApproveCommand {
    /// Add a rule: requests from NETBLOCK that ask only for allowed attributes are approved
    /// at once, for as long as the rule lasts; pending ones it covers are approved now.
    #[command(after_help = "\
Examples:
  kith project requests auto-approve add --netblock 10.1.0.0/16 --lifetime 1h
  kith project requests auto-approve add --netblock 192.0.2.0/24 --lifetime 30m \\
      --allow-attribute component=worker --max-credential-lifetime 1d")]
    Add {
        /// Requests from this netblock (CIDR, e.g. 10.1.0.0/16).
        #[arg(long, value_name = "CIDR")]
        netblock: String,
        /// How long the rule lasts.
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        lifetime: std::time::Duration,
        /// The longest credential lifetime it grants; default: the authority's.
        #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse_duration)]
        max_credential_lifetime: Option<std::time::Duration>,
        /// An attribute a request may ask for, key=value (repeatable); a request asking
        /// for any other is left for an admin. Default: none.
        #[arg(long = "allow-attribute", value_name = "KEY=VALUE", value_parser = parse_attribute)]
        allow_attributes: Vec<(String, String)>,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// List the rules in force.
    #[command(after_help = "\
Examples:
  kith project requests auto-approve list
  kith project requests auto-approve list --output json")]
    List {
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
    /// Delete a rule.
    #[command(after_help = "Examples:\n  kith project requests auto-approve delete 7Q2M-X4KD")]
    Delete {
        /// The rule's ID.
        id: String,
        /// How to reach the authority.
        #[command(flatten)]
        access: ProjectAccess,
    },
}

/// Parse `key=value`.
pub fn parse_attribute(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    kith_identity::check_attribute(k, v).map_err(|e| e.to_string())?;
    Ok((k.to_owned(), v.to_owned()))
}
