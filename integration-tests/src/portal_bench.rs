//! The portal benchmark: what a TCP portal (`kith_transport::portal`) costs a TCP
//! connection, against the same connection made straight to its server, both measured in
//! the same run (DESIGN §7).
//!
//! Three nodes in this process, on loopback TCP with ports read back after binding port 0:
//!
//! - **P**, the project node: the authority's services and the relay service, on a real
//!   SQLite store and vault, with a secure-channel listener that verifies the credentials P
//!   issues.
//! - **O**, the outlet node: outlets to the bench's TCP servers (a sink, an echo server, a
//!   flood), admitting only I's identity; a secure-channel listener admitting only I; its
//!   own TCP listener for the direct path; and relay `outlet` at P (O is a project admin,
//!   so it needs no credential to hold one).
//! - **I**, the inlet node: one inlet per measurement, whose connector is the one the
//!   product's inlets use ([`PortalConnector`]): fresh secure channels for every session,
//!   each hop pinned to the node that must answer, closed when the session ends. I
//!   presents a credential from P's authority (what the relay forwards for) on every hop.
//!
//! Two paths from I to O's outlets:
//!
//! - **direct**: one channel `[tcp O, api]`, the session at `[channel, outlet]`.
//! - **relay**: channel 1 from I to P (`[tcp P, api]`, credentialed), then channel 2 through
//!   it and the relay to O (`[channel 1, forward_to_outlet, api]`), the session at
//!   `[channel 2, outlet]`; P sees only channel 2's ciphertext.
//!
//! The measurements, each against a client talking to the same server over plain TCP:
//!
//! - **Bulk throughput** (MB/s) of one session: the client writes
//!   [`PortalBenchConfig::bulk_bytes`], half-closes, and the sink answers with the count it
//!   read, directly and through the relay. Rounds alternate the paths; each takes its best
//!   round. Alongside (not as the baseline), raw TCP through as many plain userspace proxies
//!   as the portal path has nodes, so through as many sockets: what any relaying of the bytes
//!   costs on this machine, before the portal's own work.
//! - **Round-trip latency** (p50, p99) of 64 bytes to an echo server through a direct
//!   session.
//! - **Memory held by a stalled session**: a server writes [`PortalBenchConfig::stall_bytes`]
//!   as fast as it can to a client that reads nothing; once the writes stall, the growth of
//!   this process's RSS (all three nodes) over what it was before the connection. The
//!   stall is measured first, before the bulk transfers have left the allocator holding
//!   freed memory that would hide a growth.
//!
//! The `portal` bench prints every [`PortalRecord`] as a JSON line: DESIGN §7's five keys
//! plus the target, whether it was met, and for the memory figure what its baseline is.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kith_authority::api::PROJECT_ID_ATTRIBUTE;
use kith_authority::join::JoinSettings;
use kith_authority::keeper::{HEARTBEAT, KeeperConfig, RelayKeeper};
use kith_authority::relay::relay_address;
use kith_identity::Identifier;
use kith_identity::policy::Policy;
use kith_identity::portal::PortalConnector;
use kith_identity::secure_channel::{self, ChannelHop, DEFAULT_LISTENER, SharedSettings};
use kith_node::{Address, AllowOrigins, IncomingAccessControl, Node, Origin, Route};
use kith_transport::TcpTransport;
use kith_transport::portal::{Inlet, Outlet, PortalOptions};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::bench::{
    BenchRecord, SMALL_PAYLOAD, json_line, micros, percentile, rss_kib, run_bench, selection,
    verdict,
};
use crate::party::{Party, ProjectConfig, ProjectNode, only, tcp_route};

/// 0.5: a direct session's bulk throughput should be at least this share of raw TCP's.
pub const DIRECT_THROUGHPUT_TARGET: f64 = 0.5;

/// 0.4: a relayed session's bulk throughput should be at least this share of raw TCP's.
pub const RELAY_THROUGHPUT_TARGET: f64 = 0.4;

/// 3.0: a direct session's round trips should take at most this many times raw TCP's.
pub const LATENCY_TARGET: f64 = 3.0;

