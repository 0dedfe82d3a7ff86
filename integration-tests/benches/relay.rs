//! `cargo bench -p kith-integration-tests --bench relay`: JSON lines comparing an end-to-end
//! secure channel through a project node's relay with a direct channel between the same two
//! nodes, each with the direct figure of the same run as its baseline. `-- --quick` for tiny
//! counts. With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the nodes' logs go to stderr, which
//! shows why a channel or the relay went down if a run fails.

use kith_integration_tests::bench::bench_main;
use kith_integration_tests::relay_bench::{RelayBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        let config = if args.quick() {
            RelayBenchConfig::quick()
        } else {
            RelayBenchConfig::full()
        };
        run_all(&config, report)
    });
}
