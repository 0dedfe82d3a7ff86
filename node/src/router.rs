//! Routing: deliver a message by the first hop of its onward route.
//!
//! Local hops go to a mailbox after its incoming policy accepts the message's origin. Other
//! kinds go to the transport registered for the kind, which resolves the peer to the local
//! mailbox of the connection that carries messages there. Only local senders may make a
//! transport dial: a message from another node can use connections that exist, never open
//! new ones, so kith dials only addresses its own user configured.
//!
//! A data message from another node that cannot be delivered is answered (DESIGN §2,
//! "Router"): one error message, along its return route, naming this node, the hop that
//! failed and a coarse class, never the payload. Error messages are never answered, so one
//! failed message costs at most one error message and errors cannot loop; each sender draws
//! them at a bounded rate. A local sender gets the error itself instead.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::node::{Entry, Target};
use crate::reply_limit::Sender;
use crate::{
    Address, ErrorClass, LOG_LIMITER, LogSource, Message, MessageKind, Node, Route, RouteError,
    SinkError, TryRouteError, Undeliverable,
};

/// 4 sinks: how deeply [`Node::try_route`] nests deliveries into sinks on one thread. A sink
/// may deliver onwards from inside its own `try_deliver` (a secure channel's decryptor hands
/// what it opened to the next hop), so a chain of sinks runs on the caller's stack; a channel
/// inside a channel over a TCP connection is three deep. Past the cap the message is handed
/// back to be routed asynchronously, so a peer that nests messages cannot make the chain, or
/// the stack, grow without bound.
pub const MAX_INLINE_DEPTH: usize = 4;

thread_local! {
    /// Sinks currently delivering on this thread (see [`MAX_INLINE_DEPTH`]).
    static INLINE_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// One level of inline delivery on this thread, for as long as it lives.
struct InlineLevel(usize);

impl InlineLevel {
    fn enter() -> Self {
        let depth = INLINE_DEPTH.get();
        INLINE_DEPTH.set(depth + 1);
        Self(depth)
    }
}

impl Drop for InlineLevel {
    fn drop(&mut self) {
        INLINE_DEPTH.set(self.0);
    }
}

/// What [`Transport::resolve`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<Address, RouteError>> + Send + 'a>>;

/// A transport for one address kind, registered with [`Node::register_transport`].
pub trait Transport: Send + Sync + 'static {
    /// The address kind this transport serves, e.g. [`crate::TCP`].
    fn kind(&self) -> u8;

    /// The local address of the mailbox that carries messages to `address`, opening a
    /// connection first if there is none and `may_dial` is true.
    fn resolve<'a>(&'a self, address: &'a Address, may_dial: bool) -> ResolveFuture<'a>;
}

/// A message the router could not deliver, handed back with why, so that its sender can be
/// answered without the message being copied on the way that succeeds.
pub(crate) struct Undelivered {
    error: RouteError,
    message: Message,
    /// The hop that failed, as the message named it (a peer's transport address, not the
    /// connection it resolved to); `None` for an empty onward route.
    hop: Option<Address>,
}

impl Undelivered {
    fn new(error: RouteError, message: Message, hop: Option<Address>) -> Box<Self> {
        Box::new(Self {
            error,
            message,
            hop,
        })
    }
}

/// Why [`Node::try_deliver`] did not deliver a message.
enum NotNow {
    /// Delivering would mean waiting; the message is handed back untouched.
    WouldBlock(Message),
    /// The message cannot be delivered.
    Failed(Box<Undelivered>),
}

impl Node {
    /// Route `message` by its onward route. Every failure is also logged and counted; a data
    /// message from another node that cannot be delivered is also answered along its return
    /// route with an error message ([`crate::MessageKind::Undeliverable`]), at most at the
    /// node's [`crate::ErrorReplyRate`] per sender. Error messages are never answered.
    pub async fn route(&self, message: Message) -> Result<(), RouteError> {
        let may_dial = message.origin().is_local();
        match self.deliver(message, may_dial).await {
            Ok(()) => Ok(()),
            Err(undelivered) => {
                let (error, reply) = self.error_reply(*undelivered);
                if let Some(reply) = reply {
                    self.send_error(reply).await;
                }
                Err(error)
            }
        }
    }

