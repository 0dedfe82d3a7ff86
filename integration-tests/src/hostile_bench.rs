//! The hostile bench (issue 17): a project node under each attack in turn, and what a
//! legitimate client gets from it meanwhile.
//!
//! Measured as users deploy: the project node is a `kith` daemon of its own (the binary
//! next to this one, [`crate::authority_bench::kith_next_to_exe`]), in a private
//! `KITH_HOME`, on loopback. The attackers ([`crate::hostile`]) run in this process and
//! speak from 127.0.0.2 and up; the legitimate client is a node of this process speaking
//! from 127.0.0.1, and each of its samples is a **new secure channel**: a new node, a new
//! TCP connection, the version exchange and the whole handshake with the project node's
//! `api` listener, closed again before the next.
//!
//! The attacks, each alone, each stopped before the next:
//! - `spray`: one connection sending handshake first messages as fast as the node takes
//!   them;
//! - `hold`: sixteen hosts holding every connection the node takes (4,096 in all) and
//!   sending keep-alives;
//! - `trickle`: eight hosts with 2,000 connections that announce a 256 KiB frame and send
//!   it a byte a second.
//!
//! Records, per attack: `hostile_<attack>_new_channel_p50` and `_p99` (ms) against the
//! same percentile with no attack, measured first in the same run, and `hostile_<attack>_rss`
//! (MiB, once the node's memory has settled under the attack) against the node's RSS with
//! no attack. Targets: every p99 under 1 s, and under 64 MiB with 4,000 hostile connections
//! open (`hold`); stderr says whether each was met.
//!
//! The measuring code is shared by the `hostile` bench (release build) and the
//! `hostile_bench_smoke` test (small attacks, debug build), so that it cannot rot.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use kith_identity::channel::{Admission, Trust};
use kith_identity::secure_channel::{self, DEFAULT_LISTENER};

use crate::bench::{BenchRecord, ensure_fd_limit, percentile, rss_kib, settled_rss_kib, verdict};
use crate::hostile::{Holders, Sprayer, Tricklers, attacker, node_from, route_to};
use crate::kith_home::KithHome;
use crate::party::Party;

/// 1 s: the most a legitimate new channel may take, at the 99th percentile, under attack.
pub const P99_TARGET: Duration = Duration::from_secs(1);

/// 64 MiB: the most the node may take with 4,000 hostile connections open.
pub const HELD_RSS_TARGET_MIB: f64 = 64.0;

/// 120 s: no attack outlives its phase; a phase takes seconds.
const ATTACK_LIMIT: Duration = Duration::from_secs(120);

/// 10 s: past this a new channel counts as failed, and the bench fails.
const GIVE_UP: Duration = Duration::from_secs(10);

/// The project node's name (`kith authority create`'s default).
const PROJECT_NODE: &str = "authority";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct HostileBenchConfig {
    /// The `kith` binary the daemon runs.
    pub kith: PathBuf,
    /// New channels per phase.
    pub samples: usize,
    /// Hosts holding connections, and how many each tries to hold.
    pub holders: (usize, usize),
    /// Hosts trickling frames, and how many connections each opens.
    pub tricklers: (usize, usize),
}

impl HostileBenchConfig {
    /// The full run: 200 channels a phase, 16 × 260 holders (the node takes 16 × 256),
    /// 8 × 250 tricklers.
    pub fn full(kith: PathBuf) -> Self {
        Self {
            kith,
            samples: 200,
            holders: (16, 260),
            tricklers: (8, 250),
        }
    }

    /// Small attacks, to keep the code from rotting.
    pub fn quick(kith: PathBuf) -> Self {
        Self {
            kith,
            samples: 5,
            holders: (2, 40),
            tricklers: (2, 20),
        }
    }
}

/// What one phase measured.
struct Phase {
    p50: Duration,
    p99: Duration,
    rss_mib: f64,
}

