//! The foundation benchmark: what a message costs on a kith node over TCP, each number next
//! to a baseline measured in the same run (DESIGN §7).
//!
//! Three measurements, all on loopback with ports read back after binding port 0:
//!
//! - **Round-trip latency** of 64-byte requests from node A's client to node B's `echo`
//!   worker (p50, p99), against a plain tokio echo server and client exchanging the same
//!   `u32`-length-prefixed 64-byte frames.
//! - **Pipelined one-way throughput** from a client on A to a counting `sink` worker on B, for
//!   64 B and 16 KiB payloads (messages/s and MB/s), against a plain tokio writer of the same
//!   length-prefixed frames (buffered, like the connection's coalescing writer) and a reader
//!   that counts them.
//! - **Memory** of a real separate process: the running binary re-executes itself with
//!   [`CHILD_ENV`] set ([`run_child_if_requested`]) as a kith node or as a plain tokio server
//!   that holds connections, and the parent reads `VmRSS` from `/proc/<pid>/status` when it is
//!   idle and after it has accepted [`BenchConfig::connections`] connections.
//!
//! The measuring functions return [`BenchRecord`]s; the `foundation` bench prints them
//! full-size, and the `bench_smoke` test runs them with tiny counts so this code cannot rot.
//! Both binaries must call [`run_child_if_requested`] first thing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use kith_node::{Address, AllowAll, Context, Echo, Message, Node, Route, TCP, Worker, WorkerError};
use kith_transport::{PROTOCOL_VERSION, TcpTransport};
use serde::Serialize;
use tokio::io::{
    AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader, BufWriter as TokioBufWriter,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The environment variable that turns a bench or test binary into a memory-bench child:
/// `node` for a kith node, `raw` for a plain tokio server.
pub const CHILD_ENV: &str = "KITH_BENCH_CHILD";

/// 64 bytes: the small message of the latency and throughput benches.
pub const SMALL_PAYLOAD: usize = 64;

/// 16 KiB: the large message of the throughput bench, well under one frame's maximum.
pub const LARGE_PAYLOAD: usize = 16 * 1024;

/// 10 s: the bound on any single wait (a request, a connection, a child's answer). Loopback
/// answers in microseconds; only a bug takes this long.
const WAIT: Duration = Duration::from_secs(10);

/// 120 s: the bound on one whole throughput run, a few times what the full run takes on a
/// slow 2-core machine.
const RUN_WAIT: Duration = Duration::from_secs(120);

/// 64 KiB: the raw baseline's write and read buffers, the same as the connection writer's
/// coalescing limit, so the baseline batches small frames into one syscall as kith does.
const RAW_BUFFER: usize = 64 * 1024;

/// What the child prints, on one line, once it listens: this prefix, then the port.
const PORT_LINE: &str = "KITH_BENCH_PORT=";

/// What the child prints in answer to each line on its stdin: this prefix, then how many
/// connections it has accepted.
const ACCEPTED_LINE: &str = "KITH_BENCH_ACCEPTED=";

/// 100 connections: how many the memory bench opens before it waits for the child to accept
/// them. tokio listens with a backlog of 128, and a burst beyond it overflows the accept
/// queue: the kernel drops the SYN and the client retries a second later, which would time
/// the kernel rather than the child.
const CONNECT_BATCH: usize = 100;

/// File descriptors a process of the memory bench needs beyond its connections: stdio, the
/// pipes to the child, a runtime's epoll and eventfds, a listener. 64 leaves room to spare.
const SPARE_FDS: u64 = 64;

/// How big a run is.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Unmeasured round trips before each latency run.
    pub warmup_round_trips: usize,
    /// Measured round trips per latency run.
    pub round_trips: usize,
    /// 64-byte messages per throughput run.
    pub small_messages: usize,
    /// 16 KiB messages per throughput run.
    pub large_messages: usize,
    /// Idle connections opened to each memory-bench child.
    pub connections: usize,
    /// Arguments for re-executing the current binary as a memory-bench child. A bench binary
    /// (`harness = false`) needs none; a libtest binary needs the filter that selects the
    /// test calling [`run_child_if_requested`], `--exact` and `--nocapture`.
    pub child_args: Vec<String>,
}

