//! `cargo bench -p kith-integration-tests --bench refusal`: JSON lines for how soon a
//! refused request fails (p50 and p99 per class, each against the admitted request on the
//! same path), and for what the project node keeps after a churn of clients killed
//! mid-channel and after its relayed node is killed and restarted 100 times. `-- --quick`
//! for tiny counts and refusals capped at 2 s. stderr says, per class, what the refusal
//! said and whether the target is met.
//!
//! Every node is a daemon of the release `kith` binary next to this bench
//! (`target/release/kith`), built first unless `KITH_BIN` names one, and so is every sender
//! (the oversized message goes in on `kith message send -`'s standard input); the churn's
//! clients are this package's own binary, which cargo builds for the bench.

use std::path::PathBuf;

use kith_integration_tests::authority_bench::{build_release_kith, kith_next_to_exe};
use kith_integration_tests::bench::bench_main;
use kith_integration_tests::refusal_bench::{RefusalBenchConfig, run_all};

fn main() {
    bench_main(|args, report| {
        if std::env::var_os("KITH_BIN").is_none() {
            build_release_kith()?;
        }
        let kith = kith_next_to_exe()?;
        let churn_client = PathBuf::from(env!("CARGO_BIN_EXE_kith-churn-client"));
        let config = if args.quick() {
            RefusalBenchConfig::quick(kith, churn_client)
        } else {
            RefusalBenchConfig::full(kith, churn_client)
        };
        run_all(&config, report)
    });
}
