//! Attackers for the hostile-network tests and bench, each bounded in count and time and
//! stopped when dropped. They speak from loopback addresses other than 127.0.0.1 (which is
//! the legitimate client's), so a node's per-source caps see them as the hosts they play:
//!
//! - [`Sprayer`]: one TCP connection sending secure-channel first messages as fast as the
//!   node takes them, never finishing a handshake.
//! - [`Holders`]: many connections that exchange versions and then only send keep-alives.
//! - [`Tricklers`]: connections that announce a maximum-size frame and send it a byte a
//!   second.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kith_identity::channel::{Admission, Handshake, Trust};
use kith_identity::secure_channel::DEFAULT_LISTENER;
use kith_node::{Address, Node, Route, TCP};
use kith_transport::frame::KEEPALIVE;
use kith_transport::{PROTOCOL_VERSION, TcpOptions, TcpTransport, TransportMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::party::Party;

/// 127.0.0.`last`: an attacker's address.
pub fn attacker(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TCP connection to `to` from `source`.
pub async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Send our version on `s`; the byte the node answers (its version, or "busy"), or None if
/// it answered nothing within 10 s.
pub async fn version_answer(s: &mut TcpStream) -> Option<u8> {
    s.write_all(&[PROTOCOL_VERSION]).await.ok()?;
    let mut theirs = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut theirs)).await {
        Ok(Ok(_)) => Some(theirs[0]),
        _ => None,
    }
}

