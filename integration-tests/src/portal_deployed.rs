//! The deployed portal bench (issue 18): TCP portals as users deploy them, every node a
//! `kith` daemon of its own, each figure against baselines measured in the same run.
//!
//! # Set-up
//!
//! In a private `KITH_HOME` ([`KithHome`]), on loopback, the README's deployment: the project
//! node (`kith authority create --project acme`); `db-node`, enrolled with a ticket for relay
//! `db`, serving the outlets (`sink`, `echo-server`) to members with `component = "web"` and holding
//! relay `db` at the project node; `web-node`, enrolled with `component=web`, serving the
//! inlets. Two routes from `web-node` to an outlet:
//!
//! - **direct**: `/ip4/127.0.0.1/tcp/PORT/secure/api/service/NAME`, PORT `db-node`'s own
//!   listener: client → `web-node` → `db-node` → server, three TCP connections.
//! - **relay**: `/project/acme/service/forward_to_db/secure/api/service/NAME`: one more node
//!   (the project node) and connection, and a second channel nested in the first.
//!
//! The servers (a sink that counts what it reads and answers the count once the client
//! half-closes, and a 64-byte echo) and the clients run in this process, on plain tokio
//! sockets ([`crate::portal_bench`]'s).
//!
//! # Baselines
//!
//! - **raw TCP**: the client straight to the server.
//! - **bare chain** ([`crate::bare_chain`]): an inlet process and an outlet process that only
//!   seal and open each chunk with kith's AEAD, in frames: the same sockets as the direct
//!   portal, with no identities, routes, messages or credit.
//! - **bare chain, relayed**: the same with a hop process in the middle that opens each frame
//!   and seals it again under another key: one more open-and-seal and one more connection,
//!   as the relay path has.
//!
//! # Measurements
//!
//! - `deployed_rss`: the RSS each daemon (`web-node`, `db-node`) gains per open portal
//!   session: [`DeployedBenchConfig::sessions`] sessions through the direct inlet to the
//!   echo, each having echoed 64 bytes, held open; RSS settled before and after. It runs
//!   first, before the bulk transfers leave freed memory in the daemons' allocators.
//! - `deployed_bulk`: MB/s of one session that writes [`DeployedBenchConfig::bulk_bytes`]
//!   and half-closes, the sink answering the count: raw TCP, each bare chain, each portal
//!   path, in alternating rounds, each path's best round. (`deployed_bulk_direct` runs only
//!   raw TCP, the bare chain and the direct portal: one path at a time in the daemons, for
//!   a profiler.)
//! - `deployed_latency`: p50 and p99 of sequential 64-byte round trips to the echo, on one
//!   connection per path, the paths taking turns in blocks of 100.
//!
//! Every record is a [`PortalRecord`]: DESIGN §7's five keys, and either the target with
//! whether it was met or, for a figure that only explains the others, none. The measuring
//! code is shared by the `portal` bench (release build) and the `portal_deployed_smoke` test
//! (tiny counts, debug build), so that it cannot rot.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use kith_transport::portal::CHUNK;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::bare_chain::Role;
use crate::bench::{
    BenchRecord, SMALL_PAYLOAD, ensure_fd_limit, micros, percentile, run_bench, settled_rss_kib,
};
use crate::kith_home::{KithHome, field, poll_until};
use crate::portal_bench::{
    PortalRecord, TargetIs, TargetOn, echo, round_trip, serve, sink, transfer,
};

/// 0.8: a direct portal's bulk throughput should be at least this share of the bare
/// chain's: kith may cost a fifth more than sealing and relaying the bytes alone.
pub const DIRECT_VS_BARE_TARGET: f64 = 0.8;

/// 0.35: a direct portal's bulk throughput should be at least this share of raw TCP's.
pub const DIRECT_VS_RAW_TARGET: f64 = 0.35;

/// 0.8: a relayed portal's bulk throughput should be at least this share of the relayed
/// bare chain's.
pub const RELAY_VS_BARE_TARGET: f64 = 0.8;

