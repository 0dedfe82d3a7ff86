//! The join-request benchmark (issue 7): how long after an admin's `approve` a waiting
//! requester holds its credential, with many requesters waiting at once, against a
//! secure-channel round trip to the same authority measured in the same run (DESIGN §7).
//!
//! In this process, on loopback TCP with ports read back after binding port 0:
//!
//! - **A**, the authority node: the authority's services on a real SQLite store and vault,
//!   a secure-channel listener that admits any identity (requesters have no credential
//!   yet), and an `echo` worker reachable through channels.
//! - **Requesters**, one node each (so each has its own TCP connection, as separate
//!   machines would) and an identity of its own. Each opens an [`AuthorityClient`] channel
//!   to A, files a join request, and then waits on it in a task of its own, asking again
//!   whenever a wait comes back still pending.
//! - **The admin**, on a node of its own with its own channel: it lists the pending
//!   requests and approves them one after another.
//!
//! Each round measures, per requester, from the instant just before the admin's
//! `approve_join_request` call for its request to the instant its own wait returned the
//! (client-verified) credential. Rounds pool their samples. The baseline is the round trip
//! of 64 bytes to A's `echo` through a secure channel from a requester's node to A's
//! listener (a sibling of that requester's authority channel, on the same TCP connection:
//! [`AuthorityClient`] does not lend out its own channel). Its p50 and p99 are the
//! baselines of the latency's p50 and p99.
//!
//! Those round trips also serve as the settling time before approvals start: each
//! requester signals right before it sends its first wait, and the admin starts only after
//! every signal and then a few hundred round trips. A wait still in flight when its
//! request is approved is answered as soon as it arrives, so the race this leaves only
//! changes which path (woken wait or immediate answer) a sample took, never its honesty.
//!
//! End-to-end throughput (members made per second by approval, counted from the first
//! approve call to the last credential in hand, best round) is reported against the other
//! way in: as many fresh identities redeeming one ticket one after another, each
//! redemption likewise a durable write and then a credential (best round).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kith_authority::api::{JOIN_WAIT_HOLD, JoinState};
use kith_authority::client::AuthorityClient;
use kith_authority::join::JoinSettings;
use kith_identity::Identifier;
use kith_identity::secure_channel::{self, ChannelSettings};
use kith_node::{Address, AllowAll, Echo, Node, Route};
use kith_transport::TcpTransport;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bench::{BenchRecord, micros, percentile, run_bench};
use crate::channel_bench::round_trips;
use crate::party::{Party, ProjectConfig, ProjectNode, ticket_code};

/// 10 s: bounds each handshake, each request other than a wait, and the time for every
/// requester to have filed and be about to wait. Loopback answers in milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// Three holds: bounds how long a round waits for every requester's credential after the
/// last approval. A lost wake-up costs one hold ([`JOIN_WAIT_HOLD`]) and still ends well
/// inside this; the slow sample then shows in the p99.
const COLLECT: Duration = Duration::from_secs(3 * JOIN_WAIT_HOLD.as_secs());

/// The project's id, carried by every credential the authority issues.
const PROJECT_ID: &str = "p-join-bench";

/// 1 hour: the lifetime of requests and tickets, far beyond any run.
const LIFETIME: Duration = Duration::from_secs(3600);

/// 200 requests: the least cap on pending requests per source address. Every requester
/// here comes from 127.0.0.1, so the default (5) would refuse all but five.
const MIN_PENDING_CAP: u32 = 200;

/// The note each requester files, for the admin.
const NOTE: &str = "join bench";

/// How much to measure.
#[derive(Debug, Clone)]
pub struct JoinBenchConfig {
    /// Requesters waiting at once in each round.
    pub requesters: usize,
    /// Rounds, each with fresh requesters; their samples are pooled.
    pub rounds: usize,
    /// Unmeasured echo round trips per round before the measured ones.
    pub warmup_round_trips: usize,
    /// Measured echo round trips per round.
    pub round_trips: usize,
}

