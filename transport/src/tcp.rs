//! The TCP transport: listeners, one outgoing connection per peer, persistent connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_node::{
    Address, AllowAll, DisplayChain, Mailbox, Node, ResolveFuture, RouteError, TCP, Transport,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection::{self, BUSY, Connection};
use crate::frame::DEFAULT_MAX_FRAME_LEN;
use crate::source::Source;
use crate::{ConnectionError, TransportError};

/// Tunables of a [`TcpTransport`]; the defaults suit a node on an ordinary network.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// Largest frame body accepted or sent.
    pub max_frame_len: usize,
    /// 5 s by default: a dial that takes longer is reported as unreachable.
    pub connect_timeout: Duration,
    /// 10 s by default: how long a peer has to send its protocol version byte.
    pub preamble_timeout: Duration,
    /// 10 s by default: an idle connection sends a keep-alive frame this often.
    pub keepalive_interval: Duration,
    /// 35 s by default (three keep-alives and some slack): a peer silent this long is dead.
    pub idle_timeout: Duration,
    /// 30 s by default: a write that cannot complete this long means the peer stopped reading.
    pub write_timeout: Duration,
    /// 4096 by default: incoming connections open at once, node-wide. A newcomer past it
    /// still gets in if some source holds at least two more connections than the
    /// newcomer's: the newest connection of the heaviest source is closed for it.
    /// Otherwise it is refused as busy.
    pub max_connections: usize,
    /// 256 by default: incoming connections open at once from one source (an IPv4
    /// address, an IPv6 /64). One more is refused as busy at once.
    pub max_connections_per_source: usize,
    /// 30 s by default: once a frame's first byte has arrived, how long the rest may take.
    /// A peer that trickles a frame is closed when it runs out.
    pub frame_timeout: Duration,
    /// None by default: the local address outgoing connections are made from (the system
    /// picks one). Tests use it to speak from distinct loopback addresses.
    pub source_address: Option<std::net::IpAddr>,
    /// 100 ms by default: first delay before redialing a persistent connection.
    pub reconnect_min: Duration,
    /// 10 s by default: the cap of the exponential reconnect backoff.
    pub reconnect_max: Duration,
}

/// 4,096: incoming connections a node holds at once. A connection at rest costs a few KiB
/// (a task, a socket, no buffers), so the cap bounds memory at tens of MiB; it is also what
/// the file descriptors of an ordinary service allow once raised from the default 1,024.
pub const MAX_CONNECTIONS: usize = 4096;

/// 256: incoming connections from one source at once. A member node holds one connection
/// to a project node, so 256 leaves room for a large office behind one NAT address, and 16
/// sources are needed to fill [`MAX_CONNECTIONS`], which then sheds from the heaviest.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 256;

/// 30 s: the most a frame may take from its first byte to its last. The largest frame
/// (256 KiB) crosses even a 100 kbit/s link in 21 s; a peer slower than that is trickling.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(5),
            preamble_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            write_timeout: Duration::from_secs(30),
            max_connections: MAX_CONNECTIONS,
            max_connections_per_source: MAX_CONNECTIONS_PER_SOURCE,
            frame_timeout: FRAME_TIMEOUT,
            source_address: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) dialed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) refused_busy: AtomicU64,
    pub(crate) shed: AtomicU64,
}

/// A snapshot of the transport's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Incoming connections accepted (past the preamble).
    pub accepted: u64,
    /// Outgoing connections established.
    pub dialed: u64,
    /// Connections refused at the preamble (wrong version, silence).
    pub refused: u64,
    /// Connections closed for an invalid frame or message.
    pub invalid: u64,
    /// Frames received carrying a message.
    pub frames_in: u64,
    /// Frames sent carrying a message.
    pub frames_out: u64,
    /// Messages the transport did not send or deliver: too large for a frame (refused, and
    /// handed back to the router), at the hop limit, or with nothing to route.
    pub dropped: u64,
    /// Connections open now.
    pub open: u64,
    /// Incoming connections refused as busy: their source was at its cap, or the node was
    /// full and no source held more than theirs.
    pub refused_busy: u64,
    /// Incoming connections closed to make room for a newcomer from a lighter source.
    pub shed: u64,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We accepted it.
    Incoming,
    /// We dialed it.
    Outgoing,
}

