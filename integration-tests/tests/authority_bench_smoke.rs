//! The authority bench with tiny counts, against the debug `kith` binary: every record must
//! be well-formed. The numbers themselves are not checked; `cargo bench` is for those.
//! Needs `cargo build -p kith-cli` and PostgreSQL (`eval "$(bash .ci/postgres)"`).

use kith_integration_tests::authority_bench::{
    AuthorityBenchConfig, kith_next_to_exe, postgres_url_from_env, run_all,
};

#[test]
fn quick_authority_bench_emits_well_formed_records() {
    let kith = kith_next_to_exe().unwrap();
    let postgres = postgres_url_from_env().unwrap_or_else(|e| panic!("{e}"));
    let records = run_all(&AuthorityBenchConfig::quick(kith, postgres), |r| {
        eprintln!("{}", r.to_json_line())
    })
    .unwrap();
    let names: Vec<&str> = records.iter().map(|r| r.bench.as_str()).collect();
    assert_eq!(
        names,
        [
            "authority_redemptions_sqlite",
            "authority_credentials_sqlite",
            "authority_redemptions_postgres_2_processes",
        ]
    );
    for r in &records {
        assert!(r.value.is_finite() && r.value > 0.0, "{r:?}");
        assert!(r.baseline.is_finite() && r.baseline > 0.0, "{r:?}");
        assert_eq!(r.unit, "ops/s", "{r:?}");
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
}
