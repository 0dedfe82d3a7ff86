//! The kith actor runtime.
//!
//! A [`Node`] routes [`Message`]s between [`Worker`]s by the first hop of each message's onward
//! [`Route`]. Local addresses (kind 0) name worker mailboxes; every other address kind is
//! handed to the [`Transport`] registered for it (TCP lives in `kith-transport`). Every mailbox
//! has an incoming policy over the message's [`Origin`], stamped by the runtime or a transport,
//! never read from the wire; without one a mailbox accepts [`Origin::Local`] only. A message
//! from another node that cannot be delivered is answered along its return route with an
//! error message ([`MessageKind::Undeliverable`], carrying an [`Undeliverable`]), at a
//! bounded rate per sender; error messages themselves are never answered.
//!
//! Repeated warnings of one kind from one peer collapse into one line per interval with a
//! count ([`LogLimiter`], process-wide as [`LOG_LIMITER`]), so a flood cannot flood the log.
//!
//! This crate does no I/O of its own: no sockets, no files, no cryptography.

/// Incoming policies over a message's origin: who may reach a mailbox.
mod access;
/// Addresses (`0#echo`, `1#127.0.0.1:4000`) and routes.
mod address;
/// What a worker is handed: sending, starting and stopping workers, awaiting replies.
mod context;
/// The echo service.
mod echo;
/// Error types, one per surface a caller reacts to.
mod error;
/// Repeated warnings collapsed into one line per interval with a count.
mod log_limit;
/// Messages, their local info and origin.
mod message;
/// The node: mailboxes, sinks, workers and structured shutdown.
mod node;
/// Per-sender token buckets that bound how many error messages a node sends.
mod reply_limit;
/// Delivery by the onward route's first hop, and error answers along the return route.
mod router;
/// How many of something each key holds at once, each held one given back when dropped.
mod shares;
/// Sinks that take messages without a task, and the bounded direct-or-queue lane they share.
mod sink;
/// Test helpers (feature `test-util`): waiting for a condition without a fixed sleep.
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
/// The error message's payload: which node gave up, at which hop, and why.
mod undeliverable;
/// The worker trait.
mod worker;

pub use access::{AllowAll, AllowLocal, AllowOrigins, AllowTransport, IncomingAccessControl};
pub use address::{Address, AddressError, LOCAL, MAX_ADDRESS_LEN, MAX_ROUTE_LEN, Route, TCP};
pub use context::{Client, Context};
pub use echo::Echo;
pub use error::{
    DisplayChain, MessageTooLarge, RequestError, RouteError, StartError, TryRouteError,
    UndeliverableDecodeError, WorkerError,
};
pub use log_limit::{
    DEFAULT_LOG_INTERVAL, LOG_LIMITER, LogLimiter, LogSource, MAX_LOG_KEYS, Suppressed,
};
pub use message::{ChannelPeer, LocalInfo, Message, MessageKind, Origin};
pub use node::{MAILBOX_CAPACITY, Mailbox, Node, NodeStats, SHUTDOWN_GRACE, SinkHandle};
pub use reply_limit::{DEFAULT_ERROR_REPLY_RATE, ErrorReplyRate, MAX_ERROR_REPLY_SENDERS};
pub use router::{MAX_INLINE_DEPTH, ResolveFuture, Transport};
pub use shares::{Share, Shares};
pub use sink::{Backlog, DirectOrQueue, Lane, MessageSink, ReadyFuture, SinkError};
pub use undeliverable::{ErrorClass, MAX_NODE_NAME_LEN, UNDELIVERABLE_VERSION, Undeliverable};
pub use worker::Worker;
