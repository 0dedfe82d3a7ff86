//! The revocation page decoder never panics; whatever it accepts re-encodes to bytes that
//! decode to an equal page, and it never holds more statements than a page may.

#![no_main]

use kith_identity::revocation::{MAX_PAGE_REVOCATIONS, SignedRevocations};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = SignedRevocations::decode(data) {
        let again = SignedRevocations::decode(&page.encode()).expect("re-decodes");
        assert_eq!(again, page);
        assert!(page.len() <= MAX_PAGE_REVOCATIONS);
    }
});