/// 2 MiB: the most a stalled session may add to the process's RSS. The receiving end holds
/// at most one window (1 MiB) of the other end's data; the rest of the allowance is the
/// buffers the two ends, the channel and the connections use while bytes move at all.
pub const STALL_GROWTH_TARGET_MIB: f64 = 2.0;

/// 10 s: bounds each handshake, each round trip and each wait for a stall. Loopback
/// answers in milliseconds; only a bug takes this long.
const WAIT: Duration = Duration::from_secs(10);

/// 120 s: bounds one bulk transfer, many times what 512 MiB takes through a portal on a
/// slow 2-core machine.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// 256 KiB: what the bench's clients and servers write or read in one call.
pub(crate) const IO_CHUNK: usize = 256 * 1024;

/// How often the stall measurement looks at the flood's progress.
const STALL_POLL: Duration = Duration::from_millis(50);

/// The relay's name at P.
const RELAY_NAME: &str = "outlet";

/// The project's id, carried by I's credential.
const PROJECT_ID: &str = "p-portal-bench";

/// The measurements, in the order they run; [`PortalBenchConfig::only`] names one.
pub const MEASUREMENTS: &[&str] = &["stall", "throughput", "latency"];

const MIB: f64 = 1024.0 * 1024.0;

/// How much to measure.
#[derive(Debug, Clone)]
pub struct PortalBenchConfig {
    /// Bytes per bulk transfer (and an eighth of it, unmeasured, to warm each path up).
    pub bulk_bytes: u64,
    /// Bulk rounds, each transferring once raw, once through 2 and once through 3 proxies,
    /// once direct and once through the relay.
    pub bulk_rounds: usize,
    /// Unmeasured round trips on each path before the first measured one.
    pub warmup_round_trips: usize,
    /// Measured round trips per path.
    pub round_trips: usize,
    /// What the flood server tries to write to the stalled client.
    pub stall_bytes: u64,
    /// How long the flood must make no progress for the stall to count as settled.
    pub stall_settle: Duration,
    /// How long after the stall settled RSS is read once more.
    pub stall_later: Duration,
    /// Run only the measurement of this name (`stall`, `throughput`, `latency`), for
    /// profiling one path at a time; `None` runs them all.
    pub only: Option<String>,
}

impl PortalBenchConfig {
    /// The full run (`cargo bench`): about 10 s on a 2-core machine.
    pub fn full() -> Self {
        Self {
            bulk_bytes: 512 * 1024 * 1024,
            bulk_rounds: 2,
            warmup_round_trips: 1_000,
            round_trips: 10_000,
            stall_bytes: 1024 * 1024 * 1024,
            stall_settle: Duration::from_millis(500),
            stall_later: Duration::from_secs(2),
            only: None,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick() -> Self {
        Self {
            bulk_bytes: 4 * 1024 * 1024,
            bulk_rounds: 1,
            warmup_round_trips: 20,
            round_trips: 200,
            stall_bytes: 64 * 1024 * 1024,
            stall_settle: Duration::from_millis(300),
            stall_later: Duration::from_millis(200),
            only: None,
        }
    }
}

/// Which figure of a record its target is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetOn {
    /// `value / baseline`.
    Ratio,
    /// `value` itself.
    Value,
}

/// Whether a target is a floor or a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetIs {
    /// The figure should be at least the target.
    Min,
    /// The figure should be at most the target.
    Max,
}

/// What a record is held to: a target on one of its figures, and whether this run met it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Target {
    /// The figure the target is on.
    #[serde(rename = "target_on")]
    pub on: TargetOn,
    /// Whether the target is a floor or a ceiling.
    #[serde(rename = "target_is")]
    pub is: TargetIs,
    /// The target.
    #[serde(rename = "target")]
    pub figure: f64,
    /// Whether this run met it.
    pub met: bool,
}

impl Target {
    /// How stderr states the target and the verdict, e.g. `target >= 0.5x met`.
    pub fn describe(&self, unit: &str) -> String {
        let sign = match self.is {
            TargetIs::Min => ">=",
            TargetIs::Max => "<=",
        };
        let unit = match self.on {
            TargetOn::Ratio => "x",
            TargetOn::Value => unit,
        };
        format!("target {sign} {}{unit} {}", self.figure, verdict(self.met))
    }
}

