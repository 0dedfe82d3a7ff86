//! The TCP transport: listeners, one outgoing connection per peer, persistent connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_node::{
    Address, AllowAll, DisplayChain, Mailbox, Node, ResolveFuture, RouteError, TCP, Transport,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OnceCell, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::connection::{self, Connection};
use crate::frame::DEFAULT_MAX_FRAME_LEN;
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
    /// 4096 by default: incoming connections beyond this wait until one closes.
    pub max_connections: usize,
    /// 100 ms by default: first delay before redialing a persistent connection.
    pub reconnect_min: Duration,
    /// 10 s by default: the cap of the exponential reconnect backoff.
    pub reconnect_max: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(5),
            preamble_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
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
    let limit = Arc::new(Semaphore::new(inner.options.max_connections));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let inner2 = inner.clone();
                inner.node.spawn(async move {
                    serve_incoming(inner2, stream, peer).await;
                    drop(permit);
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

async fn serve_incoming(inner: Arc<Inner>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    if let Err(e) = connection::preamble(&mut stream, inner.options.preamble_timeout).await {
        inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, error = %DisplayChain(&e), "refused a connection");
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
    // The connection logs how it ended.
    let _: Result<(), ConnectionError> = conn.run(&inner.options, &inner.counters).await;
    if let Ok(mut open) = inner.open.lock() {
        open.remove(&address);
    }
}

/// Dial `peer`, exchange versions, and start serving the connection.
async fn open_stream(inner: &Inner, peer: &str) -> Result<(TcpStream, SocketAddr), TransportError> {
    let timeout = inner.options.connect_timeout;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(peer))
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
