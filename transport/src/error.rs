//! Errors of the transport, one enum per surface a caller reacts to.

use std::net::SocketAddr;

/// Why a frame is not acceptable. Needing more bytes is not an error: see
/// [`crate::frame::FrameStatus::Incomplete`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
}

/// Why a frame body is not a valid [`crate::TransportMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The CBOR itself is malformed or truncated, or a value has the wrong type.
    #[error("malformed transport message")]
    Cbor(#[source] minicbor::decode::Error),
    /// The message is not a map of exactly the fields 0..=3 in order, plus field 4 for an
    /// error message.
    #[error(
        "transport message must be a map of fields 0, 1, 2, 3 in order (and 4: 1 after them for an error message); found {found}"
    )]
    Shape {
        /// What was found instead.
        found: &'static str,
    },
    /// The peer speaks a message version we do not.
    #[error("transport message version {0} is not supported (this node speaks 1)")]
    Version(u8),
    /// A route had more hops than [`kith_node::MAX_ROUTE_LEN`].
    #[error("route of {len} hops exceeds the maximum of {max}")]
    RouteTooLong {
        /// Announced hop count.
        len: u64,
        /// The maximum.
        max: usize,
    },
    /// An address in a route is not valid.
    #[error("invalid address in route")]
    Address(#[from] kith_node::AddressError),
    /// Bytes followed the message inside its frame.
    #[error("{0} trailing bytes after the transport message")]
    TrailingBytes(usize),
}

/// Why a connection ended with an error (logged with the peer address).
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer wrote a protocol version byte we do not speak. All we know is the byte: the
    /// peer may be another version of kith, or not kith at all.
    #[error(
        "peer sent protocol version {theirs}; this node speaks {ours} (another version of kith, or not kith at all)"
    )]
    Version {
        /// Their version byte.
        theirs: u8,
        /// Ours.
        ours: u8,
    },
    /// The peer did not send its version byte in time.
    #[error("peer sent no protocol version within {0:?}")]
    PreambleTimeout(std::time::Duration),
    /// The peer answered the version exchange with "busy": it holds as many connections
    /// as it takes from our address, or in all.
    #[error("peer is busy: it holds as many connections as it takes from this address")]
    Busy,
    /// A frame began and did not end within the frame timeout: the peer trickles it.
    #[error("peer took longer than {0:?} to send one frame")]
    FrameTimeout(std::time::Duration),
    /// An invalid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An invalid transport message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Nothing arrived for the idle timeout, not even a keep-alive.
    #[error("peer silent for {0:?}; presumed dead")]
    Idle(std::time::Duration),
    /// The peer closed the connection in the middle of a frame.
    #[error("peer closed the connection in the middle of a frame ({buffered} bytes buffered)")]
    ClosedMidFrame {
        /// Bytes of the partial frame.
        buffered: usize,
    },
    /// A write did not complete in time (the peer stopped reading).
    #[error("write to peer stalled for {0:?}")]
    WriteTimeout(std::time::Duration),
}

impl ConnectionError {
    /// What kind of failure this is, for collapsing repeated warnings of one kind from one
    /// host into a line per interval.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "connection failed",
            Self::Version { .. } => "connection spoke another version",
            Self::PreambleTimeout(_) => "connection sent no version",
            Self::Busy => "connection refused as busy",
            Self::FrameTimeout(_) => "connection trickled a frame",
            Self::Frame(_) => "connection sent an invalid frame",
            Self::Decode(_) => "connection sent an invalid message",
            Self::Idle(_) => "connection went silent",
            Self::ClosedMidFrame { .. } => "connection closed mid-frame",
            Self::WriteTimeout(_) => "connection stopped reading",
        }
    }
}

/// Why a listener or an outgoing connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address asked for.
        address: String,
        /// The OS error (address in use, permission denied, …).
        #[source]
        source: std::io::Error,
    },
    /// The address could not be resolved.
    #[error("cannot resolve {address}")]
    Resolve {
        /// The address asked for.
        address: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to {address}")]
    Connect {
        /// The peer.
        address: String,
        /// The OS error (connection refused, …).
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("cannot connect to {address}: no answer within {timeout:?}")]
    ConnectTimeout {
        /// The peer.
        address: String,
        /// The timeout.
        timeout: std::time::Duration,
    },
    /// The peer accepted the connection but sent no version byte in time: it may be busy,
    /// wedged, or something that waits for the client to speak first.
    #[error(
        "{address} accepted the connection but did not answer the kith version exchange within {after:?}"
    )]
    PreambleTimeout {
        /// The peer.
        address: SocketAddr,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// The peer closed the connection before it sent its version byte.
    #[error("{address} closed the connection before answering the kith version exchange")]
    PreambleClosed {
        /// The peer.
        address: SocketAddr,
    },
    /// The peer refused the connection as busy: it holds as many connections as it takes
    /// from our address (or in all, and ours is not the heaviest source).
    #[error(
        "{address} is busy: it holds as many connections as it takes from this address; try again later"
    )]
    Busy {
        /// The peer.
        address: SocketAddr,
    },
    /// The version exchange failed: the peer sent another version, or the socket failed.
    #[error("the kith version exchange with {address} failed")]
    Preamble {
        /// The peer.
        address: SocketAddr,
        /// What went wrong.
        #[source]
        source: ConnectionError,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why a route written as a multiaddr is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiAddrError {
    /// Empty text.
    #[error("empty route; write one like /node/n1/service/echo")]
    Empty,
    /// Text not starting with '/'.
    #[error("route {0:?} must start with '/', as in /ip4/127.0.0.1/tcp/4000/service/echo")]
    NoLeadingSlash(String),
    /// An unknown protocol name.
    #[error(
        "unknown protocol {name:?} at segment {position}; known: {}",
        crate::multiaddr::known_protocols()
    )]
    UnknownProtocol {
        /// The name.
        name: String,
        /// 1-based segment number.
        position: usize,
    },
    /// A protocol without its value.
    #[error("/{protocol} needs a value after it, as in {example}")]
    MissingValue {
        /// The protocol.
        protocol: &'static str,
        /// An example.
        example: &'static str,
    },
    /// A value that does not parse.
    #[error("invalid {protocol} value {value:?}: {reason}")]
    InvalidValue {
        /// The protocol.
        protocol: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A host without a port, or a port without a host.
    #[error("{0}")]
    Structure(String),
    /// More hops than a route may hold.
    #[error("route has more than {0} hops")]
    TooLong(usize),
}
