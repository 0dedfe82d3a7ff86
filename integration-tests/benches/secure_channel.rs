//! `cargo bench -p kith-integration-tests --bench secure_channel`: JSON lines, one per figure,
//! each with its same-run baseline. `-- --quick` for tiny counts; `-- --only NAME` (`latency`,
//! `throughput`, `handshakes`, `memory`) for one measurement, e.g. under a profiler.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let mut config = if quick {
        kith_integration_tests::channel_bench::ChannelBenchConfig::quick()
    } else {
        kith_integration_tests::channel_bench::ChannelBenchConfig::full()
    };
    config.only = only;
    if let Err(e) = kith_integration_tests::channel_bench::run_all(&config, |r| {
        println!("{}", r.to_json_line())
    }) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
