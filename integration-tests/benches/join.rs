//! `cargo bench -p kith-integration-tests --bench join`: JSON lines for join requests — the
//! time from an admin's `approve` to the requester holding its credential (p50, p99) with
//! 100 requesters waiting at once, each against a secure-channel round trip to the same
//! authority in the same run, and members made per second by approval against fresh
//! identities redeeming a ticket one after another. `-- --quick` for tiny counts. With `RUST_LOG`
//! set (e.g. `RUST_LOG=warn`), the nodes' logs go to stderr.

use kith_integration_tests::bench::bench_main;
use kith_integration_tests::join_bench::{JoinBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        let config = if args.quick() {
            JoinBenchConfig::quick()
        } else {
            JoinBenchConfig::full()
        };
        run_all(&config, report)
    });
}