impl JoinBenchConfig {
    /// The full run (`cargo bench`): 10 rounds of 100 requesters waiting at once, a few
    /// seconds on a 2-core machine.
    pub fn full() -> Self {
        Self {
            requesters: 100,
            rounds: 10,
            warmup_round_trips: 100,
            round_trips: 500,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick() -> Self {
        Self {
            requesters: 10,
            rounds: 1,
            warmup_round_trips: 10,
            round_trips: 100,
        }
    }
}

/// Run the measurement, passing each record to `report` as it is known. Builds its own
/// tokio runtime; call it from outside one.
pub fn run_all(
    config: &JoinBenchConfig,
    report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    ensure!(
        config.requesters > 0 && config.rounds > 0 && config.round_trips > 0,
        "the join bench needs at least one requester, round and round trip: {config:?}"
    );
    run_bench(report, |rt, out| {
        let records = rt.block_on(async {
            let mut world = World::start(config)
                .await
                .context("starting the authority")?;
            let measured = measure(config, &mut world).await;
            world.shutdown().await;
            measured
        })?;
        out.emit(records);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The world

/// The authority node (with its store and vault) and the admin's channel to it.
struct World {
    /// A: its secure-channel listener admits anyone, since requesters have no credential
    /// yet; it also runs `echo`.
    project: ProjectNode,
    admin_node: Node,
    admin: AuthorityClient,
    /// `[tcp A, api]`: A's secure-channel listener.
    listener: Route,
}

impl World {
    async fn start(config: &JoinBenchConfig) -> anyhow::Result<Self> {
        let admin = Party::new();
        let per_source = u32::try_from(config.requesters)?
            .saturating_mul(2)
            .max(MIN_PENDING_CAP);
        let project = ProjectNode::start(ProjectConfig {
            node_name: "join-bench-project",
            project_id: PROJECT_ID,
            admins: BTreeSet::from([admin.identifier()]),
            join: JoinSettings {
                request_ttl: LIFETIME,
                max_pending_per_source: per_source,
                max_pending: JoinSettings::default().max_pending.max(per_source),
            },
            relay: false,
        })
        .await?;
        project.node.start_worker_with_policy(
            [Address::local("echo")],
            Arc::new(AllowAll),
            Echo,
        )?;
        let listener = project.listener()?;

        let admin_node = Node::new("join-bench-admin");
        TcpTransport::start(&admin_node);
        let admin = AuthorityClient::connect(
            &admin_node,
            listener.clone(),
            &project.identifier(),
            &admin.settings(vec![], project.pinned()),
            WAIT,
        )
        .await
        .context("the admin's channel")?;
        Ok(Self {
            project,
            admin_node,
            admin,
            listener,
        })
    }

    async fn shutdown(self) {
        self.admin.close().await;
        self.admin_node.shutdown().await;
        self.project.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// One round

/// What a requester tells the admin's side right before its first wait.
struct Filed {
    index: usize,
    id: String,
    /// The verification code the requester computed for its channel: what it would read
    /// out to the admin.
    code: String,
}

/// A requester whose request was approved.
struct Approved {
    index: usize,
    id: String,
    /// Its channel, kept open until the round's measurements end, so that no channel
    /// closes while others still wait.
    _client: AuthorityClient,
    /// When its wait returned the verified credential.
    got: Instant,
    /// How many waits it sent; more than one means a hold ran out first.
    waits: u32,
}

/// One requester's sample.
struct Sample {
    round: usize,
    /// Its place in the admin's order of approvals.
    position: usize,
    /// From just before the approve call to the verified credential in hand.
    latency: Duration,
    /// How many waits the requester sent.
    waits: u32,
    /// How long the admin's approve call took, to its answer.
    approve_call: Duration,
    /// From the approve call's answer to the credential; zero if the credential came first.
    after_answer: Duration,
}

/// What one round measured.
struct Round {
    samples: Vec<Sample>,
    rtts: Vec<Duration>,
    /// Requesters / (last credential − first approve call).
    approved_rate: f64,
    /// Members made per second by redeeming one ticket, one after another.
    redeem_rate: f64,
    /// Messages the authority node dropped from the start of the round to the end of its
    /// measurements (not its teardown, where channel closes race node shutdowns).
    dropped: u64,
}

/// Connect, file, signal, then wait until the request is decided.
async fn requester(
    index: usize,
    node: Node,
    settings: ChannelSettings,
    listener: Route,
    authority: Identifier,
    filed: mpsc::Sender<Filed>,
) -> anyhow::Result<Approved> {
    let mut client = AuthorityClient::connect(&node, listener, &authority, &settings, WAIT)
        .await
        .with_context(|| format!("requester {index}'s channel"))?;
    let (info, code) = client
        .file_join_request(BTreeMap::new(), None, NOTE)
        .await
        .with_context(|| format!("requester {index} filing"))?;
    ensure!(
        info.code == code,
        "requester {index}: the authority stored code {} but the requester computed {code}",
        info.code
    );
    let id = info.id;
    filed
        .send(Filed {
            index,
            id: id.clone(),
            code,
        })
        .await
        .context("the bench stopped listening")?;
    let mut waits = 0;
    loop {
        waits += 1;
        let waited = client
            .wait_join_request(&id)
            .await
            .with_context(|| format!("requester {index} waiting on {id}"))?;
        let got = Instant::now();
        match waited.request.state {
            JoinState::Pending => {}
            JoinState::Approved => {
                ensure!(
                    waited.credential.is_some(),
                    "requester {index}: request {id} approved, but the answer has no credential"
                );
                return Ok(Approved {
                    index,
                    id,
                    _client: client,
                    got,
                    waits,
                });
            }
            other => bail!("requester {index}: request {id} is {}", other.as_str()),
        }
    }
}

async fn round(config: &JoinBenchConfig, world: &mut World, r: usize) -> anyhow::Result<Round> {
    let n = config.requesters;
    let authority = world.project.identifier();
    let dropped_before = world.project.node.stats().dropped();
    let mut nodes = Vec::with_capacity(n);
    let mut settings = Vec::with_capacity(n);
    for i in 0..n {
        let node = Node::new(format!("join-bench-requester-{r}-{i}"));
        TcpTransport::start(&node);
        settings.push(Party::new().settings(vec![], world.project.pinned()));
        nodes.push(node);
    }
    // Capacity n: each requester sends once, so a send never waits for room.
    let (tx, mut rx) = mpsc::channel(n);
    let mut tasks = JoinSet::new();
    for (i, (node, s)) in nodes.iter().zip(&settings).enumerate() {
        tasks.spawn(requester(
            i,
            node.clone(),
            s.clone(),
            world.listener.clone(),
            authority,
            tx.clone(),
        ));
    }
    drop(tx);

    let outcome = async {
        let mut filed = HashMap::with_capacity(n);
        let all_filed = tokio::time::timeout(WAIT, async {
            while filed.len() < n {
                tokio::select! {
                    Some(f) = rx.recv() => {
                        filed.insert(f.id.clone(), f);
                    }
                    Some(done) = tasks.join_next() => {
                        // Nothing is approved yet: a requester that ended has failed.
                        let a = done??;
                        bail!("requester {} ended before any approval", a.index);
                    }
                    else => bail!("every requester ended before filing"),
                }
            }
            anyhow::Ok(())
        })
        .await;
        match all_filed {
            Ok(result) => result?,
            Err(_) => bail!(
                "{} of {n} requesters filed and were about to wait within {WAIT:?}",
                filed.len()
            ),
        }

        // The baseline, which is also the settling time before approvals.
        let probe = secure_channel::create(&nodes[0], world.listener.clone(), &settings[0])
            .await
            .context("the probe channel from requester 0's node")?;
        let mut client = nodes[0].client()?;
        let echo = Route::from(vec![probe.encryptor.clone(), Address::local("echo")]);
        let rtts = round_trips(
            &mut client,
            &echo,
            config.warmup_round_trips,
            config.round_trips,
        )
        .await
        .context("round trips to the authority's echo");
        secure_channel::close(&nodes[0], &probe);
        let rtts = rtts?;

        let pending = world
            .admin
            .join_requests(false)
            .await
            .context("listing the pending requests")?;
        ensure!(
            pending.len() == n,
            "the admin sees {} pending requests; {n} were filed",
            pending.len()
        );
        let mut started = HashMap::with_capacity(n);
        for (position, request) in pending.iter().enumerate() {
            let Some(f) = filed.get(&request.id) else {
                bail!(
                    "the admin sees request {}, which no requester filed",
                    request.id
                );
            };
            ensure!(
                request.code == f.code,
                "request {} (requester {}): the admin sees code {}, the requester {}",
                request.id,
                f.index,
                request.code,
                f.code
            );
            let at = Instant::now();
            world
                .admin
                .approve_join_request(&request.id, &f.code, None, None)
                .await
                .with_context(|| format!("approving request {}", request.id))?;
            started.insert(request.id.clone(), (position, at, Instant::now()));
        }

        let mut approved = Vec::with_capacity(n);
        let collected = tokio::time::timeout(COLLECT, async {
            while let Some(done) = tasks.join_next().await {
                approved.push(done??);
            }
            anyhow::Ok(())
        })
        .await;
        match collected {
            Ok(result) => result?,
            Err(_) => bail!(
                "{} of {n} requesters held their credential {COLLECT:?} after the last approval",
                approved.len()
            ),
        }

        let mut samples = Vec::with_capacity(n);
        let first = started.values().map(|s| s.1).min();
        let last = approved.iter().map(|a| a.got).max();
        for a in &approved {
            let Some(&(position, at, answered)) = started.get(&a.id) else {
                bail!(
                    "requester {} got request {} approved by no one",
                    a.index,
                    a.id
                );
            };
            samples.push(Sample {
                round: r,
                position,
                latency: a.got.saturating_duration_since(at),
                waits: a.waits,
                approve_call: answered.saturating_duration_since(at),
                after_answer: a.got.saturating_duration_since(answered),
            });
        }
        let approved_rate = match (first, last) {
            (Some(first), Some(last)) => n as f64 / last.duration_since(first).as_secs_f64(),
            _ => bail!("no approvals"),
        };

        let redeem_rate = redemptions(world, &nodes).await?;
        let dropped = world
            .project
            .node
            .stats()
            .dropped()
            .saturating_sub(dropped_before);
        // The requesters' channels close only now, after every measurement.
        drop(approved);
        Ok(Round {
            samples,
            rtts,
            approved_rate,
            redeem_rate,
            dropped,
        })
    }
    .await;
    tasks.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
    outcome
}

/// Members per second by ticket: one fresh identity per node in `nodes`, each with a
/// channel opened beforehand, redeems a ticket the admin made for all of them, one after
/// another. Like an approval, each redemption is a durable write and then a credential.
async fn redemptions(world: &mut World, nodes: &[Node]) -> anyhow::Result<f64> {
    let uses = u32::try_from(nodes.len())?;
    let ticket = world
        .admin
        .create_ticket(BTreeMap::new(), LIFETIME, uses)
        .await
        .context("the admin creating a ticket")?;
    let code = ticket_code(&ticket.code)?;
    let mut clients = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let client = AuthorityClient::connect(
            node,
            world.listener.clone(),
            &world.project.identifier(),
            &Party::new().settings(vec![], world.project.pinned()),
            WAIT,
        )
        .await
        .with_context(|| format!("redeemer {i}'s channel"))?;
        clients.push(client);
    }
    let began = Instant::now();
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .redeem(&code)
            .await
            .with_context(|| format!("redeemer {i} redeeming the ticket"))?;
    }
    Ok(nodes.len() as f64 / began.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Measurement

async fn measure(config: &JoinBenchConfig, world: &mut World) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "join: approve → credential, {} round(s) of {} requesters waiting at once; baselines: {} round trips of 64 B per round through a channel to the authority, and ticket redemptions",
        config.rounds, config.requesters, config.round_trips
    );
    let mut samples = Vec::new();
    let mut rtts = Vec::new();
    let (mut approved_rate, mut redeem_rate) = (0.0f64, 0.0f64);
    for r in 0..config.rounds {
        let measured = round(config, world, r)
            .await
            .with_context(|| format!("round {r}"))?;
        let latencies: Vec<Duration> = measured.samples.iter().map(|s| s.latency).collect();
        eprintln!(
            "join: round {r}: p50 {:.0} us, max {:.0} us; echo p50 {:.0} us; {:.0} members/s by approval, {:.0}/s by ticket",
            micros(percentile(&latencies, 50)),
            micros(percentile(&latencies, 100)),
            micros(percentile(&measured.rtts, 50)),
            measured.approved_rate,
            measured.redeem_rate,
        );
        if measured.dropped > 0 {
            eprintln!(
                "join: round {r}: the authority node dropped {} messages while measuring: {:?}",
                measured.dropped,
                world.project.node.stats()
            );
        }
        samples.extend(measured.samples);
        rtts.extend(measured.rtts);
        approved_rate = approved_rate.max(measured.approved_rate);
        redeem_rate = redeem_rate.max(measured.redeem_rate);
    }
    let latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    let (rtt50, rtt99) = (percentile(&rtts, 50), percentile(&rtts, 99));
    eprintln!(
        "join: approve → credential p50 {:.0} us ({:.1} round trips), p99 {:.0} us ({:.1} round trips) over {} requesters; round trip p50 {:.0} us, p99 {:.0} us",
        micros(p50),
        p50.as_secs_f64() / rtt50.as_secs_f64().max(f64::MIN_POSITIVE),
        micros(p99),
        p99.as_secs_f64() / rtt50.as_secs_f64().max(f64::MIN_POSITIVE),
        latencies.len(),
        micros(rtt50),
        micros(rtt99),
    );
    samples.sort_by_key(|s| std::cmp::Reverse(s.latency));
    for s in samples.iter().take(3) {
        eprintln!(
            "join: slow: round {}, approval #{}: {:.0} us after its approve call (the call {:.0} us){}",
            s.round,
            s.position + 1,
            micros(s.latency),
            micros(s.approve_call),
            if s.waits > 1 {
                format!(" ({} waits: a hold ran out first)", s.waits)
            } else {
                String::new()
            },
        );
    }
    let rewaited = samples.iter().filter(|s| s.waits > 1).count();
    if rewaited > 0 {
        eprintln!(
            "join: {rewaited} requesters had a wait come back pending after the {JOIN_WAIT_HOLD:?} hold before their credential"
        );
    }
    let early = samples
        .iter()
        .filter(|s| s.after_answer == Duration::ZERO)
        .count();
    let calls: Vec<Duration> = samples.iter().map(|s| s.approve_call).collect();
    let after: Vec<Duration> = samples.iter().map(|s| s.after_answer).collect();
    eprintln!(
        "join: where it goes: the approve call p50 {:.0} us (p99 {:.0} us), then the credential p50 {:.0} us (p99 {:.0} us) after its answer; {early} of {} credentials came before the answer",
        micros(percentile(&calls, 50)),
        micros(percentile(&calls, 99)),
        micros(percentile(&after, 50)),
        micros(percentile(&after, 99)),
        samples.len()
    );
    eprintln!(
        "join: {approved_rate:.0} members/s by approval end to end, {redeem_rate:.0}/s by redeeming a ticket one after another (best rounds)"
    );
    Ok(vec![
        BenchRecord::new(
            "join_approve_to_credential_p50",
            micros(p50),
            "us",
            micros(rtt50),
        ),
        BenchRecord::new(
            "join_approve_to_credential_p99",
            micros(p99),
            "us",
            micros(rtt99),
        ),
        BenchRecord::new(
            "join_approve_throughput",
            approved_rate,
            "members/s",
            redeem_rate,
        ),
    ])
}
