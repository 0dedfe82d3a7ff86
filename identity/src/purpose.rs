//! Purpose keys: keys an identity attests for one job, so they can rotate (and be kept
//! hotter) without touching the identity key. The identity's current key signs
//! `[version = 1, subject, purpose, public_key, created_at, expires_at]`.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use minicbor::{Decoder, Encoder};
use rand_core::OsRng;
use x25519_dalek::StaticSecret;

use crate::codec::{array_of, bounded_bytes, finished, fixed};
use crate::identity::{tagged, verify};
use crate::{AttestationError, DecodeError, IDENTIFIER_LEN, Identifier, Identity, IdentitySecret};

const ATTESTATION_VERSION: u8 = 1;

/// Signature domain for purpose key attestations.
const ATTESTATION_TAG: &[u8] = b"kith/purpose-key/1\0";

/// 256 bytes: the largest encoded attestation data.
const MAX_ATTESTATION_DATA: usize = 256;

/// What a purpose key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The X25519 static key of secure channels.
    SecureChannel,
    /// The Ed25519 key an authority signs credentials with.
    Credentials,
}

impl Purpose {
    fn to_u8(self) -> u8 {
        match self {
            Purpose::SecureChannel => 1,
            Purpose::Credentials => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Purpose::SecureChannel),
            2 => Some(Purpose::Credentials),
            _ => None,
        }
    }
}

/// An identity's signed statement that a public key serves a purpose for a period.
#[derive(Clone, PartialEq, Eq)]
pub struct PurposeKeyAttestation {
    data: Vec<u8>,
    subject: Identifier,
    purpose: Purpose,
    public_key: [u8; 32],
    created_at: u64,
    expires_at: u64,
    signature: [u8; 64],
}

