//! `kith node create --config FILE`: bring a node to what its file declares.
//!
//! The file is read and checked whole first (`crate::nodefile`), and everything it names is
//! resolved (the identity, trusted authorities, the ticket, the project) before anything
//! changes, so a bad file changes nothing. Then the plan: what differs between the file and
//! the node as it is saved. Applying it makes the identity if missing, enrolls with the ticket
//! if the identity is not yet a member of the ticket's project, saves the node's settings,
//! starts (or restarts, if its settings changed) the node, and asks the running node for the
//! relays, outlets and inlets that differ, through the same control requests as
//! `kith relay create` and `kith tcp-outlet create`. Applying the same file again finds
//! nothing to do.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use kith_authority::keeper::RelayState;
use kith_authority::ticket::Ticket;
use kith_identity::unix_now;
use serde::Serialize;

use super::args::{AdmissionArgs, CreateNode, EnrollArgs};
use super::nodes::{DEFAULT_LISTENER, STOP_TIMEOUT, admission_config, start_daemon};
use super::output::Output;
use crate::control::{self, NodeState, RelayView, Request, probe};
use crate::home::vault::{DEFAULT_IDENTITY, open_vault};
use crate::home::{AdmissionConfig, Home, InletConfig, NodeConfig, OutletConfig, RelayConfig};
use crate::node::{INLET_OPEN_TIMEOUT, RELAY_TIMEOUT, listen_address};
use crate::nodefile::{self, NodeFile, TicketSource};

/// What applying a file does to one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Make it.
    Create,
    /// Change it (a kept thing: delete it, then create it as declared).
    Update,
    /// Delete what the file no longer declares.
    Delete,
    /// Enroll the identity with the file's ticket.
    Enroll,
    /// Start the stopped node.
    Start,
    /// Restart the running node, to take new settings.
    Restart,
    /// It is as declared.
    Unchanged,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Enroll => "enroll",
            Action::Start => "start",
            Action::Restart => "restart",
            Action::Unchanged => "unchanged",
        }
    }

    fn sign(self) -> char {
        match self {
            Action::Create | Action::Enroll => '+',
            Action::Delete => '-',
            Action::Update | Action::Restart => '~',
            Action::Start => '>',
            Action::Unchanged => '=',
        }
    }
}

/// One difference between the file and the node, or one thing found as declared.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// What is done.
    pub action: Action,
    /// `identity`, `membership`, `node`, `relay`, `tcp-outlet` or `tcp-inlet`.
    pub kind: &'static str,
    /// What it is called.
    pub name: String,
    /// What it will be (or what changes).
    pub detail: String,
}

impl Change {
    fn line(&self) -> String {
        let mut line = format!(
            "  {} {} {} {}",
            self.action.sign(),
            self.action.word(),
            self.kind,
            self.name
        );
        if !self.detail.is_empty() {
            line.push_str(&format!(": {}", self.detail));
        }
        line
    }

    fn new(
        action: Action,
        kind: &'static str,
        name: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            action,
            kind,
            name: name.into(),
            detail: detail.into(),
        }
    }
}

/// What the file declares, resolved against the vault and the projects known here.
struct Desired {
    name: String,
    /// The identity's name, and whether the vault lacks it.
    identity: String,
    make_identity: bool,
    listener: String,
    metrics: Option<String>,
    admission: AdmissionConfig,
    /// The ticket to enroll with, if the identity is not a member of its project yet.
    enroll: Option<(String, Ticket)>,
    relays: Vec<RelayConfig>,
    outlets: Vec<OutletConfig>,
    inlets: Vec<InletConfig>,
}

/// The node as it is now.
struct Current {
    config: NodeConfig,
    running: bool,
}

/// What applying the file does, in order.
struct Plan {
    changes: Vec<Change>,
    /// The node's saved settings change (a running node restarts to take them).
    settings_changed: bool,
    relays: Diff<RelayConfig>,
    outlets: Diff<OutletConfig>,
    inlets: Diff<InletConfig>,
}

