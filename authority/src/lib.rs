//! The project authority (DESIGN §5): enrollment tickets, enrollment, join requests,
//! members, credential issuing and the relay policy, served on a node through secure
//! channels and kept in a membership store (SQLite or PostgreSQL); plus the client side of
//! those services, project descriptions and the relay keeper that relayed nodes run.
//!
//! What it does not do: identities, credentials and secure channels themselves
//! (`kith-identity`), transports (`kith-transport`), or the command line (`kith-cli`).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// Requests and replies of the authority's services.
pub mod api;
/// The client side of the authority's services: a pinned secure channel and one call per request.
pub mod client;
/// Where the authority's rules read the time: the system clock, or a manual one in tests.
pub mod clock;
/// The crate's errors: starting the services, relay names, the store, tickets, projects.
pub mod error;
/// Keeping a relay up from the relayed node: heartbeat, reconnect with backoff, status.
pub mod keeper;
/// Project descriptions: what admins and members import to reach and trust a project.
pub mod project;
/// Relays on the project node: `forward_to_NAME`, created only under the name a member's
/// `ockam-relay` attribute grants.
pub mod relay;
/// The authority's services on a node: tickets, enrollment, credentials, members, audit.
pub mod service;
/// The membership store: tickets, members, audit log, on SQLite or PostgreSQL.
pub mod store;
/// Enrollment tickets: a one-time code plus the project data needed to redeem it.
pub mod ticket;

/// Join requests: asking to become a member without a ticket, decided by an admin.
pub use service::join;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{
    DecideError, FileError, ProjectError, RedeemError, RelayNameError, StartServicesError,
    StoreError, TicketError,
};
pub use service::{Authority, AuthorityConfig, JoinSettings};