impl fmt::Debug for PurposeKeyAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurposeKeyAttestation")
            .field("subject", &self.subject)
            .field("purpose", &self.purpose)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl PurposeKeyAttestation {
    /// `identity` (holding `secret`, its current key) attests `public_key` for `purpose`.
    pub fn attest(
        identity: &Identity,
        secret: &IdentitySecret,
        purpose: Purpose,
        public_key: [u8; 32],
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        let subject = *identity.identifier();
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(6)
            .and_then(|e| e.u8(ATTESTATION_VERSION))
            .and_then(|e| e.bytes(subject.as_bytes()))
            .and_then(|e| e.u8(purpose.to_u8()))
            .and_then(|e| e.bytes(&public_key))
            .and_then(|e| e.u64(created_at))
            .and_then(|e| e.u64(expires_at));
        let data = e.into_writer();
        let signature = secret.sign(ATTESTATION_TAG, &data);
        Self {
            data,
            subject,
            purpose,
            public_key,
            created_at,
            expires_at,
            signature,
        }
    }

    /// The identity that attests the key.
    pub fn subject(&self) -> &Identifier {
        &self.subject
    }

    /// What the key is for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The attested public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Validity start, Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// Validity end (exclusive), Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Check that `subject` (its current key) attested this key for `purpose`, valid `now`
    /// give or take `skew` seconds at the start.
    pub fn verify(
        &self,
        subject: &Identity,
        purpose: Purpose,
        now: u64,
        skew: u64,
    ) -> Result<(), AttestationError> {
        if self.subject != *subject.identifier() {
            return Err(AttestationError::WrongSubject {
                expected: subject.identifier().to_string(),
                found: self.subject.to_string(),
            });
        }
        if self.purpose != purpose {
            return Err(AttestationError::WrongPurpose {
                expected: purpose,
                found: self.purpose,
            });
        }
        if !verify(
            &subject.public_key(),
            ATTESTATION_TAG,
            &self.data,
            &self.signature,
        ) {
            return Err(AttestationError::BadSignature);
        }
        if self.created_at.saturating_sub(skew) > now || now >= self.expires_at {
            return Err(AttestationError::NotValidNow {
                created_at: self.created_at,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// Encoded as `[data, signature]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(2)
            .and_then(|e| e.bytes(&self.data))
            .and_then(|e| e.bytes(&self.signature));
        e.into_writer()
    }

    /// Decode (not verify) an attestation.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        let this = Self::decode_from(&mut d)?;
        finished(&d, bytes)?;
        Ok(this)
    }

    pub(crate) fn decode_from(d: &mut Decoder<'_>) -> Result<Self, DecodeError> {
        array_of(d, 2, "purpose key attestation")?;
        let data = bounded_bytes(d, MAX_ATTESTATION_DATA, "attestation data")?.to_vec();
        let signature = fixed::<64>(d, "signature")?;
        let mut inner = Decoder::new(&data);
        array_of(&mut inner, 6, "attestation data")?;
        let version = inner.u8()?;
        if version != ATTESTATION_VERSION {
            return Err(DecodeError::Version {
                what: "purpose key attestation",
                version,
            });
        }
        let subject = Identifier::from_bytes(fixed::<IDENTIFIER_LEN>(&mut inner, "identifier")?);
        let purpose = Purpose::from_u8(inner.u8()?).ok_or(DecodeError::Shape("purpose"))?;
        let public_key = fixed::<32>(&mut inner, "public key")?;
        let created_at = inner.u64()?;
        let expires_at = inner.u64()?;
        finished(&inner, &data)?;
        Ok(Self {
            data,
            subject,
            purpose,
            public_key,
            created_at,
            expires_at,
            signature,
        })
    }
}

/// An X25519 key for secure channels, with its attestation. The secret is zeroized on drop.
pub struct SecureChannelKey {
    secret: StaticSecret,
    /// The public half, derived from `secret` once, so handshakes need not derive it again.
    public: [u8; 32],
    attestation: PurposeKeyAttestation,
}

impl SecureChannelKey {
    /// A fresh key attested by `identity` for `created_at..expires_at`.
    pub fn generate(
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        Self::from_secret(
            StaticSecret::random_from_rng(OsRng),
            identity,
            secret,
            created_at,
            expires_at,
        )
    }

    /// A given key (from a vault) attested by `identity`.
    pub fn from_secret(
        key: StaticSecret,
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        let public = x25519_dalek::PublicKey::from(&key).to_bytes();
        let attestation = PurposeKeyAttestation::attest(
            identity,
            secret,
            Purpose::SecureChannel,
            public,
            created_at,
            expires_at,
        );
        Self {
            secret: key,
            public,
            attestation,
        }
    }

    /// A key loaded from a vault: its secret bytes and the attestation stored with them.
    /// Returns `None` if the attestation is not for this key or not for secure channels.
    pub fn from_stored(secret: &[u8; 32], attestation: PurposeKeyAttestation) -> Option<Self> {
        let key = StaticSecret::from(*secret);
        let public = x25519_dalek::PublicKey::from(&key).to_bytes();
        (attestation.purpose() == Purpose::SecureChannel && *attestation.public_key() == public)
            .then_some(Self {
                secret: key,
                public,
                attestation,
            })
    }

    /// A key whose attestation is for another key: only for tests of the check that
    /// refuses such a peer.
    #[cfg(test)]
    pub(crate) fn mismatched_for_test(
        secret: StaticSecret,
        attestation: PurposeKeyAttestation,
    ) -> Self {
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Self {
            secret,
            public,
            attestation,
        }
    }

    /// The attestation.
    pub fn attestation(&self) -> &PurposeKeyAttestation {
        &self.attestation
    }

    /// The public half of the key, as derived from the secret (not as attested).
    pub(crate) fn public_bytes(&self) -> &[u8; 32] {
        &self.public
    }

    /// The 32 secret bytes (for the Noise handshake, or a vault); zeroized when dropped.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }
}

impl fmt::Debug for SecureChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureChannelKey")
            .field("attestation", &self.attestation)
            .finish()
    }
}

/// An authority's Ed25519 key for signing credentials, with its attestation.
pub struct CredentialSigningKey {
    secret: SigningKey,
    attestation: PurposeKeyAttestation,
}

impl CredentialSigningKey {
    /// A fresh key attested by `identity` for `created_at..expires_at`.
    pub fn generate(
        identity: &Identity,
        secret: &IdentitySecret,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        let key = SigningKey::generate(&mut OsRng);
        let attestation = PurposeKeyAttestation::attest(
            identity,
            secret,
            Purpose::Credentials,
            key.verifying_key().to_bytes(),
            created_at,
            expires_at,
        );
        Self {
            secret: key,
            attestation,
        }
    }

