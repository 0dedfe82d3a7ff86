//! The membership bench (issue 16): how soon a membership change is in force across the
//! project, next to a 64 B round trip through a secure channel measured in the same run.
//!
//! Measured as users deploy: every node is its own `kith` daemon (the binary next to this
//! one, [`crate::authority_bench::kith_next_to_exe`]), in a private `KITH_HOME`, on loopback.
//! The project `acme` has its authority (the project node), `peer-node` — which admits
//! credential holders only and lets only `tier = "gold"` use its echo — and N members
//! `m0…`, each keeping a secure channel to `peer-node` (`kith secure-channel create`) and,
//! like every member daemon, one to the project node to follow its revocations.
//!
//! - **Update → seen** (`membership_update_seen_p50/p99`): per member, from the moment
//!   `kith project member update mI -a tier=gold` has returned (the change is committed)
//!   to the first message of that member over the channel it already had that `peer-node`
//!   lets through to echo — so `peer-node` sees the new attribute. The member renews its
//!   credential on hearing of the change and pushes it into its channels.
//! - **Delete → closed** (`membership_delete_closed_project_node_p50/p99`,
//!   `…_member_node_p50/p99`): per member, from the moment `kith project member delete`
//!   has returned to the moment the project node, and `peer-node`, hold one channel fewer
//!   (the member's), as their control sockets report it.
//!
//! Each record's baseline is the p50 of a 64 B round trip through a member's kept channel
//! to `peer-node`'s echo, sent the same way as the update's probes (a `send` request on the
//! member daemon's control socket), in the same run. Waits look again every
//! [`POLL`]; each look is one control-socket request.
//!
//! The measuring code is shared by the `membership` bench (release build, 50 members) and
//! the `membership_bench_smoke` test (3 members, debug build), so that it cannot rot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use kith_cli::control::{self, Request};

use crate::bench::{BenchRecord, percentile};
use crate::kith_home::{KithHome, field};

/// 2 s: the target for a change to be in force everywhere (issue 16).
pub const IN_FORCE_TARGET: Duration = Duration::from_secs(2);

/// 10 s: past this a change counts as never in force, and the bench fails.
const GIVE_UP: Duration = Duration::from_secs(10);

/// 2 ms: how long a wait pauses between looks.
const POLL: Duration = Duration::from_millis(2);

/// 64 bytes: the baseline's message.
const SMALL: usize = 64;

/// The project node's name (`kith authority create`'s default).
const PROJECT_NODE: &str = "authority";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct MembershipBenchConfig {
    /// The `kith` binary the daemons and commands run.
    pub kith: PathBuf,
    /// Members, each its own daemon.
    pub members: usize,
    /// Round trips for the baseline.
    pub round_trips: usize,
}

impl MembershipBenchConfig {
    /// The full run: 50 members.
    pub fn full(kith: PathBuf) -> Self {
        Self {
            kith,
            members: 50,
            round_trips: 500,
        }
    }

    /// Three members, to keep the code from rotting.
    pub fn quick(kith: PathBuf) -> Self {
        Self {
            kith,
            members: 3,
            round_trips: 20,
        }
    }
}

