//! The node-file bench with one round, against the debug `kith` binary: both set-ups reach
//! a working portal and the record is well-formed. The times themselves are not checked;
//! `cargo bench` is for those. Needs `cargo build -p kith-cli`.

use kith_integration_tests::authority_bench::kith_next_to_exe;

#[test]
fn one_round_of_the_node_file_bench_reaches_a_working_portal_both_ways_and_reads_both_rss() {
    let records =
        kith_integration_tests::node_file_bench::run(&kith_next_to_exe().unwrap(), 1).unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        ["node_file_to_working_portal", "node_rss_metrics_on"]
    );
    for r in &records {
        assert!(
            r.value > 0.0 && r.baseline > 0.0 && r.ratio.is_finite(),
            "{r:?}"
        );
    }
}
