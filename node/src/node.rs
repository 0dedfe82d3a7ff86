//! The node: mailbox registry, task ownership, counters and structured shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::reply_limit::ReplyLimiter;
use crate::{
    Address, AllowAll, AllowLocal, Client, Context, DEFAULT_ERROR_REPLY_RATE, ErrorReplyRate,
    IncomingAccessControl, LOG_LIMITER, LogSource, MAX_ERROR_REPLY_SENDERS, Message, MessageSink,
    StartError, Transport, Worker,
};

/// 256 messages: enough to absorb a burst from a fast connection while the worker catches
/// up; when full, senders wait, which pushes back on the TCP connection feeding them instead
/// of buffering without bound.
pub const MAILBOX_CAPACITY: usize = 256;

/// 5 s: how long shutdown waits for workers and connections to finish before aborting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a registered address delivers.
pub(crate) enum Target {
    /// A bounded mailbox drained by a worker or an owner's task.
    Mailbox(mpsc::Sender<Message>),
    /// A sink that takes messages synchronously.
    Sink(Arc<dyn MessageSink>),
}

pub(crate) struct Entry {
    pub(crate) target: Target,
    pub(crate) policy: Arc<dyn IncomingAccessControl>,
    id: u64,
    stop: CancellationToken,
    addresses: Arc<[Address]>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped_empty: AtomicU64,
    pub(crate) dropped_unknown: AtomicU64,
    pub(crate) dropped_denied: AtomicU64,
    pub(crate) dropped_closed: AtomicU64,
    pub(crate) dropped_no_transport: AtomicU64,
    pub(crate) dropped_unreachable: AtomicU64,
    pub(crate) dropped_refused: AtomicU64,
    pub(crate) error_replies_sent: AtomicU64,
    pub(crate) error_replies_suppressed: AtomicU64,
    pub(crate) undeliverable_dropped: AtomicU64,
    pub(crate) worker_errors: AtomicU64,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages put in a mailbox.
    pub delivered: u64,
    /// Messages dropped for an empty onward route.
    pub dropped_empty_route: u64,
    /// Messages dropped for an unknown local address.
    pub dropped_unknown_address: u64,
    /// Messages dropped by an incoming policy.
    pub dropped_denied: u64,
    /// Messages dropped because their worker had stopped.
    pub dropped_closed: u64,
    /// Messages dropped for want of a transport.
    pub dropped_no_transport: u64,
    /// Messages dropped because the peer could not be reached.
    pub dropped_unreachable: u64,
    /// Messages a sink refused for good (too large for a connection, say).
    pub dropped_refused: u64,
    /// Error messages this node sent back along the return route of a message it could not
    /// deliver (DESIGN §2, "Router"); at most one per such message.
    pub error_replies_sent: u64,
    /// Error messages this node did not send because the sender had used up its
    /// [`ErrorReplyRate`], or the table of senders was full.
    pub error_replies_suppressed: u64,
    /// Error messages, ours or a peer's, that could not be delivered in turn: dropped, never
    /// answered. Each is also counted under its reason above.
    pub undeliverable_dropped: u64,
    /// Errors returned by workers' `handle_message`.
    pub worker_errors: u64,
}

impl NodeStats {
    /// All dropped messages, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_empty_route
            + self.dropped_unknown_address
            + self.dropped_denied
            + self.dropped_closed
            + self.dropped_no_transport
            + self.dropped_unreachable
            + self.dropped_refused
    }
}

pub(crate) struct Inner {
    name: String,
    pub(crate) mailboxes: RwLock<HashMap<Address, Arc<Entry>>>,
    pub(crate) transports: RwLock<HashMap<u8, Arc<dyn Transport>>>,
    pub(crate) stats: Counters,
    /// Who may draw how many error messages; locked briefly, never across an `.await`.
    pub(crate) error_replies: Mutex<ReplyLimiter>,
    tasks: Mutex<JoinSet<()>>,
    next_id: AtomicU64,
    listeners: CancellationToken,
    workers: CancellationToken,
    stopping: AtomicBool,
    stopped: OnceCell<()>,
}

/// A handle to a running node; clones share it.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