/// Run every measurement, passing each record to `report` as it is known.
pub fn run_all(
    config: &MembershipBenchConfig,
    mut report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let world = World::start(config).context("setting up the project and its nodes")?;
    let mut records = Vec::new();
    let mut emit = |r: BenchRecord| {
        report(&r);
        records.push(r);
    };

    let mut updates = Vec::with_capacity(world.members.len());
    for member in &world.members {
        world.ok(&["project", "member", "update", &member.id, "-a", "tier=gold"])?;
        let committed = Instant::now();
        runtime.block_on(async {
            loop {
                if world.send(member, SMALL).await.is_ok() {
                    return Ok(());
                }
                ensure!(
                    committed.elapsed() < GIVE_UP,
                    "{} still refused {GIVE_UP:?} after its update",
                    member.node
                );
                tokio::time::sleep(POLL).await;
            }
        })?;
        updates.push(committed.elapsed());
    }

    let mut round_trips = Vec::with_capacity(config.round_trips);
    runtime.block_on(async {
        for i in 0..config.round_trips {
            let member = &world.members[i % world.members.len()];
            let started = Instant::now();
            world
                .send(member, SMALL)
                .await
                .with_context(|| format!("a 64 B round trip from {}", member.node))?;
            round_trips.push(started.elapsed());
        }
        anyhow::Ok(())
    })?;
    let baseline = millis(percentile(&round_trips, 50));

    for (p, name) in [(50, "p50"), (99, "p99")] {
        emit(BenchRecord::new(
            format!("membership_update_seen_{name}"),
            millis(percentile(&updates, p)),
            "ms",
            baseline,
        ));
    }

    let (mut at_project, mut at_peer) = (Vec::new(), Vec::new());
    for member in &world.members {
        let (project_before, peer_before) = runtime.block_on(async {
            anyhow::Ok((
                world.channels(PROJECT_NODE).await?,
                world.channels("peer-node").await?,
            ))
        })?;
        world.ok(&["project", "member", "delete", &member.id])?;
        let committed = Instant::now();
        let (project, peer) = runtime.block_on(async {
            let (mut project, mut peer) = (None, None);
            while project.is_none() || peer.is_none() {
                if project.is_none() && world.channels(PROJECT_NODE).await? < project_before {
                    project = Some(committed.elapsed());
                }
                if peer.is_none() && world.channels("peer-node").await? < peer_before {
                    peer = Some(committed.elapsed());
                }
                ensure!(
                    committed.elapsed() < GIVE_UP,
                    "{}'s channels still open {GIVE_UP:?} after its deletion (project node: {project:?} of {project_before}, now {}; peer-node: {peer:?} of {peer_before}, now {})",
                    member.node,
                    world.channels(PROJECT_NODE).await?,
                    world.channels("peer-node").await?,
                );
                tokio::time::sleep(POLL).await;
            }
            anyhow::Ok((project.unwrap_or_default(), peer.unwrap_or_default()))
        })?;
        at_project.push(project);
        at_peer.push(peer);
    }
    for (samples, place) in [(&at_project, "project_node"), (&at_peer, "member_node")] {
        for (p, name) in [(50, "p50"), (99, "p99")] {
            emit(BenchRecord::new(
                format!("membership_delete_closed_{place}_{name}"),
                millis(percentile(samples, p)),
                "ms",
                baseline,
            ));
        }
    }
    let worst = updates
        .iter()
        .chain(&at_project)
        .chain(&at_peer)
        .max()
        .copied()
        .unwrap_or_default();
    eprintln!(
        "membership: slowest change in force after {worst:?} (target {IN_FORCE_TARGET:?}): {}",
        if worst < IN_FORCE_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(records)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One member: its node, its identifier and the channel it keeps to `peer-node`.
struct Member {
    node: String,
    id: String,
    /// The kept channel's encryptor address.
    channel: String,
}

/// A private `KITH_HOME` with the project and its nodes, each a daemon; dropping it stops
/// them.
struct World {
    home: KithHome,
    members: Vec<Member>,
}

impl World {
    fn start(config: &MembershipBenchConfig) -> anyhow::Result<Self> {
        let mut world = Self {
            home: KithHome::new(&config.kith, "membership")?,
            members: Vec::new(),
        };
        let home = &world.home;
        home.json(&["authority", "create", "--project", "acme"])?;
        home.enrolled_node(
            "peer-node",
            &["--attribute", "component=peer"],
            &["--require-credential", "--allow", r#"tier = "gold""#],
        )?;
        for i in 0..config.members {
            let node = format!("m{i}");
            home.enrolled_node(&node, &["--attribute", "component=web"], &[])?;
            let shown = home.json(&["identity", "show", &node])?;
            let id = field(&shown, "identifier")?;
            let channel = home.json(&[
                "secure-channel",
                "create",
                "--from",
                &node,
                "--to",
                "/node/peer-node/service/api",
            ])?;
            let channel = field(&channel, "address")?;
            world.members.push(Member { node, id, channel });
        }
        Ok(world)
    }

    /// Run `kith ARGS`, insisting on success; its stdout.
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.home.ok(args)
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.home
            .path()
            .join("nodes")
            .join(node)
            .join("control.sock")
    }

    /// How many secure channels `node` holds, by its control socket.
    async fn channels(&self, node: &str) -> anyhow::Result<u64> {
        let status = control::call(
            &self.socket(node),
            &Request::Status,
            control::STATUS_TIMEOUT,
        )
        .await?;
        status["stats"]["channels"]
            .as_u64()
            .ok_or_else(|| anyhow!("no stats.channels in {status}"))
    }

    /// A `bytes`-byte message from `member` through its kept channel to `peer-node`'s
    /// echo, and the echo back.
    async fn send(&self, member: &Member, bytes: usize) -> anyhow::Result<()> {
        let request = Request::Send {
            route: vec![format!("0#{}", member.channel), "0#echo".to_owned()],
            payload: "x".repeat(bytes),
            timeout_ms: 2_000,
            channels: Vec::new(),
        };
        control::call(&self.socket(&member.node), &request, GIVE_UP).await?;
        Ok(())
    }
}
