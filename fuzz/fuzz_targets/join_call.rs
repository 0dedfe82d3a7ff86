//! What the join-request service reads from anyone with a channel, and what a requester
//! reads back, never panics: `decode_request::<JoinCall>` and `decode_reply::<JoinWaited>`
//! on any bytes, `parse_netblock` and `codes_match` on any text. A call that decodes
//! encodes back to a call that decodes equal; a netblock that parses prints as one that
//! parses to itself.
//!
//! Input: bytes (the text checks use them when they are UTF-8).

#![no_main]

use kith_authority::api::{self, JoinCall, JoinWaited};
use kith_authority::join::parse_netblock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = api::decode_request::<JoinCall>(data) {
        let encoded = api::encode(&call)
            .unwrap_or_else(|e| panic!("{call:?} that decoded does not encode: {e}"));
        let again = api::decode_request::<JoinCall>(&encoded)
            .unwrap_or_else(|e| panic!("{call:?} does not decode after encoding: {e}"));
        assert_eq!(again, call);
    }
    let _ = api::decode_reply::<JoinWaited>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = parse_netblock(text) {
        let shown = net.to_string();
        assert_eq!(parse_netblock(&shown).ok(), Some(net), "{text:?} -> {shown:?}");
    }
    let _ = api::codes_match(text, "1234-5678");
});
