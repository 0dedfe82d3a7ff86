//! The membership bench with three members, against the debug `kith` binary: every record
//! must be well-formed, and every change must have come into force (the bench fails
//! otherwise). The figures themselves are not checked; `cargo bench` is for those. Needs
//! `cargo build -p kith-cli`.

use kith_integration_tests::authority_bench::kith_next_to_exe;
use kith_integration_tests::membership_bench::{MembershipBenchConfig, run_all};

#[test]
fn quick_membership_bench_emits_well_formed_records() {
    let config = MembershipBenchConfig::quick(kith_next_to_exe().unwrap());
    let records = run_all(&config, |r| eprintln!("{}", r.to_json_line())).unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "membership_update_seen_p50",
            "membership_update_seen_p99",
            "membership_delete_closed_project_node_p50",
            "membership_delete_closed_project_node_p99",
            "membership_delete_closed_member_node_p50",
            "membership_delete_closed_member_node_p99",
        ]
    );
    for r in &records {
        assert!(r.value > 0.0 && r.baseline > 0.0, "{r:?}");
        assert!(r.ratio.is_finite(), "{r:?}");
    }
}