/// 0.6: a relayed portal's bulk throughput should be at least this share of a direct one's.
pub const RELAY_VS_DIRECT_TARGET: f64 = 0.6;

/// 2.0: a direct portal's p50 round trip should take at most this many times raw TCP's.
pub const LATENCY_TARGET: f64 = 2.0;

/// The measurements, in the order they run; `--only NAME` runs one.
pub const MEASUREMENTS: &[&str] = &["deployed_rss", "deployed_bulk", "deployed_latency"];

/// `--only` this: every measurement of this bench.
pub const ALL: &str = "deployed";

/// `--only` this: the direct half of `deployed_bulk` (raw TCP, the bare chain, the direct
/// portal), so that a profiler attached to the daemons sees one path.
pub const DIRECT_BULK: &str = "deployed_bulk_direct";

/// 10 s: bounds each round trip, each session's opening and each process's start.
/// Loopback answers in milliseconds; only a bug takes this long.
const WAIT: Duration = Duration::from_secs(10);

/// 100: round trips on one path before the next path's turn. The paths take turns so that
/// a busy or quiet spell of a shared machine falls on all of them alike, not on whichever
/// path was measuring then.
const RTT_BLOCK: usize = 100;

/// 20 s: how long the daemons may take to count the sessions just opened or closed.
const SETTLE_WAIT: Duration = Duration::from_secs(20);

/// 5 ms: how long a wait for the daemons' counts pauses between looks (each is a `kith`
/// command).
const POLL: Duration = Duration::from_millis(5);

/// File descriptors this process needs beyond two per held session (the client's and the
/// echo's): stdio, pipes to the chain's processes, the runtime, the servers.
const SPARE_FDS: u64 = 256;

/// The project, as `kith authority create` names it.
const PROJECT: &str = "acme";

/// The node with the inlets, next to the clients.
const INLET_NODE: &str = "web-node";

/// The node with the outlets, next to the servers.
const OUTLET_NODE: &str = "db-node";

/// `db-node`'s relay at the project node.
const RELAY: &str = "db";

/// The outlet to the sink.
const SINK_OUTLET: &str = "sink";

/// The outlet to the echo server (every node serves an `echo` of its own already).
const ECHO_OUTLET: &str = "echo-server";

const MIB: f64 = 1024.0 * 1024.0;

/// Whether `--only NAME` names this bench's measurements (all, one, or the direct bulk).
pub fn selects(name: &str) -> bool {
    name == ALL || name == DIRECT_BULK || MEASUREMENTS.contains(&name)
}

/// How much to measure, and with what.
#[derive(Debug, Clone)]
pub struct DeployedBenchConfig {
    /// The `kith` binary the daemons and commands run.
    pub kith: PathBuf,
    /// The `kith-bare-chain` binary.
    pub bare_chain: PathBuf,
    /// Bytes per bulk transfer (and an eighth of it, unmeasured, to warm each path up).
    pub bulk_bytes: u64,
    /// Bulk rounds, each one transfer per path.
    pub bulk_rounds: usize,
    /// The most plaintext a bare chain seals into one frame: kith's chunk unless varied.
    pub chunk: usize,
    /// Unmeasured round trips on each path before the first measured one.
    pub warmup_round_trips: usize,
    /// Measured round trips per path.
    pub round_trips: usize,
    /// Portal sessions held open for the RSS figure.
    pub sessions: usize,
    /// [`ALL`], [`DIRECT_BULK`] or one of [`MEASUREMENTS`]; `None` runs them all.
    pub only: Option<String>,
}

