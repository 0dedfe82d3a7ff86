//! Churn: client processes that each open many secure channels to one node and are then
//! killed with SIGKILL while the channels are open, the way a crashed host or a cut cable
//! leaves them. The node must notice every one of those channels end and free it.
//!
//! One process per client would make a thousand clients cost a thousand process starts and
//! a thousand runtimes; instead one `kith-churn-client` process ([`client_main`]) opens N
//! channels, each from a node of its own (so over its own TCP connection) and as an identity
//! of its own, prints [`READY`] and holds them until it is killed (or its stdin closes, so
//! that a client whose parent died does not linger). [`ChurnClients`] starts and kills a set
//! of them.

use std::io::{BufRead, BufReader, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use kith_identity::channel::{Admission, Trust};
use kith_identity::secure_channel::{self, DEFAULT_LISTENER, SecureChannel};
use kith_node::Node;
use kith_transport::{TcpOptions, TcpTransport};
use tokio::task::JoinSet;

use crate::party::{Party, tcp_route};

/// What a client prints on stdout once all its channels are open: this word, a space, and
/// how many.
pub const READY: &str = "ready";

/// 8 handshakes at once per client process. Ten processes then keep at most 80 connections
/// in the node's accept queue, under tokio's backlog of 128; a burst beyond it makes the
/// kernel drop SYNs, and the retry a second later would time the kernel, not the node.
const CONCURRENT_HANDSHAKES: usize = 8;

/// 120 s: how long all the clients of a [`ChurnClients::start`] may take to open their
/// channels. A thousand handshakes take seconds on a 2-core machine even in a debug build;
/// only a stuck node takes this long.
const READY_WAIT: Duration = Duration::from_secs(120);

/// The `main` of `kith-churn-client --to HOST:PORT --channels N`: open N secure channels to
/// the `api` listener of the node listening at HOST:PORT, print `ready N`, and hold them
/// until stdin closes (or, as the churn means it to, until the process is killed).
pub fn client_main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| {
                anyhow!("usage: kith-churn-client --to HOST:PORT --channels N [--source IP]")
            })
    };
    let to: SocketAddr = value("--to")?.parse().context("--to")?;
    let channels: usize = value("--channels")?.parse().context("--channels")?;
    let source: Option<IpAddr> = match args.iter().position(|a| a == "--source") {
        Some(_) => Some(value("--source")?.parse().context("--source")?),
        None => None,
    };
    // One worker thread: the clients run ten at a time on a 2-core machine, and this one
    // thread answers for the channels while the main thread waits on stdin.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let held = rt.block_on(open_channels(to, channels, source))?;
    println!("{READY} {}", held.len());
    // Held until stdin closes: the parent closes it, or dies.
    let mut rest = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut rest);
    drop(held);
    Ok(())
}

/// A channel held open, with the node (and its connection) it runs on.
type Held = (Node, TcpTransport, SecureChannel);

/// `count` channels to `to`'s `api` listener, [`CONCURRENT_HANDSHAKES`] at a time, each over
/// a connection from `source` if given.
async fn open_channels(
    to: SocketAddr,
    count: usize,
    source: Option<IpAddr>,
) -> anyhow::Result<Vec<Held>> {
    // The client admits the node whoever it is: the churn is about the node's side.
    let trust = Arc::new(Trust {
        authorities: vec![],
        admission: Admission::AnyIdentity,
        revocations: Default::default(),
    });
    let mut opening = JoinSet::new();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        if opening.len() >= CONCURRENT_HANDSHAKES
            && let Some(done) = opening.join_next().await
        {
            held.push(done??);
        }
        let trust = trust.clone();
        opening.spawn(async move {
            let node = Node::new(format!("churn-client-{i}"));
            let tcp = TcpTransport::start_with(
                &node,
                TcpOptions {
                    source_address: source,
                    ..TcpOptions::default()
                },
            );
            let settings = Party::new().settings(vec![], trust);
            let channel =
                secure_channel::create(&node, tcp_route(to, DEFAULT_LISTENER)?, &settings)
                    .await
                    .with_context(|| format!("channel {i} to {to}"))?;
            anyhow::Ok((node, tcp, channel))
        });
    }
    while let Some(done) = opening.join_next().await {
        held.push(done??);
    }
    Ok(held)
}

/// The loopback address client process `p` speaks from: 127.0.1.(p+1), beside the
/// 127.0.0.x addresses tests give attackers.
pub fn client_source(p: usize) -> IpAddr {
    let p = u8::try_from(p % 254).unwrap_or(0);
    IpAddr::from([127, 0, 1, p + 1])
}

/// Client processes holding channels open to one node; killed with SIGKILL by
/// [`ChurnClients::kill_9`], or when dropped.
pub struct ChurnClients {
    children: Vec<Child>,
    channels: usize,
}

impl ChurnClients {
    /// Start `processes` clients (the `kith-churn-client` binary at `exe`), each opening
    /// `channels_each` channels to the node listening at `listener` (`host:port`), and wait
    /// until every one says it is ready.
    pub fn start(
        exe: &Path,
        listener: &str,
        processes: usize,
        channels_each: usize,
    ) -> anyhow::Result<Self> {
        let mut clients = Self {
            children: Vec::with_capacity(processes),
            channels: processes * channels_each,
        };
        let (tx, lines) = mpsc::channel();
        for p in 0..processes {
            // Each process a host of its own, as a thousand clients would be: its own
            // loopback address, so a node's per-source caps see ten sources, not one.
            let source = client_source(p);
            let mut child = Command::new(exe)
                .args(["--to", listener, "--channels", &channels_each.to_string()])
                .args(["--source", &source.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("client {p} has no stdout"))?;
            clients.children.push(child);
            // A thread per client turns its stdout into messages, so the wait below has a
            // bound; it ends when the client exits.
            let tx = tx.clone();
            std::thread::spawn(move || {
                let first = BufReader::new(stdout).lines().next();
                let _ = tx.send((p, first.and_then(Result::ok)));
            });
        }
        drop(tx);
        let deadline = Instant::now() + READY_WAIT;
        for _ in 0..processes {
            let left = deadline.saturating_duration_since(Instant::now());
            let (p, line) = lines.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "not every client opened its {channels_each} channels within {READY_WAIT:?}"
                )
            })?;
            let Some(line) = line else {
                bail!("client {p} exited before its channels were open (its error is above)");
            };
            ensure!(
                line == format!("{READY} {channels_each}"),
                "client {p} said {line:?}"
            );
        }
        Ok(clients)
    }

    /// How many channels the clients hold.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// SIGKILL every client, with its channels open, and reap it.
    pub fn kill_9(mut self) -> anyhow::Result<()> {
        self.kill_all()
    }

    fn kill_all(&mut self) -> anyhow::Result<()> {
        for child in &mut self.children {
            // `Child::kill` is SIGKILL on Unix: no shutdown, no `Close` to any peer.
            child.kill().context("SIGKILL to a client")?;
        }
        for mut child in self.children.drain(..) {
            // SIGKILL cannot be caught or ignored: the wait ends as soon as the kernel has
            // torn the process down.
            child.wait().context("reaping a killed client")?;
        }
        Ok(())
    }
}

impl Drop for ChurnClients {
    fn drop(&mut self) {
        let _ = self.kill_all();
    }
}
