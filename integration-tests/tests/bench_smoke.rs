//! The foundation benchmark with tiny counts, so that its code cannot rot: every record must
//! be well-formed. The numbers themselves are not checked; `cargo bench` is for those.

use kith_integration_tests::bench::{self, BenchConfig, BenchRecord};
use kith_integration_tests::join_bench::{self, JoinBenchConfig};
use kith_integration_tests::relay_bench::{self, RelayBenchConfig};

/// The name of the test that becomes a memory-bench child when this binary is re-executed.
const CHILD_TEST: &str = "memory_bench_child_entry";

/// A no-op in a normal run. The memory bench re-executes this test binary with
/// `KITH_BENCH_CHILD` set and only this test selected; it then acts as the child process.
#[test]
fn memory_bench_child_entry() {
    bench::run_child_if_requested().expect("the memory-bench child failed");
}

#[test]
fn quick_foundation_bench_emits_well_formed_json_records() {
    let config = BenchConfig::quick().with_child_args([
        CHILD_TEST,
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ]);
    let records = bench::run_all(&config, |r| eprintln!("{}", r.to_json_line()))
        .expect("the quick bench failed");

    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "rtt_p50_64B",
            "rtt_p99_64B",
            "oneway_64B_msgs",
            "oneway_64B_bytes",
            "oneway_16KiB_msgs",
            "oneway_16KiB_bytes",
            "idle_rss",
            "rss_per_idle_conn",
        ]
    );
    for r in &records {
        assert_well_formed(r);
    }
}

#[test]
fn quick_relay_bench_emits_well_formed_json_records() {
    let records = relay_bench::run_all(&RelayBenchConfig::quick(), |r| {
        eprintln!("{}", r.to_json_line())
    })
    .expect("the quick relay bench failed");

    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "relay_rtt_p50_64B",
            "relay_rtt_p99_64B",
            "relay_oneway_16KiB_msgs",
            "relay_oneway_16KiB_bytes",
        ]
    );
    for r in &records {
        assert_well_formed(r);
    }
}

#[test]
fn quick_join_bench_emits_well_formed_json_records() {
    let records = join_bench::run_all(&JoinBenchConfig::quick(), |r| {
        eprintln!("{}", r.to_json_line())
    })
    .expect("the quick join bench failed");

    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "join_approve_to_credential_p50",
            "join_approve_to_credential_p99",
            "join_approve_throughput",
        ]
    );
    for r in &records {
        assert_well_formed(r);
    }
}

fn assert_well_formed(r: &BenchRecord) {
    assert!(
        r.value.is_finite() && r.value > 0.0,
        "{r:?}: value must be finite and positive"
    );
    assert!(
        r.baseline.is_finite() && r.baseline > 0.0,
        "{r:?}: baseline must be finite and positive"
    );
    assert!(!r.unit.is_empty(), "{r:?}: unit must be named");
    let expected = r.value / r.baseline;
    assert!(
        (r.ratio - expected).abs() <= 1e-3 * expected,
        "{r:?}: ratio must be value / baseline"
    );

    let line = r.to_json_line();
    assert!(!line.contains('\n'), "one record, one line: {line}");
    let json: serde_json::Value = serde_json::from_str(&line).expect("the line is JSON");
    let obj = json.as_object().expect("the line is a JSON object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["baseline", "bench", "ratio", "unit", "value"],
        "{line}"
    );
    assert_eq!(obj["bench"], r.bench.as_str());
    assert_eq!(obj["unit"], r.unit.as_str());
    for key in ["value", "baseline", "ratio"] {
        assert!(
            obj[key].as_f64().is_some_and(f64::is_finite),
            "{line}: {key} must be a number"
        );
    }
}
