//! `cargo bench -p kith-integration-tests --bench join`: JSON lines for join requests — the
//! time from an admin's `approve` to the requester holding its credential (p50, p99) with
//! 100 requesters waiting at once, each against a secure-channel round trip to the same
//! authority in the same run, and credentials per second by approval against
//! `credential()` calls one after another. `-- --quick` for tiny counts. With `RUST_LOG`
//! set (e.g. `RUST_LOG=warn`), the nodes' logs go to stderr.

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let config = if quick {
        kith_integration_tests::join_bench::JoinBenchConfig::quick()
    } else {
        kith_integration_tests::join_bench::JoinBenchConfig::full()
    };
    if let Err(e) =
        kith_integration_tests::join_bench::run_all(&config, |r| println!("{}", r.to_json_line()))
    {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
