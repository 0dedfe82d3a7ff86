//! The deployed portal bench with tiny counts, against the debug `kith` binary and the bare
//! chain: every record must be present and well-formed, with positive figures and the byte
//! counts it was asked for (the bench itself fails if a transfer lost a byte or the outlet
//! counted other than what was sent). Neither the speeds nor the targets are checked;
//! `cargo bench` is for those. Needs `cargo build -p kith-cli`.

use std::path::PathBuf;

use kith_integration_tests::authority_bench::kith_next_to_exe;
use kith_integration_tests::portal_deployed::{DeployedBenchConfig, run_all};

#[test]
fn quick_deployed_portal_bench_emits_every_record_well_formed() {
    let config = DeployedBenchConfig::quick(
        kith_next_to_exe().unwrap(),
        PathBuf::from(env!("CARGO_BIN_EXE_kith-bare-chain")),
    );
    let mut lines = Vec::new();
    let records = run_all(&config, |r| {
        let line = r.to_json_line();
        eprintln!("{line}");
        lines.push(line);
    })
    .expect("the quick deployed portal bench failed");

    let names: Vec<&str> = records.iter().map(|r| r.record.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "deployed_inlet_rss_per_session",
            "deployed_outlet_rss_per_session",
            "deployed_direct_bulk",
            "deployed_direct_bulk_vs_raw",
            "deployed_relay_bulk",
            "deployed_relay_vs_direct",
            "deployed_bare_chain_bulk_vs_raw",
            "deployed_bare_chain_relayed_bulk_vs_raw",
            "deployed_direct_rtt_p50_64B",
            "deployed_direct_rtt_p99_64B",
            "deployed_relay_rtt_p50_64B",
            "deployed_relay_rtt_p99_64B",
        ]
    );
    let targeted = [
        "deployed_direct_bulk",
        "deployed_direct_bulk_vs_raw",
        "deployed_relay_bulk",
        "deployed_relay_vs_direct",
        "deployed_direct_rtt_p50_64B",
    ];

    for (line, r) in lines.iter().zip(&records) {
        let name = r.record.bench.as_str();
        assert!(!line.contains('\n'), "one record, one line: {line}");
        let json: serde_json::Value = serde_json::from_str(line).expect("the line is JSON");
        for key in ["value", "baseline", "ratio"] {
            assert!(
                json[key].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
                "{line}: {key} must be a positive number"
            );
        }
        assert!(
            json["unit"].as_str().is_some_and(|u| !u.is_empty()),
            "{line}"
        );
        let ratio = r.record.value / r.record.baseline;
        assert!(
            (r.record.ratio - ratio).abs() <= 1e-3 * ratio,
            "{line}: ratio must be value / baseline"
        );
        if targeted.contains(&name) {
            assert!(json["target"].as_f64().is_some_and(|t| t > 0.0), "{line}");
            assert!(json["met"].is_boolean(), "{line}");
        } else {
            assert!(
                json.get("target").is_none() && json.get("met").is_none(),
                "{line}"
            );
        }
        if name.contains("bulk") {
            assert_eq!(
                json["bytes"].as_f64(),
                Some(config.bulk_bytes as f64),
                "{line}"
            );
            assert_eq!(json["unit"], "MB/s", "{line}");
        }
        if name.contains("rss") {
            assert_eq!(
                json["sessions"].as_f64(),
                Some(config.sessions as f64),
                "{line}"
            );
            assert!(json["baseline_is"].is_string(), "{line}");
        }
        if name.contains("rtt") {
            assert_eq!(json["unit"], "us", "{line}");
            assert_eq!(
                json["round_trips"].as_f64(),
                Some(config.round_trips as f64),
                "{line}"
            );
            assert!(
                json["bare_chain_us"].as_f64().is_some_and(|v| v > 0.0),
                "{line}"
            );
        }
    }
}
