//! The authority benchmark: how many enrollments per second real `kith` authority processes
//! complete, and how many credentials they issue, each next to a baseline measured in the
//! same run (DESIGN §7).
//!
//! Three figures, all against daemons the `kith` binary starts on loopback, driven by
//! in-process client nodes in this process:
//!
//! - **Redemptions on SQLite** (`authority_redemptions_sqlite`): an admin creates
//!   single-use tickets (by default; see [`AuthorityBenchConfig::uses_per_ticket`]) through
//!   the authority while [`AuthorityBenchConfig::clients`] clients, each redemption with a
//!   fresh identity, open a secure channel, redeem one code (the authority takes a use,
//!   writes the member and signs a first credential) and close the channel. Every
//!   enrollment is then two store writes (the ticket, the redemption), a handshake and a
//!   credential. Baseline: the same number of handshakes with fresh
//!   identities, at the same concurrency, against a plain `kith node` process's `api`
//!   listener, opened and closed the same way — what the enrollments would cost if the
//!   authority did nothing but the channel.
//! - **Redemptions with two authority processes on one PostgreSQL database**
//!   (`authority_redemptions_postgres_2_processes`): the same pipeline, the admin creating
//!   tickets through both processes and the clients split between them, each pinned to the
//!   identity of the one it talks to, so that tickets made by one are redeemed by the other.
//!   Baseline: the same handshakes split over two plain node processes.
//! - **Credential issuance** (`authority_credentials_sqlite`): members enrolled above ask
//!   the SQLite authority for fresh credentials over channels already open (a store read and
//!   a signature each). Baseline: request–reply round trips of the same size to the same
//!   process's `echo` service over channels of the same members.
//!
//! Rates are in operations per second (`ops/s`): a redemption, a handshake, a credential, a
//! round trip. Redemptions and their baselines run in alternating rounds, and each figure is
//! its best round's. Alongside, stderr shows the wall time and the CPU time (daemons, and
//! this process's clients) per operation, which says where the time goes.
//!
//! The measuring code is shared by the `authority` bench (release build) and the
//! `authority_bench_smoke` test (tiny counts), so that it cannot rot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use kith_authority::client::AuthorityClient;
use kith_authority::ticket::OneTimeCode;
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::unix_now;
use kith_identity::{Identifier, Identity, SecureChannelKey};
use kith_node::{Address, Node, Route, TCP};
use kith_transport::TcpTransport;
use tempfile::TempDir;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::bench::{BenchRecord, run_bench, selection, verdict};
use crate::party::ticket_code;
use crate::postgres::TempDatabase;

/// 1,000 redemptions/s: what one authority process on SQLite should sustain.
pub const SQLITE_TARGET: f64 = 1_000.0;

/// 2,000 redemptions/s: what two authority processes on one PostgreSQL database should.
pub const POSTGRES_TARGET: f64 = 2_000.0;

/// 60 s: bounds each handshake and each request. Loopback answers in milliseconds; only a
/// stuck authority takes this long.
const WAIT: Duration = Duration::from_secs(60);

/// 60 s: bounds each `kith` command (creating an authority starts a daemon).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// 1 hour: how long the benched tickets stay valid, far beyond any run.
const TICKET_LIFETIME: Duration = Duration::from_secs(3600);

/// The measurements [`AuthorityBenchConfig::only`] may name.
pub const MEASUREMENTS: &[&str] = &["sqlite", "postgres", "credentials"];

/// How much to measure.
#[derive(Debug, Clone)]
pub struct AuthorityBenchConfig {
    /// The `kith` binary that runs the authority and plain node daemons.
    pub kith: PathBuf,
    /// A PostgreSQL URL whose role may create databases; the run makes one and drops it.
    pub postgres_url: String,
    /// Clients redeeming (or handshaking, or asking for credentials) at once.
    pub clients: usize,
    /// In-process client nodes the clients are spread over.
    pub client_nodes: usize,
    /// Admin channels creating tickets at once, per authority process.
    pub ticket_makers: usize,
    /// How many identities each ticket enrolls: 1 (the default) makes every enrollment a
    /// ticket of its own, the costliest case for the store (two writes per enrollment).
    pub uses_per_ticket: u32,
    /// Unmeasured redemptions (and handshakes) before each measured run.
    pub warmup: usize,
    /// Measured redemptions (and baseline handshakes) per round.
    pub redemptions: usize,
    /// Rounds of (baseline, redemptions), alternating; each figure is the best round's, so
    /// that a burst of other work on the machine during one round does not decide it.
    pub rounds: usize,
    /// Measured credentials (and baseline round trips).
    pub credentials: usize,
    /// Run only this measurement (`sqlite`, `postgres`, `credentials`), e.g. under a
    /// profiler; `None` runs them all. `credentials` needs the `sqlite` run's members and
    /// runs a short one first.
    pub only: Option<String>,
}

