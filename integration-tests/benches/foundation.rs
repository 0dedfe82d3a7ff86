//! The foundation benchmark: round-trip latency, one-way throughput and memory of kith nodes
//! over loopback TCP, each next to a raw-tokio baseline measured in the same run. Prints one
//! JSON line per result on stdout (DESIGN §7); progress goes to stderr.
//!
//! `cargo bench -p kith-integration-tests --bench foundation` runs it full-size (under 10 s
//! of measuring on 2 cores); add `-- --quick` for the smoke-test counts. See
//! [`kith_integration_tests::bench`] for what each number means. With `RUST_LOG` set, the
//! nodes' logs go to stderr.

use kith_integration_tests::bench::{self, BenchConfig, bench_main};

fn main() {
    bench_main(|args, report| {
        // The memory bench re-executes this binary as its child process.
        if bench::run_child_if_requested()? {
            return Ok(Vec::new());
        }
        let config = if args.quick() {
            BenchConfig::quick()
        } else {
            BenchConfig::full()
        };
        bench::run_all(&config, report)
    });
}
