//! The node host: what a `kith` daemon runs (and, without saved state, what a command runs
//! for its own duration): the runtime, the TCP listener, the echo service, the secure-channel
//! listener, and one module per part the node keeps.
//!
//! Nothing here imports the command line (`crate::commands`): commands call the host,
//! never the other way round.

/// An authority's node: its store, vault and services.
mod authority;
/// Secure channels the node opens and keeps.
mod channels;
/// Running as a daemon: control socket, signals, orderly shutdown.
mod daemon;
/// Kept-by-name state changed without a lock across waits, and the saved configuration.
mod kept;
/// `--metrics-address`: the node's counters for Prometheus.
pub mod metrics;
/// TCP outlets and inlets.
mod portals;
/// Renewing the node's credentials before they expire.
mod refresh;
/// Relays kept up at project nodes.
mod relays;
/// Following the revocation feeds of the authorities the node trusts.
mod revocations;
/// The node and its parts, assembled.
mod running;
/// The control server: one request, one answer.
mod server;
/// The node's identity in channels, and who may use its services.
pub(crate) mod settings;

pub use channels::Channels;
pub use daemon::{Ready, Stopped, run};
pub use portals::{INLET_OPEN_TIMEOUT, Portals, check_target, listen_address};
pub use relays::{RELAY_TIMEOUT, Relays, refused};
pub use running::RunningNode;
pub use settings::{NodeIdentity, channel_settings, channel_settings_scoped, parse_allow};
