//! An established channel's decryptor never panics on arbitrary messages, accepts none of
//! them (the fuzzer does not hold the key), and still opens the real next message after.

#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use kith_identity::channel::{Admission, Decryptor, Encryptor, Handshake, LocalIdentity, Progress, Trust};
use kith_identity::{Identity, SecureChannelKey};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

fn party() -> Arc<LocalIdentity> {
    let (identity, secret) = Identity::create(NOW - 10);
    let key = SecureChannelKey::generate(&identity, &secret, NOW - 10, NOW + 3600);
    Arc::new(LocalIdentity { identity, key, credentials: vec![] })
}

fn channel() -> &'static Mutex<(Encryptor, Decryptor)> {
    static CHANNEL: OnceLock<Mutex<(Encryptor, Decryptor)>> = OnceLock::new();
    CHANNEL.get_or_init(|| {
        let trust = Arc::new(Trust { authorities: vec![], admission: Admission::AnyIdentity, revocations: Default::default() });
        let (i, m1) = Handshake::initiate(party(), trust.clone(), 4).unwrap();
        let r = Handshake::respond(party(), trust, 4).unwrap();
        let Ok(Progress::Continue(r, m2)) = r.step(&m1, NOW) else { panic!("handshake") };
        let Ok(Progress::Established { reply: Some(m3), channel: a }) = i.step(&m2, NOW) else { panic!("handshake") };
        let Ok(Progress::Established { channel: b, .. }) = (*r).step(&m3, NOW) else { panic!("handshake") };
        let (a, b) = (*a, *b);
        Mutex::new((a.encryptor, b.decryptor))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut guard = channel().lock().unwrap();
    let (encryptor, decryptor) = &mut *guard;
    assert!(decryptor.decrypt(data).is_err(), "a forged message was accepted");
    let real = encryptor.encrypt(b"still works").unwrap();
    assert_eq!(decryptor.decrypt(&real).unwrap(), b"still works");
});