impl AuthorityBenchConfig {
    /// The full run (`cargo bench`): about 20 s of measuring on a 2-core machine.
    pub fn full(kith: PathBuf, postgres_url: String) -> Self {
        Self {
            kith,
            postgres_url,
            clients: 32,
            client_nodes: 4,
            ticket_makers: 4,
            uses_per_ticket: 1,
            warmup: 300,
            redemptions: 3_000,
            rounds: 2,
            credentials: 10_000,
            only: None,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick(kith: PathBuf, postgres_url: String) -> Self {
        Self {
            kith,
            postgres_url,
            clients: 4,
            client_nodes: 2,
            ticket_makers: 1,
            uses_per_ticket: 1,
            warmup: 4,
            redemptions: 24,
            rounds: 1,
            credentials: 24,
            only: None,
        }
    }
}

/// The `kith` binary next to the running executable (`target/<profile>/deps/<exe>` →
/// `target/<profile>/kith`), or `KITH_BIN` if set.
pub fn kith_next_to_exe() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KITH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("kith"))
        .ok_or_else(|| anyhow!("cannot find the target directory of {}", exe.display()))?;
    ensure!(
        bin.is_file(),
        "{} not found: build it (`cargo build -p kith-cli`, with --release for the bench) or set KITH_BIN",
        bin.display()
    );
    Ok(bin)
}

/// `cargo build --release -p kith-cli`, with the cargo that runs this bench; its progress
/// goes to our stderr.
pub fn build_release_kith() -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "-p", "kith-cli"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(
        status.success(),
        "`cargo build --release -p kith-cli` failed; the bench needs the release kith binary (or KITH_BIN)"
    );
    Ok(())
}

/// The PostgreSQL URL the environment names, or an error that says how to get one.
pub fn postgres_url_from_env() -> anyhow::Result<String> {
    crate::postgres::server_url("the authority bench (two authority processes share one)")
        .map_err(|e| anyhow!(e))
}

/// Run every measurement, passing each record to `report` as it is known. Builds its own
/// tokio runtime; call it from outside one.
pub fn run_all(
    config: &AuthorityBenchConfig,
    report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    let wanted = selection(config.only.as_deref(), MEASUREMENTS)?;
    run_bench(report, |rt, out| {
        rt.block_on(async {
            let clients = ClientNodes::start(config.client_nodes);
            let outcome = async {
                if wanted("sqlite") || wanted("credentials") {
                    out.emit(
                        sqlite(config, &clients, wanted("sqlite"), wanted("credentials")).await?,
                    );
                }
                if wanted("postgres") {
                    out.emit(postgres(config, &clients).await?);
                }
                anyhow::Ok(())
            }
            .await;
            clients.shutdown().await;
            outcome
        })
    })
}

/// The SQLite redemption run and, with `credentials`, the credential run on its members.
async fn sqlite(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
    redemptions: bool,
    credentials: bool,
) -> anyhow::Result<Vec<BenchRecord>> {
    let mut records = Vec::new();
    let home = KithHome::new(&config.kith)?;
    let admin = Party::new();
    let plain = home.plain_node("plain").await?;
    let authority = home.authority("auth", &admin, &[]).await?;

    if redemptions {
        eprintln!(
            "authority (SQLite): rounds of {} handshakes against a plain node and {} enrollments, {} clients",
            config.redemptions, config.redemptions, config.clients
        );
        let (rate, baseline, members) = best_of_rounds(
            config,
            clients,
            std::slice::from_ref(&plain),
            std::slice::from_ref(&authority),
            &admin,
        )
        .await?;
        eprintln!(
            "authority (SQLite): {rate:.0} redemptions/s, {baseline:.0} handshakes/s; target {SQLITE_TARGET:.0}/s {}",
            verdict(rate >= SQLITE_TARGET)
        );
        records.push(BenchRecord::new(
            "authority_redemptions_sqlite",
            rate,
            "ops/s",
            baseline,
        ));
        if credentials {
            records.push(credential_run(config, clients, &authority, members).await?);
        }
    } else {
        let (_, members) = enroll(
            config,
            clients,
            std::slice::from_ref(&authority),
            &admin,
            config.clients,
        )
        .await?;
        records.push(credential_run(config, clients, &authority, members).await?);
    }
    Ok(records)
}