impl DeployedBenchConfig {
    /// The full run (`cargo bench`): 512 MiB transfers, 10,000 round trips, 200 sessions.
    pub fn full(kith: PathBuf, bare_chain: PathBuf) -> Self {
        Self {
            kith,
            bare_chain,
            bulk_bytes: 512 * 1024 * 1024,
            bulk_rounds: 3,
            chunk: CHUNK,
            warmup_round_trips: 1_000,
            round_trips: 10_000,
            sessions: 200,
            only: None,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick(kith: PathBuf, bare_chain: PathBuf) -> Self {
        Self {
            kith,
            bare_chain,
            bulk_bytes: 4 * 1024 * 1024,
            bulk_rounds: 1,
            chunk: CHUNK,
            warmup_round_trips: 20,
            round_trips: 200,
            sessions: 20,
            only: None,
        }
    }

    fn wants(&self, measurement: &str) -> bool {
        match self.only.as_deref() {
            None | Some(ALL) => true,
            Some(DIRECT_BULK) => measurement == "deployed_bulk",
            Some(only) => only == measurement,
        }
    }
}

/// Run every selected measurement, passing each record to `report` as it is known. Builds
/// its own tokio runtime (for the servers and clients); call it from outside one.
pub fn run_all(
    config: &DeployedBenchConfig,
    report: impl FnMut(&PortalRecord),
) -> anyhow::Result<Vec<PortalRecord>> {
    if let Some(only) = &config.only {
        ensure!(
            selects(only),
            "--only {only:?} is not a deployed portal measurement; one of {:?}",
            [&[ALL, DIRECT_BULK][..], MEASUREMENTS].concat()
        );
    }
    ensure_fd_limit(u64::try_from(config.sessions)? * 2 + SPARE_FDS)?;
    run_bench(report, |rt, out| {
        let sink = rt.block_on(serve(sink))?;
        let echo = rt.block_on(serve(echo))?;
        let deployment =
            Deployment::start(&config.kith, sink, echo).context("deploying the nodes")?;
        let measured = (|| {
            if config.wants("deployed_rss") {
                out.emit(session_rss(config, &deployment, &rt).context("RSS per session")?);
            }
            if config.wants("deployed_bulk") {
                let relay = config.only.as_deref() != Some(DIRECT_BULK);
                out.emit(bulk(config, &deployment, &rt, relay).context("bulk throughput")?);
            }
            if config.wants("deployed_latency") {
                out.emit(latency(config, &deployment, &rt).context("round trips")?);
            }
            anyhow::Ok(())
        })();
        deployment.nodes.report_trouble();
        measured
    })
}

// ---------------------------------------------------------------------------------------
// The deployment

/// How an inlet reaches its outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortalPath {
    /// Over `db-node`'s own listener.
    Direct,
    /// Through relay `db` at the project node.
    Relay,
}

/// A server in this process and the inlets on `web-node` to its outlet on `db-node`.
#[derive(Debug, Clone, Copy)]
struct Portals {
    /// The server itself.
    server: SocketAddr,
    /// The inlet whose route is direct.
    direct: SocketAddr,
    /// The inlet whose route goes through the relay.
    relay: SocketAddr,
}

/// The nodes and the portals to the sink and the echo.
struct Deployment {
    nodes: Nodes,
    /// To the sink.
    sink: Portals,
    /// To the echo server.
    echo: Portals,
}

impl Deployment {
    /// The nodes, and an outlet and two inlets to each server.
    fn start(kith: &Path, sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<Self> {
        let nodes = Nodes::start(kith)?;
        Ok(Self {
            sink: nodes.portals(SINK_OUTLET, sink)?,
            echo: nodes.portals(ECHO_OUTLET, echo)?,
            nodes,
        })
    }
}

/// The project node, `db-node` and `web-node`, each a daemon in a private home; dropping it
/// stops them.
struct Nodes {
    home: KithHome,
    /// `db-node`'s TCP listener, for the direct route.
    outlet_listener: SocketAddr,
    /// `web-node`'s daemon.
    inlet_pid: u32,
    /// `db-node`'s daemon.
    outlet_pid: u32,
}

impl Nodes {
    fn start(kith: &Path) -> anyhow::Result<Self> {
        let home = KithHome::new(kith, "portal-deployed")?;
        home.json(&["authority", "create", "--project", PROJECT])?;
        let allow_web = r#"component = "web""#;
        let outlet_node =
            home.enrolled_node(OUTLET_NODE, &["--relay", RELAY], &["--allow", allow_web])?;
        home.enrolled_node(INLET_NODE, &["--attribute", "component=web"], &[])?;
        let relay = home.json(&["relay", "create", RELAY, "--to", OUTLET_NODE])?;
        ensure!(relay["state"] == "up", "relay {RELAY} is not up: {relay}");
        let nodes = Self {
            outlet_listener: field(&outlet_node, "listener")?
                .parse()
                .context("db-node's listener")?,
            inlet_pid: home.pid(INLET_NODE)?,
            outlet_pid: home.pid(OUTLET_NODE)?,
            home,
        };
        eprintln!(
            "deployed: daemons in {}: project node pid {}, {OUTLET_NODE} (outlets) pid {}, {INLET_NODE} (inlets) pid {}",
            nodes.home.path().display(),
            nodes.home.pid("authority")?,
            nodes.outlet_pid,
            nodes.inlet_pid,
        );
        Ok(nodes)
    }

