//! `ChannelMessage::decode` never panics on any opened plaintext a peer can send (payloads,
//! refreshed credentials, `Close`, `Ready`, keep-alives, refusals), and what it accepts
//! survives `encode` then `decode` as an equal message. A refusal's body is an
//! `Undeliverable`, whose decoder must not panic either.
//!
//! Input: the whole input is one opened channel message.

#![no_main]

use bytes::{Bytes, BytesMut};
use kith_identity::channel::ChannelMessage;
use kith_node::Undeliverable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ChannelMessage::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut encoded = BytesMut::new();
    message.encode_into(&mut encoded);
    let again = ChannelMessage::decode(encoded.freeze()).expect("an encoding decodes");
    assert_eq!(again, message, "encode then decode changed the message");
    if let ChannelMessage::Refused(body) = &message {
        let _ = Undeliverable::decode(body).map(|u| u.to_string());
    }
});
