//! Who is who in kith: identities, purpose keys, credentials and attribute policies.
//!
//! An [`Identity`] is a history of Ed25519 keys, each change signed by the previous key and
//! the new one; its [`Identifier`] is fixed by the first change, so keys rotate without
//! changing who the identity is. The identity key signs [`PurposeKeyAttestation`]s for the
//! X25519 key it uses in secure channels and the Ed25519 key an authority signs
//! [`Credential`]s with. [`policy`] is the small expression language services use to decide
//! which authenticated peers may reach them.
//!
//! The formats, signatures and the handshake ([`channel`]) are synchronous, free of I/O and
//! take the clock as an argument. Three modules do I/O: [`secure_channel`] runs channels
//! (and stacks of channels, one inside another) as workers on a node, [`portal`] opens them
//! for an inlet's sessions, and [`vault`] keeps identities and secret keys in SQLite (mode
//! 0600).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

/// Bounded, doubling pauses for retrying under contention.
pub mod backoff;
/// The Noise XX handshake that authenticates identities, and the channel ciphers.
pub mod channel;
/// The wall clock, in the unit of every timestamp here.
mod clock;
/// Strict, bounded CBOR helpers shared by the encodings.
mod codec;
/// Credentials: an authority's signed, expiring statement of a member's attributes.
mod credential;
/// Error types, one per surface a caller reacts to.
mod error;
/// Hex: how bytes are written as text everywhere in kith.
pub mod hex;
/// `I` + 40 hex digits: the name of an identity.
mod identifier;
/// Identities: Ed25519 key histories, rotation without a new identifier.
mod identity;
/// A listener's unfinished handshakes and each source's and connection's share of them.
pub mod pending;
/// The attribute-policy language services use to admit peers.
pub mod policy;
/// An inlet's way to its outlet: fresh secure channels per portal session, retried within
/// the open timeout, answered only by a node the inlet's policy admits.
pub mod portal;
/// Purpose keys: the channel and credential-signing keys an identity attests.
mod purpose;
/// Revocations: an authority's signed statements that a member's earlier credentials are
/// void, and a node's view of them.
pub mod revocation;
/// Channels on a node: the listener, each channel's encryptor and decryptor, its end
/// signal, and stacks of channels opened one inside another.
pub mod secure_channel;
/// The SQL plumbing the vault and the authority's store share: owner-only SQLite files,
/// write transactions, retries under contention, corrupt-row errors.
pub mod sqlite;
/// The SQLite store of identities and their secret keys.
pub mod vault;

pub use clock::unix_now;
pub use credential::{
    CLOCK_SKEW, Credential, CredentialAndPurposeKey, MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES, VerifiedCredential, check_attribute,
};
pub use error::{AttestationError, CredentialError, DecodeError, IdentityError};
pub use identifier::{IDENTIFIER_LEN, Identifier, IdentifierError};
pub use identity::{Identity, IdentitySecret, MAX_CHANGES};
pub use purpose::{CredentialSigningKey, Purpose, PurposeKeyAttestation, SecureChannelKey};