/// An open connection, for `kith node show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The local address that sends on it.
    pub address: Address,
    /// The peer's socket address.
    pub peer: SocketAddr,
    /// Who opened it.
    pub direction: Direction,
}

/// The state of a persistent connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialing; `attempt` counts failures since the last success.
    Connecting {
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Connected; `epoch` counts successful connections, so a watcher can tell a reconnect
    /// (and, say, re-register a relay).
    Connected {
        /// 1 for the first connection, 2 after the first reconnect, ….
        epoch: u64,
    },
    /// Stopped for good.
    Stopped,
}

/// A connection the transport keeps up, at a stable local address.
pub struct PersistentConnection {
    /// The local address that carries messages to the peer, across reconnects.
    pub address: Address,
    /// Watch it to learn of (re)connections.
    pub state: watch::Receiver<ConnectionState>,
}

type PeerSlot = Arc<OnceCell<Address>>;

struct Inner {
    node: Node,
    options: TcpOptions,
    counters: Arc<Counters>,
    peers: Mutex<HashMap<String, PeerSlot>>,
    open: Mutex<HashMap<Address, ConnectionInfo>>,
    incoming: Mutex<Incoming>,
}

/// The TCP transport of one node. Clones share it.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl TcpTransport {
    /// Create the transport with default options and register it with `node`.
    pub fn start(node: &Node) -> Self {
        Self::start_with(node, TcpOptions::default())
    }

    /// Create the transport with `options` and register it with `node`.
    pub fn start_with(node: &Node, options: TcpOptions) -> Self {
        let t = Self {
            inner: Arc::new(Inner {
                node: node.clone(),
                options,
                counters: Arc::default(),
                peers: Mutex::default(),
                open: Mutex::default(),
                incoming: Mutex::default(),
            }),
        };
        node.register_transport(Arc::new(t.clone()));
        t
    }

    /// The options in force.
    pub fn options(&self) -> &TcpOptions {
        &self.inner.options
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TcpStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcpStats {
            accepted: l(&c.accepted),
            dialed: l(&c.dialed),
            refused: l(&c.refused),
            invalid: l(&c.invalid),
            frames_in: l(&c.frames_in),
            frames_out: l(&c.frames_out),
            dropped: l(&c.dropped),
            refused_busy: l(&c.refused_busy),
            shed: l(&c.shed),
            open: self.inner.open.lock().map(|m| m.len() as u64).unwrap_or(0),
        }
    }

    /// Open connections, sorted by address.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut v: Vec<ConnectionInfo> = self
            .inner
            .open
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }

    /// Listen on `address` (`host:port`; port 0 picks a free one) and serve every connection
    /// until the node shuts down. Returns the bound address.
    pub async fn listen(&self, address: &str) -> Result<SocketAddr, TransportError> {
        let bind_err = |source| TransportError::Bind {
            address: address.to_owned(),
            source,
        };
        let listener = TcpListener::bind(address).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        info!(node = %self.inner.node.name(), address = %local, "listening");
        let inner = self.inner.clone();
        self.inner.node.spawn_listener(accept_loop(inner, listener));
        Ok(local)
    }

    /// The local address that carries messages to `peer` (`host:port`), dialing it if there
    /// is no connection yet. Concurrent callers share one dial.
    pub async fn connect(&self, peer: &str) -> Result<Address, TransportError> {
        let slot = self.slot(peer);
        match slot.get_or_try_init(|| dial(&self.inner, peer)).await {
            Ok(address) => Ok(address.clone()),
            Err(e) => {
                // Forget the empty slot, so failed dials to many peers leave nothing behind.
                if let Ok(mut peers) = self.inner.peers.lock()
                    && peers
                        .get(peer)
                        .is_some_and(|s| Arc::ptr_eq(s, &slot) && s.get().is_none())
                {
                    peers.remove(peer);
                }
                Err(e)
            }
        }
    }

    fn slot(&self, peer: &str) -> PeerSlot {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(peer.to_owned()).or_default().clone()
    }

    /// Keep a connection to `peer` up, redialing with capped exponential backoff whenever it
    /// drops, at one stable local address. Messages sent while it is down wait in its
    /// mailbox. Stop it with `node.stop_worker(&address)`.
    pub fn connect_persistent(&self, peer: &str) -> Result<PersistentConnection, TransportError> {
        let mailbox = self
            .inner
            .node
            .register_mailbox([Address::random_local("tcp")], Arc::new(AllowAll))
            .map_err(|_| TransportError::ShuttingDown)?;
        let address = mailbox.address().clone();
        let slot = Arc::new(OnceCell::new_with(Some(address.clone())));
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.to_owned(), slot);
        let (tx, rx) = watch::channel(ConnectionState::Connecting { attempt: 0 });
        let inner = self.inner.clone();
        let peer = peer.to_owned();
        self.inner.node.spawn(keep_up(inner, peer, mailbox, tx));
        Ok(PersistentConnection { address, state: rx })
    }
}