/// Kept things to delete and to create (a changed one is deleted, then created).
struct Diff<T> {
    delete: Vec<String>,
    create: Vec<T>,
}

/// `kith node create --config FILE`
pub async fn apply(home: &Home, out: &Output, args: CreateNode, file: &Path) -> Result<()> {
    refuse_mixed_options(&args)?;
    let declared = read(file)?;
    let desired = resolve(home, args.name.as_deref(), declared, file)
        .await
        .map_err(|e| {
            let said = format!("{e:#}");
            match said.contains("nothing was changed") {
                true => e,
                false => anyhow!("{said}; nothing was changed"),
            }
        })?;
    let current = match home.node_exists(&desired.name) {
        false => None,
        true => {
            let config = home.load_node(&desired.name)?;
            if config.authority.is_some() {
                bail!(
                    "node {:?} is a project's authority node; a file declares member nodes (see `kith authority --help`)",
                    desired.name
                );
            }
            let running = matches!(probe(home, &desired.name).await, NodeState::Running(_));
            Some(Current { config, running })
        }
    };
    if args.foreground && current.as_ref().is_some_and(|c| c.running) {
        bail!(
            "node {:?} is already running; stop it (`kith node stop {}`) to run it in the foreground, or apply the file without --foreground",
            desired.name,
            desired.name
        );
    }
    let plan = plan(&desired, current.as_ref(), args.foreground);
    let name = desired.name.clone();
    if args.dry_run {
        let changes: Vec<&Change> = plan.changes.iter().collect();
        out.result(
            || {
                let mut s = format!("Plan for node {name} from {}:", file.display());
                for c in &changes {
                    s.push('\n');
                    s.push_str(&c.line());
                }
                if changes.iter().all(|c| c.action == Action::Unchanged) {
                    s.push_str("\nNothing to change.");
                }
                s
            },
            &serde_json::json!({ "node": name, "dry_run": true, "changes": changes }),
        );
        return Ok(());
    }
    if plan.changes.iter().any(|c| c.action != Action::Unchanged) {
        out.note(format!("Applying {} to node {name}:", file.display()));
    }

    prepare(home, out, &desired, current.as_ref()).await?;
    let config = match &current {
        Some(c) => NodeConfig {
            identity: Some(desired.identity.clone()),
            tcp_listener_address: if same_listener(
                &desired.listener,
                &c.config.tcp_listener_address,
            ) {
                c.config.tcp_listener_address.clone()
            } else {
                desired.listener.clone()
            },
            metrics_address: match (&desired.metrics, &c.config.metrics_address) {
                (Some(d), Some(saved)) if same_listener(d, saved) => Some(saved.clone()),
                (d, _) => d.clone(),
            },
            admission: desired.admission.clone(),
            ..c.config.clone()
        },
        None => NodeConfig {
            name: name.clone(),
            tcp_listener_address: desired.listener.clone(),
            metrics_address: desired.metrics.clone(),
            created_at: unix_now(),
            identity: Some(desired.identity.clone()),
            admission: desired.admission.clone(),
            authority: None,
            relays: Vec::new(),
            outlets: Vec::new(),
            inlets: Vec::new(),
        },
    };
    match &current {
        None => home.create_node(&config)?,
        Some(_) if plan.settings_changed => home.save_node(&config)?,
        Some(_) => {}
    }

    if args.foreground {
        return foreground(home, out, &name, &plan, current.is_none()).await;
    }
    let running = current.as_ref().is_some_and(|c| c.running);
    if running && plan.settings_changed {
        out.note(format!("  ~ restart node {name}: its settings changed"));
        control::stop(&home.socket_path(&name), STOP_TIMEOUT)
            .await
            .with_context(|| format!("cannot stop node {name:?} to restart it"))?;
    }
    if !running || plan.settings_changed {
        let started = start_daemon(home, &out.muted(), &name).await;
        if let Err(e) = started {
            if current.is_none() {
                // A node that never served is not left half-made.
                let _ = home.delete_node(&name);
            }
            return Err(e);
        }
        match &current {
            None => out.note(format!("  + node {name}")),
            Some(_) if !running => out.note(format!("  + started node {name}")),
            Some(_) => {}
        }
    }
    kept(home, out, &name, &plan).await.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}; node {name} runs with what was applied before that: fix the cause and apply {} again to finish",
            file.display()
        )
    })?;
    let ready = crate::control::call(
        &home.socket_path(&name),
        &Request::Status,
        control::STATUS_TIMEOUT,
    )
    .await
    .ok();
    let listener = ready
        .as_ref()
        .and_then(|v| v["listener"].as_str())
        .unwrap_or_default()
        .to_owned();
    let changed = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
        .count();
    out.result(
        || {
            let mut s = match changed {
                0 => format!(
                    "Node {name} is as {} declares it: nothing changed.",
                    file.display()
                ),
                n => format!(
                    "Node {name} is as {} declares it ({n} change{}).",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                ),
            };
            if !listener.is_empty() {
                s.push_str(&format!(" It listens on {listener}."));
            }
            s
        },
        &serde_json::json!({
            "node": name,
            "dry_run": false,
            "listener": listener,
            "changes": plan.changes,
        }),
    );
    Ok(())
}

