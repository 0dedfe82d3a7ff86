//! The secure-channel benchmark: what a channel costs on top of the plain routed path, how
//! many authenticated handshakes one core completes, and what an idle channel holds in memory.
//! Every figure has a baseline measured in the same run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use kith_identity::channel::{Admission, Handshake, LocalIdentity, Progress, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::unix_now;
use kith_identity::{CredentialAndPurposeKey, CredentialSigningKey, Identity, SecureChannelKey};
use kith_node::{Address, AllowAll, Context, Echo, Message, Node, Route, TCP, Worker, WorkerError};
use kith_transport::{MAX_CONNECTIONS, PROTOCOL_VERSION, TcpOptions, TcpTransport};
use tokio::sync::oneshot;

use crate::bench::{BenchRecord, micros, percentile, rss_kib, run_bench, selection};

/// 10 s: bounds each request. Loopback answers in microseconds; only a bug takes this long.
const WAIT: Duration = Duration::from_secs(10);

/// 120 s: bounds one throughput run, sends and deliveries together.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// The measurements, in the order they run; [`ChannelBenchConfig::only`] names one.
pub const MEASUREMENTS: &[&str] = &["latency", "throughput", "handshakes", "memory"];

/// How much to measure.
#[derive(Debug, Clone)]
pub struct ChannelBenchConfig {
    /// Round trips before measuring.
    pub warmup_round_trips: usize,
    /// Measured round trips.
    pub round_trips: usize,
    /// 16 KiB messages in the throughput run.
    pub large_messages: usize,
    /// Handshakes in the handshake run.
    pub handshakes: usize,
    /// Idle channels in the memory run.
    pub channels: usize,
    /// Run only the measurement of this name (`latency`, `throughput`, `handshakes`,
    /// `memory`), for profiling one path at a time; `None` runs them all.
    pub only: Option<String>,
}

impl ChannelBenchConfig {
    /// The full run (`cargo bench`).
    pub fn full() -> Self {
        Self {
            warmup_round_trips: 2_000,
            round_trips: 20_000,
            large_messages: 40_000,
            handshakes: 2_000,
            channels: 1_000,
            only: None,
        }
    }

    /// Tiny counts, to keep the code from rotting.
    pub fn quick() -> Self {
        Self {
            warmup_round_trips: 20,
            round_trips: 200,
            large_messages: 300,
            handshakes: 20,
            // Idle connections past a listener's per-source share (256), as the full run
            // holds them.
            channels: 300,
            only: None,
        }
    }
}

/// An identity with an attested channel key and, if `authority` is given, a credential.
fn local(authority: Option<&CredentialSigningKey>) -> anyhow::Result<Arc<LocalIdentity>> {
    let (identity, secret) = Identity::create(unix_now());
    let key = SecureChannelKey::generate(&identity, &secret, unix_now() - 5, unix_now() + 3600);
    let mut credentials = Vec::new();
    if let Some(a) = authority {
        let attrs: BTreeMap<String, String> =
            [("component".to_string(), "bench".to_string())].into();
        credentials.push(CredentialAndPurposeKey::issue(
            a,
            identity.identifier(),
            attrs,
            unix_now() - 5,
            unix_now() + 3600,
        )?);
    }
    Ok(Arc::new(LocalIdentity {
        identity,
        key,
        credentials,
    }))
}

struct Pair {
    a: Node,
    b: Node,
    b_addr: String,
    settings: ChannelSettings,
}

/// Node A (client) and node B (listener with `echo`, open to any identity), over TCP.
async fn pair() -> anyhow::Result<Pair> {
    let open = Arc::new(Trust {
        authorities: vec![],
        admission: Admission::AnyIdentity,
        revocations: Default::default(),
    });
    let a = Node::new("bench-a");
    TcpTransport::start(&a);
    let b = Node::new("bench-b");
    b.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)?;
    // The memory measurement holds its idle connections and channels from this one host,
    // past the per-source share a listener keeps against floods (issue 17): node B lets one
    // source hold as many as the node does.
    let options = TcpOptions {
        max_connections_per_source: MAX_CONNECTIONS,
        ..TcpOptions::default()
    };
    let b_addr = TcpTransport::start_with(&b, options)
        .listen("127.0.0.1:0")
        .await?
        .to_string();
    secure_channel::listen(
        &b,
        DEFAULT_LISTENER,
        ChannelSettings::new(local(None)?, open.clone()),
    )?;
    let settings = ChannelSettings::new(local(None)?, open);
    Ok(Pair {
        a,
        b,
        b_addr,
        settings,
    })
}