impl Transport for TcpTransport {
    fn kind(&self) -> u8 {
        TCP
    }

    fn resolve<'a>(&'a self, address: &'a Address, may_dial: bool) -> ResolveFuture<'a> {
        Box::pin(async move {
            let peer = address.value();
            if !may_dial {
                let existing = self
                    .inner
                    .peers
                    .lock()
                    .ok()
                    .and_then(|p| p.get(peer).and_then(|s| s.get().cloned()));
                return existing.ok_or_else(|| RouteError::NotConnected(address.clone()));
            }
            self.connect(peer)
                .await
                .map_err(|e| RouteError::Unreachable {
                    address: address.clone(),
                    source: Box::new(e),
                })
        })
    }
}

/// 100 ms: how long a listener pauses after a failed accept (out of file descriptors, say)
/// before it accepts again. Retrying at once would spin a core on an error that lasts until
/// some connection closes; a tenth of a second is a delay no client notices.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(admitted) = admit(&inner, peer) else {
                    refuse_busy(&inner, &stream, peer);
                    continue;
                };
                let inner2 = inner.clone();
                inner.node.spawn(async move {
                    let stop = admitted.stop.clone();
                    tokio::select! {
                        () = serve_incoming(inner2.clone(), stream, peer) => {}
                        () = stop.cancelled() => {
                            debug!(%peer, "closed a connection to make room for a lighter source");
                        }
                    }
                    drop(admitted);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off and keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Incoming connections by source: what the per-source and node-wide caps count, and whom
/// to shed when the node is full.
#[derive(Default)]
struct Incoming {
    total: usize,
    next_id: u64,
    /// Per source, its connections, oldest first: an id and what stops it.
    by_source: HashMap<Source, Vec<(u64, CancellationToken)>>,
}

/// One admitted incoming connection; leaves the table when dropped.
struct Admitted {
    inner: Arc<Inner>,
    source: Source,
    id: u64,
    stop: CancellationToken,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut incoming = self
            .inner
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(held) = incoming.by_source.get_mut(&self.source) else {
            return;
        };
        let before = held.len();
        held.retain(|(id, _)| *id != self.id);
        let removed = before - held.len();
        if held.is_empty() {
            incoming.by_source.remove(&self.source);
        }
        incoming.total = incoming.total.saturating_sub(removed);
    }
}

/// Take a place for a connection from `peer`, shedding the heaviest source's newest
/// connection if the node is full and that source holds at least two more than `peer`'s.
/// None: refuse it as busy.
fn admit(inner: &Arc<Inner>, peer: SocketAddr) -> Option<Admitted> {
    let source = Source::of(peer.ip());
    let options = &inner.options;
    let mut incoming = inner.incoming.lock().unwrap_or_else(|e| e.into_inner());
    let theirs = incoming.by_source.get(&source).map_or(0, Vec::len);
    if theirs >= options.max_connections_per_source {
        return None;
    }
    if incoming.total >= options.max_connections {
        let heaviest = incoming
            .by_source
            .iter()
            .max_by_key(|(_, held)| held.len())
            .map(|(s, held)| (*s, held.len()))?;
        if heaviest.1 < theirs + 2 {
            return None;
        }
        let held = incoming.by_source.get_mut(&heaviest.0)?;
        let (_, stop) = held.pop()?;
        if held.is_empty() {
            incoming.by_source.remove(&heaviest.0);
        }
        incoming.total -= 1;
        stop.cancel();
        inner.counters.shed.fetch_add(1, Ordering::Relaxed);
    }
    incoming.next_id += 1;
    let id = incoming.next_id;
    let stop = CancellationToken::new();
    incoming
        .by_source
        .entry(source)
        .or_default()
        .push((id, stop.clone()));
    incoming.total += 1;
    Some(Admitted {
        inner: inner.clone(),
        source,
        id,
        stop,
    })
}

/// Tell a refused peer the node is busy (one byte in place of the version, if the socket
/// takes it now) and close the connection.
fn refuse_busy(inner: &Inner, stream: &TcpStream, peer: SocketAddr) {
    inner.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
    let _ = stream.try_write(&[BUSY]);
    debug!(%peer, "refused a connection: busy");
}

async fn serve_incoming(inner: Arc<Inner>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = connection::preamble(&mut stream, inner.options.preamble_timeout).await {
        inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = kith_node::LOG_LIMITER.admit("refused a connection", peer) {
            warn!(%peer, error = %DisplayChain(&e), suppressed, "refused a connection");
        }
        return;
    }
    let Ok(conn) = Connection::establish(
        &inner.node,
        stream,
        peer,
        &inner.options,
        &inner.counters,
        None,
    ) else {
        return;
    };
    inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, connection = %conn.address(), "accepted a connection");
    run_tracked(&inner, conn, peer, Direction::Incoming).await;
}

