//! `cargo bench -p kith-integration-tests --bench membership`: JSON lines for how soon a
//! member update is seen by a peer over an open channel, and how soon a deleted member's
//! channels are closed at the project node and at a member node (p50 and p99 over 50
//! members, each its own daemon), each against a 64 B channel round trip measured in the
//! same run. `-- --quick` for 3 members.
//!
//! Every node is a daemon of the release `kith` binary next to this bench
//! (`target/release/kith`), built first unless `KITH_BIN` names one.

use kith_integration_tests::authority_bench::{build_release_kith, kith_next_to_exe};
use kith_integration_tests::bench::bench_main;
use kith_integration_tests::membership_bench::{MembershipBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        if std::env::var_os("KITH_BIN").is_none() {
            build_release_kith()?;
        }
        let kith = kith_next_to_exe()?;
        let config = if args.quick() {
            MembershipBenchConfig::quick(kith)
        } else {
            MembershipBenchConfig::full(kith)
        };
        run_all(&config, report)
    });
}