/// One result line: a [`BenchRecord`] and what it is held to, if anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortalRecord {
    /// `{"bench", "value", "unit", "baseline", "ratio"}` (DESIGN §7).
    #[serde(flatten)]
    pub record: BenchRecord,
    /// The target and whether it was met; `None` (no keys) for an informative line.
    #[serde(flatten)]
    pub target: Option<Target>,
    /// More figures of the same measurement, by name.
    #[serde(flatten)]
    pub detail: BTreeMap<&'static str, f64>,
    /// What the baseline is, where that is not raw TCP doing the same work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_is: Option<&'static str>,
}

impl PortalRecord {
    /// `record`, held to `target` on the figure `on`.
    pub fn new(record: BenchRecord, on: TargetOn, is: TargetIs, target: f64) -> Self {
        let figure = match on {
            TargetOn::Ratio => record.ratio,
            TargetOn::Value => record.value,
        };
        let met = match is {
            TargetIs::Min => figure >= target,
            TargetIs::Max => figure <= target,
        };
        Self {
            target: Some(Target {
                on,
                is,
                figure: target,
                met,
            }),
            ..Self::informative(record)
        }
    }

    /// `record`, held to no target: a figure that explains the others.
    pub fn informative(record: BenchRecord) -> Self {
        Self {
            record,
            target: None,
            detail: BTreeMap::new(),
            baseline_is: None,
        }
    }

    /// Add a figure to the detail, rounded to 3 decimals like the record's own.
    pub(crate) fn with(mut self, name: &'static str, figure: f64) -> Self {
        self.detail.insert(name, (figure * 1e3).round() / 1e3);
        self
    }

    /// Say what the baseline is, where that is not raw TCP doing the same work.
    pub(crate) fn with_baseline_is(mut self, what: &'static str) -> Self {
        self.baseline_is = Some(what);
        self
    }

    /// Whether the record met its target; an informative one has none to miss.
    pub fn met(&self) -> bool {
        self.target.is_none_or(|t| t.met)
    }

    /// How stderr states the target and the verdict: `informative` if there is none.
    pub fn describe_target(&self) -> String {
        self.target.map_or_else(
            || "informative".to_owned(),
            |t| t.describe(&self.record.unit),
        )
    }

    /// The record as one line of JSON.
    pub fn to_json_line(&self) -> String {
        json_line(self)
    }
}

/// Run every measurement, passing each record to `report` as it is known. Builds its own
/// tokio runtime; call it from outside one.
pub fn run_all(
    config: &PortalBenchConfig,
    report: impl FnMut(&PortalRecord),
) -> anyhow::Result<Vec<PortalRecord>> {
    let wanted = selection(config.only.as_deref(), MEASUREMENTS)?;
    run_bench(report, |rt, out| {
        rt.block_on(async {
            let world = World::start().await.context("starting P, O and I")?;
            let measured = async {
                if wanted("stall") {
                    out.emit([stall(config, &world).await.context("the stall")?]);
                }
                if wanted("throughput") {
                    out.emit(
                        throughput(config, &world)
                            .await
                            .context("bulk throughput")?,
                    );
                }
                if wanted("latency") {
                    out.emit(latency(config, &world).await.context("round trips")?);
                }
                anyhow::Ok(())
            }
            .await;
            world.shutdown().await;
            measured
        })
    })
}

// ---------------------------------------------------------------------------------------
// Who may answer

/// Admits messages from secure channels whose peer is `who`, and no others.
fn from_identity(who: Identifier) -> Arc<dyn IncomingAccessControl> {
    let who = who.to_string();
    Arc::new(AllowOrigins(move |origin: &Origin| match origin {
        Origin::SecureChannel(peer) => peer.identifier == who,
        _ => false,
    }))
}

// ---------------------------------------------------------------------------------------
// The world

