//! `cargo bench -p kith-integration-tests --bench portal`: JSON lines for TCP portals.
//!
//! First as users deploy them (`kith_integration_tests::portal_deployed`): every node a
//! daemon of the release `kith` binary next to this bench (`target/release/kith`, built
//! first unless `KITH_BIN` names one), against raw TCP and bare crypto chains
//! (`kith-bare-chain` processes) measured in the same run — RSS per open session, bulk
//! throughput directly and through the project node's relay, 64-byte round trips. Then the
//! same in one process (`kith_integration_tests::portal_bench`), with the memory a stalled
//! session holds.
//!
//! `-- --quick` for tiny counts. `-- --only NAME` for part of it, e.g. under a profiler:
//! `deployed` (every deployed measurement), `deployed_rss`, `deployed_bulk`,
//! `deployed_bulk_direct` (raw TCP, the bare chain and the direct portal only),
//! `deployed_latency`; or, in one process, `stall`, `throughput`, `latency`. `-- --chunk
//! BYTES` varies what the bare chains seal into one frame (default: a portal's 48 KiB);
//! `-- --rounds N` sets the deployed bulk rounds (default 3), for a profile with more
//! samples.
//! With `RUST_LOG` set (e.g. `RUST_LOG=warn`), the in-process nodes' logs go to stderr.

use std::path::PathBuf;

use kith_integration_tests::authority_bench::{build_release_kith, kith_next_to_exe};
use kith_integration_tests::bench::bench_main;
use kith_integration_tests::portal_bench::{self, PortalBenchConfig};
use kith_integration_tests::portal_deployed::{self, DeployedBenchConfig};

fn main() {
    bench_main(|args, report| {
        let only = args.only()?;
        let deployed = only.as_deref().is_none_or(portal_deployed::selects);
        let in_process = only.as_deref().is_none_or(|o| !portal_deployed::selects(o));
        let mut records = Vec::new();
        if deployed {
            if std::env::var_os("KITH_BIN").is_none() {
                build_release_kith()?;
            }
            let kith = kith_next_to_exe()?;
            let bare_chain = PathBuf::from(env!("CARGO_BIN_EXE_kith-bare-chain"));
            let mut config = if args.quick() {
                DeployedBenchConfig::quick(kith, bare_chain)
            } else {
                DeployedBenchConfig::full(kith, bare_chain)
            };
            config.only.clone_from(&only);
            if let Some(chunk) = args.value("--chunk")? {
                config.chunk = chunk.parse()?;
            }
            if let Some(rounds) = args.value("--rounds")? {
                config.bulk_rounds = rounds.parse()?;
            }
            records.extend(portal_deployed::run_all(&config, &mut *report)?);
        }
        if in_process {
            let mut config = if args.quick() {
                PortalBenchConfig::quick()
            } else {
                PortalBenchConfig::full()
            };
            config.only = only;
            records.extend(portal_bench::run_all(&config, &mut *report)?);
        }
        Ok(records)
    });
}
