//! Who is who in kith: identities, purpose keys, credentials and attribute policies.
//!
//! An [`Identity`] is a history of Ed25519 keys, each change signed by the previous key and
//! the new one; its [`Identifier`] is fixed by the first change, so keys rotate without
//! changing who the identity is. The identity key signs [`PurposeKeyAttestation`]s for the
//! X25519 key it uses in secure channels and the Ed25519 key an authority signs
//! [`Credential`]s with. [`policy`] is the small expression language services use to decide
//! which authenticated peers may reach them.
//!
//! Everything here is synchronous and free of I/O: encodings, signatures, verification
//! against an explicit clock.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod channel;
mod codec;
mod credential;
mod error;
mod identifier;
mod identity;
pub mod policy;
mod purpose;
pub mod secure_channel;

pub use credential::{
    CLOCK_SKEW, Credential, CredentialAndPurposeKey, MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES, VerifiedCredential, check_attribute,
};
pub use error::{AttestationError, CredentialError, DecodeError, IdentityError};
pub use identifier::{IDENTIFIER_LEN, Identifier, IdentifierError};
pub use identity::{Identity, IdentitySecret, MAX_CHANGES};
pub use purpose::{CredentialSigningKey, Purpose, PurposeKeyAttestation, SecureChannelKey};
