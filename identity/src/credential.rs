//! Credentials: an authority's signed statement of a member's attributes, valid for a period.
//!
//! Signed data: `[version = 1, subject, {name: value, …}, created_at, expires_at]`, with
//! attribute names in strictly increasing order (no duplicates, one encoding per set). A
//! credential travels with the attestation of the key that signed it, so a verifier that
//! trusts the authority's identity can check it without asking anyone.

use std::collections::BTreeMap;
use std::fmt;

use minicbor::{Decoder, Encoder};

use crate::codec::{array_of, bounded_bytes, bounded_str, finished, fixed};
use crate::identity::verify;
use crate::{
    CredentialError, CredentialSigningKey, DecodeError, IDENTIFIER_LEN, Identifier, Identity,
    Purpose, PurposeKeyAttestation,
};

const CREDENTIAL_VERSION: u8 = 1;

/// Signature domain for credentials.
const CREDENTIAL_TAG: &[u8] = b"kith/credential/1\0";

/// 64 attributes: far more than a member needs; bounds a credential's size and parsing work.
pub const MAX_ATTRIBUTES: usize = 64;

/// 128 bytes: the longest attribute name.
pub const MAX_ATTRIBUTE_NAME: usize = 128;

/// 1 KiB: the longest attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

/// 96 KiB: the longest encoded credential data; above the most the limits above allow.
const MAX_CREDENTIAL_DATA: usize = 96 * 1024;

/// 60 s: how far ahead of our clock a credential's start may be (DESIGN §4).
pub const CLOCK_SKEW: u64 = 60;

/// Check an attribute name and value against the limits; names are printable ASCII without
/// spaces or '=' (so `name=value` on a command line is unambiguous).
pub fn check_attribute(name: &str, value: &str) -> Result<(), CredentialError> {
    let bad = |why: &str| {
        Err(CredentialError::Attribute(format!(
            "{why} ({:?})",
            name.chars().take(40).collect::<String>()
        )))
    };
    if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME {
        return bad("an attribute name must be 1 to 128 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
        return bad("an attribute name must be printable ASCII without spaces or '='");
    }
    if value.len() > MAX_ATTRIBUTE_VALUE {
        return bad("an attribute value must be at most 1024 bytes");
    }
    if value.chars().any(char::is_control) {
        return bad("an attribute value must not contain control characters");
    }
    Ok(())
}

/// A signed credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    data: Vec<u8>,
    subject: Identifier,
    attributes: BTreeMap<String, String>,
    created_at: u64,
    expires_at: u64,
    signature: [u8; 64],
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("subject", &self.subject)
            .field("attributes", &self.attributes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A credential and the attestation of the key that signed it: what a member presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialAndPurposeKey {
    /// The credential.
    pub credential: Credential,
    /// The issuer's attestation of the signing key.
    pub purpose_key: PurposeKeyAttestation,
}

/// What a verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCredential {
    /// The authority that issued it.
    pub issuer: Identifier,
    /// The member it describes.
    pub subject: Identifier,
    /// The attested attributes.
    pub attributes: BTreeMap<String, String>,
    /// Validity start, Unix seconds.
    pub created_at: u64,
    /// Validity end (exclusive), Unix seconds.
    pub expires_at: u64,
}

impl Credential {
    /// The member it describes.
    pub fn subject(&self) -> &Identifier {
        &self.subject
    }

    /// The attributes.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }

    /// Validity start, Unix seconds.
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// Validity end (exclusive), Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

impl CredentialAndPurposeKey {
    /// `key` (an issuer's attested credential key) signs `attributes` for `subject`, valid
    /// from `created_at` to `expires_at`.
    pub fn issue(
        key: &CredentialSigningKey,
        subject: &Identifier,
        attributes: BTreeMap<String, String>,
        created_at: u64,
        expires_at: u64,
    ) -> Result<Self, CredentialError> {
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(CredentialError::Attribute(format!(
                "at most {MAX_ATTRIBUTES} attributes"
            )));
        }
        for (k, v) in &attributes {
            check_attribute(k, v)?;
        }
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(5)
            .and_then(|e| e.u8(CREDENTIAL_VERSION))
            .and_then(|e| e.bytes(subject.as_bytes()))
            .and_then(|e| e.map(attributes.len() as u64));
        for (k, v) in &attributes {
            let _ = e.str(k).and_then(|e| e.str(v));
        }
        let _ = e.u64(created_at).and_then(|e| e.u64(expires_at));
        let data = e.into_writer();
        let signature = key.sign(CREDENTIAL_TAG, &data);
        Ok(Self {
            credential: Credential {
                data,
                subject: *subject,
                attributes,
                created_at,
                expires_at,
                signature,
            },
            purpose_key: key.attestation().clone(),
        })
    }

    /// Verify for a peer that authenticated as `subject`, against the `trusted` authorities,
    /// at `now` (Unix seconds): the issuer is trusted, its key attestation is valid, the
    /// signature verifies, and `created_at - 60 s <= now < expires_at`.
    pub fn verify(
        &self,
        subject: &Identifier,
        trusted: &[Identity],
        now: u64,
    ) -> Result<VerifiedCredential, CredentialError> {
        let issuer_id = self.purpose_key.subject();
        let issuer = trusted
            .iter()
            .find(|t| t.identifier() == issuer_id)
            .ok_or_else(|| CredentialError::UntrustedIssuer(issuer_id.to_string()))?;
        self.purpose_key
            .verify(issuer, Purpose::Credentials, now, CLOCK_SKEW)?;
        let c = &self.credential;
        if !verify(
            self.purpose_key.public_key(),
            CREDENTIAL_TAG,
            &c.data,
            &c.signature,
        ) {
            return Err(CredentialError::BadSignature);
        }
        if c.subject != *subject {
            return Err(CredentialError::WrongSubject {
                expected: subject.to_string(),
                found: c.subject.to_string(),
            });
        }
        if now >= c.expires_at {
            return Err(CredentialError::Expired {
                expires_at: c.expires_at,
                now,
            });
        }
        if c.created_at.saturating_sub(CLOCK_SKEW) > now {
            return Err(CredentialError::NotYetValid {
                created_at: c.created_at,
                now,
            });
        }
        Ok(VerifiedCredential {
            issuer: *issuer_id,
            subject: c.subject,
            attributes: c.attributes.clone(),
            created_at: c.created_at,
            expires_at: c.expires_at,
        })
    }

    /// Encoded as `[[credential data, signature], attestation]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(2)
            .and_then(|e| e.array(2))
            .and_then(|e| e.bytes(&self.credential.data))
            .and_then(|e| e.bytes(&self.credential.signature));
        let mut out = e.into_writer();
        out.extend_from_slice(&self.purpose_key.encode());
        out
    }

    /// Decode (not verify).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        array_of(&mut d, 2, "credential")?;
        array_of(&mut d, 2, "credential")?;
        let data = bounded_bytes(&mut d, MAX_CREDENTIAL_DATA, "credential data")?.to_vec();
        let signature = fixed::<64>(&mut d, "signature")?;
        let purpose_key = PurposeKeyAttestation::decode_from(&mut d)?;
        finished(&d, bytes)?;
        let credential = decode_credential_data(data, signature)?;
        Ok(Self {
            credential,
            purpose_key,
        })
    }
}

