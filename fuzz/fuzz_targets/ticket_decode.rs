//! Enrollment tickets from any input never panic the decoder, and whatever is accepted
//! survives re-encoding.
//!
//! The first input byte picks what the rest is (modulo 3):
//! - 0: ticket text (UTF-8), given to `Ticket::decode` as a user would paste it.
//! - 1: the CBOR body of a binary ticket. The target adds the version byte and a correct
//!   checksum, so the fuzzer reaches the parser behind the checksum, which it could not by
//!   mutation alone; the result also goes through `decode` as base64url and as hex.
//! - 2: legacy JSON, given to `decode` as hex (the legacy form has no checksum).
//!
//! Asserts, for every accepted ticket: each encoding that fits in `MAX_TICKET_LEN` decodes
//! to an equal ticket, and `check` refuses it exactly when one does not fit; a binary
//! ticket re-encodes to exactly its input bytes, and base64url or hex text to its input (hex
//! ignoring case); `Debug` never shows the one-time code; attributes stay within
//! `MAX_ATTRIBUTES`.

#![no_main]

use kith_authority::ticket::{Encoding, MAX_TICKET_LEN, Ticket, VERSION, checksum};
use kith_identity::hex::encode as hex;
use libfuzzer_sys::fuzz_target;

fn accepted(t: &Ticket) {
    assert!(t.attributes.len() <= kith_identity::MAX_ATTRIBUTES);
    let mut too_large = false;
    for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
        let text = t.encode(encoding);
        if text.len() > MAX_TICKET_LEN {
            too_large = true;
            continue;
        }
        let again = Ticket::decode(&text)
            .unwrap_or_else(|e| panic!("{encoding:?} of an accepted ticket does not decode: {e}"));
        assert_eq!(&again, t, "{encoding:?}");
    }
    assert_eq!(
        t.check().is_err(),
        too_large,
        "check disagrees with the decoders"
    );
    let shown = format!("{t:?}");
    assert!(
        !shown.contains(&hex(t.code.as_bytes())),
        "Debug shows the code"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(t) = Ticket::decode(text) else {
                return;
            };
            accepted(&t);
            let trimmed = text.trim_ascii();
            let is_hex = trimmed.chars().all(|c| c.is_ascii_hexdigit());
            if !is_hex {
                assert_eq!(
                    t.encode(Encoding::Text),
                    trimmed,
                    "base64url is not canonical"
                );
            } else if !trimmed.starts_with("7b") && !trimmed.starts_with("7B") {
                assert!(t.encode(Encoding::Hex).eq_ignore_ascii_case(trimmed));
            }
        }
        1 => {
            let mut bytes = vec![VERSION];
            bytes.extend_from_slice(rest);
            let sum = checksum(&bytes);
            bytes.extend_from_slice(&sum);
            let binary = Ticket::from_bytes(&bytes);
            if let Ok(t) = &binary {
                assert_eq!(t.to_bytes(), bytes, "the binary form is not canonical");
                accepted(t);
            }
            // Through the text encodings, the outcome is the same (within the text cap).
            let as_text = base64_url(&bytes);
            if as_text.len() <= MAX_TICKET_LEN {
                let text = Ticket::decode(&as_text);
                assert_eq!(text.is_ok(), binary.is_ok());
                if let (Ok(a), Ok(b)) = (&text, &binary) {
                    assert_eq!(a, b);
                }
            }
            let as_hex = hex(&bytes);
            if as_hex.len() <= MAX_TICKET_LEN {
                assert_eq!(Ticket::decode(&as_hex).is_ok(), binary.is_ok());
            }
        }
        _ => {
            if let Ok(t) = Ticket::decode(&hex(rest)) {
                accepted(&t);
            }
        }
    }
});

/// base64url without padding, written here so the target does not trust the crate's own
/// encoder to agree with its decoder.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}