/// The options a file holds are taken from it alone: both would leave the reader guessing
/// which one won.
fn refuse_mixed_options(args: &CreateNode) -> Result<()> {
    let AdmissionArgs {
        allow_identity,
        require_credential,
        trust_authority,
        allow,
        revocation_grace,
        limits,
    } = &args.admission;
    let given = [
        ("--identity", args.identity.is_some()),
        (
            "--tcp-listener-address",
            args.tcp_listener_address.is_some(),
        ),
        ("--allow-identity", !allow_identity.is_empty()),
        ("--require-credential", *require_credential),
        ("--trust-authority", !trust_authority.is_empty()),
        ("--allow", allow.is_some()),
        ("--revocation-grace", revocation_grace.is_some()),
        ("--limit", !limits.is_empty()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!(
            "--config FILE declares the node; put {flag} in the file instead (see `kith node create --help`)"
        );
    }
    Ok(())
}

/// Read and check the file.
fn read(file: &Path) -> Result<NodeFile> {
    let bytes = read_capped(file, nodefile::MAX_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow!(
            "{}: the file is not UTF-8 text; nothing was changed",
            file.display()
        )
    })?;
    nodefile::parse(&text, |name| std::env::var(name).ok())
        .map_err(|e| anyhow!("{}: {e}; nothing was changed", file.display()))
}

/// The file's bytes, refusing one over `cap` without reading all of it.
fn read_capped(file: &Path, cap: usize) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut bytes = Vec::new();
    f.take(u64::try_from(cap).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() > cap {
        bail!(
            "{} is over {cap} bytes; nothing was changed",
            file.display()
        );
    }
    Ok(bytes)
}

