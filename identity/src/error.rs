//! Errors of the identity layer, one enum per surface a caller reacts to.

/// Why bytes are not a valid identity, attestation or credential encoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Malformed or truncated CBOR, or a value of the wrong type.
    #[error("malformed encoding")]
    Cbor(#[from] minicbor::decode::Error),
    /// Well-formed CBOR of the wrong shape.
    #[error("malformed {0}")]
    Shape(&'static str),
    /// More items than allowed.
    #[error("too many {what} (the most is {max})")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The maximum.
        max: usize,
    },
    /// A string or byte string longer than allowed.
    #[error("{what} longer than {max} bytes")]
    TooLong {
        /// What was measured.
        what: &'static str,
        /// The maximum.
        max: usize,
    },
    /// A version this node does not speak.
    #[error("unsupported {what} version {version}")]
    Version {
        /// What was versioned.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// Bytes after the value.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// Why an identity's change history does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The encoding is invalid.
    #[error("invalid identity encoding")]
    Decode(#[from] DecodeError),
    /// An identity needs at least one change.
    #[error("an identity has no key changes")]
    Empty,
    /// A public key is not a valid Ed25519 point.
    #[error("key change {index} holds an invalid public key")]
    BadKey {
        /// Index of the change.
        index: usize,
    },
    /// A change's signature by its own key does not verify.
    #[error("key change {index} is not signed by its new key")]
    BadSelfSignature {
        /// Index of the change.
        index: usize,
    },
    /// A change's signature by the previous key is missing or does not verify.
    #[error("key change {index} is not signed by the previous key")]
    BadPreviousSignature {
        /// Index of the change.
        index: usize,
    },
    /// A change does not point at the change before it.
    #[error("key change {index} does not follow the change before it")]
    BrokenChain {
        /// Index of the change.
        index: usize,
    },
    /// The identifier given does not match the first change.
    #[error("the identity's first change does not match identifier {expected}")]
    WrongIdentifier {
        /// The identifier that was expected.
        expected: String,
    },
}

/// Why a purpose key attestation is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// The encoding is invalid.
    #[error("invalid purpose key attestation encoding")]
    Decode(#[from] DecodeError),
    /// Attested for another identity.
    #[error("the purpose key is attested for {found}, not {expected}")]
    WrongSubject {
        /// The identity it should name.
        expected: String,
        /// The identity it names.
        found: String,
    },
    /// Attested for another purpose.
    #[error("the key is attested for {found:?}, not for {expected:?}")]
    WrongPurpose {
        /// The purpose needed.
        expected: crate::Purpose,
        /// The purpose attested.
        found: crate::Purpose,
    },
    /// Not signed by the subject's current identity key.
    #[error("the purpose key attestation's signature does not verify")]
    BadSignature,
    /// Outside its validity period.
    #[error(
        "the purpose key attestation is valid from {created_at} to {expires_at} (Unix seconds); it is now {now}"
    )]
    NotValidNow {
        /// Start, Unix seconds.
        created_at: u64,
        /// End, Unix seconds.
        expires_at: u64,
        /// Now, Unix seconds.
        now: u64,
    },
}

/// Why a credential is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The encoding is invalid.
    #[error("invalid credential encoding")]
    Decode(#[from] DecodeError),
    /// The issuer's purpose key attestation is not acceptable.
    #[error("the issuer's credential key is not acceptable")]
    Attestation(#[from] AttestationError),
    /// The issuer is not a trusted authority.
    #[error("the credential was issued by {0}, which is not a trusted authority")]
    UntrustedIssuer(String),
    /// The credential's signature does not verify under the attested key.
    #[error("the credential's signature does not verify")]
    BadSignature,
    /// The credential is for someone else.
    #[error("the credential is for {found}, not {expected}")]
    WrongSubject {
        /// The identity that presented it.
        expected: String,
        /// The identity it names.
        found: String,
    },
    /// The credential has expired.
    #[error("the credential expired at {expires_at} (Unix seconds); it is now {now}")]
    Expired {
        /// End, Unix seconds.
        expires_at: u64,
        /// Now, Unix seconds.
        now: u64,
    },
    /// The credential was made in the future (beyond the allowed clock skew).
    #[error(
        "the credential is dated {created_at}, ahead of this node's clock ({now}) by more than the allowed skew"
    )]
    NotYetValid {
        /// Start, Unix seconds.
        created_at: u64,
        /// Now, Unix seconds.
        now: u64,
    },
    /// An invalid attribute name or value.
    #[error("invalid attribute: {0}")]
    Attribute(String),
}