impl BenchConfig {
    /// The full-size run of `cargo bench`: under 10 s of measuring on a 2-core machine.
    pub fn full() -> Self {
        Self {
            warmup_round_trips: 2_000,
            round_trips: 20_000,
            small_messages: 1_000_000,
            large_messages: 60_000,
            connections: 1_000,
            child_args: Vec::new(),
        }
    }

    /// Tiny counts that exercise every path in a second or two, for the smoke test.
    pub fn quick() -> Self {
        Self {
            warmup_round_trips: 50,
            round_trips: 200,
            small_messages: 500,
            large_messages: 500,
            connections: 200,
            child_args: Vec::new(),
        }
    }

    /// The same counts, with `args` for re-executing the current binary as a child.
    pub fn with_child_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.child_args = args.into_iter().map(Into::into).collect();
        self
    }
}

/// One result line: `{"bench", "value", "unit", "baseline", "ratio"}` (DESIGN §7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRecord {
    /// What was measured, e.g. `rtt_p50_64B`.
    pub bench: String,
    /// kith's number.
    pub value: f64,
    /// The unit of `value` and `baseline`.
    pub unit: String,
    /// The same measurement without kith, taken in the same run.
    pub baseline: f64,
    /// `value / baseline`.
    pub ratio: f64,
}

impl BenchRecord {
    /// A record; `value` and `baseline` are rounded to 3 decimals and `ratio` computed from
    /// the rounded numbers, to 4 significant digits.
    pub fn new(
        bench: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        baseline: f64,
    ) -> Self {
        let value = round_to(value, 1e3);
        let baseline = round_to(baseline, 1e3);
        Self {
            bench: bench.into(),
            value,
            unit: unit.into(),
            baseline,
            ratio: significant(value / baseline, 4),
        }
    }

    /// The record as one line of JSON, keys in the order above.
    pub fn to_json_line(&self) -> String {
        json_line(self)
    }
}

/// A record as one line of JSON. A struct of strings and floats always serializes;
/// non-finite floats become null.
pub fn json_line(record: &impl Serialize) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

fn significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // floor(log10) of a finite non-zero f64 lies within ±324: the cast cannot truncate.
    let magnitude = x.abs().log10().floor() as i32;
    round_to(x, 10f64.powi(digits - 1 - magnitude))
}

fn round_to(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

/// Run every measurement in order, passing each record to `report` as soon as it is known,
/// and return them all. Builds its own tokio runtime; call it from outside one.
pub fn run_all(
    config: &BenchConfig,
    report: impl FnMut(&BenchRecord),
) -> anyhow::Result<Vec<BenchRecord>> {
    run_bench(report, |rt, out| {
        out.emit(rt.block_on(latency(config))?);
        out.emit(rt.block_on(throughput(config))?);
        // The children measure their own memory; this process needs no runtime for that.
        drop(rt);
        out.emit(memory(config)?);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// What every bench shares: the runtime, the records, the command line

/// Where a bench's records go: each to a reporter as soon as it is known, and all of them
/// into the list [`run_bench`] returns.
pub struct Records<'a, R> {
    report: &'a mut dyn FnMut(&R),
    all: Vec<R>,
}

impl<R> Records<'_, R> {
    /// Report `records`, in order, and keep them.
    pub fn emit(&mut self, records: impl IntoIterator<Item = R>) {
        for r in records {
            (self.report)(&r);
            self.all.push(r);
        }
    }
}

/// Build a multi-threaded tokio runtime and run `body` with it, passing every record it
/// emits to `report` as soon as it is known; all the records, in order. `body` owns the
/// runtime, so it may drop it before measuring something outside it. Call it from outside
/// a runtime.
pub fn run_bench<R>(
    mut report: impl FnMut(&R),
    body: impl FnOnce(tokio::runtime::Runtime, &mut Records<'_, R>) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<R>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the bench runtime")?;
    let mut records = Records {
        report: &mut report,
        all: Vec::new(),
    };
    body(rt, &mut records)?;
    Ok(records.all)
}

/// Which of a bench's measurements to run: all of them, or only `only`, which must be one
/// of `names` (a typo would otherwise run nothing and print nothing).
pub fn selection<'a>(
    only: Option<&'a str>,
    names: &[&str],
) -> anyhow::Result<impl Fn(&str) -> bool + 'a> {
    if let Some(o) = only {
        ensure!(
            names.contains(&o),
            "--only {o:?} is not a measurement of this bench; one of {names:?}"
        );
    }
    Ok(move |name: &str| only.is_none_or(|o| o == name))
}

/// A bench binary's command line. Arguments it does not know (cargo passes `--bench`) are
/// ignored.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    args: Vec<String>,
}