impl Pair {
    fn plain(&self, service: &str) -> anyhow::Result<Route> {
        Ok(Route::from(vec![
            Address::try_new(TCP, self.b_addr.as_str())?,
            Address::local(service),
        ]))
    }

    async fn channel(&self) -> anyhow::Result<Address> {
        let c =
            secure_channel::create(&self.a, self.plain(DEFAULT_LISTENER)?, &self.settings).await?;
        Ok(c.encryptor)
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// Run every measurement, passing each record to `report` as it is known. Builds its own
/// tokio runtime; call it from outside one.
pub fn run_all(
    config: &ChannelBenchConfig,
    report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    let wanted = selection(config.only.as_deref(), MEASUREMENTS)?;
    run_bench(report, |rt, out| {
        if wanted("latency") {
            out.emit(rt.block_on(latency(config))?);
        }
        if wanted("throughput") {
            out.emit(rt.block_on(throughput(config))?);
        }
        if wanted("handshakes") {
            out.emit(handshakes(config)?);
        }
        if wanted("memory") {
            out.emit(rt.block_on(memory(config))?);
        }
        Ok(())
    })
}

/// The round-trip times of `count` 64-byte requests from `client` along `route` (to an
/// `echo`), after `warmup` unmeasured ones.
pub(crate) async fn round_trips(
    client: &mut kith_node::Client,
    route: &Route,
    warmup: usize,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let body = Bytes::from(vec![0xAB; 64]);
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let started = Instant::now();
        client.request(route.clone(), body.clone(), WAIT).await?;
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    Ok(samples)
}

/// 64 B round trips to `echo` through a channel, against the plain routed path.
pub async fn latency(config: &ChannelBenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "secure channel: round-trip latency ({} round trips each)",
        config.round_trips
    );
    let p = pair().await?;
    let mut client = p.a.client()?;
    let plain = round_trips(
        &mut client,
        &p.plain("echo")?,
        config.warmup_round_trips,
        config.round_trips,
    )
    .await
    .context("plain routed")?;
    let enc = p.channel().await?;
    let through = Route::from(vec![enc, Address::local("echo")]);
    let secure = round_trips(
        &mut client,
        &through,
        config.warmup_round_trips,
        config.round_trips,
    )
    .await
    .context("through the channel")?;
    p.shutdown().await;
    Ok(vec![
        BenchRecord::new(
            "sc_rtt_p50_64B",
            micros(percentile(&secure, 50)),
            "us",
            micros(percentile(&plain, 50)),
        ),
        BenchRecord::new(
            "sc_rtt_p99_64B",
            micros(percentile(&secure, 99)),
            "us",
            micros(percentile(&plain, 99)),
        ),
    ])
}

struct Counter {
    target: u64,
    seen: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Worker for Counter {
    async fn handle_message(&mut self, _: &mut Context, _: Message) -> Result<(), WorkerError> {
        self.seen += 1;
        if self.seen >= self.target
            && let Some(d) = self.done.take()
        {
            let _ = d.send(());
        }
        Ok(())
    }
}

/// How long `n` 16 KiB messages take from a client on `from` to a fresh counting worker
/// `name` on `to`, sent along `[first_hop, name]` one after another (each send waits only
/// for room on the path, not for delivery), until the last one is counted.
pub(crate) async fn pump(
    from: &Node,
    to: &Node,
    first_hop: Address,
    n: usize,
    name: &str,
) -> anyhow::Result<Duration> {
    let (tx, rx) = oneshot::channel();
    to.start_worker_with_policy(
        [Address::local(name)],
        Arc::new(AllowAll),
        Counter {
            target: u64::try_from(n)?,
            seen: 0,
            done: Some(tx),
        },
    )?;
    let route = Route::from(vec![first_hop, Address::local(name)]);
    let client = from.client()?;
    let body = Bytes::from(vec![0xCD; 16 * 1024]);
    let run = async {
        let started = Instant::now();
        for _ in 0..n {
            client.send(route.clone(), body.clone()).await?;
        }
        rx.await?;
        anyhow::Ok(started.elapsed())
    };
    // The sends are bounded too: one waits for room on the path, which a stuck peer never
    // makes.
    tokio::time::timeout(RUN_WAIT, run)
        .await
        .map_err(|_| anyhow!("{name}: not all {n} messages arrived within {RUN_WAIT:?}"))?
}

/// 3: rounds of the channel and of its bare loop in [`throughput`], taken in turns.
const THROUGHPUT_ROUNDS: usize = 3;

/// 16 KiB one-way throughput through a channel, against the plain routed path.
pub async fn throughput(config: &ChannelBenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "secure channel: 16 KiB throughput ({} messages each)",
        config.large_messages
    );
    let p = pair().await?;
    let n = config.large_messages;
    let tcp = Address::try_new(TCP, p.b_addr.as_str())?;
    pump(&p.a, &p.b, tcp.clone(), n / 10 + 1, "warm-plain").await?;
    let plain = pump(&p.a, &p.b, tcp, n, "plain").await?;
    let enc = p.channel().await?;
    pump(&p.a, &p.b, enc.clone(), n / 10 + 1, "warm-secure").await?;
    bare_sealed_loop(n / 10 + 1).await?;
    // The channel and its bare-loop baseline take turns, and each keeps its best round: on a
    // shared machine a neighbour's burst then slows one round of one of them, not the ratio.
    let (mut secure, mut bare) = (Duration::MAX, Duration::MAX);
    for round in 0..THROUGHPUT_ROUNDS {
        let name = format!("secure-{round}");
        secure = secure.min(pump(&p.a, &p.b, enc.clone(), n, &name).await?);
        bare = bare.min(bare_sealed_loop(n).await?);
    }
    p.shutdown().await;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    Ok(vec![
        BenchRecord::new("sc_oneway_16KiB_msgs", rate(secure), "msg/s", rate(plain)),
        BenchRecord::new(
            "sc_oneway_16KiB_vs_bare_loop",
            rate(secure),
            "msg/s",
            rate(bare),
        ),
    ])
}

/// The least a channel can cost: `n` 16 KiB messages sealed with the channel's cipher
/// (AES-256-GCM, a counter nonce sent in clear, no associated data), framed with a length
/// prefix, written to a loopback socket one frame per write, read back and opened in place,
/// by two tasks of this runtime as the channel's two nodes are. Returns how long until the
/// last one was opened.
async fn bare_sealed_loop(n: usize) -> anyhow::Result<Duration> {
    use bytes::{Buf, BufMut, BytesMut};
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const NONCE: usize = 8;
    let key = || {
        UnboundKey::new(&AES_256_GCM, &[7u8; 32])
            .map(LessSafeKey::new)
            .map_err(|_| anyhow!("ring refused an AES-256 key"))
    };
    let nonce = |n: u64| {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(bytes)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let at = listener.local_addr()?;
    let (opener, sealer) = (key()?, key()?);
    let receive = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut opened = 0;
        while opened < n {
            while buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + len {
                    break;
                }
                buf.advance(4);
                let mut frame = buf.split_to(len);
                let counter = frame.get_u64();
                opener
                    .open_in_place(nonce(counter), Aad::empty(), &mut frame)
                    .map_err(|_| anyhow!("frame {counter} did not open"))?;
                opened += 1;
            }
            if opened == n {
                break;
            }
            buf.reserve(64 * 1024);
            if socket.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("the sender closed after {opened} of {n} frames");
            }
        }
        anyhow::Ok(Instant::now())
    });
    let mut socket = tokio::net::TcpStream::connect(at).await?;
    socket.set_nodelay(true)?;
    let body = vec![0xCDu8; 16 * 1024];
    let started = Instant::now();
    let send = async {
        for i in 0..n {
            let mut frame = BytesMut::with_capacity(4 + NONCE + body.len() + 16);
            frame.put_u32(u32::try_from(NONCE + body.len() + 16)?);
            frame.put_u64(i as u64);
            frame.extend_from_slice(&body);
            let tag = sealer
                .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), &mut frame[4 + NONCE..])
                .map_err(|_| anyhow!("sealing failed"))?;
            frame.extend_from_slice(tag.as_ref());
            socket.write_all(&frame).await?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(RUN_WAIT, send)
        .await
        .map_err(|_| anyhow!("bare loop: not all {n} frames were sent within {RUN_WAIT:?}"))??;
    let done = tokio::time::timeout(RUN_WAIT, receive)
        .await
        .map_err(|_| {
            anyhow!("bare loop: not all {n} frames were opened within {RUN_WAIT:?}")
        })???;
    Ok(done.duration_since(started))
}

