//! `cargo bench -p kith-integration-tests --bench node_file`: one JSON line for the time
//! from nothing to a working portal through a relay when both member nodes are made from
//! their files (`kith node create --config`), against the same set-up by individual
//! commands in the same run. `-- --rounds N` (default 5); `-- --quick` runs one round.
//!
//! Every node is a daemon of the release `kith` binary next to this bench
//! (`target/release/kith`), built first unless `KITH_BIN` names one.

use kith_integration_tests::authority_bench::{build_release_kith, kith_next_to_exe};
use kith_integration_tests::bench::bench_main;

fn main() {
    bench_main(|args, report| {
        if std::env::var_os("KITH_BIN").is_none() {
            build_release_kith()?;
        }
        let kith = kith_next_to_exe()?;
        let rounds = match (args.quick(), args.value("--rounds")?) {
            (true, _) => 1,
            (false, Some(n)) => n.parse()?,
            (false, None) => 5,
        };
        let records = kith_integration_tests::node_file_bench::run(&kith, rounds)?;
        for r in &records {
            report(r);
        }
        Ok(records)
    });
}
