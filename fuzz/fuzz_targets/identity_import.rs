//! `Identity::import` never panics on any bytes; whatever it accepts is a verified history
//! that exports to bytes importing to an equal identity with the same identifier.

#![no_main]

use kith_identity::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(identity) = Identity::import(data, None) else {
        return;
    };
    let again = Identity::import(&identity.export(), Some(identity.identifier()))
        .expect("an imported identity re-imports");
    assert_eq!(again, identity);
});
