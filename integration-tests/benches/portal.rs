//! `cargo bench -p kith-integration-tests --bench portal`: JSON lines for TCP portals — bulk
//! throughput of one session directly and through a project node's relay, 64-byte round
//! trips, and the memory a stalled session holds — each against raw TCP (or, for memory, the
//! RSS before) measured in the same run, with its target and whether it was met. `-- --quick`
//! for tiny counts; `-- --only NAME` (`stall`, `throughput`, `latency`) for one measurement,
//! e.g. under a profiler. With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the nodes' logs go to
//! stderr.

use kith_integration_tests::bench::bench_main;
use kith_integration_tests::portal_bench::{PortalBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        let mut config = if args.quick() {
            PortalBenchConfig::quick()
        } else {
            PortalBenchConfig::full()
        };
        config.only = args.only()?;
        run_all(&config, report)
    });
}
