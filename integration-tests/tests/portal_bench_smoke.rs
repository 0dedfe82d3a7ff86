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
        names.push(obj["bench"].as_str().expect("bench is a string").to_owned());
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