impl BenchArgs {
    /// This process's arguments.
    pub fn from_env() -> Self {
        Self {
            args: std::env::args().skip(1).collect(),
        }
    }

    /// Whether `--quick` (tiny counts) was given.
    pub fn quick(&self) -> bool {
        self.args.iter().any(|a| a == "--quick")
    }

    /// The argument after `flag`, if `flag` was given; an error if nothing follows it.
    pub fn value(&self, flag: &str) -> anyhow::Result<Option<&str>> {
        match self.args.iter().position(|a| a == flag) {
            None => Ok(None),
            Some(i) => match self.args.get(i + 1) {
                Some(v) => Ok(Some(v)),
                None => bail!("{flag} needs a value"),
            },
        }
    }

    /// `--only NAME`: one measurement, e.g. under a profiler.
    pub fn only(&self) -> anyhow::Result<Option<String>> {
        Ok(self.value("--only")?.map(str::to_owned))
    }
}

/// The `main` of a bench binary. With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the nodes'
/// logs go to stderr. `run` gets the command line and a reporter that prints each record
/// as one JSON line on stdout ([`json_line`]); if it fails, the error goes to stderr and
/// the process exits with status 1.
pub fn bench_main<R: Serialize>(
    run: impl FnOnce(&BenchArgs, &mut dyn FnMut(&R)) -> anyhow::Result<Vec<R>>,
) {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut print = |r: &R| println!("{}", json_line(r));
    if let Err(e) = run(&BenchArgs::from_env(), &mut print) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Nodes

/// Node A (client side, no listener) and node B (listening, with `echo` open to all).
async fn node_pair() -> anyhow::Result<(Node, Node, String)> {
    let a = Node::new("bench-a");
    TcpTransport::start(&a);
    let b = Node::new("bench-b");
    b.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)?;
    let b_addr = TcpTransport::start(&b).listen("127.0.0.1:0").await?;
    Ok((a, b, b_addr.to_string()))
}

fn remote(peer: &str, service: &str) -> anyhow::Result<Route> {
    Ok(Route::from(vec![
        Address::try_new(TCP, peer)?,
        Address::local(service),
    ]))
}

fn payload(len: usize) -> Bytes {
    Bytes::from(vec![0xAB; len])
}

