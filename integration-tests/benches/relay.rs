//! `cargo bench -p kith-integration-tests --bench relay`: JSON lines comparing an end-to-end
//! secure channel through a project node's relay with a direct channel between the same two
//! nodes, each with the direct figure of the same run as its baseline. `-- --quick` for tiny
//! counts. With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the nodes' logs go to stderr, which
//! shows why a channel or the relay went down if a run fails.

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        kith_integration_tests::relay_bench::RelayBenchConfig::quick()
    } else {
        kith_integration_tests::relay_bench::RelayBenchConfig::full()
    };
    if let Err(e) =
        kith_integration_tests::relay_bench::run_all(&config, |r| println!("{}", r.to_json_line()))
    {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
