//! Channels opened one inside another, for a route with several `/secure/` hops (through a
//! project node, say, then through a relay to the node behind it): each channel's handshake
//! travels through the channels opened before it, and the route to the service runs through
//! the last one.
//!
//! A [`ChannelStack`] is held for as long as its user needs the channels (one request, one
//! portal session) and closes them, innermost first, when it is dropped; so does a stack
//! whose opening failed half-way.

use std::time::Duration;

use kith_node::{AddressError, Node, Route};

use super::{ChannelSettings, SecureChannel, SecureChannelError, close, create};
use crate::Identifier;
use crate::channel::Admission;

/// One channel of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHop {
    /// The route to its listener: from this node for the first hop, from inside the channel
    /// before it for the others.
    pub route: Route,
    /// The only identity that may answer, if known (a project node's). Anyone else fails
    /// the handshake, before we present our credentials.
    pub peer: Option<Identifier>,
}

/// Why a stack of channels could not be opened: which hop failed (its route as given), and
/// how. The channels opened before it are closed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelStackError {
    /// The channel's handshake failed, or its first message could not be sent.
    #[error("cannot open a secure channel to {route}")]
    Open {
        /// The hop's route.
        route: String,
        /// What the channel reported.
        #[source]
        source: SecureChannelError,
    },
    /// The handshake did not finish in time.
    #[error("no secure channel to {route} within {timeout:?}")]
    Timeout {
        /// The hop's route.
        route: String,
        /// How long we waited for it.
        timeout: Duration,
    },
    /// Behind the channels before it, the hop's route has more hops than a route may.
    #[error("the route to the secure channel at {route} is too long inside the channels before it")]
    Route {
        /// The hop's route.
        route: String,
        /// The route's limit.
        #[source]
        source: AddressError,
    },
}

/// Channels opened one inside another (a route's `/secure/` hops), closed innermost first
/// when dropped: whoever holds them for a request or a session cannot leak them.
pub struct ChannelStack {
    node: Node,
    channels: Vec<SecureChannel>,
}

impl ChannelStack {
    /// None yet, on `node`.
    pub fn new(node: &Node) -> Self {
        Self {
            node: node.clone(),
            channels: Vec::new(),
        }
    }

    /// Open a channel for each of `hops` from `node` as `settings` say, each inside the one
    /// before and each within `timeout`. A hop with a `peer` admits only that identity. On
    /// failure the channels already open are closed, and the error names the hop. No hops:
    /// an empty stack, and a route through it is the route itself.
    pub async fn open(
        node: &Node,
        settings: &ChannelSettings,
        hops: &[ChannelHop],
        timeout: Duration,
    ) -> Result<Self, ChannelStackError> {
        let mut stack = Self::new(node);
        for hop in hops {
            let pinned;
            let settings = match hop.peer {
                Some(peer) => {
                    pinned = settings.admitting(Admission::Identifiers([peer].into()));
                    &pinned
                }
                None => settings,
            };
            let shown = hop.route.to_string();
            let route = match stack.route_through(&hop.route) {
                Ok(route) => route,
                Err(source) => {
                    return Err(ChannelStackError::Route {
                        route: shown,
                        source,
                    });
                }
            };
            let channel = match tokio::time::timeout(timeout, create(node, route, settings)).await {
                Ok(Ok(channel)) => channel,
                Ok(Err(source)) => {
                    return Err(ChannelStackError::Open {
                        route: shown,
                        source,
                    });
                }
                Err(_) => {
                    return Err(ChannelStackError::Timeout {
                        route: shown,
                        timeout,
                    });
                }
            };
            stack.push(channel);
        }
        Ok(stack)
    }

    /// Add `channel`, opened inside the ones before it.
    pub fn push(&mut self, channel: SecureChannel) {
        self.channels.push(channel);
    }

    /// The channel opened last, inside all the others: what a route through the stack
    /// starts with.
    pub fn innermost(&self) -> Option<&SecureChannel> {
        self.channels.last()
    }

    /// The channels, outermost first.
    pub fn channels(&self) -> &[SecureChannel] {
        &self.channels
    }

    /// The route to `rest` through every channel of the stack: the innermost encryptor,
    /// then `rest`; `rest` itself if the stack is empty. Refused if that is longer than a
    /// route may be.
    pub fn route_through(&self, rest: &Route) -> Result<Route, AddressError> {
        match self.innermost() {
            None => Ok(rest.clone()),
            Some(inner) => Route::try_from_iter(
                std::iter::once(inner.encryptor.clone()).chain(rest.iter().cloned()),
            ),
        }
    }
}

impl Drop for ChannelStack {
    fn drop(&mut self) {
        for channel in self.channels.iter().rev() {
            close(&self.node, channel);
        }
    }
}