/// Everything the file names, found: nothing is changed here.
async fn resolve(
    home: &Home,
    name_arg: Option<&str>,
    declared: NodeFile,
    file: &Path,
) -> Result<Desired> {
    let name = match (name_arg, declared.name.as_deref()) {
        (Some(a), Some(f)) if a != f => {
            bail!("the command line names node {a:?} and the file names {f:?}; give the name once")
        }
        (Some(a), _) => a.to_owned(),
        (None, Some(f)) => f.to_owned(),
        (None, None) => bail!(
            "{}: the file declares no `name:`; add one, or name the node: kith node create NAME --config FILE",
            file.display()
        ),
    };
    crate::home::validate_node_name(&name)?;
    let ticket = match &declared.ticket {
        None => None,
        Some(TicketSource::Inline(text)) => Some(text.clone()),
        Some(TicketSource::File(path)) => {
            let path = match file.parent() {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.clone(),
            };
            let text = super::projects::read_ticket_file(&path)
                .with_context(|| format!("{}: ticket", file.display()))?;
            Some(text.trim().to_owned())
        }
    };
    let ticket = match ticket {
        None => None,
        Some(text) => {
            let t = Ticket::decode(&text)
                .with_context(|| format!("{}: ticket: cannot use this ticket", file.display()))?;
            Some((text, t))
        }
    };
    let existing = home
        .node_exists(&name)
        .then(|| home.load_node(&name))
        .transpose()?;

    let vault = open_vault(home).await?;
    let found = async {
        // The identity: as declared; else the node's own; else the default one.
        let identity = match (&declared.identity, &existing) {
            (Some(i), _) => i.clone(),
            (
                None,
                Some(NodeConfig {
                    identity: Some(i), ..
                }),
            ) => i.clone(),
            (None, _) => vault
                .default_identity()
                .await?
                .map(|s| s.name)
                .unwrap_or_else(|| DEFAULT_IDENTITY.to_owned()),
        };
        let make_identity = match vault.identity(&identity).await {
            Ok(_) => false,
            Err(kith_identity::vault::VaultError::NotFound { .. }) => true,
            Err(e) => return Err(e.into()),
        };
        let admission = admission_config(
            &vault,
            &AdmissionArgs {
                allow_identity: declared.allow_identities.clone(),
                require_credential: declared.require_credential,
                trust_authority: declared.trust_authorities.clone(),
                allow: declared.allow.clone(),
                revocation_grace: declared.revocation_grace,
                limits: declared.limits.clone(),
            },
        )
        .await
        .with_context(|| format!("{}: the node's admission", file.display()))?;
        let member = match (&ticket, make_identity) {
            (Some((_, t)), false) => vault
                .credentials(&identity)
                .await?
                .iter()
                .any(|c| c.issuer.identifier() == t.project.authority_identifier()),
            _ => false,
        };
        anyhow::Ok((identity, make_identity, admission, member))
    }
    .await;
    vault.close().await;
    let (identity, make_identity, admission, member) = found?;

    let ticket_project = ticket.as_ref().map(|(_, t)| t.project.name.clone());
    let enroll = match ticket {
        Some((text, t)) if !member => {
            super::projects::check_redeemable(home, &t).with_context(|| {
                format!(
                    "{}: ticket: identity {identity} is not yet a member of project {}",
                    file.display(),
                    t.project.name
                )
            })?;
            Some((text, t))
        }
        _ => None,
    };
    // The project relays and `via` go through: as declared, else the ticket's, else the
    // default one.
    let project = match declared.project.clone().or(ticket_project) {
        Some(p) => Some(p),
        None => home.default_project_name()?,
    };
    let project_of = |explicit: &Option<String>| -> Result<String> {
        explicit.clone().or_else(|| project.clone()).ok_or_else(|| {
            anyhow!(
                "{}: relays and `via` need a project: add `ticket:` or `project: NAME` (see `kith project list`)",
                file.display()
            )
        })
    };
    let mut relays = Vec::new();
    for r in &declared.relays {
        relays.push(RelayConfig {
            name: r.name.clone(),
            at: format!("/project/{}", project_of(&r.project)?),
        });
    }
    let outlets = declared
        .tcp_outlets
        .iter()
        .map(|o| OutletConfig {
            name: o.name.clone(),
            to: o.to.clone(),
            allow: o.allow.clone(),
        })
        .collect();
    let mut inlets = Vec::new();
    for i in &declared.tcp_inlets {
        let from = listen_address(&i.from)?.to_string();
        inlets.push(InletConfig {
            alias: i.name.clone(),
            from,
            to: i.to.route(&project_of(&None)?),
            allow: i.allow.clone(),
            open_timeout_ms: u64::try_from(i.timeout.unwrap_or(INLET_OPEN_TIMEOUT).as_millis())
                .unwrap_or(u64::MAX),
        });
    }
    Ok(Desired {
        name,
        identity,
        make_identity,
        listener: declared
            .tcp_listener_address
            .unwrap_or_else(|| DEFAULT_LISTENER.to_owned()),
        metrics: declared.metrics_address,
        admission,
        enroll,
        relays,
        outlets,
        inlets,
    })
}