/// A registered mailbox without a worker, driven by its owner's own task. Dropping it
/// unregisters its addresses.
pub struct Mailbox {
    node: Node,
    id: u64,
    primary: Address,
    addresses: Arc<[Address]>,
    rx: mpsc::Receiver<Message>,
    stop: CancellationToken,
}

impl Mailbox {
    /// The first address, used as the return address of what this mailbox's owner sends.
    pub fn address(&self) -> &Address {
        &self.primary
    }

    /// Every address the mailbox is registered under.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The next message; `None` once the mailbox is stopped and drained.
    pub async fn recv(&mut self) -> Option<Message> {
        tokio::select! {
            biased;
            m = self.rx.recv() => m,
            () = self.stop.cancelled() => None,
        }
    }

    /// A message already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Cancelled when the mailbox is stopped, dropped, or the node shuts down.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The node this mailbox belongs to.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.node.unregister(self.id, &self.addresses);
        self.stop.cancel();
    }
}

struct Registration {
    id: u64,
    primary: Address,
    addresses: Arc<[Address]>,
    stop: CancellationToken,
}

/// A registered [`MessageSink`]. Dropping it unregisters the addresses.
pub struct SinkHandle {
    node: Node,
    id: u64,
    primary: Address,
    addresses: Arc<[Address]>,
    stop: CancellationToken,
}

impl SinkHandle {
    /// The first address.
    pub fn address(&self) -> &Address {
        &self.primary
    }

    /// Cancelled when the sink is stopped (`Node::stop_worker`), dropped, or the node shuts
    /// down.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.node.unregister(self.id, &self.addresses);
        self.stop.cancel();
    }
}