/// The three nodes (P with its store and vault), the keeper of O's relay, and the hops of
/// the two paths from I to O.
struct World {
    project: ProjectNode,
    outlet_node: Node,
    inlet_node: Node,
    keeper: RelayKeeper,
    /// Admits only I, through a secure channel: every outlet's policy.
    inlet_only: Arc<dyn IncomingAccessControl>,
    /// I's channel settings, with its credential.
    inlet_settings: SharedSettings,
    /// Admits only O at the end of an inlet's route: every inlet's policy.
    outlet_only: Policy,
    direct: Vec<ChannelHop>,
    relayed: Vec<ChannelHop>,
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let (inlet, outlet) = (Party::new(), Party::new());

        // P: the authority and its relay service, O an admin; a listener that verifies
        // credentials from P's authority, so that I's channel carries the project's id.
        let project = ProjectNode::start(ProjectConfig {
            node_name: "portal-bench-project",
            project_id: PROJECT_ID,
            admins: BTreeSet::from([outlet.identifier()]),
            join: JoinSettings::default(),
            relay: true,
        })
        .await?;
        let to_project = project.listener()?;

        // O: a listener for I alone, its own TCP listener, and the relay.
        let outlet_node = Node::new("portal-bench-outlet");
        let to_outlet_node = tcp_route(
            TcpTransport::start(&outlet_node)
                .listen("127.0.0.1:0")
                .await?,
            DEFAULT_LISTENER,
        )?;
        secure_channel::listen(
            &outlet_node,
            DEFAULT_LISTENER,
            outlet.settings(vec![], only(inlet.identifier(), vec![])),
        )?;
        let keeper = RelayKeeper::start(
            &outlet_node,
            outlet.settings(vec![], project.pinned()).into(),
            KeeperConfig {
                name: RELAY_NAME.into(),
                listener: to_project.clone(),
                project_node: project.identifier(),
                timeout: WAIT,
                heartbeat: HEARTBEAT,
            },
        )
        .await
        .context("registering the relay")?;

        // I: a member's credential, signed with the authority's key straight from the vault.
        let inlet_node = Node::new("portal-bench-inlet");
        TcpTransport::start(&inlet_node);
        let credential = project
            .issue(
                &inlet.identifier(),
                BTreeMap::from([(PROJECT_ID_ATTRIBUTE.to_owned(), PROJECT_ID.to_owned())]),
            )
            .await?;
        let end_to_end = ChannelHop {
            route: to_outlet_node,
            peer: Some(outlet.identifier()),
        };
        let through_relay = ChannelHop {
            route: Route::from(vec![
                Address::local(relay_address(RELAY_NAME)),
                Address::local(DEFAULT_LISTENER),
            ]),
            ..end_to_end.clone()
        };
        let to_p = ChannelHop {
            route: to_project,
            peer: Some(project.identifier()),
        };
        let outlet_only = Policy::parse(&format!(
            "identifier = {:?}",
            outlet.identifier().to_string()
        ))
        .context("the inlets' policy")?;
        Ok(Self {
            inlet_settings: inlet.settings(vec![credential], project.pinned()).into(),
            project,
            outlet_node,
            inlet_node,
            keeper,
            inlet_only: from_identity(inlet.identifier()),
            outlet_only,
            direct: vec![end_to_end],
            relayed: vec![to_p, through_relay],
        })
    }

    /// An outlet on O to `target` and an inlet on I that reaches it along `hops`; the
    /// inlet's address.
    async fn portal(
        &self,
        name: &str,
        target: SocketAddr,
        hops: &[ChannelHop],
    ) -> anyhow::Result<SocketAddr> {
        let options = PortalOptions::default();
        Outlet::start(
            &self.outlet_node,
            name,
            &target.to_string(),
            self.inlet_only.clone(),
            options.clone(),
        )?;
        let connector = PortalConnector::new(
            &self.inlet_node,
            self.inlet_settings.clone(),
            hops.to_vec(),
            Route::from(name),
            self.outlet_only.clone(),
            options.open_timeout,
        );
        let inlet = Inlet::start(
            &self.inlet_node,
            "127.0.0.1:0",
            Arc::new(connector),
            options,
        )
        .await?;
        Ok(inlet.address())
    }

    /// Say on stderr if the relay went down or a node dropped messages: either explains a
    /// transfer that did not finish.
    fn report_trouble(&self) {
        let relay = self.keeper.status();
        if relay.reconnections > 0 || relay.last_error.is_some() {
            eprintln!(
                "portal: the relay went down: {} reconnection(s), last error {:?}",
                relay.reconnections, relay.last_error
            );
        }
        for node in [&self.inlet_node, &self.project.node, &self.outlet_node] {
            let stats = node.stats();
            if stats.dropped() > 0 {
                eprintln!(
                    "portal: node {} dropped messages (a few to sessions that had just ended are expected): {stats:?}",
                    node.name()
                );
            }
        }
    }

    async fn shutdown(self) {
        self.report_trouble();
        self.keeper.stop();
        self.inlet_node.shutdown().await;
        self.outlet_node.shutdown().await;
        self.project.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// The servers

/// Listen on loopback and run `handle` on every connection, in a task of its own, until
/// the runtime ends.
pub(crate) async fn serve<F, Fut>(handle: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream));
        }
    });
    Ok(addr)
}

