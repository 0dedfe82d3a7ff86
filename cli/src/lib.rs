//! The `kith` command: the command line, and the node host it runs as a daemon.
//!
//! The library holds everything but `main`, so integration tests and fuzz targets can reach
//! the parsers the binary uses. It does not implement networking or cryptography itself:
//! that is the job of the crates below it. Imports point one way:
//! `commands` → `node` → (`control`, `home`, `duration`, `logfile`).

/// The command line: one module per command group (parse, call the node, print).
pub mod commands;
/// The protocol between the command line and a node daemon, over its control socket.
pub mod control;
/// Durations as users write and read them: `90s`, `15m`, `30d`.
pub mod duration;
/// Local state in `$KITH_HOME`: nodes, the vault, projects, and routes resolved against them.
pub mod home;
/// A node's caps on what peers may hold (`--limit NAME=VALUE`).
pub mod limits;
/// A daemon's log file, rotated by size, and reading it back across the rotation.
pub mod logfile;
/// The node host: the runtime a daemon runs and the parts it keeps.
pub mod node;
/// A node declared in a YAML file (`kith node create --config FILE`).
pub mod nodefile;

pub use duration::{DisplayDuration, DurationError, RoundedDuration, parse_duration};
