//! The relay benchmark: what an end-to-end secure channel through a project node's relay
//! costs against a direct secure channel between the same two nodes, both measured in the
//! same run (DESIGN §7).
//!
//! Three nodes in this process, on loopback TCP with ports read back after binding port 0:
//!
//! - **P**, the project node: the authority's services and the relay service, on a real
//!   SQLite store and vault, with a secure-channel listener that verifies the credentials P
//!   itself issued (so that members' channels carry the project's id).
//! - **B**, the relayed node: a member enrolled with `ockam-relay=db`, which keeps relay `db`
//!   up through a [`RelayKeeper`] (a channel to P, a heartbeat), runs `echo` and a
//!   secure-channel listener that admits project members only, and also listens on TCP
//!   itself for the direct path.
//! - **C**, the client: a member enrolled with a plain ticket (the relay forwards only for
//!   senders presenting this project's credential).
//!
//! The relay path is channel 1 from C to P (`[tcp P, api]`), then channel 2 through it and
//! the relay to B (`[channel 1, forward_to_db, api]`); messages go to `[channel 2, …]`, so
//! P sees only channel 2's ciphertext. The direct path is one channel from C to B
//! (`[tcp B, api]`). Both carry the same messages:
//!
//! - **Round-trip latency** (p50, p99) of 64-byte requests to B's `echo`.
//! - **One-way throughput** of 16 KiB messages pipelined to a counting worker on B.
//!
//! Paths alternate in rounds so that drift on the machine hits both alike; latencies pool
//! every round's samples, throughput takes each path's best round. Alongside, stderr shows
//! the CPU time per message (all three nodes share this process), which says where the time
//! goes, and whether the targets ([`THROUGHPUT_TARGET`], [`LATENCY_TARGET`]) are met.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use kith_authority::api::RELAY_ATTRIBUTE;
use kith_authority::client::{AuthorityClient, decode_credential};
use kith_authority::join::JoinSettings;
use kith_authority::keeper::{HEARTBEAT, KeeperConfig, RelayKeeper};
use kith_authority::relay::relay_address;
use kith_identity::channel::{Admission, Trust};
use kith_identity::secure_channel::{
    self, ChannelHop, ChannelSettings, ChannelStack, DEFAULT_LISTENER, SharedSettings,
};
use kith_node::{Address, AllowAll, Echo, Node, Route};
use kith_transport::TcpTransport;
use nix::sys::resource::{UsageWho, getrusage};

use crate::bench::{BenchRecord, LARGE_PAYLOAD, micros, percentile, run_bench, verdict};
use crate::channel_bench::{pump, round_trips};
use crate::party::{Party, ProjectConfig, ProjectNode, tcp_route, ticket_code};

/// 0.7: the relay path's throughput should be at least this share of the direct path's.
pub const THROUGHPUT_TARGET: f64 = 0.7;

/// 2.0: the relay path's round trips should take at most this many times the direct path's.
pub const LATENCY_TARGET: f64 = 2.0;

/// 10 s: bounds each handshake and each request to the authority or the relay service.
/// Loopback answers in milliseconds; only a bug takes this long.
const WAIT: Duration = Duration::from_secs(10);

/// The relay's name; B's ticket grants it.
const RELAY_NAME: &str = "db";

/// The project's id, carried by every credential the authority issues.
const PROJECT_ID: &str = "p-relay-bench";

/// 1 hour: the lifetime of the tickets, far beyond any run.
const LIFETIME: Duration = Duration::from_secs(3600);

/// How much to measure.
#[derive(Debug, Clone)]
pub struct RelayBenchConfig {
    /// Unmeasured round trips on each path before the first round.
    pub warmup_round_trips: usize,
    /// Measured round trips per path per round.
    pub round_trips: usize,
    /// 16 KiB messages per path per round (and a tenth of it, unmeasured, to warm up).
    pub large_messages: usize,
    /// Rounds, each measuring the direct path and then the relay path.
    pub rounds: usize,
}