/// A `u32` big-endian length prefix and `body`, as one buffer.
fn frame(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u32::try_from(body.len())?;
    let mut f = Vec::with_capacity(4 + body.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(body);
    Ok(f)
}

// ---------------------------------------------------------------------------------------
// 1. Round-trip latency

/// p50 and p99 round-trip time of 64-byte requests to a remote `echo`, against raw TCP.
pub async fn latency(config: &BenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    eprintln!(
        "foundation: round-trip latency ({} round trips each)",
        config.round_trips
    );
    let raw = raw_latency(config).await.context("raw TCP echo")?;
    let kith = kith_latency(config).await.context("kith echo over TCP")?;
    let name = |q: &str| format!("rtt_{q}_{SMALL_PAYLOAD}B");
    Ok(vec![
        BenchRecord::new(
            name("p50"),
            micros(percentile(&kith, 50)),
            "us",
            micros(percentile(&raw, 50)),
        ),
        BenchRecord::new(
            name("p99"),
            micros(percentile(&kith, 99)),
            "us",
            micros(percentile(&raw, 99)),
        ),
    ])
}

async fn kith_latency(config: &BenchConfig) -> anyhow::Result<Vec<Duration>> {
    let (a, b, b_addr) = node_pair().await?;
    let mut client = a.client()?;
    let route = remote(&b_addr, "echo")?;
    let body = payload(SMALL_PAYLOAD);
    let mut samples = Vec::with_capacity(config.round_trips);
    for i in 0..config.warmup_round_trips + config.round_trips {
        let started = Instant::now();
        let reply = client.request(route.clone(), body.clone(), WAIT).await?;
        let took = started.elapsed();
        ensure!(
            reply.payload.len() == SMALL_PAYLOAD,
            "echo answered {} bytes",
            reply.payload.len()
        );
        if i >= config.warmup_round_trips {
            samples.push(took);
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(samples)
}

async fn raw_latency(config: &BenchConfig) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (read, mut write) = stream.into_split();
        let mut read = TokioBufReader::new(read);
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if read.read_exact(&mut len).await.is_err() {
                return anyhow::Ok(()); // the client is done
            }
            let len = usize::try_from(u32::from_be_bytes(len))?;
            buf.clear();
            buf.extend_from_slice(&(u32::try_from(len)?).to_be_bytes());
            buf.resize(4 + len, 0);
            read.read_exact(&mut buf[4..]).await?;
            write.write_all(&buf).await?;
        }
    });
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = TokioBufReader::new(read);
    let request = frame(&payload(SMALL_PAYLOAD))?;
    let mut reply = vec![0u8; request.len()];
    let mut samples = Vec::with_capacity(config.round_trips);
    for i in 0..config.warmup_round_trips + config.round_trips {
        let started = Instant::now();
        let exchange = async {
            write.write_all(&request).await?;
            read.read_exact(&mut reply).await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(WAIT, exchange).await??;
        let took = started.elapsed();
        if i >= config.warmup_round_trips {
            samples.push(took);
        }
    }
    ensure!(
        reply == request,
        "the raw echo server answered something else"
    );
    drop((read, write));
    tokio::time::timeout(WAIT, server).await???;
    Ok(samples)
}

/// The `q`th percentile (nearest rank) of `samples`.
pub(crate) fn percentile(samples: &[Duration], q: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * q).div_ceil(100).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or_default()
}

/// How stderr says whether a target was met.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------
// 2. Pipelined one-way throughput

/// Counts messages and says when it has seen its target.
struct Sink {
    target: u64,
    seen: u64,
    done: Option<oneshot::Sender<()>>,
}

impl Worker for Sink {
    async fn handle_message(
        &mut self,
        _ctx: &mut Context,
        _message: Message,
    ) -> Result<(), WorkerError> {
        self.seen += 1;
        if self.seen >= self.target
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
        Ok(())
    }
}