    /// Deliver `message` to its first hop, resolving a transport address first (dialing only
    /// if `may_dial`).
    async fn deliver(&self, mut message: Message, may_dial: bool) -> Result<(), Box<Undelivered>> {
        let Some(next) = message.onward_route.next().cloned() else {
            return Err(self.empty_route(message));
        };
        if !next.is_local() {
            let source = LogSource::from(message.origin());
            match self.resolve_remote(&next, may_dial, source).await {
                Ok(local) => {
                    message.onward_route.replace_next(local);
                }
                Err(error) => return Err(Undelivered::new(error, message, Some(next))),
            }
        }
        let entry = match self.authorized_entry(&message) {
            Ok(entry) => entry,
            Err(error) => return Err(Undelivered::new(error, message, Some(next))),
        };
        let result = match &entry.target {
            Target::Mailbox(tx) => tx.send(message).await.map_err(|e| SinkError::Closed(e.0)),
            Target::Sink(sink) => {
                let mut message = message;
                loop {
                    let attempt = {
                        let _level = InlineLevel::enter();
                        sink.try_deliver(message)
                    };
                    match attempt {
                        Err(SinkError::Full(m)) => {
                            message = m;
                            sink.ready().await;
                        }
                        other => break other,
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(refused) => Err(self.not_taken(refused, next)),
        }
    }

    /// The local address that carries messages to `next`; a failure is counted and logged
    /// (collapsed per `source`, the sender's peer).
    async fn resolve_remote(
        &self,
        next: &Address,
        may_dial: bool,
        source: LogSource,
    ) -> Result<Address, RouteError> {
        let transport = self
            .inner
            .transports
            .read()
            .ok()
            .and_then(|t| t.get(&next.kind()).cloned());
        let Some(transport) = transport else {
            self.inner
                .stats
                .dropped_no_transport
                .fetch_add(1, Ordering::Relaxed);
            const KIND: &str = "dropped a message: no transport for its address kind";
            if let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                warn!(node = %self.name(), address = %next, %source, suppressed, "dropped a message: no transport for its address kind");
            }
            return Err(RouteError::NoTransport {
                kind: next.kind(),
                address: next.clone(),
            });
        };
        match transport.resolve(next, may_dial).await {
            Ok(local) => Ok(local),
            Err(e) => {
                self.inner
                    .stats
                    .dropped_unreachable
                    .fetch_add(1, Ordering::Relaxed);
                const KIND: &str = "dropped a message: peer unreachable";
                if let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                    warn!(node = %self.name(), address = %next, %source, suppressed, error = %crate::DisplayChain(&e), "dropped a message: peer unreachable");
                }
                Err(e)
            }
        }
    }

    /// Deliver `message` now, on this thread, without waiting, or hand it back. For sinks that
    /// pass what they took on to its next hop from inside [`crate::MessageSink::try_deliver`],
    /// where nothing may wait: if this returns [`TryRouteError::WouldBlock`], queue the
    /// message and [`Node::route`] it from a task. The first hop must be a local address (a
    /// transport may have to resolve any other) with room for the message now. Delivered and
    /// dropped messages are counted, logged and answered as by [`Node::route`].
    #[expect(
        clippy::result_large_err,
        reason = "the message is handed back by value so the slow path costs no allocation"
    )]
    pub fn try_route(&self, message: Message) -> Result<(), TryRouteError> {
        match self.try_deliver(message) {
            Ok(()) => Ok(()),
            Err(NotNow::WouldBlock(m)) => Err(TryRouteError::WouldBlock(m)),
            Err(NotNow::Failed(undelivered)) => {
                let (error, reply) = self.error_reply(*undelivered);
                if let Some(reply) = reply {
                    self.try_send_error(reply);
                }
                Err(TryRouteError::Failed(error))
            }
        }
    }

    #[expect(
        clippy::result_large_err,
        reason = "the message is handed back by value so the slow path costs no allocation"
    )]
    fn try_deliver(&self, message: Message) -> Result<(), NotNow> {
        let Some(next) = message.onward_route.next() else {
            return Err(NotNow::Failed(self.empty_route(message)));
        };
        if !next.is_local() {
            return Err(NotNow::WouldBlock(message));
        }
        let entry = match self.authorized_entry(&message) {
            Ok(entry) => entry,
            Err(error) => {
                let hop = message.onward_route.next().cloned();
                return Err(NotNow::Failed(Undelivered::new(error, message, hop)));
            }
        };
        let result = match &entry.target {
            Target::Mailbox(tx) => match tx.try_send(message) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(m)) => return Err(NotNow::WouldBlock(m)),
                Err(TrySendError::Closed(m)) => Err(SinkError::Closed(m)),
            },
            Target::Sink(sink) => {
                if INLINE_DEPTH.get() >= MAX_INLINE_DEPTH {
                    return Err(NotNow::WouldBlock(message));
                }
                let _level = InlineLevel::enter();
                match sink.try_deliver(message) {
                    Err(SinkError::Full(m)) => return Err(NotNow::WouldBlock(m)),
                    other => other,
                }
            }
        };
        match result {
            Ok(()) => {
                self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(refused) => {
                let hop = refused_message(&refused)
                    .onward_route
                    .next()
                    .cloned()
                    .unwrap_or_else(|| Address::local("invalid"));
                Err(NotNow::Failed(self.not_taken(refused, hop)))
            }
        }
    }

    /// The registration of `message`'s first hop, if its incoming policy admits the message;
    /// otherwise the drop is counted and logged.
    fn authorized_entry(&self, message: &Message) -> Result<Arc<Entry>, RouteError> {
        let Some(next) = message.onward_route.next() else {
            return Err(RouteError::EmptyRoute);
        };
        let entry: Option<Arc<Entry>> = self
            .inner
            .mailboxes
            .read()
            .ok()
            .and_then(|m| m.get(next).cloned());
        // An error message that finds no one is routine (its client gave up and went): it is
        // counted and logged at debug level where it is dropped, not warned about here.
        let data = message.kind == MessageKind::Data;
        let Some(entry) = entry else {
            self.inner
                .stats
                .dropped_unknown
                .fetch_add(1, Ordering::Relaxed);
            const KIND: &str = "dropped a message for an unknown address";
            let source = LogSource::from(message.origin());
            if data && let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                warn!(node = %self.name(), address = %next, %source, suppressed, "dropped a message for an unknown address");
            }
            return Err(RouteError::UnknownAddress(next.clone()));
        };
        if !entry.policy.is_authorized(message.origin()) {
            self.inner
                .stats
                .dropped_denied
                .fetch_add(1, Ordering::Relaxed);
            const KIND: &str = "dropped a message refused by the incoming policy";
            let source = LogSource::from(message.origin());
            if data && let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                warn!(
                    node = %self.name(),
                    address = %next,
                    origin = origin_kind(message.origin()),
                    %source,
                    suppressed,
                    "dropped a message refused by the incoming policy"
                );
            }
            return Err(RouteError::Denied(next.clone()));
        }
        Ok(entry)
    }

    /// Count and log a message with an empty onward route.
    fn empty_route(&self, message: Message) -> Box<Undelivered> {
        self.inner
            .stats
            .dropped_empty
            .fetch_add(1, Ordering::Relaxed);
        debug!(node = %self.name(), "dropped a message with an empty onward route");
        Undelivered::new(RouteError::EmptyRoute, message, None)
    }

    /// Count and log a message its mailbox or sink did not take (`hop` is the first hop as
    /// the sender named it). Never called with [`SinkError::Full`], which is a wait, not a
    /// failure.
    fn not_taken(&self, refused: SinkError, hop: Address) -> Box<Undelivered> {
        match refused {
            SinkError::Refused {
                message,
                class,
                reason,
            } => {
                self.inner
                    .stats
                    .dropped_refused
                    .fetch_add(1, Ordering::Relaxed);
                const KIND: &str = "dropped a message its next hop refused";
                let source = LogSource::from(message.origin());
                if let Some(suppressed) = LOG_LIMITER.admit(KIND, source) {
                    match &reason {
                        Some(reason) => {
                            warn!(node = %self.name(), address = %hop, %class, %source, suppressed, reason = %crate::DisplayChain(reason.as_ref()), "dropped a message its next hop refused")
                        }
                        None => {
                            warn!(node = %self.name(), address = %hop, %class, %source, suppressed, "dropped a message its next hop refused")
                        }
                    }
                }
                let error = RouteError::Refused {
                    address: hop.clone(),
                    class,
                    reason,
                };
                Undelivered::new(error, message, Some(hop))
            }
            SinkError::Closed(message) | SinkError::Full(message) => {
                let to = message
                    .onward_route
                    .next()
                    .cloned()
                    .unwrap_or_else(|| Address::local("invalid"));
                self.inner
                    .stats
                    .dropped_closed
                    .fetch_add(1, Ordering::Relaxed);
                debug!(node = %self.name(), address = %to, "dropped a message for a stopped worker");
                Undelivered::new(RouteError::Closed(to), message, Some(hop))
            }
        }
    }

    /// The error to return for a message that could not be delivered, and the error message
    /// that answers its sender, if one is due (DESIGN §2, "Router"): the message came from
    /// another node (a local sender has the error itself), carries data (error messages are
    /// never answered, so errors cannot loop or multiply), has a return route, failed at a
    /// hop, and its sender has not used up its [`crate::ErrorReplyRate`]. The answer goes
    /// along the return route with an empty return route of its own, from this node, and
    /// carries the node's name, the hop and a coarse class: never the payload.
    fn error_reply(&self, undelivered: Undelivered) -> (RouteError, Option<Message>) {
        let Undelivered {
            error,
            message,
            hop,
        } = undelivered;
        let stats = &self.inner.stats;
        if message.kind == MessageKind::Undeliverable {
            stats.undeliverable_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.name(), error = %crate::DisplayChain(&error), "dropped an error message that could not be delivered; error messages are never answered");
            return (error, None);
        }
        if message.origin().is_local() || message.return_route.is_empty() {
            return (error, None);
        }
        let (Some(class), Some(hop), Some(sender)) = (error.class(), hop, Sender::of(&message))
        else {
            return (error, None);
        };
        if !self.error_replies().allow(sender, Instant::now()) {
            stats
                .error_replies_suppressed
                .fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.name(), address = %hop, %class, "not answering an undeliverable message: its sender is over the error message rate");
            return (error, None);
        }
        stats.error_replies_sent.fetch_add(1, Ordering::Relaxed);
        let payload = Undeliverable {
            node: self.name().to_owned(),
            address: hop,
            class,
        }
        .encode();
        let mut reply = Message::new(message.return_route, Route::new(), payload);
        reply.kind = MessageKind::Undeliverable;
        (error, Some(reply))
    }

    /// Answer `message` with an error message saying that `hop` on this node refused it for
    /// `class`, as the router answers what it cannot deliver: for refusals decided above the
    /// router (a secure-channel listener too busy for a handshake, or handed an invalid
    /// one). The same rules hold: only a data message from another node is answered, at
    /// most at its sender's [`crate::ErrorReplyRate`], and never with the payload. It never
    /// waits: a refuser under load must not stall on a peer whose connection is backed up
    /// (an answer that cannot go at once goes from a task of its own).
    pub fn answer_undeliverable(&self, message: Message, hop: Address, class: ErrorClass) {
        let error = RouteError::Refused {
            address: hop.clone(),
            class,
            reason: None,
        };
        let (_, reply) = self.error_reply(Undelivered {
            error,
            message,
            hop: Some(hop),
        });
        if let Some(reply) = reply {
            self.try_send_error(reply);
        }
    }

    /// Deliver an error message, waiting as need be. It may use a connection that exists but
    /// never dial one: its route came from another node. If it cannot be delivered it is
    /// counted and dropped, never answered.
    async fn send_error(&self, reply: Message) {
        if let Err(undelivered) = self.deliver(reply, false).await {
            let _ = self.error_reply(*undelivered);
        }
    }

    /// Deliver an error message now, or from a task if that would mean waiting.
    fn try_send_error(&self, reply: Message) {
        match self.try_deliver(reply) {
            Ok(()) => {}
            Err(NotNow::Failed(undelivered)) => {
                let _ = self.error_reply(*undelivered);
            }
            // Nothing can wait without a runtime (a synchronous caller): count it as lost.
            Err(NotNow::WouldBlock(reply)) if Handle::try_current().is_err() => {
                self.inner
                    .stats
                    .undeliverable_dropped
                    .fetch_add(1, Ordering::Relaxed);
                debug!(node = %self.name(), "dropped an error message: it would have to wait, and there is no runtime to wait in");
                drop(reply);
            }
            Err(NotNow::WouldBlock(reply)) => {
                let node = self.clone();
                self.spawn(async move { node.send_error(reply).await });
            }
        }
    }

    /// Register the transport for its address kind, replacing any earlier one.
    pub fn register_transport(&self, transport: Arc<dyn Transport>) {
        if let Ok(mut t) = self.inner.transports.write() {
            t.insert(transport.kind(), transport);
        }
    }
}

