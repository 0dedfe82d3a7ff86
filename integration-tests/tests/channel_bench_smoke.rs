//! The secure-channel bench with tiny counts: every record must be well-formed.

use kith_integration_tests::channel_bench::{ChannelBenchConfig, run_all};

#[test]
fn quick_secure_channel_bench_emits_well_formed_records() {
    let records = run_all(&ChannelBenchConfig::quick(), |r| {
        eprintln!("{}", r.to_json_line())
    })
    .unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "sc_rtt_p50_64B",
            "sc_rtt_p99_64B",
            "sc_oneway_16KiB_msgs",
            "sc_oneway_16KiB_vs_bare_loop",
            "sc_handshakes_per_core",
            "sc_rss_per_idle_channel"
        ]
    );
    for r in &records {
        assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        assert!(r.baseline.is_finite() && r.baseline > 0.0, "{r:?}");
        assert!(
            (r.ratio - r.value / r.baseline).abs() <= 1e-3 * r.value / r.baseline,
            "{r:?}"
        );
    }
}
