//! `Undeliverable::decode` never panics on any error message payload, and whatever it accepts
//! re-encodes to exactly the input (the encoding is canonical: one byte string per value),
//! with a node name of at most `MAX_NODE_NAME_LEN` bytes, an address of at most
//! `MAX_ADDRESS_LEN`, and no control characters in either. Its `Display` never panics either.
//!
//! Input: the whole input is one error message payload (what a peer sends back when it
//! cannot deliver a message).

#![no_main]

use kith_node::{MAX_ADDRESS_LEN, MAX_NODE_NAME_LEN, Undeliverable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(error) = Undeliverable::decode(data) else {
        return;
    };
    assert!(error.node.len() <= MAX_NODE_NAME_LEN);
    assert!(!error.node.chars().any(char::is_control));
    assert!(error.address.value().len() <= MAX_ADDRESS_LEN);
    assert!(!error.address.value().chars().any(char::is_control));
    assert_eq!(error.encode(), data, "decode then encode changed the bytes");
    let again = Undeliverable::decode(data).expect("the same bytes decode again");
    assert_eq!(again, error);
    let shown = error.to_string();
    assert!(shown.contains(&error.node));
    assert!(!shown.chars().any(char::is_control));
});