fn decode_credential_data(data: Vec<u8>, signature: [u8; 64]) -> Result<Credential, DecodeError> {
    let mut d = Decoder::new(&data);
    array_of(&mut d, 5, "credential data")?;
    let version = d.u8()?;
    if version != CREDENTIAL_VERSION {
        return Err(DecodeError::Version {
            what: "credential",
            version,
        });
    }
    let subject = Identifier::from_bytes(fixed::<IDENTIFIER_LEN>(&mut d, "identifier")?);
    let Some(n) = d.map()? else {
        return Err(DecodeError::Shape("attributes"));
    };
    if n > MAX_ATTRIBUTES as u64 {
        return Err(DecodeError::TooMany {
            what: "attributes",
            max: MAX_ATTRIBUTES,
        });
    }
    let mut attributes = BTreeMap::new();
    let mut last: Option<String> = None;
    for _ in 0..n {
        let k = bounded_str(&mut d, MAX_ATTRIBUTE_NAME, "attribute name")?.to_owned();
        let v = bounded_str(&mut d, MAX_ATTRIBUTE_VALUE, "attribute value")?.to_owned();
        if check_attribute(&k, &v).is_err() {
            return Err(DecodeError::Shape("attribute"));
        }
        if last.as_ref().is_some_and(|l| *l >= k) {
            return Err(DecodeError::Shape("attributes out of order or repeated"));
        }
        last = Some(k.clone());
        attributes.insert(k, v);
    }
    let created_at = d.u64()?;
    let expires_at = d.u64()?;
    finished(&d, &data)?;
    Ok(Credential {
        data,
        subject,
        attributes,
        created_at,
        expires_at,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Authority {
        identity: Identity,
        key: CredentialSigningKey,
    }

    fn authority() -> Authority {
        let (identity, secret) = Identity::create(0);
        let key = CredentialSigningKey::generate(&identity, &secret, 0, 10_000_000);
        Authority { identity, key }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn issued_credential_round_trips_and_verifies() {
        let a = authority();
        let (member, _) = Identity::create(0);
        let c = CredentialAndPurposeKey::issue(
            &a.key,
            member.identifier(),
            attrs(&[("component", "db"), ("location", "sf")]),
            1_000,
            2_000,
        )
        .unwrap();
        let decoded = CredentialAndPurposeKey::decode(&c.encode()).unwrap();
        assert_eq!(decoded, c);
        let v = decoded
            .verify(
                member.identifier(),
                std::slice::from_ref(&a.identity),
                1_500,
            )
            .unwrap();
        assert_eq!(v.issuer, *a.identity.identifier());
        assert_eq!(v.attributes["component"], "db");
    }

    #[test]
    fn validity_window_with_clock_skew() {
        let a = authority();
        let (m, _) = Identity::create(0);
        let c = CredentialAndPurposeKey::issue(&a.key, m.identifier(), attrs(&[]), 1_000, 2_000)
            .unwrap();
        let t = [a.identity.clone()];
        assert!(
            c.verify(m.identifier(), &t, 940).is_ok(),
            "60 s of skew is allowed"
        );
        assert!(matches!(
            c.verify(m.identifier(), &t, 939),
            Err(CredentialError::NotYetValid { .. })
        ));
        assert!(c.verify(m.identifier(), &t, 1_999).is_ok());
        assert!(matches!(
            c.verify(m.identifier(), &t, 2_000),
            Err(CredentialError::Expired { .. })
        ));
    }

    #[test]
    fn untrusted_issuer_wrong_subject_and_forgery_are_refused() {
        let a = authority();
        let rogue = authority();
        let (m, _) = Identity::create(0);
        let (other, _) = Identity::create(0);
        let c = CredentialAndPurposeKey::issue(
            &rogue.key,
            m.identifier(),
            attrs(&[("ockam-role", "enroller")]),
            1_000,
            2_000,
        )
        .unwrap();
        assert!(matches!(
            c.verify(m.identifier(), std::slice::from_ref(&a.identity), 1_500),
            Err(CredentialError::UntrustedIssuer(_))
        ));

        let c = CredentialAndPurposeKey::issue(&a.key, m.identifier(), attrs(&[]), 1_000, 2_000)
            .unwrap();
        assert!(matches!(
            c.verify(other.identifier(), std::slice::from_ref(&a.identity), 1_500),
            Err(CredentialError::WrongSubject { .. })
        ));

        // A rogue key presented with the real authority's attestation: the signature fails.
        let mut forged = CredentialAndPurposeKey::issue(
            &rogue.key,
            m.identifier(),
            attrs(&[("ockam-role", "enroller")]),
            1_000,
            2_000,
        )
        .unwrap();
        forged.purpose_key = a.key.attestation().clone();
        assert!(matches!(
            forged.verify(m.identifier(), std::slice::from_ref(&a.identity), 1_500),
            Err(CredentialError::BadSignature)
        ));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let a = authority();
        let (m, _) = Identity::create(0);
        let c = CredentialAndPurposeKey::issue(
            &a.key,
            m.identifier(),
            attrs(&[("component", "db")]),
            1_000,
            2_000,
        )
        .unwrap();
        let good = c.encode();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                if let Ok(d) = CredentialAndPurposeKey::decode(&bad) {
                    assert!(
                        d.verify(m.identifier(), std::slice::from_ref(&a.identity), 1_500)
                            .is_err(),
                        "bit {bit} of byte {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_attributes_are_refused_at_issue() {
        let a = authority();
        let (m, _) = Identity::create(0);
        for (k, v) in [("", "x"), ("a b", "x"), ("a=b", "x"), ("k", "line\nbreak")] {
            assert!(
                CredentialAndPurposeKey::issue(&a.key, m.identifier(), attrs(&[(k, v)]), 0, 1)
                    .is_err(),
                "{k:?}={v:?}"
            );
        }
        let many: BTreeMap<String, String> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(CredentialAndPurposeKey::issue(&a.key, m.identifier(), many, 0, 1).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn credentials_round_trip(
            pairs in proptest::collection::btree_map("[a-z][a-z0-9._-]{0,20}", "[ -~]{0,40}", 0..8),
            created in 0u64..1_000_000,
            ttl in 1u64..1_000_000,
        ) {
            let a = authority();
            let (m, _) = Identity::create(0);
            let c = CredentialAndPurposeKey::issue(&a.key, m.identifier(), pairs.clone(), created, created + ttl).unwrap();
            let d = CredentialAndPurposeKey::decode(&c.encode()).unwrap();
            prop_assert_eq!(d.credential.attributes(), &pairs);
            prop_assert_eq!(d, c);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = CredentialAndPurposeKey::decode(&bytes);
            let _ = PurposeKeyAttestation::decode(&bytes);
            let _ = Identity::import(&bytes, None);
        }
    }
}