/// Messages/s and MB/s of 64 B and 16 KiB messages pipelined from A to a sink on B, against
/// raw TCP.
pub async fn throughput(config: &BenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    let mut records = Vec::new();
    for (size, count, label) in [
        (SMALL_PAYLOAD, config.small_messages, "64B"),
        (LARGE_PAYLOAD, config.large_messages, "16KiB"),
    ] {
        eprintln!("foundation: one-way throughput, {count} messages of {label}");
        let raw = raw_throughput(size, count)
            .await
            .with_context(|| format!("raw TCP, {label}"))?;
        let kith = kith_throughput(size, count)
            .await
            .with_context(|| format!("kith over TCP, {label}"))?;
        let rate = |d: Duration| count as f64 / d.as_secs_f64();
        let mbps = |d: Duration| (count * size) as f64 / d.as_secs_f64() / 1e6;
        records.push(BenchRecord::new(
            format!("oneway_{label}_msgs"),
            rate(kith),
            "msg/s",
            rate(raw),
        ));
        records.push(BenchRecord::new(
            format!("oneway_{label}_bytes"),
            mbps(kith),
            "MB/s",
            mbps(raw),
        ));
    }
    Ok(records)
}

/// Send `count` messages of `size` bytes from a client on A to a fresh sink on B, after a
/// warm-up of a tenth as many to another sink; the time from the first send to the sink
/// counting the last.
async fn kith_throughput(size: usize, count: usize) -> anyhow::Result<Duration> {
    let (a, b, b_addr) = node_pair().await?;
    let client = a.client()?;
    let body = payload(size);
    let mut measured = None;
    for (name, n) in [("sink-warmup", count.div_ceil(10)), ("sink", count)] {
        let (done, finished) = oneshot::channel();
        let sink = Sink {
            target: u64::try_from(n)?,
            seen: 0,
            done: Some(done),
        };
        b.start_worker_with_policy([Address::local(name)], Arc::new(AllowAll), sink)?;
        let route = remote(&b_addr, name)?;
        let run = async {
            let started = Instant::now();
            for _ in 0..n {
                // Waits while the connection's mailbox is full: the sender's backpressure.
                client.send(route.clone(), body.clone()).await?;
            }
            finished.await?;
            anyhow::Ok(started.elapsed())
        };
        let took = tokio::time::timeout(RUN_WAIT, run).await.map_err(|_| {
            anyhow!(
                "{n} messages did not reach {name} within {RUN_WAIT:?}; B: {:?}",
                b.stats()
            )
        })??;
        measured = Some(took);
    }
    a.shutdown().await;
    b.shutdown().await;
    measured.ok_or_else(|| anyhow!("no measured run"))
}

/// The same frames over a plain buffered TCP writer to a reader that counts them, with the
/// same warm-up.
async fn raw_throughput(size: usize, count: usize) -> anyhow::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let total = count.div_ceil(10) + count;
    let (warm, warmed) = oneshot::channel();
    let (done, finished) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let mut read = TokioBufReader::with_capacity(RAW_BUFFER, stream);
        let mut body = Vec::new();
        let mut warm = Some(warm);
        for seen in 1..=total {
            let mut len = [0u8; 4];
            read.read_exact(&mut len).await?;
            body.resize(usize::try_from(u32::from_be_bytes(len))?, 0);
            read.read_exact(&mut body).await?;
            if seen == total - count
                && let Some(w) = warm.take()
            {
                let _ = w.send(());
            }
        }
        let _ = done.send(());
        anyhow::Ok(())
    });
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let mut write = TokioBufWriter::with_capacity(RAW_BUFFER, stream);
    let body = payload(size);
    let len = u32::try_from(size)?.to_be_bytes();
    let run = async {
        for _ in 0..total - count {
            write.write_all(&len).await?;
            write.write_all(&body).await?;
        }
        write.flush().await?;
        warmed.await?;
        let started = Instant::now();
        for _ in 0..count {
            write.write_all(&len).await?;
            write.write_all(&body).await?;
        }
        write.flush().await?;
        finished.await?;
        anyhow::Ok(started.elapsed())
    };
    let took = tokio::time::timeout(RUN_WAIT, run).await??;
    tokio::time::timeout(WAIT, reader).await???;
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// 3. Memory, in a separate process

/// Which server a memory-bench child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildKind {
    /// A kith node: TCP transport listening, `echo` open to all.
    Node,
    /// A plain tokio server that parks one task per accepted connection on a read.
    Raw,
}