/// Complete handshakes per second on one core (this thread): identities, attestations and a
/// credential verified against a trusted authority; against bare snow XX handshakes.
pub fn handshakes(config: &ChannelBenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!("secure channel: {} handshakes", config.handshakes);
    let (auth, auth_secret) = Identity::create(unix_now());
    let signing =
        CredentialSigningKey::generate(&auth, &auth_secret, unix_now() - 5, unix_now() + 3600);
    let initiator = local(Some(&signing))?;
    let responder = local(Some(&signing))?;
    let trust = Arc::new(Trust {
        authorities: vec![auth],
        admission: Admission::CredentialHolders,
        revocations: Default::default(),
    });
    let t = unix_now();
    let started = Instant::now();
    for _ in 0..config.handshakes {
        let (hi, m1) = Handshake::initiate(initiator.clone(), trust.clone(), 1 << 20)?;
        let hr = Handshake::respond(responder.clone(), trust.clone(), 1 << 20)?;
        let Progress::Continue(hr, m2) = hr.step(&m1, t)? else {
            return Err(anyhow!("responder finished early"));
        };
        let Progress::Established {
            reply: Some(m3), ..
        } = hi.step(&m2, t)?
        else {
            return Err(anyhow!("initiator did not finish"));
        };
        let Progress::Established { .. } = (*hr).step(&m3, t)? else {
            return Err(anyhow!("responder did not finish"));
        };
    }
    let kith = config.handshakes as f64 / started.elapsed().as_secs_f64();

    let params: snow::params::NoiseParams = kith_identity::channel::NOISE_PATTERN.parse()?;
    let ki = snow::Builder::new(params.clone()).generate_keypair()?;
    let kr = snow::Builder::new(params.clone()).generate_keypair()?;
    let (mut buf, mut out) = (vec![0u8; 1024], vec![0u8; 1024]);
    let started = Instant::now();
    for _ in 0..config.handshakes {
        let mut i = snow::Builder::new(params.clone())
            .local_private_key(&ki.private)
            .build_initiator()?;
        let mut r = snow::Builder::new(params.clone())
            .local_private_key(&kr.private)
            .build_responder()?;
        let n = i.write_message(&[], &mut buf)?;
        r.read_message(&buf[..n], &mut out)?;
        let n = r.write_message(&[], &mut buf)?;
        i.read_message(&buf[..n], &mut out)?;
        let n = i.write_message(&[], &mut buf)?;
        r.read_message(&buf[..n], &mut out)?;
    }
    let bare = config.handshakes as f64 / started.elapsed().as_secs_f64();
    Ok(vec![BenchRecord::new(
        "sc_handshakes_per_core",
        kith,
        "handshakes/s",
        bare,
    )])
}

