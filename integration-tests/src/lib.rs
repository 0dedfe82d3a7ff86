//! End-to-end tests and benchmarks for kith: real processes, real sockets, real databases.
//!
//! The tests live in `tests/` (the process harness in `tests/common`); this library holds
//! the measuring code that both `cargo bench` and the bench smoke test run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test and bench code"
)]

pub mod authority_bench;
/// The bare crypto chain: inlet, hop and outlet proxies that only seal, frame and open.
pub mod bare_chain;
pub mod bench;
pub mod channel_bench;
/// Client processes that open many channels to a node and are killed with SIGKILL.
pub mod churn;
/// A TCP echo server: the application behind the outlets of tests and benches.
pub mod echo;
/// Attackers for the hostile-network tests and bench.
pub mod hostile;
/// The hostile bench: a project node under each attack, and a legitimate client meanwhile.
pub mod hostile_bench;
pub mod join_bench;
/// A private `KITH_HOME` whose daemons benches drive through the `kith` command line.
pub mod kith_home;
/// The membership bench: how soon member updates and deletions are in force.
pub mod membership_bench;
/// The node-file bench: a portal from two files against the same by individual commands.
pub mod node_file_bench;
pub mod party;
/// The portal bench: TCP portals, direct and through a relay, against raw TCP.
pub mod portal_bench;
/// The deployed portal bench: every node its own `kith` daemon, against bare crypto chains.
pub mod portal_deployed;
pub mod postgres;
pub mod refusal_bench;
pub mod relay_bench;