    /// Outlet `name` on `db-node` to `server`, for members with `component = "web"`, and an
    /// inlet to it on each path.
    fn portals(&self, name: &str, server: SocketAddr) -> anyhow::Result<Portals> {
        self.outlet(name, server)?;
        Ok(Portals {
            server,
            direct: self.inlet(name, PortalPath::Direct)?,
            relay: self.inlet(name, PortalPath::Relay)?,
        })
    }

    /// Outlet `name` on `db-node`, to `target`, for members with `component = "web"`.
    fn outlet(&self, name: &str, target: SocketAddr) -> anyhow::Result<()> {
        let target = target.to_string();
        self.home.json(&[
            "tcp-outlet",
            "create",
            "--at",
            OUTLET_NODE,
            "--from",
            name,
            "--to",
            &target,
            "--allow",
            r#"component = "web""#,
        ])?;
        Ok(())
    }

    /// An inlet on `web-node` to outlet `outlet` by `path`, on a free port; where it
    /// listens.
    fn inlet(&self, outlet: &str, path: PortalPath) -> anyhow::Result<SocketAddr> {
        let route = match path {
            PortalPath::Direct => format!(
                "/ip4/{}/tcp/{}/secure/api/service/{outlet}",
                self.outlet_listener.ip(),
                self.outlet_listener.port()
            ),
            PortalPath::Relay => {
                format!("/project/{PROJECT}/service/forward_to_{RELAY}/secure/api/service/{outlet}")
            }
        };
        let alias = format!("{outlet}-{path:?}").to_lowercase();
        let created = self.home.json(&[
            "tcp-inlet",
            "create",
            "--at",
            INLET_NODE,
            "--from",
            "127.0.0.1:0",
            "--to",
            &route,
            "--alias",
            &alias,
        ])?;
        ensure!(created["listening"] == true, "inlet {alias}: {created}");
        field(&created, "from")?
            .parse()
            .with_context(|| format!("inlet {alias}'s address"))
    }

    /// The open sessions of outlet `name`, by `kith tcp-outlet show`.
    fn open_sessions(&self, name: &str) -> anyhow::Result<u64> {
        let shown = self
            .home
            .json(&["tcp-outlet", "show", name, "--at", OUTLET_NODE])?;
        shown["sessions"]["open"]
            .as_u64()
            .ok_or_else(|| anyhow!("no sessions.open in {shown}"))
    }

    /// Wait until outlet `name` has `want` sessions open; an error naming how many it has
    /// if it does not within [`SETTLE_WAIT`].
    fn until_open_sessions(&self, name: &str, want: u64) -> anyhow::Result<()> {
        poll_until(SETTLE_WAIT, POLL, || {
            let now = self.open_sessions(name)?;
            Ok(if now == want {
                Ok(())
            } else {
                Err(format!(
                    "outlet {name} has {now} sessions open, not {want},"
                ))
            })
        })
    }

