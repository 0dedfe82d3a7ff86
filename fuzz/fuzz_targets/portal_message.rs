//! `PortalMessage::decode` never panics on any payload, and whatever it accepts survives
//! `encode` then `decode` as an equal message; re-encoding that is a fixed point (encoding the
//! re-decoded message gives the same bytes). A decoded `Data` chunk carries 1 to `MAX_CHUNK`
//! bytes and is no longer than the input; a decoded `Refused` or `Close` reason is at most
//! `MAX_REASON_LEN` bytes.
//!
//! Input: the whole input is one portal message payload (what arrives inside the channel).

#![no_main]

use bytes::Bytes;
use kith_transport::portal::{MAX_CHUNK, MAX_REASON_LEN, PortalMessage};
use libfuzzer_sys::fuzz_target;

fn check_limits(m: &PortalMessage, input_len: usize) {
    match m {
        PortalMessage::Data(chunk) => {
            assert!(
                (1..=MAX_CHUNK).contains(&chunk.len()),
                "a Data chunk of {} bytes",
                chunk.len()
            );
            assert!(chunk.len() <= input_len);
        }
        PortalMessage::Refused { reason } | PortalMessage::Close { reason } => {
            assert!(
                reason.len() <= MAX_REASON_LEN,
                "a reason of {} bytes",
                reason.len()
            );
        }
        PortalMessage::Open { .. }
        | PortalMessage::Opened { .. }
        | PortalMessage::Credit(_)
        | PortalMessage::End
        | PortalMessage::Ping => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    let Ok(m) = PortalMessage::decode(&payload) else {
        return;
    };
    check_limits(&m, data.len());

    let first = m.encode();
    let again = PortalMessage::decode(&first)
        .unwrap_or_else(|e| panic!("the encoding of {m:?} does not decode: {e}"));
    assert_eq!(again, m, "encode then decode changed the message");
    check_limits(&again, first.len());
    assert_eq!(again.encode(), first, "re-encoding is not a fixed point");
});
