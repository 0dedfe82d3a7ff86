//! `Policy::parse` never panics on any text. Every error it reports points inside the text,
//! on a character boundary, and renders. Every policy it accepts prints (`Display`) as text
//! that parses back to an equal policy which prints the same again, and both answer `allows`
//! alike for a few fixed peers; `not (…)` of an accepted policy, when it parses, answers the
//! opposite for each of them.
//!
//! Input: UTF-8 text (other inputs are skipped).

#![no_main]

use std::collections::BTreeMap;

use kith_identity::policy::{MAX_POLICY_LEN, Policy};
use libfuzzer_sys::fuzz_target;

/// Peers whose attributes overlap the seeds' names and values, so evaluation takes both
/// branches of most comparisons.
fn peers() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    vec![
        ("I6c20e814b56579306f55c64e8747e6c1b4a53d9a", map(&[])),
        (
            "I0000000000000000000000000000000000000000",
            map(&[("component", "db"), ("location", "sf")]),
        ),
        ("I1", map(&[("ockam-role", "enroller"), ("location", "eu")])),
        ("a", map(&[("a", "1"), ("b", "2"), ("c", "3"), ("x", "")])),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            if let Some(at) = e.position() {
                assert!(at.offset <= text.len(), "{text:?}: {at:?}");
                assert!(text.is_char_boundary(at.offset), "{text:?}: {at:?}");
                assert!(at.line >= 1 && at.column >= 1, "{text:?}: {at:?}");
            }
            let _ = e.render(text);
            return;
        }
    };

    let shown = policy.to_string();
    assert!(shown.len() <= MAX_POLICY_LEN, "{text:?} -> {shown:?}");
    let again = Policy::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed but its display {shown:?} does not: {e}"));
    assert_eq!(again, policy, "{text:?} -> {shown:?}");
    assert_eq!(again.to_string(), shown);

    let negated = Policy::parse(&format!("not ({shown})")).ok();
    for (identifier, attributes) in peers() {
        let allowed = policy.allows(identifier, &attributes);
        assert_eq!(again.allows(identifier, &attributes), allowed, "{shown:?}");
        if let Some(n) = &negated {
            assert_eq!(n.allows(identifier, &attributes), !allowed, "{shown:?}");
        }
    }
});
