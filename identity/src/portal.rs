//! How an inlet reaches its outlet through secure channels (DESIGN §3, §4): a
//! [`Connector`] that, for every portal session, opens fresh channels along the inlet's
//! route, checks that the node answering at the end satisfies the inlet's policy, and hands
//! the session a route through the innermost channel that admits answers from that channel
//! only.
//!
//! Fresh channels per session mean a route through a relay that went away and came back
//! works again without recreating the inlet; an attempt that fails is retried, with a short
//! backoff, within the inlet's open timeout. The route is resolved once, by whoever starts
//! the inlet; the channel settings are read afresh for every session, so a renewed
//! credential is presented from the next session on.
//!
//! What it does not do: parse routes or read project files (the caller resolves the route
//! into [`ChannelHop`]s), or decide the policy (the caller's).
//!
//! [`Connector`]: kith_transport::portal::Connector
//! [`ChannelHop`]: crate::secure_channel::ChannelHop

use std::sync::Arc;
use std::time::Duration;

use kith_node::{AddressError, DisplayChain, ErrorClass, Node, Route};
use kith_transport::portal::{ConnectFuture, Connector, PortalRoute, Refusal};

use crate::Identifier;
use crate::backoff::Backoff;
use crate::channel::HandshakeError;
use crate::policy::Policy;
use crate::secure_channel::{
    ChannelHop, ChannelStack, ChannelStackError, SecureChannelError, SharedSettings, ThroughChannel,
};

/// 5 s: the most one attempt at reaching the outlet's node may take; the connector retries
/// within its open timeout, so a relay that comes back is used as soon as it is.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// 100 ms: the first pause between attempts; a relay that is reconnecting is often back
/// this fast.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// 2 s: the longest pause between attempts, so a session still opens soon after its route
/// comes back.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Why a session got no route to the outlet.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Portals carry data only through a secure channel.
    #[error("the route has no secure channel")]
    NoChannel,
    /// The node at the end proved an identity the inlet's policy does not admit.
    #[error(
        "the node at the end of the route, {peer}, does not satisfy the inlet's policy {policy}"
    )]
    NotAllowed {
        /// Who answered.
        peer: Identifier,
        /// The inlet's policy.
        policy: Policy,
    },
    /// The route after the last channel does not fit behind its encryptor.
    #[error("the route to the outlet is too long inside its channels")]
    RouteTooLong(#[source] AddressError),
    /// The channels could not be opened within the open timeout.
    #[error("cannot reach the outlet")]
    Unreachable(#[source] ChannelStackError),
}

/// The class of refusal a node on the way, or the peer, answered opening the channels with.
fn refused(e: &ChannelStackError) -> Option<ErrorClass> {
    match e {
        ChannelStackError::Open {
            source: SecureChannelError::Handshake(HandshakeError::Refused(u)),
            ..
        } => Some(u.class),
        _ => None,
    }
}

/// Whether retrying cannot help against a refusal of `class`: the peer (or a node on the
/// way) decided who we are is not welcome. A missing relay or hop may come back.
fn final_refusal(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::Denied
            | ErrorClass::NoTrustedCredential
            | ErrorClass::NotAllowed
            | ErrorClass::Revoked
            | ErrorClass::RevocationsUnknown
            | ErrorClass::InvalidHandshake
            | ErrorClass::TooLarge
    )
}

/// What an inlet counts and shows for `e`.
fn refusal(e: &ConnectError) -> Refusal {
    let class = match e {
        ConnectError::NoChannel | ConnectError::RouteTooLong(_) => "invalid-route",
        ConnectError::NotAllowed { .. } => "outlet-not-allowed",
        ConnectError::Unreachable(e) => match (refused(e), e) {
            (Some(class), _) => class.name(),
            (None, ChannelStackError::Timeout { .. }) => "timeout",
            (None, _) => "unreachable",
        },
    };
    Refusal::new(class, DisplayChain(e).to_string())
}

/// Why one attempt failed.
enum Attempt {
    /// The route may work again soon (a relay reconnecting): try again within the budget.
    Retry(ChannelStackError),
    /// Trying again will not help.
    Fatal(ConnectError),
}

/// An inlet's [`Connector`]: fresh secure channels along `hops` for every session, then
/// `route` (the outlet's service) through the innermost one, answered by a node that
/// satisfies `policy`.
pub struct PortalConnector {
    node: Node,
    settings: SharedSettings,
    hops: Vec<ChannelHop>,
    route: Route,
    policy: Policy,
    open_timeout: Duration,
}

impl PortalConnector {
    /// A connector from `node`, opening channels as `settings` say when each session starts,
    /// along `hops` (resolved once, by the caller), to `route` after the last channel; the
    /// node answering at the last channel must satisfy `policy`. Each session may take
    /// `open_timeout` to reach the outlet, retries included (the inlet's open timeout).
    pub fn new(
        node: &Node,
        settings: SharedSettings,
        hops: Vec<ChannelHop>,
        route: Route,
        policy: Policy,
        open_timeout: Duration,
    ) -> Self {
        Self {
            node: node.clone(),
            settings,
            hops,
            route,
            policy,
            open_timeout,
        }
    }

    /// One try at the channels, within `budget`.
    async fn attempt(&self, budget: Duration) -> Result<PortalRoute, Attempt> {
        if self.hops.is_empty() {
            return Err(Attempt::Fatal(ConnectError::NoChannel));
        }
        let settings = self.settings.get();
        let stack = ChannelStack::open(&self.node, &settings, &self.hops, budget)
            .await
            .map_err(|e| match refused(&e) {
                // A node that refuses us will go on refusing: say so now, not after the
                // open timeout.
                Some(class) if final_refusal(class) => Attempt::Fatal(ConnectError::Unreachable(e)),
                _ => Attempt::Retry(e),
            })?;
        let Some(inner) = stack.innermost() else {
            return Err(Attempt::Fatal(ConnectError::NoChannel));
        };
        let peer = &inner.peer;
        if !self
            .policy
            .allows(&peer.identifier.to_string(), &peer.attributes)
        {
            return Err(Attempt::Fatal(ConnectError::NotAllowed {
                peer: peer.identifier,
                policy: self.policy.clone(),
            }));
        }
        let replies = Arc::new(ThroughChannel(inner.handshake_hash));
        let end = inner.end_signal();
        let route = stack
            .route_through(&self.route)
            .map_err(|e| Attempt::Fatal(ConnectError::RouteTooLong(e)))?;
        Ok(PortalRoute {
            route,
            replies,
            guard: Box::new(stack),
            ended: Some(Box::pin(async move { end.ended().await.to_string() })),
        })
    }
}

impl Connector for PortalConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            let mut backoff = Backoff::new(self.open_timeout).between(FIRST_RETRY, MAX_RETRY);
            loop {
                let left = self.open_timeout.saturating_sub(backoff.waited());
                let error = match self.attempt(left.min(ATTEMPT_TIMEOUT)).await {
                    Ok(route) => return Ok(route),
                    Err(Attempt::Fatal(e)) => return Err(refusal(&e)),
                    Err(Attempt::Retry(e)) => e,
                };
                match backoff.next_pause() {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(refusal(&ConnectError::Unreachable(error))),
                }
            }
        })
    }
}