/// Read to the end of the stream, then answer the number of bytes read (8 bytes, big
/// endian) and close.
pub(crate) async fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; IO_CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf).await? {
            0 => break,
            n => total += n as u64,
        }
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}

/// Write back whatever arrives, at once.
pub(crate) async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

/// A plain proxy: every connection is carried to `to`, both ways, half-closes included.
async fn forwarder(to: SocketAddr) -> anyhow::Result<SocketAddr> {
    serve(move |mut inbound| async move {
        let mut outbound = TcpStream::connect(to).await?;
        outbound.set_nodelay(true)?;
        tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, IO_CHUNK, IO_CHUNK)
            .await?;
        Ok(())
    })
    .await
}

/// A server that writes `bytes` as fast as its client takes them, counting into
/// `progress`.
async fn flood_server(bytes: u64) -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let progress = Arc::new(AtomicU64::new(0));
    let written = progress.clone();
    let addr = serve(move |mut stream| {
        let written = written.clone();
        async move {
            let chunk = vec![0xF1u8; IO_CHUNK];
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left).unwrap_or(IO_CHUNK).min(IO_CHUNK);
                stream.write_all(&chunk[..n]).await?;
                written.fetch_add(n as u64, Ordering::Relaxed);
                left -= n as u64;
            }
            Ok(())
        }
    })
    .await?;
    Ok((addr, progress))
}

// ---------------------------------------------------------------------------------------
// Measurements