impl ChildKind {
    fn env_value(self) -> &'static str {
        match self {
            ChildKind::Node => "node",
            ChildKind::Raw => "raw",
        }
    }
}

/// If [`CHILD_ENV`] is set, act as a memory-bench child and return `Ok(true)` once the
/// parent closes our stdin; the caller should then exit. Otherwise return `Ok(false)` at
/// once.
///
/// The child listens on `127.0.0.1:0`, prints `KITH_BENCH_PORT=<port>` on stdout, and
/// answers every line it reads on stdin with `KITH_BENCH_ACCEPTED=<n>`, the number of
/// connections it has accepted (for a node: that completed the version preamble).
pub fn run_child_if_requested() -> anyhow::Result<bool> {
    let kind = match std::env::var(CHILD_ENV) {
        Err(_) => return Ok(false),
        Ok(v) if v == ChildKind::Node.env_value() => ChildKind::Node,
        Ok(v) if v == ChildKind::Raw.env_value() => ChildKind::Raw,
        Ok(v) => bail!("{CHILD_ENV}={v:?} is not a child kind; use \"node\" or \"raw\""),
    };
    run_child(kind)?;
    Ok(true)
}

fn run_child(kind: ChildKind) -> anyhow::Result<()> {
    // The same runtime a node daemon gets: one worker thread per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let (port, node, tcp) = rt.block_on(async {
        match kind {
            ChildKind::Node => {
                let node = Node::new("bench-child");
                node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)?;
                let tcp = TcpTransport::start(&node);
                let addr = tcp.listen("127.0.0.1:0").await?;
                anyhow::Ok((addr.port(), Some(node), Some(tcp)))
            }
            ChildKind::Raw => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let port = listener.local_addr()?.port();
                tokio::spawn(raw_hold(listener, accepted.clone()));
                anyhow::Ok((port, None, None))
            }
        }
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PORT_LINE}{port}")?;
    out.flush()?;
    // The runtime's workers serve connections; this thread answers the parent until it
    // closes our stdin.
    for line in std::io::stdin().lock().lines() {
        line?;
        let n = match &tcp {
            Some(tcp) => tcp.stats().accepted,
            None => accepted.load(Ordering::Relaxed),
        };
        writeln!(out, "{ACCEPTED_LINE}{n}")?;
        out.flush()?;
    }
    if let Some(node) = node {
        rt.block_on(node.shutdown());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Accept connections and park each on a read in its own task, as the least a tokio
/// server does per connection. The tasks end with the runtime.
async fn raw_hold(listener: TcpListener, accepted: Arc<AtomicU64>) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((mut stream, _)) = listener.accept().await {
        accepted.fetch_add(1, Ordering::Relaxed);
        conns.spawn(async move {
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte).await;
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Idle RSS, and RSS per idle connection, of a node child against a raw child.
pub fn memory(config: &BenchConfig) -> anyhow::Result<Vec<BenchRecord>> {
    let n = config.connections;
    ensure!(n > 0, "the memory bench needs at least one connection");
    eprintln!("foundation: memory, idle and with {n} idle connections, in child processes");
    ensure_fd_limit(u64::try_from(n)? + SPARE_FDS)?;
    let raw = measure_child(ChildKind::Raw, config).context("raw tokio child")?;
    let node = measure_child(ChildKind::Node, config).context("kith node child")?;
    let per_conn = |m: &ChildMemory| (m.loaded_kib as f64 - m.idle_kib as f64) / n as f64;
    Ok(vec![
        BenchRecord::new("idle_rss", node.idle_kib as f64, "KiB", raw.idle_kib as f64),
        BenchRecord::new(
            "rss_per_idle_conn",
            per_conn(&node),
            "KiB/conn",
            per_conn(&raw),
        ),
    ])
}

/// Raise this process's soft limit on open files to `needed` if it is lower. Children
/// inherit it. Only the soft limit moves, up to the hard limit, which needs no privilege.
pub fn ensure_fd_limit(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    ensure!(
        hard >= needed,
        "the memory bench needs {needed} open files but the hard limit is {hard}; raise it \
         (`ulimit -Hn`) or run with fewer connections"
    );
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("raising the soft open-file limit")?;
    Ok(())
}

struct ChildMemory {
    idle_kib: u64,
    loaded_kib: u64,
}

/// A child process; killed if dropped before it exits by itself.
struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    fn spawn(kind: ChildKind, config: &BenchConfig) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the running binary to re-execute")?;
        let mut child = Command::new(&exe)
            .args(&config.child_args)
            .env(CHILD_ENV, kind.env_value())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} as a {kind:?} child", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the child has no stdout"))?;
        // A thread turns stdout into a channel so every wait for the child has a timeout;
        // it ends when the child exits.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What follows `prefix` on the next line that has it. Other lines, a test harness's
    /// own output, are skipped; libtest may even start our line with `test name ... `.
    fn line(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|e| anyhow!("no {prefix}… line from the child within {WAIT:?}: {e}"))?;
            if let Some(at) = line.find(prefix) {
                return Ok(line[at + prefix.len()..].to_owned());
            }
        }
    }

    fn port(&self) -> anyhow::Result<u16> {
        Ok(self.line(PORT_LINE)?.trim().parse()?)
    }

    fn accepted(&mut self) -> anyhow::Result<u64> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the child's stdin is closed"))?;
        writeln!(stdin)?;
        stdin.flush()?;
        Ok(self.line(ACCEPTED_LINE)?.trim().parse()?)
    }

    /// Wait until the child has accepted `n` connections.
    fn await_accepted(&mut self, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.accepted()?;
            if seen >= n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the child accepted {seen} of {n} connections within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Close stdin and wait for the child to exit (its stdout closes when it does).
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("the child did not exit within {WAIT:?}")
                }
            }
        }
        let status = self.child.wait()?;
        ensure!(status.success(), "the child exited with {status}");
        Ok(())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn measure_child(kind: ChildKind, config: &BenchConfig) -> anyhow::Result<ChildMemory> {
    let mut child = ChildProcess::spawn(kind, config)?;
    let port = child.port()?;
    // One answered request: the child is up and idle.
    child.accepted()?;
    let idle_kib = settled_rss_kib(child.pid())?;
    let n = config.connections;
    let mut conns = Vec::with_capacity(n);
    for i in 1..=n {
        let mut s =
            StdTcpStream::connect(("127.0.0.1", port)).context("connecting to the child")?;
        if kind == ChildKind::Node {
            // The kith preamble: our version byte, then the node's.
            s.set_read_timeout(Some(WAIT))?;
            s.write_all(&[PROTOCOL_VERSION])?;
            let mut theirs = [0u8; 1];
            s.read_exact(&mut theirs)
                .context("reading the node's version byte")?;
            ensure!(
                theirs == [PROTOCOL_VERSION],
                "the node sent version {theirs:?}"
            );
        }
        conns.push(s);
        if i % CONNECT_BATCH == 0 || i == n {
            child.await_accepted(u64::try_from(i)?)?;
        }
    }
    let loaded_kib = settled_rss_kib(child.pid())?;
    drop(conns);
    child.finish()?;
    Ok(ChildMemory {
        idle_kib,
        loaded_kib,
    })
}

/// VmRSS of `pid` once three readings 10 ms apart agree (at most half a second of them):
/// for an idle process (a child, a daemon between rounds) this only waits out its last
/// allocations.
pub fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut last = rss_kib(pid)?;
    let mut same = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(10));
        let now = rss_kib(pid)?;
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same >= 2 {
            break;
        }
    }
    Ok(last)
}

/// VmRSS of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in {}", path.display()))?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse()
        .with_context(|| format!("VmRSS {kib:?} in {}", path.display()))
}