impl Node {
    /// A new node named `name` (used in logs), with no transport and no worker.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                mailboxes: RwLock::default(),
                transports: RwLock::default(),
                stats: Counters::default(),
                error_replies: Mutex::new(ReplyLimiter::new(
                    DEFAULT_ERROR_REPLY_RATE,
                    MAX_ERROR_REPLY_SENDERS,
                )),
                tasks: Mutex::new(JoinSet::new()),
                next_id: AtomicU64::new(1),
                listeners: CancellationToken::new(),
                workers: CancellationToken::new(),
                stopping: AtomicBool::new(false),
                stopped: OnceCell::new(),
            }),
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NodeStats {
        let s = &self.inner.stats;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeStats {
            delivered: l(&s.delivered),
            dropped_empty_route: l(&s.dropped_empty),
            dropped_unknown_address: l(&s.dropped_unknown),
            dropped_denied: l(&s.dropped_denied),
            dropped_closed: l(&s.dropped_closed),
            dropped_no_transport: l(&s.dropped_no_transport),
            dropped_unreachable: l(&s.dropped_unreachable),
            dropped_refused: l(&s.dropped_refused),
            error_replies_sent: l(&s.error_replies_sent),
            error_replies_suppressed: l(&s.error_replies_suppressed),
            undeliverable_dropped: l(&s.undeliverable_dropped),
            worker_errors: l(&s.worker_errors),
        }
    }

    /// Answer each sender's undeliverable messages at most at `rate` (default
    /// [`DEFAULT_ERROR_REPLY_RATE`]). Every sender starts again with a full burst.
    pub fn set_error_reply_rate(&self, rate: ErrorReplyRate) {
        *self.error_replies() = ReplyLimiter::new(rate, MAX_ERROR_REPLY_SENDERS);
    }

    /// The rate at which each sender's undeliverable messages are answered.
    pub fn error_reply_rate(&self) -> ErrorReplyRate {
        self.error_replies().rate()
    }

    pub(crate) fn error_replies(&self) -> std::sync::MutexGuard<'_, ReplyLimiter> {
        // The table holds only counters; one left half-updated by a panic is still usable.
        self.inner
            .error_replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Local addresses with a registered mailbox, sorted.
    pub fn addresses(&self) -> Vec<Address> {
        let mut v: Vec<Address> = self
            .inner
            .mailboxes
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether [`Node::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Register a mailbox under `addresses` with `policy`, for an owner that drives it.
    pub fn register_mailbox(
        &self,
        addresses: impl IntoIterator<Item = Address>,
        policy: Arc<dyn IncomingAccessControl>,
    ) -> Result<Mailbox, StartError> {
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        let r = self.register(addresses, policy, Target::Mailbox(tx))?;
        Ok(Mailbox {
            node: self.clone(),
            id: r.id,
            primary: r.primary,
            addresses: r.addresses,
            rx,
            stop: r.stop,
        })
    }

    /// Register `sink` under `addresses` with `policy`. The registration lasts as long as the
    /// returned handle.
    pub fn register_sink(
        &self,
        addresses: impl IntoIterator<Item = Address>,
        policy: Arc<dyn IncomingAccessControl>,
        sink: Arc<dyn MessageSink>,
    ) -> Result<SinkHandle, StartError> {
        let r = self.register(addresses, policy, Target::Sink(sink))?;
        Ok(SinkHandle {
            node: self.clone(),
            id: r.id,
            primary: r.primary,
            addresses: r.addresses,
            stop: r.stop,
        })
    }

    fn register(
        &self,
        addresses: impl IntoIterator<Item = Address>,
        policy: Arc<dyn IncomingAccessControl>,
        target: Target,
    ) -> Result<Registration, StartError> {
        if self.is_shutting_down() {
            return Err(StartError::ShuttingDown);
        }
        let addresses: Arc<[Address]> = addresses.into_iter().collect();
        let Some(primary) = addresses.first().cloned() else {
            return Err(StartError::NoAddress);
        };
        if let Some(a) = addresses.iter().find(|a| !a.is_local()) {
            return Err(StartError::NotLocal(a.clone()));
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = self.inner.workers.child_token();
        // Shared by all the registration's addresses; routing clones the Arc, never the entry.
        let entry = Arc::new(Entry {
            target,
            policy,
            id,
            stop: stop.clone(),
            addresses: addresses.clone(),
        });
        let mut map = self
            .inner
            .mailboxes
            .write()
            .map_err(|_| StartError::ShuttingDown)?;
        if let Some(a) = addresses.iter().find(|a| map.contains_key(a)) {
            return Err(StartError::AddressInUse(a.clone()));
        }
        for a in addresses.iter() {
            map.insert(a.clone(), entry.clone());
        }
        drop(map);
        Ok(Registration {
            id,
            primary,
            addresses,
            stop,
        })
    }

    fn unregister(&self, id: u64, addresses: &[Address]) {
        if let Ok(mut map) = self.inner.mailboxes.write() {
            for a in addresses {
                if map.get(a).is_some_and(|e| e.id == id) {
                    map.remove(a);
                }
            }
        }
    }

    /// Start `worker` at `address`, accepting messages from this node only.
    pub fn start_worker<W: Worker>(
        &self,
        address: impl Into<Address>,
        worker: W,
    ) -> Result<(), StartError> {
        self.start_worker_with_policy([address.into()], Arc::new(AllowLocal), worker)
    }

    /// Start `worker` under `addresses`, accepting the origins `policy` allows.
    pub fn start_worker_with_policy<W: Worker>(
        &self,
        addresses: impl IntoIterator<Item = Address>,
        policy: Arc<dyn IncomingAccessControl>,
        worker: W,
    ) -> Result<(), StartError> {
        let mailbox = self.register_mailbox(addresses, policy)?;
        let ctx = Context::new(
            self.clone(),
            mailbox.address().clone(),
            mailbox.stop_token().clone(),
        );
        self.spawn_owned(run_worker(worker, ctx, mailbox));
        Ok(())
    }

    /// Stop the worker or mailbox registered at `address` (all its addresses). Returns
    /// whether there was one.
    pub fn stop_worker(&self, address: &Address) -> bool {
        let entry = self.inner.mailboxes.write().ok().and_then(|mut m| {
            let e = m.get(address).cloned()?;
            for a in e.addresses.iter() {
                m.remove(a);
            }
            Some(e)
        });
        match entry {
            Some(e) => {
                e.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// A token cancelled when what is registered at `address` ends: it is stopped, its
    /// owner drops it (a connection that closed), or the node shuts down. `None` if nothing
    /// is registered there now (it has ended already, or never was). How a secure channel
    /// learns that the connection it runs over has closed.
    pub fn stop_token(&self, address: &Address) -> Option<CancellationToken> {
        let map = self.inner.mailboxes.read().ok()?;
        map.get(address).map(|e| e.stop.clone())
    }

    /// A client with a fresh, unguessable address, for sending and awaiting replies from
    /// code that is not a worker. It accepts every origin: its address is random and exists
    /// only while the client lives, so it can only receive answers to what it sent.
    pub fn client(&self) -> Result<Client, StartError> {
        let mailbox =
            self.register_mailbox([Address::random_local("client")], Arc::new(AllowAll))?;
        Ok(Client::new(mailbox))
    }

    /// Run `task` owned by this node until it ends or the node shuts down (it is then
    /// dropped at its next await point). For connections and other per-node tasks.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_owned(until_cancelled(self.inner.workers.clone(), task));
    }

    /// Like [`Node::spawn`], for listeners: they are stopped first at shutdown.
    pub fn spawn_listener(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_owned(until_cancelled(self.inner.listeners.clone(), task));
    }

    fn spawn_owned(&self, task: impl Future<Output = ()> + Send + 'static) {
        if self.is_shutting_down() {
            debug!(node = %self.name(), "not starting a task: the node is shutting down");
            return;
        }
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            // Reap what has finished so the set holds only live tasks.
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// A token cancelled when shutdown reaches workers and connections.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.workers.clone()
    }

    /// Shut down in order: stop listeners (no new connections), stop workers and
    /// connections (workers run their `shutdown`), wait up to [`SHUTDOWN_GRACE`] for every
    /// task, abort what is left, clear the registry. Idempotent; concurrent callers all
    /// return when it is done.
    pub async fn shutdown(&self) {
        self.inner
            .stopped
            .get_or_init(|| async {
                self.inner.stopping.store(true, Ordering::Release);
                info!(node = %self.name(), "shutting down");
                self.inner.listeners.cancel();
                self.inner.workers.cancel();
                let mut tasks = match self.inner.tasks.lock() {
                    Ok(mut t) => std::mem::take(&mut *t),
                    Err(_) => JoinSet::new(),
                };
                let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    warn!(node = %self.name(), left = tasks.len(), "tasks still running after the grace period; aborting them");
                    tasks.shutdown().await;
                }
                if let Ok(mut m) = self.inner.mailboxes.write() {
                    m.clear();
                }
                if let Ok(mut t) = self.inner.transports.write() {
                    t.clear();
                }
                info!(node = %self.name(), "shut down");
            })
            .await;
    }
}

async fn run_worker<W: Worker>(mut worker: W, mut ctx: Context, mut mailbox: Mailbox) {
    if let Err(e) = worker.initialize(&mut ctx).await {
        warn!(node = %ctx.node().name(), address = %mailbox.address(), error = %e, "worker failed to initialize; not started");
        return;
    }
    while let Some(message) = mailbox.recv().await {
        // Taken before the worker consumes the message: a peer that sends what a worker
        // cannot handle, again and again, gets one line per interval.
        let source = LogSource::from(message.origin());
        if let Err(e) = worker.handle_message(&mut ctx, message).await {
            ctx.node()
                .inner
                .stats
                .worker_errors
                .fetch_add(1, Ordering::Relaxed);
            const KIND: &str = "worker failed to handle a message";
            if let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                warn!(node = %ctx.node().name(), address = %mailbox.address(), %source, suppressed, error = %e, "worker failed to handle a message");
            }
        }
    }
    worker.shutdown(&mut ctx).await;
    debug!(node = %ctx.node().name(), address = %mailbox.address(), "worker stopped");
}

/// `task`, ended early when `token` is cancelled. The task is boxed: a `select!` over it in
/// an `async move` block would keep it twice (the captured future and the select's own
/// copy), doubling the memory of every long-lived task (each secure channel and
/// connection has one) for as long as it lives.
fn until_cancelled(
    token: CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let task = Box::pin(task);
    async move {
        tokio::select! {
            () = token.cancelled() => {}
            () = task => {}
        }
    }
}
