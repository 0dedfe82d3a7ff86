//! Credential and purpose-key-attestation decoders never panic; whatever they accept
//! re-encodes to bytes that decode to an equal value.

#![no_main]

use kith_identity::{CredentialAndPurposeKey, PurposeKeyAttestation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = CredentialAndPurposeKey::decode(data) {
        let again = CredentialAndPurposeKey::decode(&c.encode()).expect("re-decodes");
        assert_eq!(again, c);
        assert!(c.credential.attributes().len() <= kith_identity::MAX_ATTRIBUTES);
    }
    if let Ok(a) = PurposeKeyAttestation::decode(data) {
        let again = PurposeKeyAttestation::decode(&a.encode()).expect("re-decodes");
        assert_eq!(again, a);
    }
});