    /// A key loaded from a vault: its secret bytes and the attestation stored with them.
    /// Returns `None` if the attestation is not for this key or not for credentials.
    pub fn from_stored(secret: &[u8; 32], attestation: PurposeKeyAttestation) -> Option<Self> {
        let key = SigningKey::from_bytes(secret);
        let matches = attestation.purpose() == Purpose::Credentials
            && *attestation.public_key() == key.verifying_key().to_bytes();
        matches.then_some(Self {
            secret: key,
            attestation,
        })
    }

    /// The attestation.
    pub fn attestation(&self) -> &PurposeKeyAttestation {
        &self.attestation
    }

    /// The 32 secret bytes, for a vault; zeroized when dropped.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }

    pub(crate) fn sign(&self, tag: &[u8], data: &[u8]) -> [u8; 64] {
        self.secret.sign(&tagged(tag, data)).to_bytes()
    }
}

impl fmt::Debug for CredentialSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSigningKey")
            .field("attestation", &self.attestation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_round_trips_and_verifies_within_its_period() {
        let (id, secret) = Identity::create(100);
        let key = SecureChannelKey::generate(&id, &secret, 1_000, 2_000);
        let a = PurposeKeyAttestation::decode(&key.attestation().encode()).unwrap();
        assert_eq!(&a, key.attestation());
        a.verify(&id, Purpose::SecureChannel, 1_500, 60).unwrap();
        a.verify(&id, Purpose::SecureChannel, 950, 60).unwrap(); // within skew
        assert!(matches!(
            a.verify(&id, Purpose::SecureChannel, 939, 60),
            Err(AttestationError::NotValidNow { .. })
        ));
        assert!(matches!(
            a.verify(&id, Purpose::SecureChannel, 2_000, 60),
            Err(AttestationError::NotValidNow { .. })
        ));
        assert!(matches!(
            a.verify(&id, Purpose::Credentials, 1_500, 60),
            Err(AttestationError::WrongPurpose { .. })
        ));
        let (other, _) = Identity::create(100);
        assert!(matches!(
            a.verify(&other, Purpose::SecureChannel, 1_500, 60),
            Err(AttestationError::WrongSubject { .. })
        ));
    }

    #[test]
    fn rotating_the_identity_key_needs_new_attestations_and_keeps_the_identifier() {
        let (mut id, secret) = Identity::create(100);
        let key = SecureChannelKey::generate(&id, &secret, 1_000, 2_000);
        let next = id.rotate(&secret, 1_100).unwrap();
        assert!(matches!(
            key.attestation()
                .verify(&id, Purpose::SecureChannel, 1_500, 60),
            Err(AttestationError::BadSignature)
        ));
        let fresh = SecureChannelKey::generate(&id, &next, 1_100, 2_000);
        fresh
            .attestation()
            .verify(&id, Purpose::SecureChannel, 1_500, 60)
            .unwrap();
        assert_eq!(fresh.attestation().subject(), key.attestation().subject());
    }

    #[test]
    fn every_flipped_bit_breaks_the_attestation() {
        let (id, secret) = Identity::create(100);
        let key = CredentialSigningKey::generate(&id, &secret, 1_000, 2_000);
        let good = key.attestation().encode();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            if let Ok(a) = PurposeKeyAttestation::decode(&bad) {
                assert!(
                    a.verify(&id, Purpose::Credentials, 1_500, 60).is_err(),
                    "byte {i}"
                );
            }
        }
    }

    #[test]
    fn stored_keys_load_only_with_their_own_attestation() {
        let (id, secret) = Identity::create(100);
        let sc = SecureChannelKey::generate(&id, &secret, 1_000, 2_000);
        let cs = CredentialSigningKey::generate(&id, &secret, 1_000, 2_000);
        assert!(
            SecureChannelKey::from_stored(&sc.secret_bytes(), sc.attestation().clone()).is_some()
        );
        assert!(
            SecureChannelKey::from_stored(&sc.secret_bytes(), cs.attestation().clone()).is_none()
        );
        assert!(
            CredentialSigningKey::from_stored(&cs.secret_bytes(), cs.attestation().clone())
                .is_some()
        );
        assert!(CredentialSigningKey::from_stored(&[9; 32], cs.attestation().clone()).is_none());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let (id, secret) = Identity::create(100);
        let key = SecureChannelKey::generate(&id, &secret, 1_000, 2_000);
        let hex = crate::codec::to_hex(key.secret_bytes().as_ref());
        assert!(!format!("{key:?}").contains(&hex));
        assert_eq!(format!("{secret:?}"), "IdentitySecret(..)");
    }
}