/// Run every phase, passing each record to `report` as it is known.
pub fn run_all(
    config: &HostileBenchConfig,
    mut report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    let hostile = config.holders.0 * config.holders.1 + config.tricklers.0 * config.tricklers.1;
    ensure_fd_limit(u64::try_from(hostile * 2 + 1024)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node = ProjectNode::start(&config.kith).context("starting the project node")?;
    let mut records = Vec::new();
    let mut emit = |r: BenchRecord| {
        report(&r);
        records.push(r);
    };
    let to = node.listener;

    let quiet = runtime.block_on(measure(config, &node))?;
    eprintln!(
        "hostile: no attack: new channel p50 {:?}, p99 {:?}; RSS {:.1} MiB",
        quiet.p50, quiet.p99, quiet.rss_mib
    );

    let spray = runtime.block_on(async {
        let sprayer = Sprayer::start(attacker(2), to, u64::MAX, ATTACK_LIMIT).await?;
        let phase = measure(config, &node).await?;
        eprintln!("hostile: spray sent {} first messages", sprayer.sent());
        anyhow::Ok(phase)
    })?;
    emit_phase(&mut emit, "spray", &spray, &quiet);

    let hold = runtime.block_on(async {
        let holders = Holders::start(
            &hosts(2, config.holders.0),
            config.holders.1,
            to,
            ATTACK_LIMIT,
        )
        .await;
        eprintln!(
            "hostile: hold: {} connections held, {} refused",
            holders.held(),
            holders.refused()
        );
        let held = holders.held();
        let phase = measure(config, &node).await;
        holders.stop().await;
        phase.map(|p| (p, held))
    })?;
    let (hold, held) = hold;
    emit_phase(&mut emit, "hold", &hold, &quiet);
    eprintln!(
        "hostile: hold: RSS {:.1} MiB with {held} hostile connections open; target under {HELD_RSS_TARGET_MIB} MiB with 4,000 {}",
        hold.rss_mib,
        verdict(held < 4000 || hold.rss_mib < HELD_RSS_TARGET_MIB)
    );

    let trickle = runtime.block_on(async {
        let tricklers = Tricklers::start(
            &hosts(2, config.tricklers.0),
            config.tricklers.1,
            to,
            ATTACK_LIMIT,
        )
        .await;
        eprintln!(
            "hostile: trickle: {} connections trickling",
            tricklers.open()
        );
        let phase = measure(config, &node).await;
        tricklers.stop().await;
        phase
    })?;
    emit_phase(&mut emit, "trickle", &trickle, &quiet);
    Ok(records)
}

/// `count` attacking hosts from 127.0.0.`first` on.
fn hosts(first: u8, count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| attacker(first.saturating_add(u8::try_from(i).unwrap_or(u8::MAX))))
        .collect()
}

fn emit_phase(emit: &mut impl FnMut(BenchRecord), attack: &str, phase: &Phase, quiet: &Phase) {
    emit(BenchRecord::new(
        format!("hostile_{attack}_new_channel_p50"),
        millis(phase.p50),
        "ms",
        millis(quiet.p50),
    ));
    emit(BenchRecord::new(
        format!("hostile_{attack}_new_channel_p99"),
        millis(phase.p99),
        "ms",
        millis(quiet.p99),
    ));
    emit(BenchRecord::new(
        format!("hostile_{attack}_rss"),
        phase.rss_mib,
        "MiB",
        quiet.rss_mib,
    ));
    eprintln!(
        "hostile: {attack}: new channel p50 {:?}, p99 {:?}; target p99 under {P99_TARGET:?} {}",
        phase.p50,
        phase.p99,
        verdict(phase.p99 < P99_TARGET)
    );
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// [`HostileBenchConfig::samples`] new channels from 127.0.0.1, one after another, then
/// the node's settled RSS.
async fn measure(config: &HostileBenchConfig, node: &ProjectNode) -> anyhow::Result<Phase> {
    let anyone = Arc::new(Trust {
        authorities: vec![],
        admission: Admission::AnyIdentity,
        revocations: Default::default(),
    });
    let settings = Party::new().settings(vec![], anyone);
    let legit = IpAddr::from([127, 0, 0, 1]);
    let mut samples = Vec::with_capacity(config.samples);
    for i in 0..config.samples {
        let (client, _tcp) = node_from(&format!("legit-{i}"), legit);
        let started = Instant::now();
        let opened = tokio::time::timeout(
            GIVE_UP,
            secure_channel::create(
                &client,
                route_to(node.listener, DEFAULT_LISTENER)?,
                &settings,
            ),
        )
        .await;
        let took = started.elapsed();
        client.shutdown().await;
        match opened {
            Ok(Ok(_)) => samples.push(took),
            Ok(Err(e)) => bail!("a legitimate new channel failed: {e}"),
            Err(_) => bail!("a legitimate new channel took more than {GIVE_UP:?}"),
        }
    }
    let pid = node.pid;
    let rss = tokio::task::spawn_blocking(move || settled_rss_kib(pid)).await??;
    Ok(Phase {
        p50: percentile(&samples, 50),
        p99: percentile(&samples, 99),
        rss_mib: rss as f64 / 1024.0,
    })
}

/// The project node: an authority daemon in a private `KITH_HOME`, stopped when dropped.
struct ProjectNode {
    /// Held for its daemon, which dropping it stops.
    _home: KithHome,
    listener: SocketAddr,
    pid: u32,
}

impl ProjectNode {
    fn start(kith: &std::path::Path) -> anyhow::Result<Self> {
        let home = KithHome::new(kith, "hostile")?;
        let created = home.json(&["authority", "create", "--project", "acme"])?;
        let shown = home.show(PROJECT_NODE)?;
        let listener = shown["listener"]
            .as_str()
            .ok_or_else(|| anyhow!("no listener in {shown} (created: {created})"))?
            .parse()?;
        let pid = home.pid(PROJECT_NODE)?;
        rss_kib(pid)?;
        Ok(Self {
            _home: home,
            listener,
            pid,
        })
    }
}