/// Two authority processes sharing one fresh PostgreSQL database.
async fn postgres(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
) -> anyhow::Result<Vec<BenchRecord>> {
    let db =
        TempDatabase::create(&config.postgres_url, "kith_bench").map_err(|e| anyhow!("{e}"))?;
    let (home_a, home_b) = (KithHome::new(&config.kith)?, KithHome::new(&config.kith)?);
    let admin = Party::new();
    let plain = [
        home_a.plain_node("plain-a").await?,
        home_b.plain_node("plain-b").await?,
    ];
    let a = home_a
        .authority("auth-a", &admin, &["--database-url", &db.url])
        .await?;
    let b = home_b
        .authority(
            "auth-b",
            &admin,
            &[
                "--database-url",
                &db.url,
                "--project-id",
                &a.project_id.clone().unwrap_or_default(),
            ],
        )
        .await?;
    let authorities = [a, b];
    eprintln!(
        "authority (PostgreSQL, 2 processes): rounds of {} handshakes against two plain nodes and {} enrollments, {} clients",
        config.redemptions, config.redemptions, config.clients
    );
    let (rate, baseline, _) = best_of_rounds(config, clients, &plain, &authorities, &admin).await?;
    eprintln!(
        "authority (PostgreSQL, 2 processes): {rate:.0} redemptions/s, {baseline:.0} handshakes/s; target {POSTGRES_TARGET:.0}/s {}",
        verdict(rate >= POSTGRES_TARGET)
    );
    // Stop the daemons before the database goes.
    drop((home_a, home_b));
    drop(db);
    Ok(vec![BenchRecord::new(
        "authority_redemptions_postgres_2_processes",
        rate,
        "ops/s",
        baseline,
    )])
}

// ---- the measurements ---------------------------------------------------------------------

/// Warm up, then [`AuthorityBenchConfig::rounds`] rounds of handshakes against `plain` and
/// enrollments through `authorities`; returns the best redemption rate, the best handshake
/// rate and the first members of the last round.
async fn best_of_rounds(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
    plain: &[Target],
    authorities: &[Target],
    admin: &Party,
) -> anyhow::Result<(f64, f64, Vec<Party>)> {
    handshakes(config, clients, plain, config.warmup).await?;
    enroll(config, clients, authorities, admin, config.warmup).await?;
    let (mut best_rate, mut best_baseline, mut members) = (0.0f64, 0.0f64, Vec::new());
    for _ in 0..config.rounds.max(1) {
        let baseline = handshakes(config, clients, plain, config.redemptions).await?;
        let (rate, enrolled) =
            enroll(config, clients, authorities, admin, config.redemptions).await?;
        best_baseline = best_baseline.max(baseline);
        best_rate = best_rate.max(rate);
        members = enrolled;
    }
    Ok((best_rate, best_baseline, members))
}

/// `count` handshakes with fresh identities against `targets` (client `i` pinned to target
/// `i % targets.len()`), [`AuthorityBenchConfig::clients`] at a time, each channel closed
/// once open; returns handshakes per second.
async fn handshakes(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
    targets: &[Target],
    count: usize,
) -> anyhow::Result<f64> {
    let parties = Party::many(count);
    let cpu = CpuTime::of(targets);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for (c, mine) in deal(parties, config.clients).into_iter().enumerate() {
        let node = clients.pick(c);
        let target = targets[c % targets.len()].clone();
        workers.spawn(async move {
            for party in mine {
                let client = target.connect(&node, &party).await?;
                drop(client);
            }
            anyhow::Ok(())
        });
    }
    join_all(workers).await?;
    let elapsed = started.elapsed();
    cpu.report("handshake", count, elapsed);
    Ok(rate(count, elapsed))
}

