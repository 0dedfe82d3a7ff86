//! `cargo bench -p kith-integration-tests --bench authority`: JSON lines, one per figure,
//! each with its same-run baseline. `-- --quick` for tiny counts; `-- --only NAME`
//! (`sqlite`, `postgres`, `credentials`) for one measurement, e.g. under a profiler;
//! `-- --uses-per-ticket N` for tickets that enroll N identities each (default 1). With
//! `RUST_LOG` set, this process's client nodes log to stderr.
//!
//! The daemons are the release `kith` binary next to this bench (`target/release/kith`).
//! Cargo does not build another package's binaries for a bench, so unless `KITH_BIN` names
//! one, this first runs `cargo build --release -p kith-cli` (a no-op when it is up to date),
//! so that the authority measured is always built from the same sources as the bench.
//! PostgreSQL comes from `KITH_TEST_POSTGRES_URL` (`eval "$(bash .ci/postgres)"`).

use kith_integration_tests::authority_bench::{
    AuthorityBenchConfig, build_release_kith, kith_next_to_exe, postgres_url_from_env, run_all,
};
use kith_integration_tests::bench::bench_main;

fn main() {
    bench_main(|args, report| {
        if std::env::var_os("KITH_BIN").is_none() {
            build_release_kith()?;
        }
        let kith = kith_next_to_exe()?;
        let postgres = postgres_url_from_env()?;
        let mut config = if args.quick() {
            AuthorityBenchConfig::quick(kith, postgres)
        } else {
            AuthorityBenchConfig::full(kith, postgres)
        };
        config.only = args.only()?;
        if let Some(uses) = args.value("--uses-per-ticket")? {
            config.uses_per_ticket = uses
                .parse()
                .map_err(|e| anyhow::anyhow!("--uses-per-ticket {uses:?}: {e}"))?;
        }
        run_all(&config, report)
    });
}
