//! The portal bench with tiny counts, so that its code cannot rot: every line must be
//! well-formed JSON with positive figures. Neither the numbers nor the targets are checked;
//! `cargo bench` is for those.

use kith_integration_tests::portal_bench::{PortalBenchConfig, run_all};

#[test]
fn quick_portal_bench_emits_well_formed_json_lines() {
    let mut lines = Vec::new();
    let records = run_all(&PortalBenchConfig::quick(), |r| {
        let line = r.to_json_line();
        eprintln!("{line}");
        lines.push(line);
    })
    .expect("the quick portal bench failed");
    assert_eq!(lines.len(), records.len());

    let mut names = Vec::new();
    for line in &lines {
        assert!(!line.contains('\n'), "one record, one line: {line}");
        let json: serde_json::Value = serde_json::from_str(line).expect("the line is JSON");
        let obj = json.as_object().expect("the line is a JSON object");
        let name = obj["bench"].as_str().expect("bench is a string");
        names.push(name.to_owned());
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = vec![
            "baseline",
            "bench",
            "met",
            "ratio",
            "target",
            "target_is",
            "target_on",
            "unit",
            "value",
        ];
        expected.extend(extra_keys(name));
        expected.sort_unstable();
        assert_eq!(keys, expected, "{line}");
        assert!(
            obj["unit"].as_str().is_some_and(|u| !u.is_empty()),
            "{line}: unit must be named"
        );
        for key in ["value", "baseline", "ratio", "target"] {
            assert!(
                obj[key].as_f64().is_some_and(|v| v.is_finite() && v > 0.0),
                "{line}: {key} must be a positive number"
            );
        }
        let ratio = obj["value"].as_f64().unwrap() / obj["baseline"].as_f64().unwrap();
        assert!(
            (obj["ratio"].as_f64().unwrap() - ratio).abs() <= 1e-3 * ratio,
            "{line}: ratio must be value / baseline"
        );
        assert!(obj["met"].is_boolean(), "{line}: met must be true or false");
        assert!(
            ["ratio", "value"].contains(&obj["target_on"].as_str().unwrap_or_default()),
            "{line}"
        );
        assert!(
            ["min", "max"].contains(&obj["target_is"].as_str().unwrap_or_default()),
            "{line}"
        );
    }
    assert_eq!(
        names,
        [
            "portal_stall_rss_growth",
            "portal_direct_bulk",
            "portal_relay_bulk",
            "portal_rtt_p50_64B",
            "portal_rtt_p99_64B",
        ]
    );
}

/// The keys a record carries beyond DESIGN §7's five and its target's four.
fn extra_keys(bench: &str) -> &'static [&'static str] {
    match bench {
        "portal_stall_rss_growth" => &[
            "baseline_is",
            "later_growth_mib",
            "raw_tcp_growth_mib",
            "settled_growth_mib",
            "stall_bytes",
            "stall_later_s",
            "written_before_stall_mib",
        ],
        "portal_direct_bulk" => &["bytes", "raw_via_2_proxies_mbps"],
        "portal_relay_bulk" => &["bytes", "raw_via_3_proxies_mbps"],
        _ => &[],
    }
}
