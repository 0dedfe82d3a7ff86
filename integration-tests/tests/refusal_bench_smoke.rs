//! The refusal bench with tiny counts, against the debug `kith` binary: every record must
//! be well-formed and the churn must leave the project node's channels as it found them.
//! The latencies themselves are not checked; `cargo bench` is for those. Needs
//! `cargo build -p kith-cli`.

use std::path::PathBuf;

use kith_integration_tests::authority_bench::kith_next_to_exe;
use kith_integration_tests::refusal_bench::{RefusalBenchConfig, run_all};

#[test]
fn quick_refusal_bench_emits_well_formed_records() {
    let config = RefusalBenchConfig::quick(
        kith_next_to_exe().unwrap(),
        PathBuf::from(env!("CARGO_BIN_EXE_kith-churn-client")),
    );
    let records = run_all(&config, |r| eprintln!("{}", r.to_json_line())).unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    let mut expected = Vec::new();
    for class in [
        "denied_by_policy",
        "no_such_service",
        "no_such_relay",
        "non_member",
        "oversized",
    ] {
        expected.push(format!("refusal_{class}_p50"));
        expected.push(format!("refusal_{class}_p99"));
    }
    expected.extend(
        [
            "churn_channels_during",
            "churn_channels_after",
            "churn_rss_during_cold",
            "churn_rss_after_cold",
            "churn_rss_during",
            "churn_rss_after",
            "restarts_channels_after",
            "restarts_rss_after",
            "refusal_relayed_node_stopped_p50",
            "refusal_relayed_node_stopped_p99",
        ]
        .map(str::to_owned),
    );
    assert_eq!(names, expected);
    for r in &records {
        assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        assert!(r.baseline.is_finite() && r.baseline > 0.0, "{r:?}");
        assert!(
            (r.ratio - r.value / r.baseline).abs() <= 1e-3 * r.value / r.baseline,
            "{r:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["baseline", "bench", "ratio", "unit", "value"]);
    }
    // The clients' channels came and went: the quick churn opens 40.
    let record = |name: &str| records.iter().find(|r| r.bench == name).unwrap();
    let during = record("churn_channels_during");
    assert_eq!(during.value, during.baseline + 40.0, "{during:?}");
    let after = record("churn_channels_after");
    assert_eq!(after.value, after.baseline, "{after:?}");
}
