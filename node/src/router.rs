//! Routing: deliver a message by the first hop of its onward route.
//!
//! Local hops go to a mailbox after its incoming policy accepts the message's origin. Other
//! kinds go to the transport registered for the kind, which resolves the peer to the local
//! mailbox of the connection that carries messages there. Only local senders may make a
//! transport dial: a message from another node can use connections that exist, never open
//! new ones, so kith dials only addresses its own user configured.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use crate::node::{Entry, Target};
use crate::{Address, Message, Node, RouteError, SinkError};

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
        self.deliver_local(message).await
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

    async fn deliver_local(&self, message: Message) -> Result<(), RouteError> {
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
        let to = next.clone();
        let delivered = match &entry.target {
            Target::Mailbox(tx) => tx.send(message).await.is_ok(),
            Target::Sink(sink) => {
                let mut message = message;
                loop {
                    match sink.try_deliver(message) {
                        Ok(()) => break true,
                        Err(SinkError::Closed(_)) => break false,
                        Err(SinkError::Full(m)) => {
                            message = m;
                            sink.ready().await;
                        }
                    }
                }
            }
        };
        if delivered {
            self.inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            self.inner
                .stats
                .dropped_closed
                .fetch_add(1, Ordering::Relaxed);
            debug!(node = %self.name(), address = %to, "dropped a message for a stopped worker");
            Err(RouteError::Closed(to))
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
