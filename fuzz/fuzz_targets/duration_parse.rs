//! `kith_cli::parse_duration` never panics on any text, and every duration it accepts prints
//! (`DisplayDuration`) as text that parses back to the same duration.
//!
//! Input: UTF-8 text (other inputs are skipped).

#![no_main]

use kith_cli::{DisplayDuration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = parse_duration(text) else {
        return;
    };
    let shown = DisplayDuration(d).to_string();
    assert_eq!(
        parse_duration(&shown),
        Ok(d),
        "{text:?} parsed to {d:?}, shown as {shown:?}"
    );
});
