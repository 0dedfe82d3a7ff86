//! The refusal bench: how soon a request kith will not serve fails, next to how long the
//! same kind of request takes when it is served, both measured in the same run (DESIGN §7:
//! "a refused request returns non-zero within a second with the reason"); and what the
//! project node keeps after clients and a relayed node die without a goodbye.
//!
//! Measured as users deploy: every node is its own `kith` daemon (the binary next to this
//! one, [`crate::authority_bench::kith_next_to_exe`]), in a private `KITH_HOME`, on loopback. The project `acme`
//! has an authority (the project node) and members `db-node` (`ockam-relay=db`, keeping
//! relay `db`, its echo allowing `component = "web"` only), `web-node` (`component=web`),
//! `other-node` (`component=other`) and `strict-node` (which admits credential holders
//! only, `--require-credential`); `stranger-node` runs as an identity that is no member.
//!
//! - **Refusal latency** per class, p50 and p99 ([`RefusalClass`]). Each sample is one
//!   `kith message send … --from NODE --to ROUTE --timeout T` process run, timed from spawn
//!   to exit, as a user or a script meets it. Each record's baseline is the admitted
//!   request measured the same way on the same path: `web-node` to `db-node`'s echo through
//!   the relay, or directly. The classes take turns sample by sample, so that drift on the
//!   machine hits them alike. A refused class whose first samples all run into the timeout
//!   is not answered at all, and is sampled no further ([`RefusalBenchConfig::give_up_after`]):
//!   its figure is then the timeout, which says so plainly.
//! - **Churn**: the project node's channel count and RSS before, during and after a churn
//!   of client processes killed with SIGKILL mid-channel ([`crate::churn`]), once cold and
//!   once after warm-up churns (the allocator keeps what the first bursts made it take).
//! - **Restarts**: the project node's channel count and RSS after the relayed node has been
//!   killed with `kill -9` and started again [`RefusalBenchConfig::restart_cycles`] times,
//!   against after the first time.
//!
//! stderr shows each class's error line and whether its target is met: every refusal under
//! [`REFUSAL_TARGET`] and under [`RATIO_TARGET`] times the admitted request.
//!
//! The measuring code is shared by the `refusal` bench (release build) and the
//! `refusal_bench_smoke` test (tiny counts, debug build), so that it cannot rot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bench::{BenchRecord, ensure_fd_limit, percentile, rss_kib, settled_rss_kib, verdict};
use crate::churn::ChurnClients;
use crate::kith_home::{KithHome, field, poll_until, timed};

/// 1 s: every refusal should fail this fast (DESIGN §7).
pub const REFUSAL_TARGET: Duration = Duration::from_secs(1);

/// 3: and take at most this many times what the admitted request takes.
pub const RATIO_TARGET: f64 = 3.0;

/// 300,000 bytes: the oversized message, past the 256 KiB frame cap (DESIGN §3).
pub const OVERSIZED: usize = 300_000;

/// 2 MiB: how far above its baseline the project node's RSS may be after a churn, or
/// after the restarts, for the target to be met.
const RSS_SLACK_KIB: f64 = 2.0 * 1024.0;

/// 10 s: how long past its own `--timeout` a `kith message send` may take before it counts
/// as hung and is killed (the command itself waits its timeout plus 2 s at most).
const SEND_GRACE: Duration = Duration::from_secs(10);

/// 30 s: how long the project node may take to free a churn's channels, or the relay to
/// come back after a restart; either takes milliseconds, so only a bug takes this long.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// 100 ms: how often a wait for the project node or the relay looks again; each look runs
/// a `kith` command.
const POLL: Duration = Duration::from_millis(100);

/// The channels the project node holds at rest: the one of relay `db`'s keeper, and one
/// per member daemon (db-node, web-node, other-node, strict-node) following the
/// revocation feed. The stranger, a member of nothing, keeps none.
const AT_REST: u64 = 5;

/// The project node's name (`kith authority create`'s default).
const PROJECT_NODE: &str = "authority";