async fn run_tracked(inner: &Arc<Inner>, conn: Connection, peer: SocketAddr, direction: Direction) {
    let address = conn.address().clone();
    if let Ok(mut open) = inner.open.lock() {
        open.insert(
            address.clone(),
            ConnectionInfo {
                address: address.clone(),
                peer,
                direction,
            },
        );
    }
    // Leaves the table however the connection ends, also when it is shed mid-run.
    let _tracked = Tracked { inner, address };
    // The connection logs how it ended.
    let _: Result<(), ConnectionError> = conn.run(&inner.options, &inner.counters).await;
}

/// An entry of the open-connection table, removed when dropped.
struct Tracked<'a> {
    inner: &'a Inner,
    address: Address,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.inner.open.lock() {
            open.remove(&self.address);
        }
    }
}

/// Dial `peer`, exchange versions, and start serving the connection.
async fn open_stream(inner: &Inner, peer: &str) -> Result<(TcpStream, SocketAddr), TransportError> {
    let timeout = inner.options.connect_timeout;
    let mut stream =
        tokio::time::timeout(timeout, connect_from(inner.options.source_address, peer))
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                address: peer.to_owned(),
                timeout,
            })?
            .map_err(|source| TransportError::Connect {
                address: peer.to_owned(),
                source,
            })?;
    let _ = stream.set_nodelay(true);
    let remote = stream
        .peer_addr()
        .map_err(|source| TransportError::Connect {
            address: peer.to_owned(),
            source,
        })?;
    connection::preamble(&mut stream, inner.options.preamble_timeout)
        .await
        .map_err(|source| preamble_failed(remote, source))?;
    inner.counters.dialed.fetch_add(1, Ordering::Relaxed);
    Ok((stream, remote))
}

/// Connect to `peer`, from `source` if given.
async fn connect_from(source: Option<std::net::IpAddr>, peer: &str) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(peer).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(peer).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{peer} has no address of the family of {source}"),
        )
    }))
}