/// Whether listening on `declared` is what a node saved as `saved` does: the same address,
/// or port 0 declared and the port the node was given on that host.
fn same_listener(declared: &str, saved: &str) -> bool {
    if declared == saved {
        return true;
    }
    match (declared.rsplit_once(':'), saved.rsplit_once(':')) {
        (Some((dh, "0")), Some((sh, _))) => dh == sh,
        _ => false,
    }
}

/// Whether inlet `declared` is inlet `saved` (whose port 0 became a real one).
fn same_inlet(declared: &InletConfig, saved: &InletConfig) -> bool {
    let from = match (
        declared.from.parse::<SocketAddr>(),
        saved.from.parse::<SocketAddr>(),
    ) {
        (Ok(d), Ok(s)) => d == s || (d.port() == 0 && d.ip() == s.ip()),
        _ => declared.from == saved.from,
    };
    from && InletConfig {
        from: saved.from.clone(),
        ..declared.clone()
    } == *saved
}

fn diff<T: Clone>(
    changes: &mut Vec<Change>,
    kind: &'static str,
    declared: &[T],
    saved: &[T],
    key: impl Fn(&T) -> &str,
    same: impl Fn(&T, &T) -> bool,
    describe: impl Fn(&T) -> String,
) -> Diff<T> {
    let mut d = Diff {
        delete: Vec::new(),
        create: Vec::new(),
    };
    for s in saved {
        if !declared.iter().any(|x| key(x) == key(s)) {
            changes.push(Change::new(Action::Delete, kind, key(s), describe(s)));
            d.delete.push(key(s).to_owned());
        }
    }
    for x in declared {
        match saved.iter().find(|s| key(s) == key(x)) {
            Some(s) if same(x, s) => {
                changes.push(Change::new(Action::Unchanged, kind, key(x), describe(x)))
            }
            Some(s) => {
                changes.push(Change::new(
                    Action::Update,
                    kind,
                    key(x),
                    format!("{} (was {})", describe(x), describe(s)),
                ));
                d.delete.push(key(x).to_owned());
                d.create.push(x.clone());
            }
            None => {
                changes.push(Change::new(Action::Create, kind, key(x), describe(x)));
                d.create.push(x.clone());
            }
        }
    }
    d
}