/// RSS of idle channels (both ends, in this process), against idle TCP connections to the
/// same node, per item.
pub async fn memory(config: &ChannelBenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "secure channel: memory of {} idle channels",
        config.channels
    );
    let pid = std::process::id();
    let p = pair().await?;
    let n = config.channels;
    // Baseline: idle TCP connections that passed the kith preamble.
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let preamble = async {
            let mut s = tokio::net::TcpStream::connect(&p.b_addr).await?;
            tokio::io::AsyncWriteExt::write_all(&mut s, &[PROTOCOL_VERSION]).await?;
            let mut v = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut v).await?;
            anyhow::Ok(s)
        };
        let s = tokio::time::timeout(WAIT, preamble)
            .await
            .map_err(|_| anyhow!("node B did not answer the preamble within {WAIT:?}"))??;
        conns.push(s);
    }
    let per_conn = (rss_kib(pid)?.saturating_sub(before)) as f64 / n as f64;
    let before = rss_kib(pid)?;
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        channels.push(p.channel().await?);
    }
    let per_channel = (rss_kib(pid)?.saturating_sub(before)) as f64 / n as f64;
    drop(conns);
    p.shutdown().await;
    Ok(vec![BenchRecord::new(
        "sc_rss_per_idle_channel",
        per_channel.max(0.001),
        "KiB/channel",
        per_conn.max(0.001),
    )])
}
