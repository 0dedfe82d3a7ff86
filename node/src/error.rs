//! Errors of the runtime, one enum per thing a caller reacts to.

use crate::{Address, AddressError, ErrorClass, Message, Undeliverable};

/// Why a message could not be routed. The runtime also logs and counts every drop.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The onward route was empty.
    #[error("the message has no onward route")]
    EmptyRoute,
    /// No worker is registered at the local address.
    #[error("no worker at {0} on this node")]
    UnknownAddress(Address),
    /// The mailbox's incoming policy refused the message's origin.
    #[error("{0} refused the message: its incoming policy does not allow this sender")]
    Denied(Address),
    /// The worker stopped while the message was on its way.
    #[error("the worker at {0} has stopped")]
    Closed(Address),
    /// No transport is registered for the address kind.
    #[error("no transport for address kind {kind} (in {address}); is the TCP transport started?")]
    NoTransport {
        /// The address kind.
        kind: u8,
        /// The address that needed it.
        address: Address,
    },
    /// A transport could not reach the peer.
    #[error("cannot reach {address}")]
    Unreachable {
        /// The peer address.
        address: Address,
        /// What the transport saw.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A message from another node named a peer this node has no connection to; only this
    /// node's own workers may make it dial.
    #[error("{0} is not connected, and only local senders may open connections")]
    NotConnected(Address),
    /// The next hop refused this message for good (a sink's [`crate::SinkError::Refused`]):
    /// too large for the connection, say. Other messages may still get through.
    #[error("cannot send to {address}: {class}")]
    Refused {
        /// The hop that refused it.
        address: Address,
        /// Why, coarsely: what a remote sender is told.
        class: ErrorClass,
        /// What the hop saw, where it says more (`300017 bytes, at most 262144`).
        #[source]
        reason: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl RouteError {
    /// The class an error message reports for this failure; `None` for the failures no
    /// error message answers (an empty onward route names no hop; a node shutting down
    /// sends nothing).
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Self::UnknownAddress(_) => Some(ErrorClass::UnknownAddress),
            Self::Denied(_) => Some(ErrorClass::Denied),
            Self::Closed(_) => Some(ErrorClass::Closed),
            Self::NoTransport { .. } | Self::Unreachable { .. } | Self::NotConnected(_) => {
                Some(ErrorClass::Unreachable)
            }
            Self::Refused { class, .. } => Some(*class),
            Self::EmptyRoute | Self::ShuttingDown => None,
        }
    }
}

/// Why [`crate::Node::try_route`] did not deliver a message now.
#[derive(Debug, thiserror::Error)]
pub enum TryRouteError {
    /// Delivering now would mean waiting: the first hop is full, is not a local address, or
    /// deliveries are nested too deeply on this thread. The message is handed back untouched;
    /// route it with [`crate::Node::route`] from a task that may wait.
    #[error("the message cannot be delivered without waiting")]
    WouldBlock(Message),
    /// The message was dropped; the node has counted and logged why.
    #[error(transparent)]
    Failed(RouteError),
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address is taken by a running worker.
    #[error("address {0} is already in use on this node")]
    AddressInUse(Address),
    /// Only local addresses can be registered.
    #[error("{0} is not a local address; workers register kind-0 addresses")]
    NotLocal(Address),
    /// A worker needs at least one address.
    #[error("a worker needs at least one address")]
    NoAddress,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request could not be routed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// No reply arrived in time.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The reply mailbox was closed (node shutdown).
    #[error("the node shut down while waiting for a reply")]
    Closed,
    /// A node on the way could not deliver the message and answered with why.
    #[error("{0}")]
    Undeliverable(Undeliverable),
    /// An error message arrived, but its payload could not be read.
    #[error("a node on the way could not deliver the message; its error message was malformed")]
    MalformedErrorReply(#[source] UndeliverableDecodeError),
}

/// Why bytes are not an [`crate::Undeliverable`] payload. The whole payload is always at
/// hand, so running out of bytes is invalid input, not a wait for more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndeliverableDecodeError {
    /// The payload ended inside a field.
    #[error("error message is truncated: it ends inside its {field}")]
    Truncated {
        /// The field that was cut short.
        field: &'static str,
    },
    /// A version this node does not read.
    #[error("error message version {0} is not supported (this node reads {v})", v = crate::UNDELIVERABLE_VERSION)]
    Version(u8),
    /// The announced node name is longer than [`crate::MAX_NODE_NAME_LEN`].
    #[error("error message names a node of {len} bytes; the most is {max}")]
    NodeNameTooLong {
        /// Announced length.
        len: usize,
        /// [`crate::MAX_NODE_NAME_LEN`].
        max: usize,
    },
    /// The announced address is longer than [`crate::MAX_ADDRESS_LEN`].
    #[error("error message names an address of {len} bytes; the most is {max}")]
    AddressTooLong {
        /// Announced length.
        len: usize,
        /// [`crate::MAX_ADDRESS_LEN`].
        max: usize,
    },
    /// A text field is not UTF-8, or the node name holds a control character.
    #[error("error message's {field} is not printable UTF-8 text")]
    NotText {
        /// The field.
        field: &'static str,
    },
    /// The address is not a valid address.
    #[error("error message's address is invalid")]
    Address(#[source] AddressError),
    /// Bytes followed the error message.
    #[error("{0} trailing bytes after the error message")]
    TrailingBytes(usize),
}

/// How far a message is over what a hop takes: the reason behind an
/// [`ErrorClass::TooLarge`] refusal, for the local sender and our log (a remote sender learns
/// the class only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes, at most {max}")]
pub struct MessageTooLarge {
    /// The message's size as the hop measures it (an encoded frame, say).
    pub len: usize,
    /// The most the hop takes.
    pub max: usize,
}

/// What a worker's `handle_message` may fail with; logged and counted, the worker goes on.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shows an error and its chain of causes on one line, `a: b: c`, for logs.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}
