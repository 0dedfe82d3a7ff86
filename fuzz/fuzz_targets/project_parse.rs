//! Project descriptions from any input never panic the parsers, and whatever is accepted
//! survives re-encoding.
//!
//! The first input byte picks what the rest is: even, the JSON form (UTF-8 text) for
//! `Project::from_json`; odd, the CBOR form for `Project::decode_cbor`.
//!
//! Asserts, for every accepted project: `check` passes (so it can be embedded in a ticket);
//! its JSON parses back to an equal project and prints the same again; its CBOR decodes to
//! an equal project, consuming exactly the bytes written; the CBOR decoder never reads past
//! its input. Errors always render.

#![no_main]

use kith_authority::project::Project;
use libfuzzer_sys::fuzz_target;
use minicbor::{Decoder, Encoder};

fn accepted(p: &Project) {
    p.check()
        .unwrap_or_else(|e| panic!("an accepted project fails check: {e}"));
    let json = p.to_json();
    let again = Project::from_json(&json)
        .unwrap_or_else(|e| panic!("to_json of an accepted project does not parse: {e}"));
    assert_eq!(&again, p);
    assert_eq!(again.to_json(), json);

    let mut e = Encoder::new(Vec::new());
    p.encode_cbor(&mut e);
    let bytes = e.into_writer();
    let mut d = Decoder::new(&bytes);
    let again = Project::decode_cbor(&mut d)
        .unwrap_or_else(|e| panic!("encode_cbor of an accepted project does not decode: {e}"));
    assert_eq!(d.position(), bytes.len());
    assert_eq!(&again, p);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match Project::from_json(text) {
            Ok(p) => accepted(&p),
            Err(e) => drop(e.to_string()),
        }
    } else {
        let mut d = Decoder::new(rest);
        match Project::decode_cbor(&mut d) {
            Ok(p) => {
                assert!(d.position() <= rest.len());
                accepted(&p);
            }
            Err(e) => drop(e.to_string()),
        }
    }
});
