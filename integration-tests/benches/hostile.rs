//! `cargo bench -p kith-integration-tests --bench hostile`: JSON lines for a legitimate
//! client's new-channel latency (p50, p99) and the project node's RSS under each attack in
//! turn (a handshake sprayer, hosts holding every connection, trickled frames), each
//! against the same figure with no attack, measured first in the same run. `-- --quick`
//! for small attacks.
//!
//! The project node is a daemon of the release `kith` binary next to this bench
//! (`target/release/kith`), built first unless `KITH_BIN` names one.

use kith_integration_tests::authority_bench::{build_release_kith, kith_next_to_exe};
use kith_integration_tests::bench::bench_main;
use kith_integration_tests::hostile_bench::{HostileBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        if std::env::var_os("KITH_BIN").is_none() {
            build_release_kith()?;
        }
        let kith = kith_next_to_exe()?;
        let config = if args.quick() {
            HostileBenchConfig::quick(kith)
        } else {
            HostileBenchConfig::full(kith)
        };
        run_all(&config, report)
    });
}
