//! The `kith` command: local state, node daemons, the control socket, and every subcommand.
//!
//! The library holds everything but `main`, so integration tests and fuzz targets can reach
//! the parsers the binary uses. It does not implement networking or cryptography itself:
//! that is the job of the crates below it.

pub mod args;
mod authority;
mod channels;
pub mod control;
pub mod credentials;
pub mod daemon;
mod demo;
pub mod duration;
pub mod home;
pub mod identities;
mod message;
pub mod nodes;
pub mod output;
pub mod portals;
mod projects;
mod refresh;
pub mod relays;
mod requests;
pub mod run;

pub use duration::{DisplayDuration, DurationError, parse_duration};
