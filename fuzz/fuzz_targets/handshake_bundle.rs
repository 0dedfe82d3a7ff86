//! What a peer puts in handshake messages 2 and 3 (its bundle) and the handshake messages
//! themselves never make us panic. A bundle is never accepted for a static key it does not
//! attest (the fuzzer does not hold one of our keys), and a responder fed arbitrary first
//! messages either continues or refuses.

#![no_main]

use std::sync::{Arc, OnceLock};

use kith_identity::channel::{Admission, Handshake, LocalIdentity, Trust, verify_bundle};
use kith_identity::{Identity, SecureChannelKey};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn local() -> &'static Arc<LocalIdentity> {
    static LOCAL: OnceLock<Arc<LocalIdentity>> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let (identity, secret) = Identity::create(NOW - 10);
        let key = SecureChannelKey::generate(&identity, &secret, NOW - 10, NOW + 3600);
        Arc::new(LocalIdentity { identity, key, credentials: vec![] })
    })
}

fuzz_target!(|data: &[u8]| {
    let trust = Trust { authorities: vec![], admission: Admission::AnyIdentity, revocations: Default::default() };
    // The fuzzer cannot produce a valid attestation for this key.
    let static_key = [7u8; 32];
    assert!(verify_bundle(data, &static_key, &trust, NOW).is_err());

    let trust = Arc::new(trust);
    if let Ok(responder) = Handshake::respond(local().clone(), trust.clone(), 1 << 20) {
        let _ = responder.step(data, NOW);
    }
    if let Ok((initiator, _first)) = Handshake::initiate(local().clone(), trust, 1 << 20) {
        assert!(initiator.step(data, NOW).is_err(), "an arbitrary message 2 was accepted");
    }
});
