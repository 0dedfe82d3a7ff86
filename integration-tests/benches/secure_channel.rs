//! `cargo bench -p kith-integration-tests --bench secure_channel`: JSON lines, one per figure,
//! each with its same-run baseline. `-- --quick` for tiny counts.

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        kith_integration_tests::channel_bench::ChannelBenchConfig::quick()
    } else {
        kith_integration_tests::channel_bench::ChannelBenchConfig::full()
    };
    if let Err(e) = kith_integration_tests::channel_bench::run_all(&config, |r| {
        println!("{}", r.to_json_line())
    }) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
