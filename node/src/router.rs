//! Routing: deliver a message by the first hop of its onward route.
//!
//! Local hops go to a mailbox after its incoming policy accepts the message's origin. Other
//! kinds go to the transport registered for the kind, which resolves the peer to the local
//! mailbox of the connection that carries messages there. Only local senders may make a
//! transport dial: a message from another node can use connections that exist, never open
//! new ones, so kith dials only addresses its own user configured.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use crate::node::{Entry, Target};
use crate::{Address, ErrorClass, Message, Node, RouteError, SinkError, TryRouteError};

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

impl Node {
    /// Route `message` by its onward route. Every failure is also logged and counted.
    pub async fn route(&self, mut message: Message) -> Result<(), RouteError> {
        let Some(next) = message.onward_route.next().cloned() else {
            self.inner
                .stats
                .dropped_empty
                .fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.name(), "dropped a message with an empty onward route");
            return Err(RouteError::EmptyRoute);
        };
        if !next.is_local() {
            let local = self
                .resolve_remote(&next, message.origin().is_local())
                .await?;
            message.onward_route.replace_next(local);
        }
        self.deliver_local(message, next).await
    }

    async fn resolve_remote(&self, next: &Address, may_dial: bool) -> Result<Address, RouteError> {
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
            warn!(node = %self.name(), address = %next, "dropped a message: no transport for its address kind");
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
                warn!(node = %self.name(), address = %next, error = %crate::DisplayChain(&e), "dropped a message: peer unreachable");
                Err(e)
            }
        }
    }

    /// Deliver `message` now, on this thread, without waiting, or hand it back. For sinks that
    /// pass what they took on to its next hop from inside [`crate::MessageSink::try_deliver`],
    /// where nothing may wait: if this returns [`TryRouteError::WouldBlock`], queue the
    /// message and [`Node::route`] it from a task. The first hop must be a local address (a
    /// transport may have to resolve any other) with room for the message now. Delivered and
    /// dropped messages are counted and logged as by [`Node::route`].
    #[expect(
        clippy::result_large_err,
        reason = "the message is handed back by value so the slow path costs no allocation"
    )]
    pub fn try_route(&self, message: Message) -> Result<(), TryRouteError> {
        let Some(next) = message.onward_route.next() else {
            self.inner
                .stats
                .dropped_empty
                .fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.name(), "dropped a message with an empty onward route");
            return Err(TryRouteError::Failed(RouteError::EmptyRoute));
        };
        if !next.is_local() {
            return Err(TryRouteError::WouldBlock(message));
        }
        let entry = self
            .authorized_entry(&message)
            .map_err(TryRouteError::Failed)?;
        let result = match &entry.target {
            Target::Mailbox(tx) => match tx.try_send(message) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(m)) => return Err(TryRouteError::WouldBlock(m)),
                Err(TrySendError::Closed(m)) => Err(m),
            },
            Target::Sink(sink) => {
                if INLINE_DEPTH.get() >= MAX_INLINE_DEPTH {
                    return Err(TryRouteError::WouldBlock(message));
                }
                let _level = InlineLevel::enter();
                match sink.try_deliver(message) {
                    Ok(()) => Ok(()),
                    Err(SinkError::Full(m)) => return Err(TryRouteError::WouldBlock(m)),
                    Err(SinkError::Closed(m)) => Err(m),
                    Err(SinkError::Refused {
                        message,
                        class,
                        reason,
                    }) => {
                        let hop = message
                            .onward_route
                            .next()
                            .cloned()
                            .unwrap_or_else(|| Address::local("invalid"));
                        return Err(TryRouteError::Failed(self.refused(hop, class, reason)));
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(m) => Err(TryRouteError::Failed(self.closed(&m))),
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
        let Some(entry) = entry else {
            self.inner
                .stats
                .dropped_unknown
                .fetch_add(1, Ordering::Relaxed);
            warn!(node = %self.name(), address = %next, "dropped a message for an unknown address");
            return Err(RouteError::UnknownAddress(next.clone()));
        };
        if !entry.policy.is_authorized(message.origin()) {
            self.inner
                .stats
                .dropped_denied
                .fetch_add(1, Ordering::Relaxed);
            warn!(
                node = %self.name(),
                address = %next,
                origin = origin_kind(message.origin()),
                "dropped a message refused by the incoming policy"
            );
            return Err(RouteError::Denied(next.clone()));
        }
        Ok(entry)
    }

    /// Count and log a message dropped because its worker or sink has stopped.
    fn closed(&self, message: &Message) -> RouteError {
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
        RouteError::Closed(to)
    }

    /// Count and log a message a sink refused for good; `hop` is its first hop as the sender
    /// named it.
    fn refused(
        &self,
        hop: Address,
        class: ErrorClass,
        reason: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> RouteError {
        self.inner
            .stats
            .dropped_refused
            .fetch_add(1, Ordering::Relaxed);
        match &reason {
            Some(reason) => {
                warn!(node = %self.name(), address = %hop, %class, reason = %crate::DisplayChain(reason.as_ref()), "dropped a message its next hop refused")
            }
            None => {
                warn!(node = %self.name(), address = %hop, %class, "dropped a message its next hop refused")
            }
        }
        RouteError::Refused {
            address: hop,
            class,
            reason,
        }
    }

    /// Deliver to the local first hop; `hop` is the first hop as the sender named it (a
    /// peer's transport address rather than the connection it resolved to).
    async fn deliver_local(&self, message: Message, hop: Address) -> Result<(), RouteError> {
        let entry = self.authorized_entry(&message)?;
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
            Err(SinkError::Refused { class, reason, .. }) => Err(self.refused(hop, class, reason)),
            Err(SinkError::Closed(m) | SinkError::Full(m)) => Err(self.closed(&m)),
        }
    }

    /// Register the transport for its address kind, replacing any earlier one.
    pub fn register_transport(&self, transport: Arc<dyn Transport>) {
        if let Ok(mut t) = self.inner.transports.write() {
            t.insert(transport.kind(), transport);
        }
    }
}

fn origin_kind(origin: &crate::Origin) -> &'static str {
    match origin {
        crate::Origin::Local => "local",
        crate::Origin::Transport { .. } => "transport",
        crate::Origin::SecureChannel { .. } => "secure-channel",
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