/// The message a sink handed back.
fn refused_message(refused: &SinkError) -> &Message {
    match refused {
        SinkError::Full(m) | SinkError::Closed(m) => m,
        SinkError::Refused { message, .. } => message,
    }
}

fn origin_kind(origin: &crate::Origin) -> &'static str {
    match origin {
        crate::Origin::Local => "local",
        crate::Origin::Transport { .. } => "transport",
        crate::Origin::SecureChannel(_) => "secure-channel",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{
        AllowAll, AllowLocal, LocalInfo, MAILBOX_CAPACITY, MessageSink, Origin, ReadyFuture, Route,
        TCP,
    };

    fn to(hop: &str, payload: &'static str) -> Message {
        Message::new(Route::from(hop), Route::new(), payload)
    }

    #[test]
    fn try_route_delivers_now_or_hands_the_message_back_untouched() {
        let node = Node::new("t");
        let _mailbox = node
            .register_mailbox([Address::local("box")], Arc::new(AllowLocal))
            .unwrap();
        for _ in 0..MAILBOX_CAPACITY {
            node.try_route(to("box", "x")).unwrap();
        }
        assert_eq!(node.stats().delivered, MAILBOX_CAPACITY as u64);
        match node.try_route(to("box", "full")) {
            Err(TryRouteError::WouldBlock(m)) => assert_eq!(m.payload, "full"),
            other => panic!("{other:?}"),
        }
        // A transport address may need resolving, which waits.
        let remote = Route::from(Address::try_new(TCP, "127.0.0.1:1").unwrap());
        assert!(matches!(
            node.try_route(Message::new(remote, Route::new(), "r")),
            Err(TryRouteError::WouldBlock(_))
        ));
        // Failures are final, counted like `route`'s.
        assert!(matches!(
            node.try_route(to("nobody", "x")),
            Err(TryRouteError::Failed(RouteError::UnknownAddress(_)))
        ));
        let mut remote_origin = to("box", "x");
        remote_origin.local_info = LocalInfo {
            origin: Origin::Transport {
                connection: Address::local("tcp-1"),
                peer: None,
            },
        };
        assert!(matches!(
            node.try_route(remote_origin),
            Err(TryRouteError::Failed(RouteError::Denied(_)))
        ));
        assert!(matches!(
            node.try_route(Message::new(Route::new(), Route::new(), "x")),
            Err(TryRouteError::Failed(RouteError::EmptyRoute))
        ));
        let stats = node.stats();
        assert_eq!(
            (
                stats.dropped_unknown_address,
                stats.dropped_denied,
                stats.dropped_empty_route
            ),
            (1, 1, 1)
        );
    }

    /// Hands everything it takes straight back to itself: a routing loop through a sink.
    struct Loop {
        node: Node,
        deepest: Arc<AtomicUsize>,
        handed_back: Arc<AtomicUsize>,
    }

    impl MessageSink for Loop {
        fn try_deliver(&self, message: Message) -> Result<(), SinkError> {
            self.deepest
                .fetch_max(INLINE_DEPTH.get(), Ordering::Relaxed);
            if let Err(TryRouteError::WouldBlock(_)) = self.node.try_route(message) {
                self.handed_back.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }

        fn ready(&self) -> ReadyFuture<'_> {
            Box::pin(async {})
        }
    }

    #[test]
    fn sinks_that_deliver_inline_nest_only_up_to_the_cap() {
        let node = Node::new("t");
        let deepest = Arc::new(AtomicUsize::new(0));
        let handed_back = Arc::new(AtomicUsize::new(0));
        let _sink = node
            .register_sink(
                [Address::local("loop")],
                Arc::new(AllowAll),
                Arc::new(Loop {
                    node: node.clone(),
                    deepest: deepest.clone(),
                    handed_back: handed_back.clone(),
                }),
            )
            .unwrap();
        node.try_route(to("loop", "round and round")).unwrap();
        assert_eq!(deepest.load(Ordering::Relaxed), MAX_INLINE_DEPTH);
        assert_eq!(handed_back.load(Ordering::Relaxed), 1);
        assert_eq!(INLINE_DEPTH.get(), 0, "the depth is given back");
    }
}
