//! `cargo bench -p kith-integration-tests --bench secure_channel`: JSON lines, one per figure,
//! each with its same-run baseline. `-- --quick` for tiny counts; `-- --only NAME` (`latency`,
//! `throughput`, `handshakes`, `memory`) for one measurement, e.g. under a profiler. With
//! `RUST_LOG` set, the nodes' logs go to stderr.

use kith_integration_tests::bench::bench_main;
use kith_integration_tests::channel_bench::{ChannelBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        let mut config = if args.quick() {
            ChannelBenchConfig::quick()
        } else {
            ChannelBenchConfig::full()
        };
        config.only = args.only()?;
        run_all(&config, report)
    });
}