/// `count` enrollments through `authorities`: the admin makes tickets of
/// [`AuthorityBenchConfig::uses_per_ticket`] uses through each (on
/// [`AuthorityBenchConfig::ticket_makers`] channels apiece) while the clients, each pinned to
/// one authority, take the codes in the order they come, whichever authority made them, and
/// redeem each with a fresh identity on a channel of its own. Returns redemptions per second
/// and the first [`AuthorityBenchConfig::clients`] members.
async fn enroll(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
    authorities: &[Target],
    admin: &Party,
    count: usize,
) -> anyhow::Result<(f64, Vec<Party>)> {
    let parties = Party::many(count);
    let keep: Vec<Party> = parties.iter().take(config.clients).cloned().collect();
    // Admin channels, opened before the clock starts.
    let mut makers = Vec::new();
    for (i, authority) in authorities.iter().enumerate() {
        for m in 0..config.ticket_makers {
            let node = clients.pick(i * config.ticket_makers + m);
            makers.push(authority.connect(&node, admin).await?);
        }
    }
    // Enough room that makers are rarely held up, little enough that codes do not pile up.
    let (codes_tx, codes_rx) = mpsc::channel::<OneTimeCode>(config.clients * 2);
    let codes_rx = Arc::new(Mutex::new(codes_rx));
    // Codes still to hand out; each maker claims up to a ticket's uses at a time.
    let to_hand_out = Arc::new(AtomicUsize::new(count));
    let uses = config.uses_per_ticket.max(1);

    let cpu = CpuTime::of(authorities);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for mut maker in makers {
        let (tx, to_hand_out) = (codes_tx.clone(), to_hand_out.clone());
        workers.spawn(async move {
            let per_ticket = usize::try_from(uses)?;
            while let Ok(left) =
                to_hand_out.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    n.checked_sub(n.min(per_ticket)).filter(|_| n > 0)
                })
            {
                let created = maker
                    .create_ticket(Default::default(), TICKET_LIFETIME, uses)
                    .await
                    .context("creating a ticket")?;
                let code = ticket_code(&created.code)?;
                for _ in 0..left.min(per_ticket) {
                    tx.send(code.clone())
                        .await
                        .map_err(|_| anyhow!("the redeemers stopped"))?;
                }
            }
            anyhow::Ok(())
        });
    }
    drop(codes_tx);
    for (c, mine) in deal(parties, config.clients).into_iter().enumerate() {
        let node = clients.pick(c);
        let target = authorities[c % authorities.len()].clone();
        let codes = codes_rx.clone();
        workers.spawn(async move {
            for party in mine {
                let code = codes
                    .lock()
                    .await
                    .recv()
                    .await
                    .ok_or_else(|| anyhow!("the ticket makers stopped"))?;
                let mut client = target.connect(&node, &party).await?;
                client
                    .redeem(&code)
                    .await
                    .with_context(|| format!("redeeming at {}", target.identifier))?;
                drop(client);
            }
            anyhow::Ok(())
        });
    }
    join_all(workers).await?;
    let elapsed = started.elapsed();
    cpu.report("enrollment", count, elapsed);
    Ok((rate(count, elapsed), keep))
}

