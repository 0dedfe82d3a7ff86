//! Messages and the local information the runtime attaches to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::{Address, Route, Undeliverable, UndeliverableDecodeError};

/// Who handed a message to this node. Stamped by the runtime, a transport or a secure
/// channel; never decoded from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A worker or client on this node.
    Local,
    /// A transport connection; `connection` is the local address that carries answers back.
    Transport {
        /// The connection's local sender address.
        connection: Address,
        /// The socket address at the other end of the connection, where the transport
        /// knows it.
        peer: Option<SocketAddr>,
    },
    /// An established secure channel; the peer is authenticated. Shared: the channel builds
    /// it once, and again only when the peer's attributes change, so delivering a message
    /// clones a pointer, not the peer's identifier and attributes.
    SecureChannel(Arc<ChannelPeer>),
}

impl Origin {
    /// Whether the message came from this node.
    pub fn is_local(&self) -> bool {
        matches!(self, Origin::Local)
    }

    /// The authenticated peer, if the message came through a secure channel.
    pub fn channel_peer(&self) -> Option<&ChannelPeer> {
        match self {
            Origin::SecureChannel(peer) => Some(peer),
            Origin::Local | Origin::Transport { .. } => None,
        }
    }
}

/// The authenticated peer of a secure channel, as the channel vouches for it on every
/// message it delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelPeer {
    /// The peer's identifier, e.g. `I6c20…`.
    pub identifier: String,
    /// The peer's attested attributes.
    pub attributes: BTreeMap<String, String>,
    /// The channel's Noise handshake hash: equal at both ends of this channel and at no
    /// other, so a service can bind what it shows to this very channel (verification
    /// codes).
    pub handshake_hash: [u8; 32],
    /// Where the channel's handshake came from: the socket address of the transport
    /// connection it arrived on (through any outer channels), if known.
    pub source: Option<SocketAddr>,
}

/// Information that travels with a message inside a node and never crosses the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInfo {
    /// Who handed the message to this node.
    pub origin: Origin,
}

impl Default for LocalInfo {
    fn default() -> Self {
        Self {
            origin: Origin::Local,
        }
    }
}

/// What a message's payload is. Travels on the wire with the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Application bytes.
    #[default]
    Data,
    /// An error message: a node could not deliver a message and says why, as an encoded
    /// [`Undeliverable`]. Never answered, so errors cannot loop or multiply.
    Undeliverable,
}

/// A routed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Where the message goes; the first hop is the next one.
    pub onward_route: Route,
    /// How to answer; each forwarding hop prepends itself.
    pub return_route: Route,
    /// The application bytes, or an encoded [`Undeliverable`].
    pub payload: Bytes,
    /// What the payload is.
    pub kind: MessageKind,
    /// Runtime-only information.
    pub local_info: LocalInfo,
}

impl Message {
    /// A local-origin data message.
    pub fn new(onward_route: Route, return_route: Route, payload: impl Into<Bytes>) -> Self {
        Self {
            onward_route,
            return_route,
            payload: payload.into(),
            kind: MessageKind::Data,
            local_info: LocalInfo::default(),
        }
    }

    /// The error this message carries: `None` for a data message, else its decoded payload
    /// (an error if the payload is malformed).
    pub fn undeliverable(&self) -> Option<Result<Undeliverable, UndeliverableDecodeError>> {
        match self.kind {
            MessageKind::Data => None,
            MessageKind::Undeliverable => Some(Undeliverable::decode(&self.payload)),
        }
    }

    /// The origin stamped on this message.
    pub fn origin(&self) -> &Origin {
        &self.local_info.origin
    }
}