/// Write `bytes` to the sink at `addr` (itself, or an inlet to it), half-close, and wait
/// for its count; how long that took.
pub(crate) async fn transfer(addr: SocketAddr, bytes: u64) -> anyhow::Result<Duration> {
    let run = async {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let chunk = vec![0x5Au8; IO_CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(IO_CHUNK).min(IO_CHUNK);
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        stream.shutdown().await?;
        let mut count = [0u8; 8];
        stream
            .read_exact(&mut count)
            .await
            .context("the sink's count")?;
        let took = started.elapsed();
        let got = u64::from_be_bytes(count);
        ensure!(got == bytes, "the sink read {got} bytes of {bytes}");
        anyhow::Ok(took)
    };
    tokio::time::timeout(RUN_WAIT, run)
        .await
        .with_context(|| format!("{bytes} bytes to {addr} took over {RUN_WAIT:?}"))?
}

/// MB/s of one bulk transfer to a sink, raw, through a direct session and through the
/// relay; each path's best round. Alongside, for each portal path, raw TCP through as many
/// plain proxies as the path has nodes (so through as many sockets): how much of the cost is
/// the extra hops any relaying pays, and how much the portal's own work.
async fn throughput(
    config: &PortalBenchConfig,
    world: &World,
) -> anyhow::Result<Vec<PortalRecord>> {
    let bytes = config.bulk_bytes;
    eprintln!(
        "portal: bulk throughput, {} rounds of {:.0} MiB per path",
        config.bulk_rounds,
        bytes as f64 / MIB
    );
    let raw = serve(sink).await?;
    let mut proxied = raw;
    let mut via_proxies = Vec::new();
    for _ in 0..3 {
        proxied = forwarder(proxied).await?;
        via_proxies.push(proxied);
    }
    let paths = [
        ("raw TCP", raw),
        ("raw TCP via 2 proxies", via_proxies[1]),
        ("raw TCP via 3 proxies", via_proxies[2]),
        (
            "direct",
            world.portal("portal-sink", raw, &world.direct).await?,
        ),
        (
            "relay",
            world
                .portal("portal-sink-relayed", raw, &world.relayed)
                .await?,
        ),
    ];
    let mut best = [Duration::MAX; 5];
    for (name, addr) in paths {
        transfer(addr, bytes / 8 + 1)
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
    let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let [raw, two_proxies, three_proxies, direct, relayed] = best.map(mbps);
    let records = [
        (
            "portal_direct_bulk",
            direct,
            DIRECT_THROUGHPUT_TARGET,
            ("raw_via_2_proxies_mbps", two_proxies),
        ),
        (
            "portal_relay_bulk",
            relayed,
            RELAY_THROUGHPUT_TARGET,
            ("raw_via_3_proxies_mbps", three_proxies),
        ),
    ]
    .map(|(name, value, target, (same_hops, same_hops_mbps))| {
        PortalRecord::new(
            BenchRecord::new(name, value, "MB/s", raw),
            TargetOn::Ratio,
            TargetIs::Min,
            target,
        )
        .with("bytes", bytes as f64)
        .with(same_hops, same_hops_mbps)
    });
    for (r, (proxies, same_hops)) in records.iter().zip([(2, two_proxies), (3, three_proxies)]) {
        eprintln!(
            "portal: {} {:.0} MB/s against raw TCP {raw:.0} MB/s ({:.2}x; {}); raw TCP via {proxies} proxies {same_hops:.0} MB/s",
            r.record.bench,
            r.record.value,
            r.record.ratio,
            r.describe_target()
        );
    }
    Ok(records.into())
}

/// Round trips of 64 bytes on one connection to `addr`, an echo server or an inlet to one:
/// `warmup` unmeasured, then `count` measured.
async fn round_trips(
    addr: SocketAddr,
    warmup: usize,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let took = round_trip(&mut stream)
            .await
            .with_context(|| format!("round trip {i}"))?;
        if i >= warmup {
            samples.push(took);
        }
    }
    Ok(samples)
}

/// One 64-byte round trip on `stream` to an echo; how long it took.
pub(crate) async fn round_trip(stream: &mut TcpStream) -> anyhow::Result<Duration> {
    let request = [0xABu8; SMALL_PAYLOAD];
    let mut answer = [0u8; SMALL_PAYLOAD];
    let started = Instant::now();
    let exchange = async {
        stream.write_all(&request).await?;
        stream.read_exact(&mut answer).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("a round trip took over {WAIT:?}"))??;
    let took = started.elapsed();
    ensure!(answer == request, "the echo answered something else");
    Ok(took)
}

/// p50 and p99 round trips of 64 bytes to an echo server through a direct session, against
/// raw TCP.
async fn latency(config: &PortalBenchConfig, world: &World) -> anyhow::Result<Vec<PortalRecord>> {
    eprintln!(
        "portal: round-trip latency, {} round trips per path",
        config.round_trips
    );
    let raw_addr = serve(echo).await?;
    let portal_addr = world.portal("portal-echo", raw_addr, &world.direct).await?;
    let (warmup, n) = (config.warmup_round_trips, config.round_trips);
    let raw = round_trips(raw_addr, warmup, n).await.context("raw TCP")?;
    let portal = round_trips(portal_addr, warmup, n)
        .await
        .context("through the portal")?;
    let records: Vec<PortalRecord> = [50, 99]
        .into_iter()
        .map(|q| {
            let record = BenchRecord::new(
                format!("portal_rtt_p{q}_{SMALL_PAYLOAD}B"),
                micros(percentile(&portal, q)),
                "us",
                micros(percentile(&raw, q)),
            );
            PortalRecord::new(record, TargetOn::Ratio, TargetIs::Max, LATENCY_TARGET)
        })
        .collect();
    for r in &records {
        eprintln!(
            "portal: {} {:.0} us against raw TCP {:.0} us ({:.2}x; {})",
            r.record.bench,
            r.record.value,
            r.record.baseline,
            r.record.ratio,
            r.describe_target()
        );
    }
    Ok(records)
}

/// RSS of this process, in KiB, before a client connects to `addr` (a flood server, or an
/// inlet to it) and reads nothing, once the flood has stalled, and `later` after that.
async fn stalled_rss(
    config: &PortalBenchConfig,
    addr: SocketAddr,
    progress: &AtomicU64,
) -> anyhow::Result<[u64; 3]> {
    let pid = std::process::id();
    let before = rss_kib(pid)?;
    let client = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    let deadline = Instant::now() + RUN_WAIT;
    let (mut last, mut quiet) = (0, Duration::ZERO);
    while quiet < config.stall_settle {
        ensure!(
            Instant::now() < deadline,
            "the flood did not stall within {RUN_WAIT:?}"
        );
        tokio::time::sleep(STALL_POLL).await;
        let now = progress.load(Ordering::Relaxed);
        quiet = if now == last && now > 0 {
            quiet + STALL_POLL
        } else {
            Duration::ZERO
        };
        last = now;
    }
    if last >= config.stall_bytes {
        bail!("all {last} bytes went through without the client reading: nothing held them");
    }
    let settled = rss_kib(pid)?;
    tokio::time::sleep(config.stall_later).await;
    let later = rss_kib(pid)?;
    drop(client);
    Ok([before, settled, later])
}

/// How much this process's RSS grows while a direct session is stalled, against its RSS
/// before; the same growth for a stalled raw TCP connection goes alongside.
async fn stall(config: &PortalBenchConfig, world: &World) -> anyhow::Result<PortalRecord> {
    eprintln!(
        "portal: RSS while a client stalls a {:.0} MiB download",
        config.stall_bytes as f64 / MIB
    );
    let (raw_addr, raw_progress) = flood_server(config.stall_bytes).await?;
    let [raw_before, _, raw_later] = stalled_rss(config, raw_addr, &raw_progress)
        .await
        .context("raw TCP")?;
    let (target, progress) = flood_server(config.stall_bytes).await?;
    let portal_addr = world.portal("portal-flood", target, &world.direct).await?;
    let [before, settled, later] = stalled_rss(config, portal_addr, &progress)
        .await
        .context("through the portal")?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let growth = |from: u64, to: u64| (to as f64 - from as f64) / 1024.0;
    // A growth can be nil or even negative (the allocator gave pages back); a record's
    // value must be positive, so it counts as at least 1 KiB.
    let worst = growth(before, settled)
        .max(growth(before, later))
        .max(1.0 / 1024.0);
    let mut r = PortalRecord::new(
        BenchRecord::new("portal_stall_rss_growth", worst, "MiB", mib(before)),
        TargetOn::Value,
        TargetIs::Max,
        STALL_GROWTH_TARGET_MIB,
    )
    .with("stall_bytes", config.stall_bytes as f64)
    .with(
        "written_before_stall_mib",
        progress.load(Ordering::Relaxed) as f64 / MIB,
    )
    .with("settled_growth_mib", growth(before, settled))
    .with("later_growth_mib", growth(before, later))
    .with("stall_later_s", config.stall_later.as_secs_f64())
    .with("raw_tcp_growth_mib", growth(raw_before, raw_later));
    r.baseline_is = Some(
        "RSS before the stall (MiB); value is the most RSS grew over it once the flood stalled and stall_later_s after; raw_tcp_growth_mib is the same growth for a raw TCP client",
    );
    eprintln!(
        "portal: a stalled session grew RSS by {:.2} MiB, {:.2} MiB {:?} later (raw TCP: {:.2} MiB; target <= {} MiB {})",
        growth(before, settled),
        growth(before, later),
        config.stall_later,
        growth(raw_before, raw_later),
        STALL_GROWTH_TARGET_MIB,
        verdict(r.met())
    );
    Ok(r)
}