impl RelayBenchConfig {
    /// The full run (`cargo bench`): under 10 s of measuring on a 2-core machine.
    pub fn full() -> Self {
        Self {
            warmup_round_trips: 2_000,
            round_trips: 10_000,
            large_messages: 20_000,
            rounds: 3,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick() -> Self {
        Self {
            warmup_round_trips: 20,
            round_trips: 100,
            large_messages: 200,
            rounds: 1,
        }
    }
}

/// Run both measurements, passing each record to `report` as it is known. Builds its own
/// tokio runtime; call it from outside one.
pub fn run_all(
    config: &RelayBenchConfig,
    report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    run_bench(report, |rt, out| {
        rt.block_on(async {
            let world = World::start().await.context("starting P, B and C")?;
            let outcome = async {
                let paths = world.paths().await.context("opening the channels")?;
                // Closing the enrollment clients drops a message or two; count from here.
                let before = world.dropped();
                let measured = async {
                    out.emit(latency(config, &world, &paths).await?);
                    out.emit(throughput(config, &world, &paths).await?);
                    anyhow::Ok(())
                }
                .await;
                world.report_trouble(before);
                measured
            }
            .await;
            world.shutdown().await;
            outcome
        })
    })
}

// ---------------------------------------------------------------------------------------
// The world

/// The three nodes (P with its store and vault) and the keeper of B's relay.
struct World {
    /// P; its identity is the project's authority, which C's and B's channels trust.
    project: ProjectNode,
    relayed: Node,
    client: Node,
    /// B's TCP listener, for the direct path.
    relayed_addr: SocketAddr,
    /// C's settings, with its credential, admitting only project members (B).
    client_settings: ChannelSettings,
    keeper: RelayKeeper,
}

/// The two ways from C to B's `echo` and counters: the encryptor each route starts with.
struct Paths {
    direct: Address,
    relay: Address,
    /// The relayed path's channels, open while the paths are used.
    _relayed: ChannelStack,
}

impl World {
    async fn start() -> anyhow::Result<Self> {
        let admin = Party::new();

        // P: the authority, the relay service, and a listener that verifies members'
        // credentials against P itself, so that their channels carry the project's id.
        let project = ProjectNode::start(ProjectConfig {
            node_name: "relay-bench-project",
            project_id: PROJECT_ID,
            admins: BTreeSet::from([admin.identifier()]),
            join: JoinSettings::default(),
            relay: true,
        })
        .await?;
        let authority = project.authority.clone();
        let listener = project.listener()?;
        let project_id = project.identifier();

        // The admin, from C's node, makes one ticket for B (with the relay) and one for C.
        let client = Node::new("relay-bench-client");
        TcpTransport::start(&client);
        let relayed = Node::new("relay-bench-db");
        let tcp_b = TcpTransport::start(&relayed);
        let pinned = project.pinned();
        let (for_b, for_c) = {
            let mut admin = AuthorityClient::connect(
                &client,
                listener.clone(),
                &project_id,
                &admin.settings(vec![], pinned.clone()),
                WAIT,
            )
            .await?;
            let relay_grant = BTreeMap::from([(RELAY_ATTRIBUTE.into(), RELAY_NAME.into())]);
            let for_b = admin.create_ticket(relay_grant, LIFETIME, 1).await?;
            let for_c = admin.create_ticket(BTreeMap::new(), LIFETIME, 1).await?;
            admin.close().await;
            (for_b, for_c)
        };
        let members_only = Arc::new(Trust {
            authorities: vec![authority.clone()],
            admission: Admission::CredentialHolders,
            revocations: Default::default(),
        });
        let enroll = |node: Node, code: String| {
            let (listener, pinned, members_only) =
                (listener.clone(), pinned.clone(), members_only.clone());
            async move {
                let party = Party::new();
                let mut client = AuthorityClient::connect(
                    &node,
                    listener,
                    &project_id,
                    &party.settings(vec![], pinned),
                    WAIT,
                )
                .await?;
                let enrolled = client.redeem(&ticket_code(&code)?).await?;
                client.close().await;
                let credential = decode_credential(&enrolled)?;
                anyhow::Ok(party.settings(vec![credential], members_only))
            }
        };
        let relayed_settings = SharedSettings::new(
            enroll(relayed.clone(), for_b.code)
                .await
                .context("enrolling B")?,
        );
        let client_settings = enroll(client.clone(), for_c.code)
            .await
            .context("enrolling C")?;

        // B: echo, a listener for members, its own TCP listener, and the relay.
        relayed.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)?;
        secure_channel::listen(&relayed, DEFAULT_LISTENER, relayed_settings.clone())?;
        let relayed_addr = tcp_b.listen("127.0.0.1:0").await?;
        let keeper = RelayKeeper::start(
            &relayed,
            relayed_settings,
            KeeperConfig {
                name: RELAY_NAME.into(),
                listener,
                project_node: project_id,
                timeout: WAIT,
                heartbeat: HEARTBEAT,
            },
        )
        .await
        .context("registering the relay")?;
        Ok(Self {
            project,
            relayed,
            client,
            relayed_addr,
            client_settings,
            keeper,
        })
    }

    /// Open the direct channel C → B and the relayed one C → P → B.
    async fn paths(&self) -> anyhow::Result<Paths> {
        let direct = secure_channel::create(
            &self.client,
            tcp_route(self.relayed_addr, DEFAULT_LISTENER)?,
            &self.client_settings,
        )
        .await
        .context("the direct channel C → B")?;
        let hops = [
            // Channel 1 is to P, which presents no credential: pin it instead.
            ChannelHop {
                route: self.project.listener()?,
                peer: Some(self.project.identifier()),
            },
            // Channel 2, inside it, through the relay to B.
            ChannelHop {
                route: Route::from(vec![
                    Address::local(relay_address(RELAY_NAME)),
                    Address::local(DEFAULT_LISTENER),
                ]),
                peer: None,
            },
        ];
        let relayed = ChannelStack::open(&self.client, &self.client_settings, &hops, WAIT)
            .await
            .context("the channels C → P → B through the relay")?;
        let inner = relayed
            .innermost()
            .context("the relayed path has no channel")?;
        ensure!(
            inner.peer.identifier == direct.peer.identifier,
            "the relay led to {}, not to B ({})",
            inner.peer.identifier,
            direct.peer.identifier
        );
        Ok(Paths {
            direct: direct.encryptor,
            relay: inner.encryptor.clone(),
            _relayed: relayed,
        })
    }

    /// Messages each node (C, P, B) has dropped so far.
    fn dropped(&self) -> [u64; 3] {
        [&self.client, &self.project.node, &self.relayed].map(|n| n.stats().dropped())
    }

    /// Say on stderr if the relay went down or a node dropped messages since `before`
    /// ([`World::dropped`]): either explains a throughput run whose messages did not all
    /// arrive.
    fn report_trouble(&self, before: [u64; 3]) {
        let relay = self.keeper.status();
        if relay.reconnections > 0 || relay.last_error.is_some() {
            eprintln!(
                "relay: the relay went down during the run: {} reconnection(s), last error {:?}",
                relay.reconnections, relay.last_error
            );
        }
        for (node, before) in [&self.client, &self.project.node, &self.relayed]
            .into_iter()
            .zip(before)
        {
            let stats = node.stats();
            if stats.dropped() > before {
                eprintln!(
                    "relay: node {} dropped {} messages: {stats:?}",
                    node.name(),
                    stats.dropped() - before
                );
            }
        }
    }

    async fn shutdown(self) {
        self.keeper.stop();
        self.client.shutdown().await;
        self.relayed.shutdown().await;
        self.project.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// User plus system CPU time of this process so far (all three nodes); zero if unknown,
/// since it is a diagnostic, not a record.
fn cpu_time() -> Duration {
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let of = |t: nix::sys::time::TimeVal| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let micros = u64::try_from(t.tv_usec()).unwrap_or(0);
        Duration::from_secs(secs) + Duration::from_micros(micros)
    };
    of(usage.user_time()) + of(usage.system_time())
}

/// CPU time per message of the work `f` does on `count` messages, alongside its result.
async fn with_cpu<T>(
    count: usize,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, f64)> {
    let before = cpu_time();
    let out = f.await?;
    let per = micros(cpu_time().saturating_sub(before)) / count.max(1) as f64;
    Ok((out, per))
}

/// p50 and p99 round trips of 64 bytes to B's `echo`, through the relay and directly.
async fn latency(
    config: &RelayBenchConfig,
    world: &World,
    paths: &Paths,
) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "relay: round-trip latency, {} rounds of {} round trips per path",
        config.rounds, config.round_trips
    );
    let mut client = world.client.client()?;
    let echo = |first: &Address| Route::from(vec![first.clone(), Address::local("echo")]);
    let (direct_route, relay_route) = (echo(&paths.direct), echo(&paths.relay));
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    let (mut direct_cpu, mut relay_cpu) = (0.0, 0.0);
    for round in 0..config.rounds {
        let warmup = if round == 0 {
            config.warmup_round_trips
        } else {
            0
        };
        let (samples, cpu) = with_cpu(
            config.round_trips,
            round_trips(&mut client, &direct_route, warmup, config.round_trips),
        )
        .await
        .context("round trips on the direct channel")?;
        direct.extend(samples);
        direct_cpu += cpu / config.rounds as f64;
        let (samples, cpu) = with_cpu(
            config.round_trips,
            round_trips(&mut client, &relay_route, warmup, config.round_trips),
        )
        .await
        .context("round trips through the relay")?;
        relayed.extend(samples);
        relay_cpu += cpu / config.rounds as f64;
    }
    let (relay_p50, direct_p50) = (percentile(&relayed, 50), percentile(&direct, 50));
    let ratio = relay_p50.as_secs_f64() / direct_p50.as_secs_f64().max(f64::MIN_POSITIVE);
    eprintln!(
        "relay: p50 {:.0} us through the relay, {:.0} us direct ({ratio:.2}x; target <= {LATENCY_TARGET}x {}); CPU per round trip {relay_cpu:.0} us vs {direct_cpu:.0} us",
        micros(relay_p50),
        micros(direct_p50),
        verdict(ratio <= LATENCY_TARGET),
    );
    Ok(vec![
        BenchRecord::new(
            "relay_rtt_p50_64B",
            micros(relay_p50),
            "us",
            micros(direct_p50),
        ),
        BenchRecord::new(
            "relay_rtt_p99_64B",
            micros(percentile(&relayed, 99)),
            "us",
            micros(percentile(&direct, 99)),
        ),
    ])
}

