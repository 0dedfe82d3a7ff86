//! The hostile bench with small attacks, against the debug `kith` binary: every record must
//! be well-formed, and every legitimate channel must have opened (the bench fails
//! otherwise). The figures themselves are not checked; `cargo bench` is for those. Needs
//! `cargo build -p kith-cli`.

use kith_integration_tests::authority_bench::kith_next_to_exe;
use kith_integration_tests::hostile_bench::{HostileBenchConfig, run_all};

#[test]
fn quick_hostile_bench_emits_well_formed_records() {
    let config = HostileBenchConfig::quick(kith_next_to_exe().unwrap());
    let records = run_all(&config, |r| eprintln!("{}", r.to_json_line())).unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    let mut expected = Vec::new();
    for attack in ["spray", "hold", "trickle"] {
        for what in ["new_channel_p50", "new_channel_p99", "rss"] {
            expected.push(format!("hostile_{attack}_{what}"));
        }
    }
    assert_eq!(names, expected);
    for r in &records {
        assert!(r.value > 0.0 && r.baseline > 0.0, "{r:?}");
        assert!(r.ratio.is_finite(), "{r:?}");
    }
}