fn plan(desired: &Desired, current: Option<&Current>, foreground: bool) -> Plan {
    let mut changes = Vec::new();
    if desired.make_identity {
        changes.push(Change::new(
            Action::Create,
            "identity",
            &desired.identity,
            "",
        ));
    }
    if let Some((_, t)) = &desired.enroll {
        changes.push(Change::new(
            Action::Enroll,
            "membership",
            &desired.identity,
            format!("in project {} with the ticket", t.project.name),
        ));
    }
    let empty = NodeConfig {
        name: desired.name.clone(),
        tcp_listener_address: String::new(),
        metrics_address: None,
        created_at: 0,
        identity: None,
        admission: AdmissionConfig::default(),
        authority: None,
        relays: Vec::new(),
        outlets: Vec::new(),
        inlets: Vec::new(),
    };
    let mut settings_changed = false;
    let saved = match current {
        None => {
            changes.push(Change::new(
                Action::Create,
                "node",
                &desired.name,
                format!(
                    "identity {}, listening on {}",
                    desired.identity, desired.listener
                ),
            ));
            &empty
        }
        Some(c) => {
            let mut what = Vec::new();
            if c.config.identity.as_deref() != Some(desired.identity.as_str()) {
                what.push(format!(
                    "identity {} (was {})",
                    desired.identity,
                    c.config.identity.as_deref().unwrap_or("the default")
                ));
            }
            if !same_listener(&desired.listener, &c.config.tcp_listener_address) {
                what.push(format!(
                    "listener {} (was {})",
                    desired.listener, c.config.tcp_listener_address
                ));
            }
            let same_metrics = match (&desired.metrics, &c.config.metrics_address) {
                (Some(d), Some(saved)) => same_listener(d, saved),
                (d, saved) => d == saved,
            };
            if !same_metrics {
                what.push(format!(
                    "metrics {} (was {})",
                    desired.metrics.as_deref().unwrap_or("off"),
                    c.config.metrics_address.as_deref().unwrap_or("off")
                ));
            }
            if desired.admission != c.config.admission {
                what.push("admission".to_owned());
            }
            settings_changed = !what.is_empty();
            if settings_changed {
                changes.push(Change::new(
                    Action::Update,
                    "node",
                    &desired.name,
                    what.join(", "),
                ));
                if c.running {
                    changes.push(Change::new(
                        Action::Restart,
                        "node",
                        &desired.name,
                        "to take its new settings",
                    ));
                }
            } else {
                changes.push(Change::new(Action::Unchanged, "node", &desired.name, ""));
            }
            if !c.running {
                let how = if foreground { "in the foreground" } else { "" };
                changes.push(Change::new(Action::Start, "node", &desired.name, how));
            }
            &c.config
        }
    };
    let relays = diff(
        &mut changes,
        "relay",
        &desired.relays,
        &saved.relays,
        |r| &r.name,
        |a, b| a == b,
        |r| format!("at {}", r.at),
    );
    let outlets = diff(
        &mut changes,
        "tcp-outlet",
        &desired.outlets,
        &saved.outlets,
        |o| &o.name,
        |a, b| a == b,
        |o| match &o.allow {
            Some(p) => format!("to {}, allow {p}", o.to),
            None => format!("to {}", o.to),
        },
    );
    let inlets = diff(
        &mut changes,
        "tcp-inlet",
        &desired.inlets,
        &saved.inlets,
        |i| &i.alias,
        same_inlet,
        |i| format!("from {} to {}", i.from, i.to),
    );
    Plan {
        changes,
        settings_changed,
        relays,
        outlets,
        inlets,
    }
}

/// The identity and the membership, before the node runs with them.
async fn prepare(
    home: &Home,
    out: &Output,
    desired: &Desired,
    current: Option<&Current>,
) -> Result<()> {
    if desired.make_identity {
        let vault = open_vault(home).await?;
        let made = vault.create_identity(&desired.identity, unix_now()).await;
        vault.close().await;
        made?;
        out.note(format!("  + identity {}", desired.identity));
    }
    if let Some((text, t)) = &desired.enroll {
        // A running node of this identity takes up the credential at once.
        let running = current.is_some_and(|c| c.running)
            && current.is_some_and(|c| c.config.identity.as_deref() == Some(&desired.identity));
        let args = EnrollArgs {
            ticket: Some(text.clone()),
            ticket_file: None,
            identity: (!running).then(|| desired.identity.clone()),
            node: running.then(|| desired.name.clone()),
            timeout: Duration::from_secs(10),
            retry_count: None,
            retry_delay: None,
            no_retry: false,
            replace: false,
        };
        super::projects::enroll(home, &out.muted(), args)
            .await
            .with_context(|| {
                format!(
                    "cannot enroll identity {} in project {}",
                    desired.identity, t.project.name
                )
            })?;
        out.note(format!(
            "  + enrolled identity {} in project {}",
            desired.identity, t.project.name
        ));
    }
    Ok(())
}