    /// What outlet `name` counted: bytes written to its server (from the inlets), and read
    /// from it (back to them).
    fn outlet_bytes(&self, name: &str) -> anyhow::Result<(u64, u64)> {
        let shown = self
            .home
            .json(&["tcp-outlet", "show", name, "--at", OUTLET_NODE])?;
        let count = |key: &str| {
            shown["sessions"][key]
                .as_u64()
                .ok_or_else(|| anyhow!("no sessions.{key} in {shown}"))
        };
        Ok((count("bytes_out")?, count("bytes_in")?))
    }

    /// Say on stderr if a portal session failed or the relay reconnected: either explains a
    /// figure that looks wrong.
    fn report_trouble(&self) {
        for outlet in [SINK_OUTLET, ECHO_OUTLET] {
            if let Ok(shown) = self
                .home
                .json(&["tcp-outlet", "show", outlet, "--at", OUTLET_NODE])
                && shown["sessions"]["failed"].as_u64() != Some(0)
            {
                eprintln!("deployed: outlet {outlet} had failed sessions: {shown}");
            }
        }
        if let Ok(relay) = self
            .home
            .json(&["relay", "show", RELAY, "--at", OUTLET_NODE])
            && relay["reconnections"].as_u64() != Some(0)
        {
            eprintln!("deployed: relay {RELAY} went down during the run: {relay}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bare chain

/// The processes of one bare chain to a server, killed when dropped.
struct BareChain {
    /// Inlet first.
    processes: Vec<(Role, Child, Option<ChildStdin>)>,
    /// Where the inlet listens.
    inlet: SocketAddr,
}

impl BareChain {
    /// An inlet, a hop if `relayed`, and an outlet to `server`; each started once the next
    /// one listens.
    fn start(
        config: &DeployedBenchConfig,
        server: SocketAddr,
        relayed: bool,
    ) -> anyhow::Result<Self> {
        let mut chain = Self {
            processes: Vec::new(),
            inlet: server,
        };
        let link = if relayed { "1" } else { "0" };
        let mut to = chain.spawn(config, Role::Outlet, server, link)?;
        if relayed {
            to = chain.spawn(config, Role::Hop, to, "0")?;
        }
        chain.inlet = chain.spawn(config, Role::Inlet, to, "0")?;
        chain.processes.reverse();
        let pids: Vec<String> = chain
            .processes
            .iter()
            .map(|(role, child, _)| format!("{} pid {}", role.name(), child.id()))
            .collect();
        eprintln!(
            "deployed: bare chain{} to {server}: {}",
            if relayed { ", relayed," } else { "" },
            pids.join(", ")
        );
        Ok(chain)
    }

    /// Start one process of the chain, towards `to`, and wait for the port it listens on.
    fn spawn(
        &mut self,
        config: &DeployedBenchConfig,
        role: Role,
        to: SocketAddr,
        link: &str,
    ) -> anyhow::Result<SocketAddr> {
        let exe = &config.bare_chain;
        let mut child = Command::new(exe)
            .args([role.name(), "--to", &to.to_string(), "--link", link])
            .args(["--chunk", &config.chunk.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), role.name()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        self.processes.push((role, child, stdin));
        let stdout = stdout.ok_or_else(|| anyhow!("the {} has no stdout", role.name()))?;
        // A thread reads the port line, so that the wait for it has a bound; it ends with
        // that line or the process.
        let (tx, line) = mpsc::channel();
        std::thread::spawn(move || {
            let first = BufReader::new(stdout).lines().next();
            let _ = tx.send(first.and_then(Result::ok));
        });
        let port = line
            .recv_timeout(WAIT)
            .map_err(|_| {
                anyhow!(
                    "the bare chain's {} did not listen within {WAIT:?}",
                    role.name()
                )
            })?
            .ok_or_else(|| {
                anyhow!(
                    "the bare chain's {} exited (its error is above)",
                    role.name()
                )
            })?;
        let port: u16 = port
            .trim()
            .parse()
            .with_context(|| format!("the {} printed {port:?}, not a port", role.name()))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

impl Drop for BareChain {
    fn drop(&mut self) {
        for (_, child, stdin) in &mut self.processes {
            // Closing stdin asks it to exit; SIGKILL makes sure, and the wait reaps it.
            drop(stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// RSS per session

/// Sessions through the direct inlet to the echo, each having echoed once, held open.
async fn open_sessions(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(count);
    let request = [0x5Au8; SMALL_PAYLOAD];
    for i in 0..count {
        let open = async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            s.write_all(&request).await?;
            let mut answer = [0u8; SMALL_PAYLOAD];
            s.read_exact(&mut answer).await?;
            ensure!(answer == request, "the echo answered something else");
            anyhow::Ok(s)
        };
        held.push(
            tokio::time::timeout(WAIT, open)
                .await
                .with_context(|| format!("session {i} did not echo within {WAIT:?}"))??,
        );
    }
    Ok(held)
}

/// KiB of RSS each daemon gains per open session, against its RSS before.
fn session_rss(
    config: &DeployedBenchConfig,
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<PortalRecord>> {
    let k = config.sessions;
    ensure!(k > 0, "the RSS measurement needs at least one session");
    eprintln!("deployed: RSS of each daemon with {k} portal sessions open");
    let inlet = d.echo.direct;
    // One session first, closed again: what only the first costs (the connection between
    // the daemons, the inlet's first buffers) is then in the "before".
    drop(rt.block_on(open_sessions(inlet, 1))?);
    d.nodes.until_open_sessions(ECHO_OUTLET, 0)?;
    let pids = [
        (INLET_NODE, d.nodes.inlet_pid),
        (OUTLET_NODE, d.nodes.outlet_pid),
    ];
    let before = pids.map(|(_, pid)| settled_rss_kib(pid));
    let held = rt.block_on(open_sessions(inlet, k))?;
    d.nodes
        .until_open_sessions(ECHO_OUTLET, u64::try_from(k)?)?;
    let after = pids.map(|(_, pid)| settled_rss_kib(pid));
    drop(held);
    d.nodes.until_open_sessions(ECHO_OUTLET, 0)?;
    let mut records = Vec::new();
    for (((node, _), before), after) in pids.into_iter().zip(before).zip(after) {
        let (before, after) = (before?, after?);
        // A growth can be nil or negative (the allocator had the pages already); a record's
        // value must be positive, so the whole growth counts as at least 1 KiB.
        let per_session = (after as f64 - before as f64).max(1.0) / k as f64;
        let role = if node == INLET_NODE {
            "inlet"
        } else {
            "outlet"
        };
        let r = PortalRecord::informative(BenchRecord::new(
            format!("deployed_{role}_rss_per_session"),
            per_session,
            "KiB",
            before as f64,
        ))
        .with("sessions", k as f64)
        .with("rss_before_kib", before as f64)
        .with("rss_after_kib", after as f64)
        .with_baseline_is(
            "the daemon's RSS (KiB) before the sessions opened; value is KiB of RSS per open session",
        );
        eprintln!(
            "deployed: {node} ({role}) RSS {before} KiB → {after} KiB with {k} sessions open: {per_session:.1} KiB per session",
        );
        records.push(r);
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------
// Bulk throughput

/// MB/s of one bulk transfer to the sink on every path, best of the rounds; with `relay`
/// false, only raw TCP, the bare chain and the direct portal.
fn bulk(
    config: &DeployedBenchConfig,
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
    relay: bool,
) -> anyhow::Result<Vec<PortalRecord>> {
    let sink = d.sink.server;
    let bytes = config.bulk_bytes;
    eprintln!(
        "deployed: bulk throughput, {} round(s) of {:.0} MiB per path; the bare chains seal {} bytes a frame",
        config.bulk_rounds,
        bytes as f64 / MIB,
        config.chunk
    );
    let bare = BareChain::start(config, sink, false)?;
    let bare_relayed = relay
        .then(|| BareChain::start(config, sink, true))
        .transpose()?;
    let mut paths = vec![
        ("raw TCP", sink),
        ("bare chain", bare.inlet),
        ("direct portal", d.sink.direct),
    ];
    if let Some(chain) = &bare_relayed {
        paths.push(("bare chain, relayed", chain.inlet));
        paths.push(("relayed portal", d.sink.relay));
    }
    let (to_sink_before, from_sink_before) = d.nodes.outlet_bytes(SINK_OUTLET)?;
    let warmup = bytes / 8 + 1;
    let mut best = vec![Duration::MAX; paths.len()];
    rt.block_on(async {
        for (name, addr) in &paths {
            transfer(*addr, warmup)
                .await
                .with_context(|| format!("warming up {name}"))?;
        }
        for _ in 0..config.bulk_rounds {
            for ((name, addr), best) in paths.iter().zip(&mut best) {
                let took = transfer(*addr, bytes)
                    .await
                    .with_context(|| format!("a transfer, {name}"))?;
                *best = (*best).min(took);
            }
        }
        anyhow::Ok(())
    })?;
    // The outlet counted every byte the portals carried: on to the sink, and the sink's
    // 8-byte count back, per transfer (each client already checked the count it got).
    let portals: u64 = if relay { 2 } else { 1 };
    let rounds = u64::try_from(config.bulk_rounds)?;
    let (to_sink, from_sink) = d.nodes.outlet_bytes(SINK_OUTLET)?;
    let (to_sink, from_sink) = (to_sink - to_sink_before, from_sink - from_sink_before);
    let carried = portals * (warmup + rounds * bytes);
    let counts = 8 * portals * (1 + rounds);
    ensure!(
        to_sink == carried && from_sink == counts,
        "outlet {SINK_OUTLET} wrote {to_sink} bytes to the sink and read {from_sink} back; the portals carried {carried} and {counts}"
    );

    let best: Vec<f64> = best
        .into_iter()
        .map(|d| bytes as f64 / d.as_secs_f64() / 1e6)
        .collect();
    for ((name, _), mbps) in paths.iter().zip(&best) {
        eprintln!("deployed: {name}: {mbps:.0} MB/s");
    }
    // In the order of `paths`: raw TCP, the bare chain and the direct portal, then (with
    // `relay`) the relayed bare chain and the relayed portal.
    let mbps = |i: usize| best.get(i).copied().ok_or_else(|| anyhow!("no path {i}"));
    let (raw, bare, direct) = (mbps(0)?, mbps(1)?, mbps(2)?);
    let record = |name: &str, value: f64, baseline: f64| {
        BenchRecord::new(format!("deployed_{name}"), value, "MB/s", baseline)
    };
    let floor = |r: BenchRecord, target: f64| {
        PortalRecord::new(r, TargetOn::Ratio, TargetIs::Min, target)
            .with("bytes", bytes as f64)
            .with("rounds", config.bulk_rounds as f64)
    };
    let informative = |r: BenchRecord| {
        PortalRecord::informative(r)
            .with("bytes", bytes as f64)
            .with("rounds", config.bulk_rounds as f64)
            .with("chunk", config.chunk as f64)
    };
    let mut records = vec![
        floor(record("direct_bulk", direct, bare), DIRECT_VS_BARE_TARGET).with_baseline_is(
            "the bare chain (inlet and outlet processes that only seal, frame and open) to the same sink, MB/s",
        ),
        floor(record("direct_bulk_vs_raw", direct, raw), DIRECT_VS_RAW_TARGET),
    ];
    if relay {
        let (bare_relayed, relayed) = (mbps(3)?, mbps(4)?);
        records.extend([
            floor(
                record("relay_bulk", relayed, bare_relayed),
                RELAY_VS_BARE_TARGET,
            )
            .with_baseline_is(
                "the relayed bare chain (inlet, hop and outlet processes) to the same sink, MB/s",
            ),
            floor(
                record("relay_vs_direct", relayed, direct),
                RELAY_VS_DIRECT_TARGET,
            )
            .with_baseline_is("a direct portal session to the same sink, in the same rounds, MB/s"),
            informative(record("bare_chain_bulk_vs_raw", bare, raw)),
            informative(record("bare_chain_relayed_bulk_vs_raw", bare_relayed, raw)),
        ]);
    } else {
        records.push(informative(record("bare_chain_bulk_vs_raw", bare, raw)));
    }
    for r in &records {
        eprintln!(
            "deployed: {} {:.0} MB/s against {:.0} MB/s ({:.2}x; {})",
            r.record.bench,
            r.record.value,
            r.record.baseline,
            r.record.ratio,
            r.describe_target()
        );
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------
// Round trips

/// Round trips on one connection to each of `addrs` (an echo server, or an inlet or a bare
/// chain to one): `warmup` unmeasured on each, then `count` measured on each, the paths
/// taking turns in blocks of [`RTT_BLOCK`]. The samples of each path, in `addrs`' order.
async fn interleaved_round_trips(
    addrs: &[SocketAddr],
    warmup: usize,
    count: usize,
) -> anyhow::Result<Vec<Vec<Duration>>> {
    let mut streams = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}"))??;
        stream.set_nodelay(true)?;
        for _ in 0..warmup {
            round_trip(&mut stream)
                .await
                .with_context(|| format!("warming up {addr}"))?;
        }
        streams.push((addr, stream));
    }
    let mut samples = vec![Vec::with_capacity(count); addrs.len()];
    let mut done = 0;
    while done < count {
        let block = RTT_BLOCK.min(count - done);
        for ((addr, stream), samples) in streams.iter_mut().zip(&mut samples) {
            for _ in 0..block {
                samples.push(
                    round_trip(stream)
                        .await
                        .with_context(|| format!("round trips to {addr}"))?,
                );
            }
        }
        done += block;
    }
    Ok(samples)
}

/// p50 and p99 of 64-byte round trips to the echo through each portal path, against raw
/// TCP; the bare chains' alongside.
fn latency(
    config: &DeployedBenchConfig,
    d: &Deployment,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<PortalRecord>> {
    let echo = d.echo.server;
    eprintln!(
        "deployed: round-trip latency, {} round trips per path after {} unmeasured",
        config.round_trips, config.warmup_round_trips
    );
    let bare = BareChain::start(config, echo, false)?;
    let bare_relayed = BareChain::start(config, echo, true)?;
    let paths = [
        ("raw TCP", echo),
        ("bare chain", bare.inlet),
        ("bare chain, relayed", bare_relayed.inlet),
        ("direct portal", d.echo.direct),
        ("relayed portal", d.echo.relay),
    ];
    let addrs = paths.map(|(_, addr)| addr);
    let samples = rt.block_on(interleaved_round_trips(
        &addrs,
        config.warmup_round_trips,
        config.round_trips,
    ))?;
    let [raw, bare, bare_relayed, direct, relayed] = &samples[..] else {
        bail!("{} sample sets for 5 paths", samples.len());
    };
    let mut records = Vec::new();
    for (path, portal, chain) in [("direct", direct, bare), ("relay", relayed, bare_relayed)] {
        for q in [50, 99] {
            let record = BenchRecord::new(
                format!("deployed_{path}_rtt_p{q}_{SMALL_PAYLOAD}B"),
                micros(percentile(portal, q)),
                "us",
                micros(percentile(raw, q)),
            );
            let r = if path == "direct" && q == 50 {
                PortalRecord::new(record, TargetOn::Ratio, TargetIs::Max, LATENCY_TARGET)
            } else {
                PortalRecord::informative(record)
            };
            records.push(
                r.with("bare_chain_us", micros(percentile(chain, q)))
                    .with("round_trips", config.round_trips as f64),
            );
        }
    }
    for r in &records {
        eprintln!(
            "deployed: {} {:.0} us against raw TCP {:.0} us ({:.2}x; {}); bare chain {:.0} us",
            r.record.bench,
            r.record.value,
            r.record.baseline,
            r.record.ratio,
            r.describe_target(),
            r.detail.get("bare_chain_us").copied().unwrap_or_default()
        );
    }
    Ok(records)
}