/// Credentials for `members` over channels already open, against echo round trips over
/// channels of the same members to the same process.
async fn credential_run(
    config: &AuthorityBenchConfig,
    clients: &ClientNodes,
    authority: &Target,
    members: Vec<Party>,
) -> anyhow::Result<BenchRecord> {
    eprintln!(
        "authority (SQLite): {} credentials to {} members, against as many echo round trips",
        config.credentials,
        members.len()
    );
    let per_member = config.credentials.div_ceil(members.len().max(1));
    let total = per_member * members.len();

    // Echo round trips of the credential request's size (`{}`), through the members' own
    // channels to the authority's node.
    let mut channels = Vec::new();
    for (c, party) in members.iter().enumerate() {
        let node = clients.pick(c);
        let channel = secure_channel::create(&node, authority.route.clone(), &party.settings)
            .await
            .context("opening an echo channel to the authority")?;
        channels.push((node, channel));
    }
    let cpu = CpuTime::of(std::slice::from_ref(authority));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for (node, channel) in channels {
        workers.spawn(async move {
            let mut mailbox = node.client()?;
            let route = Route::from(vec![channel.encryptor.clone(), Address::local("echo")]);
            for _ in 0..per_member {
                mailbox.request(route.clone(), b"{}".to_vec(), WAIT).await?;
            }
            secure_channel::close(&node, &channel);
            anyhow::Ok(())
        });
    }
    join_all(workers).await?;
    let elapsed = started.elapsed();
    cpu.report("echo round trip", total, elapsed);
    let echo = rate(total, elapsed);

    let mut open = Vec::new();
    for (c, party) in members.iter().enumerate() {
        open.push(authority.connect(&clients.pick(c), party).await?);
    }
    let cpu = CpuTime::of(std::slice::from_ref(authority));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for mut client in open {
        workers.spawn(async move {
            for _ in 0..per_member {
                client
                    .credential()
                    .await
                    .context("asking for a credential")?;
            }
            anyhow::Ok(())
        });
    }
    join_all(workers).await?;
    let elapsed = started.elapsed();
    cpu.report("credential", total, elapsed);
    let issued = rate(total, elapsed);
    eprintln!("authority (SQLite): {issued:.0} credentials/s, {echo:.0} echo round trips/s");
    Ok(BenchRecord::new(
        "authority_credentials_sqlite",
        issued,
        "ops/s",
        echo,
    ))
}

// ---- parts --------------------------------------------------------------------------------

/// In-process client nodes, each with a TCP transport.
struct ClientNodes(Vec<(Node, TcpTransport)>);

impl ClientNodes {
    fn start(count: usize) -> Self {
        Self(
            (0..count.max(1))
                .map(|i| {
                    let node = Node::new(format!("bench-client-{i}"));
                    let tcp = TcpTransport::start(&node);
                    (node, tcp)
                })
                .collect(),
        )
    }

    /// The node for client `i`.
    fn pick(&self, i: usize) -> Node {
        self.0[i % self.0.len()].0.clone()
    }

    async fn shutdown(self) {
        for (node, _) in self.0 {
            node.shutdown().await;
        }
    }
}

/// A node's secure-channel listener, and who must answer there.
#[derive(Debug, Clone)]
struct Target {
    route: Route,
    identifier: Identifier,
    /// The project id, for an authority.
    project_id: Option<String>,
    /// The daemon's process id, to read its CPU time.
    pid: u32,
}

impl Target {
    /// The daemon `kith … --output json` described in `v`: its `listener`, `pid` and the
    /// identifier under `identifier_key`.
    fn of_daemon(v: &serde_json::Value, identifier_key: &str) -> anyhow::Result<Self> {
        let field = |key: &str| v[key].as_str().ok_or_else(|| anyhow!("no {key} in {v}"));
        let pid = v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| anyhow!("no pid in {v}"))?;
        let listener = field("listener")?;
        let identifier = field(identifier_key)?;
        Ok(Self {
            route: Route::from(vec![
                Address::try_new(TCP, listener)?,
                Address::local(DEFAULT_LISTENER),
            ]),
            identifier: identifier
                .parse()
                .with_context(|| format!("identifier {identifier:?}"))?,
            project_id: v["project_id"].as_str().map(str::to_owned),
            pid,
        })
    }

    /// A channel from `node` as `party`, pinned to this target's identity.
    async fn connect(&self, node: &Node, party: &Party) -> anyhow::Result<AuthorityClient> {
        AuthorityClient::connect(
            node,
            self.route.clone(),
            &self.identifier,
            &party.settings,
            WAIT,
        )
        .await
        .with_context(|| format!("connecting to {}", self.identifier))
    }
}

/// A fresh identity with a channel key, as a client node would hold it.
#[derive(Clone)]
struct Party {
    identifier: Identifier,
    settings: ChannelSettings,
}

impl Party {
    fn new() -> Self {
        let now = unix_now();
        let (identity, secret) = Identity::create(now);
        let key = SecureChannelKey::generate(&identity, &secret, now - 5, now + 3600);
        let identifier = *identity.identifier();
        let local = LocalIdentity {
            identity,
            key,
            credentials: vec![],
        };
        let trust = Arc::new(Trust {
            authorities: vec![],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        });
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = WAIT;
        Self {
            identifier,
            settings,
        }
    }

