//! `cargo bench -p kith-integration-tests --bench portal`: JSON lines for TCP portals — bulk
//! throughput of one session directly and through a project node's relay, 64-byte round
//! trips, and the memory a stalled session holds — each against raw TCP (or, for memory, the
//! RSS before) measured in the same run, with its target and whether it was met. `-- --quick`
//! for tiny counts; `-- --only NAME` (`stall`, `throughput`, `latency`) for one measurement,
//! e.g. under a profiler. With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the nodes' logs go to
//! stderr.

use kith_integration_tests::portal_bench::{PortalBenchConfig, run_all};

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let mut config = if args.iter().any(|a| a == "--quick") {
        PortalBenchConfig::quick()
    } else {
        PortalBenchConfig::full()
    };
    config.only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    if let Err(e) = run_all(&config, |r| println!("{}", r.to_json_line())) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