/// A failed version exchange with `address`, as what is known: silence, a close, or a
/// version byte we do not speak.
fn preamble_failed(address: SocketAddr, source: ConnectionError) -> TransportError {
    match source {
        ConnectionError::PreambleTimeout(after) => {
            TransportError::PreambleTimeout { address, after }
        }
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            TransportError::PreambleClosed { address }
        }
        ConnectionError::Busy => TransportError::Busy { address },
        source => TransportError::Preamble { address, source },
    }
}

async fn dial(inner: &Arc<Inner>, peer: &str) -> Result<Address, TransportError> {
    let (stream, remote) = open_stream(inner, peer).await?;
    let conn = Connection::establish(
        &inner.node,
        stream,
        remote,
        &inner.options,
        &inner.counters,
        None,
    )
    .map_err(|_| TransportError::ShuttingDown)?;
    let address = conn.address().clone();
    debug!(%peer, connection = %address, "connected");
    let inner2 = inner.clone();
    let peer = peer.to_owned();
    let addr2 = address.clone();
    inner.node.spawn(async move {
        run_tracked(&inner2, conn, remote, Direction::Outgoing).await;
        forget_peer(&inner2, &peer, &addr2);
    });
    Ok(address)
}

/// Remove `peer`'s slot if it still points at the connection that just ended.
fn forget_peer(inner: &Inner, peer: &str, address: &Address) {
    if let Ok(mut peers) = inner.peers.lock()
        && peers.get(peer).and_then(|s| s.get()) == Some(address)
    {
        peers.remove(peer);
    }
}

async fn keep_up(
    inner: Arc<Inner>,
    peer: String,
    mut mailbox: Mailbox,
    state: watch::Sender<ConnectionState>,
) {
    let stop = mailbox.stop_token().clone();
    let mut backoff = inner.options.reconnect_min;
    let mut attempt = 0u32;
    let mut epoch = 0u64;
    while !stop.is_cancelled() {
        match open_stream(&inner, &peer).await {
            Ok((stream, remote)) => {
                // Answers come back to the stable address, whichever connection carried them.
                let stable = Some(mailbox.address().clone());
                let Ok(conn) = Connection::establish(
                    &inner.node,
                    stream,
                    remote,
                    &inner.options,
                    &inner.counters,
                    stable,
                ) else {
                    break;
                };
                epoch += 1;
                attempt = 0;
                backoff = inner.options.reconnect_min;
                let _ = state.send(ConnectionState::Connected { epoch });
                info!(%peer, connection = %mailbox.address(), epoch, "persistent connection up");
                let current = conn.address().clone();
                tokio::select! {
                    () = run_tracked(&inner, conn, remote, Direction::Outgoing) => {}
                    () = forward(&inner.node, &mut mailbox, &current) => {}
                }
                if stop.is_cancelled() {
                    break;
                }
                let _ = state.send(ConnectionState::Connecting { attempt });
                warn!(%peer, "persistent connection lost; reconnecting");
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let _ = state.send(ConnectionState::Connecting { attempt });
                debug!(%peer, error = %DisplayChain(&e), attempt, retry_in = ?backoff, "reconnect failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = backoff.saturating_mul(2).min(inner.options.reconnect_max);
            }
        }
    }
    forget_peer(&inner, &peer, mailbox.address());
    let _ = state.send(ConnectionState::Stopped);
}

/// Pass what is sent to the stable address on to the current connection. Messages wait in
/// the stable mailbox while there is none.
async fn forward(node: &Node, mailbox: &mut Mailbox, current: &Address) {
    while let Some(mut m) = mailbox.recv().await {
        m.onward_route.replace_next(current.clone());
        // The node counts a drop if the connection has just closed.
        let _ = node.route(m).await;
    }
}

/// Up to 25% less than `d`, so that many nodes that lost the same peer do not redial in step.
fn jitter(d: Duration) -> Duration {
    let quarter = d / 4;
    let cut = quarter.mul_f64(rand::random::<f64>());
    d.saturating_sub(cut)
}