/// 16 KiB messages per second (and MiB/s) pipelined to a counter on B, through the relay
/// and directly; each path's best round.
async fn throughput(
    config: &RelayBenchConfig,
    world: &World,
    paths: &Paths,
) -> anyhow::Result<Vec<BenchRecord>> {
    let n = config.large_messages;
    eprintln!(
        "relay: 16 KiB throughput, {} rounds of {n} messages per path",
        config.rounds
    );
    let (c, b) = (&world.client, &world.relayed);
    pump(c, b, paths.direct.clone(), n / 10 + 1, "warm-direct").await?;
    pump(c, b, paths.relay.clone(), n / 10 + 1, "warm-relay").await?;
    let (mut direct, mut relayed) = (Duration::MAX, Duration::MAX);
    let (mut direct_cpu, mut relay_cpu) = (0.0, 0.0);
    for round in 0..config.rounds {
        let (took, cpu) = with_cpu(
            n,
            pump(c, b, paths.direct.clone(), n, &format!("direct-{round}")),
        )
        .await
        .context("16 KiB messages on the direct channel")?;
        direct = direct.min(took);
        direct_cpu += cpu / config.rounds as f64;
        let (took, cpu) = with_cpu(
            n,
            pump(c, b, paths.relay.clone(), n, &format!("relay-{round}")),
        )
        .await
        .context("16 KiB messages through the relay")?;
        relayed = relayed.min(took);
        relay_cpu += cpu / config.rounds as f64;
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let mibps = |d: Duration| rate(d) * LARGE_PAYLOAD as f64 / (1024.0 * 1024.0);
    let share = rate(relayed) / rate(direct);
    eprintln!(
        "relay: {:.0} msg/s through the relay, {:.0} msg/s direct ({:.0}%; target >= {:.0}% {}); CPU per message {relay_cpu:.0} us vs {direct_cpu:.0} us",
        rate(relayed),
        rate(direct),
        share * 100.0,
        THROUGHPUT_TARGET * 100.0,
        verdict(share >= THROUGHPUT_TARGET),
    );
    Ok(vec![
        BenchRecord::new(
            "relay_oneway_16KiB_msgs",
            rate(relayed),
            "msg/s",
            rate(direct),
        ),
        BenchRecord::new(
            "relay_oneway_16KiB_bytes",
            mibps(relayed),
            "MiB/s",
            mibps(direct),
        ),
    ])
}