/// Ask the running node for the relays, outlets and inlets that differ: deletions first
/// (they free names and ports), then creations.
async fn kept(home: &Home, out: &Output, name: &str, plan: &Plan) -> Result<()> {
    let socket = home.socket_path(name);
    let long = control::STATUS_TIMEOUT * 5;
    for alias in &plan.inlets.delete {
        control::call(
            &socket,
            &Request::InletDelete {
                alias: alias.clone(),
            },
            long,
        )
        .await
        .with_context(|| format!("cannot delete inlet {alias}"))?;
        out.note(format!("  - tcp-inlet {alias}"));
    }
    for outlet in &plan.outlets.delete {
        control::call(
            &socket,
            &Request::OutletDelete {
                name: outlet.clone(),
            },
            long,
        )
        .await
        .with_context(|| format!("cannot delete outlet {outlet}"))?;
        out.note(format!("  - tcp-outlet {outlet}"));
    }
    for relay in &plan.relays.delete {
        control::call(
            &socket,
            &Request::RelayDelete {
                name: relay.clone(),
            },
            RELAY_TIMEOUT * 2,
        )
        .await
        .with_context(|| format!("cannot delete relay {relay}"))?;
        out.note(format!("  - relay {relay}"));
    }
    for r in &plan.relays.create {
        let request = Request::RelayCreate {
            name: r.name.clone(),
            at: r.at.clone(),
            timeout_ms: u64::try_from(RELAY_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            keep_on_failure: false,
        };
        let answer = control::call(
            &socket,
            &request,
            RELAY_TIMEOUT * 2 + Duration::from_secs(2),
        )
        .await
        .with_context(|| format!("cannot create relay {} at {}", r.name, r.at))?;
        let view: RelayView =
            serde_json::from_value(answer).context("unexpected answer from the node")?;
        if !matches!(view.status.state, RelayState::Up { .. }) {
            bail!("relay {} is not up: {}", r.name, view.line(unix_now()));
        }
        out.note(format!("  + relay {} at {}", r.name, r.at));
    }
    for o in &plan.outlets.create {
        control::call(&socket, &Request::OutletCreate(o.clone()), long)
            .await
            .with_context(|| format!("cannot create outlet {}", o.name))?;
        out.note(format!("  + tcp-outlet {} to {}", o.name, o.to));
    }
    for i in &plan.inlets.create {
        control::call(&socket, &Request::InletCreate(i.clone()), long)
            .await
            .with_context(|| format!("cannot create inlet {}", i.alias))?;
        out.note(format!("  + tcp-inlet {} from {}", i.alias, i.from));
    }
    Ok(())
}

/// Run the node in this process, applying the file's relays, outlets and inlets once it
/// serves; if they cannot be applied, stop it and fail.
async fn foreground(home: &Home, out: &Output, name: &str, plan: &Plan, new: bool) -> Result<()> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = crate::node::run(home, name, |ready| {
        super::nodes::foreground_ready(out, ready);
        let _ = ready_tx.send(());
    });
    tokio::pin!(serving);
    let applied = async {
        ready_rx
            .await
            .map_err(|_| anyhow!("node {name:?} stopped before it served"))?;
        kept(home, out, name, plan).await
    };
    tokio::select! {
        ended = &mut serving => {
            if new && ended.is_err() {
                let _ = home.delete_node(name);
            }
            super::nodes::foreground_ended(name, ended?)?;
            bail!("node {name:?} stopped before the file was applied")
        }
        applied = applied => {
            if let Err(e) = applied {
                // The node serves, so its control socket is up: stop it and report.
                let socket = home.socket_path(name);
                let (_, ended) = tokio::join!(
                    control::stop(&socket, STOP_TIMEOUT),
                    &mut serving
                );
                if let Err(stop) = ended {
                    return Err(e.context(format!("and the node then failed: {stop:#}")));
                }
                return Err(e.context(format!("node {name:?} stopped: its file could not be applied")));
            }
            out.note(format!("Node {name} is as its file declares it."));
            super::nodes::foreground_ended(name, serving.await?)
        }
    }
}