    /// `count` fresh identities, made before any clock starts.
    fn many(count: usize) -> Vec<Self> {
        (0..count).map(|_| Self::new()).collect()
    }
}

/// CPU time used so far by the daemons of a run and by this process (the clients), to tell
/// where a run's time goes: printed per operation on stderr, next to the wall-clock time.
struct CpuTime {
    pids: Vec<u32>,
    daemons: Duration,
    clients: Duration,
}

impl CpuTime {
    fn of(targets: &[Target]) -> Self {
        let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
        Self::of_pids(&pids)
    }

    /// Print the CPU time per `what` since [`CpuTime::of`], for `count` of them in `elapsed`.
    fn report(&self, what: &str, count: usize, elapsed: Duration) {
        let now = Self::of_pids(&self.pids);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / count.max(1) as f64;
        eprintln!(
            "  per {what}: {:.0} us wall, CPU {:.0} us in the daemon(s) + {:.0} us in the clients",
            elapsed.as_secs_f64() * 1e6 / count.max(1) as f64,
            per(now.daemons.saturating_sub(self.daemons)),
            per(now.clients.saturating_sub(self.clients)),
        );
    }

    fn of_pids(pids: &[u32]) -> Self {
        Self {
            daemons: pids.iter().map(|p| cpu_time(&p.to_string())).sum(),
            clients: cpu_time("self"),
            pids: pids.to_vec(),
        }
    }
}

/// 100 Hz: the unit of the CPU times in `/proc/PID/stat` (`USER_HZ`, 100 on every Linux
/// platform kith runs on).
const USER_HZ: f64 = 100.0;

/// User plus system CPU time of process `pid` (`self` for this one), all threads; zero if
/// it cannot be read (the figures are diagnostics, not records).
fn cpu_time(pid: &str) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Duration::from_secs_f64((ticks(11) + ticks(12)) / USER_HZ)
}

/// `items` dealt round-robin into `hands` hands.
fn deal<T>(items: Vec<T>, hands: usize) -> Vec<Vec<T>> {
    let hands = hands.max(1);
    let mut dealt: Vec<Vec<T>> = (0..hands).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        dealt[i % hands].push(item);
    }
    dealt
}

async fn join_all(mut workers: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// A private `KITH_HOME` for daemons of the bench; dropping it stops them.
struct KithHome {
    kith: PathBuf,
    dir: TempDir,
}

impl KithHome {
    fn new(kith: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            kith: kith.to_owned(),
            dir: tempfile::Builder::new().prefix("kith-bench-").tempdir()?,
        })
    }

    /// Run `kith ARGS --output json` and parse what it prints.
    async fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let shown = format!("kith {}", args.join(" "));
        let run = tokio::process::Command::new(&self.kith)
            .args(args)
            .args(["--output", "json"])
            .env("KITH_HOME", self.dir.path())
            .env_remove("KITH_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(COMMAND_LIMIT, run)
            .await
            .map_err(|_| anyhow!("`{shown}` did not finish within {COMMAND_LIMIT:?}"))?
            .with_context(|| format!("cannot run {}", self.kith.display()))?;
        if !out.status.success() {
            bail!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`{shown}` printed something other than JSON"))
    }

    /// A plain node daemon (no authority), as a handshake target.
    async fn plain_node(&self, name: &str) -> anyhow::Result<Target> {
        let v = self.json(&["node", "create", name]).await?;
        Target::of_daemon(&v, "identifier")
    }

    /// An authority daemon with `admin` as its only admin.
    async fn authority(&self, name: &str, admin: &Party, extra: &[&str]) -> anyhow::Result<Target> {
        let admin = admin.identifier.to_string();
        let mut args = vec![
            "authority",
            "create",
            name,
            "--project",
            "bench",
            "--admin",
            &admin,
        ];
        args.extend_from_slice(extra);
        let v = self.json(&args).await?;
        Target::of_daemon(&v, "authority_identifier")
    }
}

impl Drop for KithHome {
    fn drop(&mut self) {
        // Bounded inside `kith node delete` (each stop waits a few seconds at most).
        let _ = std::process::Command::new(&self.kith)
            .args(["node", "delete", "--all", "--include-authorities"])
            .env("KITH_HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