/// One connection spraying handshake first messages at a node's `api` listener.
pub struct Sprayer {
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sprayer {
    /// Spray from `source` at the node listening at `to`: at most `count` first messages,
    /// for at most `time`, as fast as the connection takes them. The same first message
    /// each time (each starts a handshake of its own at the node), framed once.
    pub async fn start(
        source: IpAddr,
        to: SocketAddr,
        count: u64,
        time: Duration,
    ) -> anyhow::Result<Self> {
        let party = Party::new();
        let anyone = Arc::new(Trust {
            authorities: vec![],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        });
        let settings = party.settings(vec![], anyone);
        let (_, first) = Handshake::initiate(settings.local.clone(), settings.trust.clone(), 16)
            .context("a handshake's first message")?;
        let message = TransportMessage {
            onward_route: Route::from(vec![Address::local(DEFAULT_LISTENER)]),
            return_route: Route::from(vec![Address::local("sprayer")]),
            payload: first.into(),
            kind: kith_node::MessageKind::default(),
        };
        let mut frame = bytes::BytesMut::new();
        message
            .encode_frame(&mut frame, kith_transport::frame::DEFAULT_MAX_FRAME_LEN)
            .context("framing the first message")?;
        let frame = frame.freeze();
        let mut s = connect_from(source, to).await?;
        anyhow::ensure!(
            version_answer(&mut s).await == Some(PROTOCOL_VERSION),
            "the node refused the sprayer"
        );
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            let (mut read, mut write) = s.into_split();
            // Read and drop what the node answers, so its writes never stall on us.
            let drain = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let until = Instant::now() + time;
            for _ in 0..count {
                if Instant::now() >= until || write.write_all(&frame).await.is_err() {
                    break;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            drain.abort();
        });
        Ok(Self { sent, task })
    }

    /// First messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Sprayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections that have exchanged versions with a node and then only trickle: each first
/// sends `first`, then `each` every `every`, until it is closed or `time` has passed.
struct Tricklings {
    open: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

/// What a trickling connection sends.
#[derive(Clone, Copy)]
struct Pace {
    first: &'static [u8],
    each: &'static [u8],
    every: Duration,
}

impl Tricklings {
    /// Open `per_source` connections from each of `sources` to `to`; returns once every one
    /// has been answered (taken, and `first` sent, or refused).
    async fn start(
        sources: &[IpAddr],
        per_source: usize,
        to: SocketAddr,
        time: Duration,
        pace: Pace,
    ) -> Self {
        let open = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        let (answered, mut answers) = tokio::sync::mpsc::channel::<()>(1024);
        for source in sources {
            for _ in 0..per_source {
                let (source, open, failed) = (*source, open.clone(), failed.clone());
                let answered = answered.clone();
                tasks.spawn(async move {
                    let mut s = match taken(source, to, pace.first).await {
                        Ok(s) => s,
                        Err(why) => {
                            failed.lock().unwrap_or_else(|e| e.into_inner()).push(why);
                            let _ = answered.send(()).await;
                            return;
                        }
                    };
                    open.fetch_add(1, Ordering::Relaxed);
                    let _ = answered.send(()).await;
                    drop(answered);
                    let until = tokio::time::Instant::now() + time;
                    let mut tick = tokio::time::interval(pace.every);
                    let mut buf = [0u8; 256];
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {
                                if s.write_all(pace.each).await.is_err() {
                                    break;
                                }
                            }
                            r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                            () = tokio::time::sleep_until(until) => break,
                        }
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
        drop(answered);
        for _ in 0..sources.len() * per_source {
            if answers.recv().await.is_none() {
                break;
            }
        }
        Self {
            open,
            failed,
            tasks,
        }
    }

    fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A connection from `source` to `to` that the node took (answered with its version), with
/// `first` sent on it; or why there is none. A connect or version exchange lost in a full
/// accept queue is tried again, as an attacker would; an answer of "busy" is final.
async fn taken(source: IpAddr, to: SocketAddr, first: &[u8]) -> Result<TcpStream, String> {
    let mut why = String::new();
    for _ in 0..3 {
        let mut s = match connect_from(source, to).await {
            Ok(s) => s,
            Err(e) => {
                why = format!("connect from {source}: {e}");
                continue;
            }
        };
        match version_answer(&mut s).await {
            Some(PROTOCOL_VERSION) => {
                return match s.write_all(first).await {
                    Ok(()) => Ok(s),
                    Err(e) => Err(format!("sending from {source}: {e}")),
                };
            }
            Some(b) => return Err(format!("{source} was answered {b} (busy)")),
            None => why = format!("{source}: no version answer"),
        }
    }
    Err(why)
}

/// Connections past the version exchange that send only keep-alives (every 5 s).
pub struct Holders(Tricklings);

impl Holders {
    /// Open `per_source` connections from each of `sources` to `to`, keeping each open
    /// with a keep-alive every 5 s, for at most `time`. Returns once every one has been
    /// answered (taken or refused).
    pub async fn start(
        sources: &[IpAddr],
        per_source: usize,
        to: SocketAddr,
        time: Duration,
    ) -> Self {
        let pace = Pace {
            first: &[],
            each: &KEEPALIVE,
            every: Duration::from_secs(5),
        };
        Self(Tricklings::start(sources, per_source, to, time, pace).await)
    }

    /// Connections held open now.
    pub fn held(&self) -> u64 {
        self.0.open()
    }

    /// Connections the node refused (or that failed to connect).
    pub fn refused(&self) -> u64 {
        self.0.failures().len() as u64
    }

    /// Close them all.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// 256 KiB, big-endian: the length prefix a trickler announces, a maximum-size frame.
const ANNOUNCE: [u8; 4] = (kith_transport::frame::DEFAULT_MAX_FRAME_LEN as u32).to_be_bytes();

/// Connections that announce a maximum-size frame and send it a byte a second.
pub struct Tricklers(Tricklings);

impl Tricklers {
    /// Open `per_source` trickling connections from each of `sources` to `to`, for at most
    /// `time`. Returns once each has announced its frame (or was refused).
    pub async fn start(
        sources: &[IpAddr],
        per_source: usize,
        to: SocketAddr,
        time: Duration,
    ) -> Self {
        let pace = Pace {
            first: &ANNOUNCE,
            each: &[0x5a],
            every: Duration::from_secs(1),
        };
        Self(Tricklings::start(sources, per_source, to, time, pace).await)
    }

    /// Trickling connections open now.
    pub fn open(&self) -> u64 {
        self.0.open()
    }

    /// Why the connections that never trickled did not.
    pub fn failures(&self) -> Vec<String> {
        self.0.failures()
    }

    /// Close them all.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

/// A node of this process whose connections come from `source`.
pub fn node_from(name: &str, source: IpAddr) -> (Node, TcpTransport) {
    let node = Node::new(name);
    let tcp = TcpTransport::start_with(
        &node,
        TcpOptions {
            source_address: Some(source),
            ..TcpOptions::default()
        },
    );
    (node, tcp)
}

/// `[1#to, local]`: a route to `service` on the node listening at `to`.
pub fn route_to(to: SocketAddr, service: &str) -> anyhow::Result<Route> {
    Ok(Route::from(vec![
        Address::try_new(TCP, to.to_string())?,
        Address::local(service),
    ]))
}