/// Relay `db`'s route to `db-node`'s echo, end to end.
const THROUGH_RELAY: &str = "/project/acme/service/forward_to_db/secure/api/service/echo";

/// A relay nobody keeps.
const THROUGH_NO_RELAY: &str = "/project/acme/service/forward_to_nosuch/secure/api/service/echo";

/// What every sample sends (but the oversized one).
const MESSAGE: &str = "hello";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct RefusalBenchConfig {
    /// The `kith` binary the daemons and the senders run.
    pub kith: PathBuf,
    /// `kith-churn-client`.
    pub churn_client: PathBuf,
    /// Samples per class (refused or admitted).
    pub samples: usize,
    /// Unmeasured admitted samples first, on each path.
    pub warmup: usize,
    /// `--timeout` of every sample: how long a refusal that is never answered costs.
    pub timeout: Duration,
    /// A refused class is sampled no further once this many samples, from its first, all
    /// ran into the timeout.
    pub give_up_after: usize,
    /// Client processes per churn.
    pub churn_processes: usize,
    /// Channels each client opens.
    pub churn_channels_each: usize,
    /// Churns between the cold one and the measured one.
    pub churn_warmups: usize,
    /// `kill -9`/start cycles of the relayed node.
    pub restart_cycles: usize,
}

impl RefusalBenchConfig {
    /// The full run (`cargo bench`): a few minutes while refusals are not answered (each
    /// class then costs `give_up_after` timeouts), well under one once they are.
    pub fn full(kith: PathBuf, churn_client: PathBuf) -> Self {
        Self {
            kith,
            churn_client,
            samples: 50,
            warmup: 5,
            timeout: Duration::from_secs(10),
            give_up_after: 3,
            churn_processes: 10,
            churn_channels_each: 100,
            churn_warmups: 5,
            restart_cycles: 100,
        }
    }

    /// Tiny counts, and refusals capped at 2 s, to keep the code from rotting.
    pub fn quick(kith: PathBuf, churn_client: PathBuf) -> Self {
        Self {
            kith,
            churn_client,
            samples: 3,
            warmup: 1,
            timeout: Duration::from_secs(2),
            give_up_after: 1,
            churn_processes: 2,
            churn_channels_each: 20,
            churn_warmups: 1,
            restart_cycles: 3,
        }
    }
}

