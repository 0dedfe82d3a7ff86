//! The kith actor runtime.
//!
//! A [`Node`] routes [`Message`]s between [`Worker`]s by the first hop of each message's onward
//! [`Route`]. Local addresses (kind 0) name worker mailboxes; every other address kind is
//! handed to the [`Transport`] registered for it (TCP lives in `kith-transport`). Every mailbox
//! has an incoming policy over the message's [`Origin`], stamped by the runtime or a transport,
//! never read from the wire; without one a mailbox accepts [`Origin::Local`] only.
//!
//! This crate does no I/O of its own: no sockets, no files, no cryptography.

mod access;
mod address;
mod context;
mod echo;
mod error;
mod message;
mod node;
mod router;
mod sink;
/// Test helpers (feature `test-util`): waiting for a condition without a fixed sleep.
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod worker;

pub use access::{AllowAll, AllowLocal, AllowOrigins, AllowTransport, IncomingAccessControl};
pub use address::{Address, AddressError, LOCAL, MAX_ADDRESS_LEN, MAX_ROUTE_LEN, Route, TCP};
pub use context::{Client, Context};
pub use echo::Echo;
pub use error::{DisplayChain, RequestError, RouteError, StartError, TryRouteError, WorkerError};
pub use message::{LocalInfo, Message, Origin};
pub use node::{MAILBOX_CAPACITY, Mailbox, Node, NodeStats, SHUTDOWN_GRACE, SinkHandle};
pub use router::{MAX_INLINE_DEPTH, ResolveFuture, Transport};
pub use sink::{Backlog, DirectOrQueue, Lane, MessageSink, ReadyFuture, SinkError};
pub use worker::Worker;