/// Run every measurement, passing each record to `report` as it is known.
pub fn run_all(
    config: &RefusalBenchConfig,
    mut report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    let mut all = Vec::new();
    let mut emit = |records: Vec<BenchRecord>| {
        for r in records {
            report(&r);
            all.push(r);
        }
    };
    // The project node holds a connection per churned client, past a default soft limit
    // of 1,024 open files; the daemons inherit this process's limit.
    ensure_fd_limit(u64::try_from(
        config.churn_processes * config.churn_channels_each + 256,
    )?)?;
    let world = World::start(config).context("setting up the project and its nodes")?;
    let (latency, admitted) = refusals(config, &world)?;
    emit(latency);
    emit(churn(config, &world)?);
    emit(restarts(config, &world)?);
    emit(relayed_node_stopped(config, &world, &admitted)?);
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// The world

/// A private `KITH_HOME` with the project and its nodes, each a daemon; dropping it stops
/// them.
struct World {
    home: KithHome,
    /// `db-node`'s TCP listener, for the direct path.
    db_listener: String,
    /// `strict-node`'s TCP listener.
    strict_listener: String,
    /// The project node's TCP listener, where the churn's clients connect.
    project_listener: String,
}

impl World {
    fn start(config: &RefusalBenchConfig) -> anyhow::Result<Self> {
        let mut world = Self {
            home: KithHome::new(&config.kith, "refusal")?,
            db_listener: String::new(),
            strict_listener: String::new(),
            project_listener: String::new(),
        };
        let authority = world.json(&["authority", "create", "--project", "acme"])?;
        world.project_listener = field(&authority, "listener")?;
        for (node, attributes) in [
            ("db-node", &["ockam-relay=db"][..]),
            ("web-node", &["component=web"]),
            ("other-node", &["component=other"]),
            ("strict-node", &[]),
        ] {
            let mut ticket = Vec::new();
            for a in attributes {
                ticket.extend(["--attribute", a]);
            }
            let node_args: &[&str] = match node {
                "db-node" => &["--allow", r#"component = "web""#],
                "strict-node" => &["--require-credential"],
                _ => &[],
            };
            let created = world.home.enrolled_node(node, &ticket, node_args)?;
            match node {
                "db-node" => world.db_listener = field(&created, "listener")?,
                "strict-node" => world.strict_listener = field(&created, "listener")?,
                _ => {}
            }
        }
        world.ok(&["identity", "create", "stranger"])?;
        world.json(&["node", "create", "stranger-node", "--identity", "stranger"])?;
        let relay = world.json(&["relay", "create", "db", "--to", "db-node"])?;
        ensure!(relay["state"] == "up", "relay db is not up: {relay}");
        Ok(world)
    }

    /// Run `kith ARGS`, insisting on success; its stdout.
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.home.ok(args)
    }

    /// Run `kith ARGS --output json`; what it printed.
    fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.home.json(args)
    }

    /// The project node's pid and the secure channels it holds.
    fn project_node(&self) -> anyhow::Result<(u32, u64)> {
        let shown = self.json(&["node", "show", PROJECT_NODE])?;
        let pid = shown["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| anyhow!("no pid in {shown}"))?;
        let channels = shown["stats"]["channels"]
            .as_u64()
            .ok_or_else(|| anyhow!("no stats.channels in {shown}"))?;
        Ok((pid, channels))
    }

    /// Wait until the project node holds `want` channels (by `kith node show`); an error
    /// naming what it holds if it does not within [`SETTLE_WAIT`].
    fn until_project_channels(
        &self,
        want: impl Fn(u64) -> bool,
        what: &str,
    ) -> anyhow::Result<u64> {
        poll_until(SETTLE_WAIT, POLL, || {
            let (_, now) = self.project_node()?;
            Ok(if want(now) {
                Ok(now)
            } else {
                Err(format!(
                    "the project node holds {now} channels, waiting since {what},"
                ))
            })
        })
    }

    /// Run one sample of `class`.
    fn sample(&self, config: &RefusalBenchConfig, class: &Class) -> anyhow::Result<Sample> {
        let timeout = format!("{}ms", config.timeout.as_millis());
        let route = class.route(self);
        let mut args = vec![
            "message",
            "send",
            MESSAGE,
            "--from",
            class.from,
            "--to",
            &route,
            "--timeout",
            &timeout,
        ];
        // A message larger than a command line can carry goes through standard input.
        let input = class.oversized.then(|| {
            args[2] = "-";
            vec![b'x'; class.bytes()]
        });
        let command = self.home.command(&args);
        let run = timed(command, input, config.timeout + SEND_GRACE)
            .with_context(|| format!("{}: `{}`", class.name, args.join(" ")))?;
        let stderr = String::from_utf8_lossy(&run.output.stderr);
        Ok(Sample {
            took: run.took,
            ok: run.output.status.success(),
            reply: String::from_utf8_lossy(&run.output.stdout)
                .trim()
                .to_owned(),
            error: stderr.lines().last().unwrap_or_default().to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Refusal latency

/// The admitted requests, which the refused ones are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitted {
    /// `web-node` to `db-node`'s echo through relay `db`.
    Relay,
    /// `web-node` to `db-node`'s echo over its own listener.
    Direct,
    /// As `Direct`, with the message on standard input (for the oversized class).
    DirectLarge,
}

/// The kinds of request the bench sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalClass {
    /// A member whose attributes `db-node`'s echo policy does not allow (through the relay).
    DeniedByPolicy,
    /// A service the node does not have.
    NoSuchService,
    /// A relay nobody keeps.
    NoSuchRelay,
    /// A non-member, to a node that admits credential holders only.
    NonMember,
    /// A message larger than a frame.
    Oversized,
    /// Through the relay of a node that has been stopped.
    RelayedNodeStopped,
}

impl RefusalClass {
    /// The class's name in its records.
    pub fn name(self) -> &'static str {
        match self {
            Self::DeniedByPolicy => "denied_by_policy",
            Self::NoSuchService => "no_such_service",
            Self::NoSuchRelay => "no_such_relay",
            Self::NonMember => "non_member",
            Self::Oversized => "oversized",
            Self::RelayedNodeStopped => "relayed_node_stopped",
        }
    }

    fn class(self) -> Class {
        let (from, to, path) = match self {
            Self::DeniedByPolicy => ("other-node", To::Relay, Admitted::Relay),
            Self::NoSuchService => ("web-node", To::DbService("nosuch"), Admitted::Direct),
            Self::NoSuchRelay => ("web-node", To::Fixed(THROUGH_NO_RELAY), Admitted::Relay),
            Self::NonMember => ("stranger-node", To::Strict, Admitted::Direct),
            Self::Oversized => ("web-node", To::DbService("echo"), Admitted::DirectLarge),
            Self::RelayedNodeStopped => ("web-node", To::Relay, Admitted::Relay),
        };
        Class {
            name: self.name(),
            from,
            to,
            oversized: self == Self::Oversized,
            refused: Some(path),
        }
    }
}

/// Every class, in the order their records come.
pub const CLASSES: [RefusalClass; 6] = [
    RefusalClass::DeniedByPolicy,
    RefusalClass::NoSuchService,
    RefusalClass::NoSuchRelay,
    RefusalClass::NonMember,
    RefusalClass::Oversized,
    RefusalClass::RelayedNodeStopped,
];

/// Where a class's requests go.
#[derive(Debug, Clone, Copy)]
enum To {
    /// Relay `db`, to `db-node`'s echo.
    Relay,
    /// A route that needs no listener address.
    Fixed(&'static str),
    /// This service of `db-node`, over a channel to its own listener.
    DbService(&'static str),
    /// `strict-node`'s echo, over a channel to its own listener.
    Strict,
}

/// One kind of request: refused (measured against `refused`'s path) or admitted.
#[derive(Debug, Clone)]
struct Class {
    name: &'static str,
    from: &'static str,
    to: To,
    /// Sent on standard input (`message send -`): [`OVERSIZED`] bytes if refused,
    /// [`MESSAGE`]'s size if admitted.
    oversized: bool,
    /// For a refused class, the admitted path it is measured against; `None` for an
    /// admitted one.
    refused: Option<Admitted>,
}

impl Class {
    fn admitted(path: Admitted) -> Self {
        let (name, to) = match path {
            Admitted::Relay => ("admitted_relay", To::Relay),
            Admitted::Direct => ("admitted_direct", To::DbService("echo")),
            Admitted::DirectLarge => ("admitted_direct_stdin", To::DbService("echo")),
        };
        Self {
            name,
            from: "web-node",
            to,
            oversized: path == Admitted::DirectLarge,
            refused: None,
        }
    }

    fn route(&self, world: &World) -> String {
        let secure = |listener: &str, service: &str| {
            let (host, port) = listener.rsplit_once(':').unwrap_or((listener, ""));
            format!("/ip4/{host}/tcp/{port}/secure/api/service/{service}")
        };
        match self.to {
            To::Relay => THROUGH_RELAY.to_owned(),
            To::Fixed(route) => route.to_owned(),
            To::DbService(service) => secure(&world.db_listener, service),
            To::Strict => secure(&world.strict_listener, "echo"),
        }
    }

    fn bytes(&self) -> usize {
        if self.refused.is_some() {
            OVERSIZED
        } else {
            MESSAGE.len()
        }
    }
}

/// One `kith message send` run.
struct Sample {
    took: Duration,
    ok: bool,
    reply: String,
    /// The last line on stderr: the error, for a failed run.
    error: String,
}

/// 3: how many different error lines of a class stderr shows; a timeout's line differs
/// in every sample (it names the channel's random address and the time waited).
const ERRORS_SHOWN: usize = 3;

/// A class's samples so far.
struct Samples {
    class: Class,
    took: Vec<Duration>,
    /// Samples that ran into the timeout.
    timed_out: usize,
    /// The first [`ERRORS_SHOWN`] different error lines seen.
    errors: Vec<String>,
}

impl Samples {
    fn new(class: Class) -> Self {
        Self {
            class,
            took: Vec::new(),
            timed_out: 0,
            errors: Vec::new(),
        }
    }

    /// Sampled no further: every sample so far, and enough of them, ran into the timeout.
    fn given_up(&self, config: &RefusalBenchConfig) -> bool {
        self.class.refused.is_some()
            && self.took.len() >= config.give_up_after
            && self.timed_out == self.took.len()
    }

    /// Take one sample; an error if an admitted request fails or a refused one succeeds,
    /// which means the set-up is wrong, not that kith is slow.
    fn take(&mut self, config: &RefusalBenchConfig, world: &World) -> anyhow::Result<()> {
        let s = world.sample(config, &self.class)?;
        match (&self.class.refused, s.ok) {
            (None, false) => bail!(
                "{}: the admitted request failed: {}",
                self.class.name,
                s.error
            ),
            (None, true) => ensure!(
                self.class.oversized || s.reply == MESSAGE,
                "{}: the echo answered {:?}",
                self.class.name,
                s.reply
            ),
            (Some(_), true) => bail!(
                "{}: the request that should be refused was answered: {:?}",
                self.class.name,
                s.reply
            ),
            (Some(_), false) => {
                if s.took >= config.timeout {
                    self.timed_out += 1;
                }
                if self.errors.len() < ERRORS_SHOWN && !self.errors.contains(&s.error) {
                    self.errors.push(s.error);
                }
            }
        }
        self.took.push(s.took);
        Ok(())
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sample every class but [`RefusalClass::RelayedNodeStopped`] (the relayed node must be
/// up for the others), the admitted requests alongside; their records, and the admitted
/// samples for the last class.
fn refusals(
    config: &RefusalBenchConfig,
    world: &World,
) -> anyhow::Result<(Vec<BenchRecord>, Vec<Samples>)> {
    eprintln!(
        "refusal: {} samples per class, each one `kith message send --timeout {:?}`",
        config.samples, config.timeout
    );
    let mut admitted: Vec<Samples> = [Admitted::Relay, Admitted::Direct, Admitted::DirectLarge]
        .into_iter()
        .map(|p| Samples::new(Class::admitted(p)))
        .collect();
    for a in &mut admitted {
        for _ in 0..config.warmup {
            a.take(config, world)?;
        }
        a.took.clear();
    }
    let mut refused: Vec<Samples> = CLASSES
        .iter()
        .filter(|c| **c != RefusalClass::RelayedNodeStopped)
        .map(|c| Samples::new(c.class()))
        .collect();
    for _ in 0..config.samples {
        for s in admitted.iter_mut() {
            s.take(config, world)?;
        }
        for s in refused.iter_mut() {
            if !s.given_up(config) {
                s.take(config, world)?;
            }
        }
    }
    let mut records = Vec::new();
    for s in &refused {
        records.extend(class_records(config, s, &admitted));
    }
    Ok((records, admitted))
}

/// The p50 and p99 records of a refused class, against the admitted samples of its path;
/// says on stderr what it saw and whether the target is met.
fn class_records(
    config: &RefusalBenchConfig,
    s: &Samples,
    admitted: &[Samples],
) -> Vec<BenchRecord> {
    let path = s.class.refused.unwrap_or(Admitted::Direct);
    let base = admitted
        .iter()
        .find(|a| a.class.name == Class::admitted(path).name)
        .map(|a| a.took.as_slice())
        .unwrap_or_default();
    let (p50, p99) = (percentile(&s.took, 50), percentile(&s.took, 99));
    let (b50, b99) = (percentile(base, 50), percentile(base, 99));
    let worst = s.took.iter().max().copied().unwrap_or_default();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE);
    let met = worst < REFUSAL_TARGET
        && ratio(p50, b50) <= RATIO_TARGET
        && ratio(p99, b99) <= RATIO_TARGET;
    let answered = if s.timed_out == 0 {
        "every one answered".to_owned()
    } else {
        format!(
            "{} of {} ran into the {:?} timeout: not answered",
            s.timed_out,
            s.took.len(),
            config.timeout
        )
    };
    eprintln!(
        "refusal: {:<20} p50 {:>7.1} ms, p99 {:>7.1} ms against {} p50 {:.1} ms, p99 {:.1} ms; {answered}; target under {REFUSAL_TARGET:?} and {RATIO_TARGET}x {}",
        s.class.name,
        millis(p50),
        millis(p99),
        Class::admitted(path).name,
        millis(b50),
        millis(b99),
        verdict(met),
    );
    for e in &s.errors {
        eprintln!("refusal: {:<20} said: {e}", s.class.name);
    }
    let name = |q: &str| format!("refusal_{}_{q}", s.class.name);
    vec![
        BenchRecord::new(name("p50"), millis(p50), "ms", millis(b50)),
        BenchRecord::new(name("p99"), millis(p99), "ms", millis(b99)),
    ]
}

/// Stop the relayed node and sample requests through its relay.
fn relayed_node_stopped(
    config: &RefusalBenchConfig,
    world: &World,
    admitted: &[Samples],
) -> anyhow::Result<Vec<BenchRecord>> {
    world.ok(&["node", "stop", "db-node"])?;
    let mut s = Samples::new(RefusalClass::RelayedNodeStopped.class());
    for _ in 0..config.samples {
        if s.given_up(config) {
            break;
        }
        s.take(config, world)?;
    }
    Ok(class_records(config, &s, admitted))
}

// ---------------------------------------------------------------------------------------
// Churn and restarts

/// One churn: start the clients, wait until the project node holds their channels, kill
/// them, wait until it holds `before` again. Returns the RSS (KiB) and channel count
/// while the clients held their channels.
fn churn_once(
    config: &RefusalBenchConfig,
    world: &World,
    before: u64,
) -> anyhow::Result<(u64, u64)> {
    let clients = ChurnClients::start(
        &config.churn_client,
        &world.project_listener,
        config.churn_processes,
        config.churn_channels_each,
    )?;
    let opened = u64::try_from(clients.channels())?;
    let during =
        world.until_project_channels(|n| n >= before + opened, "the clients' channels opened")?;
    let (pid, _) = world.project_node()?;
    let rss = rss_kib(pid)?;
    clients.kill_9()?;
    world.until_project_channels(|n| n == before, "the clients were killed")?;
    Ok((rss, during))
}

/// The project node before, during and after churns of clients killed mid-channel: the
/// first (cold) one, and one after [`RefusalBenchConfig::churn_warmups`] more.
fn churn(config: &RefusalBenchConfig, world: &World) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "churn: {} client processes of {} channels each, killed with SIGKILL mid-channel; a cold churn, {} warm-up churns, a measured one",
        config.churn_processes, config.churn_channels_each, config.churn_warmups
    );
    // The senders' channels of the refusal samples end as they finish; wait until only the
    // relay's is left, so that the churn starts from rest.
    let before = world.until_project_channels(|n| n == AT_REST, "the refusal samples finished")?;
    let (pid, _) = world.project_node()?;
    let cold_before = settled_rss_kib(pid)?;
    let (cold_during, during_channels) = churn_once(config, world, before)?;
    let cold_after = settled_rss_kib(pid)?;
    let mut history = vec![cold_before, cold_after];
    for _ in 0..config.churn_warmups {
        churn_once(config, world, before)?;
        history.push(settled_rss_kib(pid)?);
    }
    let warm_before = settled_rss_kib(pid)?;
    let (warm_during, _) = churn_once(config, world, before)?;
    let (_, after) = world.project_node()?;
    let warm_after = settled_rss_kib(pid)?;
    history.push(warm_after);
    let back = after == before && (warm_after as f64) <= warm_before as f64 + RSS_SLACK_KIB;
    eprintln!(
        "churn: {before} channels before, {during_channels} during, {after} after; RSS (KiB) cold {cold_before} → {cold_during} → {cold_after}, warm {warm_before} → {warm_during} → {warm_after}; after each churn {history:?}; target: channels back, RSS within 2 MiB of before the warm churn {}",
        verdict(back)
    );
    let kib = |k: u64| k as f64;
    Ok(vec![
        BenchRecord::new(
            "churn_channels_during",
            during_channels as f64,
            "channels",
            before as f64,
        ),
        BenchRecord::new(
            "churn_channels_after",
            after as f64,
            "channels",
            before as f64,
        ),
        BenchRecord::new(
            "churn_rss_during_cold",
            kib(cold_during),
            "KiB",
            kib(cold_before),
        ),
        BenchRecord::new(
            "churn_rss_after_cold",
            kib(cold_after),
            "KiB",
            kib(cold_before),
        ),
        BenchRecord::new(
            "churn_rss_during",
            kib(warm_during),
            "KiB",
            kib(warm_before),
        ),
        BenchRecord::new("churn_rss_after", kib(warm_after), "KiB", kib(warm_before)),
    ])
}

/// `kill -9` the relayed node, start it, and wait until its relay is up and carries a
/// message; how long that took.
fn restart_relayed_node(config: &RefusalBenchConfig, world: &World) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let shown = world.json(&["node", "show", "db-node"])?;
    let pid = shown["pid"]
        .as_u64()
        .ok_or_else(|| anyhow!("no pid in {shown}"))?;
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)
        .with_context(|| format!("kill -9 {pid} (db-node)"))?;
    world.ok(&["node", "start", "db-node"])?;
    poll_until(SETTLE_WAIT, POLL, || {
        let relay = world.json(&["relay", "show", "db"])?;
        Ok(if relay["state"] == "up" {
            Ok(())
        } else {
            Err(format!(
                "relay db, since db-node was restarted, is not up: {relay},"
            ))
        })
    })?;
    let up = started.elapsed();
    let mut through = Samples::new(Class::admitted(Admitted::Relay));
    through
        .take(config, world)
        .context("a message through the relay after a restart")?;
    Ok(up)
}

/// The project node after [`RefusalBenchConfig::restart_cycles`] `kill -9`/start cycles of
/// the relayed node, against after the first.
fn restarts(config: &RefusalBenchConfig, world: &World) -> anyhow::Result<Vec<BenchRecord>> {
    let cycles = config.restart_cycles.max(1);
    eprintln!("restarts: {cycles} kill -9/start cycles of the relayed node");
    let mut up = vec![restart_relayed_node(config, world)?];
    // The killed node's channel, and the message's, end on their own.
    let first_channels = world.until_project_channels(|n| n == AT_REST, "the first restart")?;
    let (pid, _) = world.project_node()?;
    let first_rss = settled_rss_kib(pid)?;
    for _ in 1..cycles {
        up.push(restart_relayed_node(config, world)?);
    }
    let after_channels = world.until_project_channels(|n| n == first_channels, "the restarts")?;
    let after_rss = settled_rss_kib(pid)?;
    let met = (after_rss as f64) <= first_rss as f64 + RSS_SLACK_KIB;
    eprintln!(
        "restarts: relay up again {:.0} ms (p50) / {:.0} ms (p99) after each kill -9; project node {first_channels} → {after_channels} channels, RSS {first_rss} → {after_rss} KiB; target: RSS within 2 MiB {}",
        millis(percentile(&up, 50)),
        millis(percentile(&up, 99)),
        verdict(met)
    );
    Ok(vec![
        BenchRecord::new(
            "restarts_channels_after",
            after_channels as f64,
            "channels",
            first_channels as f64,
        ),
        BenchRecord::new(
            "restarts_rss_after",
            after_rss as f64,
            "KiB",
            first_rss as f64,
        ),
    ])
}
