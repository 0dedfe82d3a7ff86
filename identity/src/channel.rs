//! Secure channels, the pure part: the `Noise_XX_25519_AESGCM_SHA256` handshake that
//! authenticates both identities, and the transport ciphers that follow it. No I/O and no
//! clock: callers pass bytes and `now`.
//!
//! Handshake messages 2 (responder) and 3 (initiator) carry each side's *bundle*:
//! `[identity changes, secure-channel purpose key attestation, [credential, …]]`. A side
//! accepts the peer only if the identity's history verifies, the attestation is the
//! identity's own and valid now, the Noise static key *is* the attested key, every credential
//! verifies against the trusted authorities, and the admission rule lets the peer in.
//!
//! After the handshake, snow hands over the two split keys and we run the transport phase
//! ourselves with the Noise cipher functions (spec §5.1, §4.2): AES-256-GCM with nonce
//! `0u32 ‖ n` big-endian, empty associated data, and `REKEY(k)` = the first 32 bytes of
//! `ENCRYPT(k, 2⁶⁴−1, ∅, 0³²)`. Each message carries its 8-byte nonce `n` in clear; a sliding
//! window refuses replays and messages older than the window; keys rotate every
//! `rekey_interval` messages. Doing this ourselves lets a receiver *try* the next epoch's key
//! and adopt it only once a message has authenticated under it, so a forged nonce can
//! never make it rekey.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, LazyLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kith_node::{ErrorClass, Undeliverable};
use kith_transport::TransportMessage;
use minicbor::{Decoder, Encoder};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::resolvers::{CryptoResolver, RingResolver};
use zeroize::Zeroizing;

use crate::codec::{array_of, array_up_to, bounded_bytes, finished};
use crate::revocation::{Revocations, Void};
use crate::{
    CLOCK_SKEW, CredentialAndPurposeKey, CredentialError, DecodeError, Identifier, Identity,
    Purpose, PurposeKeyAttestation, SecureChannelKey,
};

/// The Noise protocol name (DESIGN §4).
pub const NOISE_PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";

/// The largest Noise message (spec §3).
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// AES-GCM tag length.
const TAG_LEN: usize = 16;

/// Bytes of the clear nonce in front of each transport message.
pub const NONCE_LEN: usize = 8;

/// The largest sealed channel message (nonce, ciphertext and tag): a default-size transport
/// frame less 8 KiB for the routes around it. Handshake messages are Noise messages, at
/// most [`MAX_NOISE_MESSAGE`]; after the handshake, kith seals with its own explicit-nonce
/// AES-GCM transport (DESIGN §4), which has no such limit, so a channel carries any message
/// a frame can.
pub const MAX_SEALED_MESSAGE: usize = kith_transport::frame::DEFAULT_MAX_FRAME_LEN - 8 * 1024;

/// The largest plaintext one channel message carries.
pub const MAX_CHANNEL_PLAINTEXT: usize = MAX_SEALED_MESSAGE - NONCE_LEN - TAG_LEN;

/// The largest application payload a channel takes from a sender: the transport's payload
/// limit, which leaves room for the routes and seals of channels nested around it (a
/// message through a relay is sealed twice on the way). Larger is refused at the sender.
pub const MAX_MESSAGE_PAYLOAD: usize = kith_transport::MAX_PAYLOAD_LEN;

/// 8 credentials: a member holds one per project it belongs to; more is abuse.
pub const MAX_PEER_CREDENTIALS: usize = 8;

/// 128 messages: how far out of order a message may arrive and still be accepted. Routes
/// over TCP keep order; the window absorbs reordering by relays and retries.
pub const REPLAY_WINDOW: u64 = 128;

/// 2²⁰ messages (about 64 GiB of 64 KiB messages) per key, far inside AES-GCM's limits.
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 20;

/// Domain of the channel verification code derived from the handshake hash.
const CODE_TAG: &[u8] = b"kith/verification-code/1\0";

/// Who we are in channels: identity, attested static key, credentials to present.
pub struct LocalIdentity {
    /// Our identity.
    pub identity: Identity,
    /// Our attested X25519 key.
    pub key: SecureChannelKey,
    /// Credentials we present.
    pub credentials: Vec<CredentialAndPurposeKey>,
}

/// Which authenticated peers may complete a handshake with us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Any identity that proves itself.
    AnyIdentity,
    /// Only these identifiers.
    Identifiers(BTreeSet<Identifier>),
    /// Only holders of at least one valid credential from a trusted authority.
    CredentialHolders,
}

/// Whom we trust to vouch for peers, and whom we admit.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Authorities whose credentials we accept, in order of precedence: where two carry
    /// the same attribute for a peer, the first one's value is the peer's.
    pub authorities: Vec<Identity>,
    /// The admission rule.
    pub admission: Admission,
    /// What we know of those authorities' revocations; shared by every channel of the node.
    pub revocations: Arc<Revocations>,
}

impl Trust {
    /// Trust `authorities` and admit as `admission` says, knowing no revocations yet.
    pub fn new(authorities: Vec<Identity>, admission: Admission) -> Self {
        Self {
            authorities,
            admission,
            revocations: Arc::default(),
        }
    }

    /// Where `issuer` stands in the order of precedence, if it is trusted.
    fn rank(&self, issuer: &Identifier) -> Option<usize> {
        self.authorities
            .iter()
            .position(|a| a.identifier() == issuer)
    }
}

/// The authenticated peer of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its verified identity.
    pub identity: Identity,
    /// Its identifier.
    pub identifier: Identifier,
    /// Its attributes: those of its credentials, per name from the trusted authority that
    /// comes first (see [`Trust::authorities`]); one authority never sets or overrides an
    /// attribute another's credential carries.
    pub attributes: BTreeMap<String, String>,
    /// When the earliest of its credentials expires, if it presented any.
    pub credentials_expire_at: Option<u64>,
    /// Its credentials that speak for it here, one per issuer, in order of precedence.
    pub credentials: Vec<PeerCredential>,
}

/// What one trusted authority's credential says of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredential {
    /// The authority.
    pub issuer: Identifier,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// Validity start, Unix seconds.
    pub created_at: u64,
    /// Validity end (exclusive), Unix seconds.
    pub expires_at: u64,
}

/// A credential a peer presented, or pushed into a channel, and what it comes to here.
pub enum Presented {
    /// It speaks for the peer.
    Accepted(PeerCredential),
    /// It is from an authority we do not trust: it says nothing to us.
    Untrusted(Identifier),
    /// Its authority voided it (or we cannot tell whether it did).
    Void(Identifier, Void),
}

impl Peer {
    /// Replace what `credential`'s issuer says of the peer with it, and work out the
    /// attributes again. Each issuer's word replaces only its own earlier word: a narrowed
    /// credential narrows, and another authority's attributes stay as they were.
    pub fn replace(&mut self, credential: PeerCredential, trust: &Trust) {
        self.credentials.retain(|c| c.issuer != credential.issuer);
        self.credentials.push(credential);
        self.settle(trust);
    }

    /// Forget what `issuer` said of the peer until it vouches again, for at most `grace`
    /// more seconds from `now`: the credential stops giving attributes, and if no fresh
    /// one replaces it by then, it has expired (and the channel with it, see
    /// [`Peer::expired`]).
    pub fn withdraw(&mut self, issuer: &Identifier, now: u64, grace: u64) {
        for c in self.credentials.iter_mut().filter(|c| c.issuer == *issuer) {
            c.attributes.clear();
            c.expires_at = c.expires_at.min(now.saturating_add(grace));
        }
        self.attributes = merged(&self.credentials);
        self.credentials_expire_at = self.credentials.iter().map(|c| c.expires_at).min();
    }

    /// When the first of the peer's credentials expired, if one has by `now`.
    pub fn expired(&self, now: u64) -> Option<u64> {
        self.credentials_expire_at.filter(|e| now >= *e)
    }

    /// Put the credentials in order of precedence and derive the attributes and expiry.
    fn settle(&mut self, trust: &Trust) {
        self.credentials
            .sort_by_key(|c| trust.rank(&c.issuer).unwrap_or(usize::MAX));
        self.attributes = merged(&self.credentials);
        self.credentials_expire_at = self.credentials.iter().map(|c| c.expires_at).min();
    }
}

/// The attributes `credentials` (in order of precedence) give: per name, the first
/// credential's that carries it.
fn merged(credentials: &[PeerCredential]) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    for c in credentials {
        for (name, value) in &c.attributes {
            if let Some(held) = attributes.get(name) {
                if held != value {
                    tracing::debug!(%name, issuer = %c.issuer, "ignoring an attribute an authority of higher precedence sets");
                }
                continue;
            }
            attributes.insert(name.clone(), value.clone());
        }
    }
    attributes
}

/// What `credential`, presented by `subject`, comes to at `now` under `trust`. A
/// credential from a trusted authority that fails to verify is an error.
pub fn present(
    credential: &CredentialAndPurposeKey,
    subject: &Identifier,
    trust: &Trust,
    now: u64,
) -> Result<Presented, CredentialError> {
    let issuer = *credential.purpose_key.subject();
    if trust.rank(&issuer).is_none() {
        return Ok(Presented::Untrusted(issuer));
    }
    let v = credential.verify(subject, &trust.authorities, now)?;
    if let Err(void) = trust.revocations.check(&issuer, subject, v.created_at, now) {
        return Ok(Presented::Void(issuer, void));
    }
    Ok(Presented::Accepted(PeerCredential {
        issuer,
        attributes: v.attributes,
        created_at: v.created_at,
        expires_at: v.expires_at,
    }))
}

/// Why a handshake failed. The detail is for our log; a peer learns only that it failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Noise itself failed: a truncated, altered or out-of-order handshake message.
    #[error("noise handshake failed")]
    Noise(#[from] snow::Error),
    /// The peer's bundle is malformed.
    #[error("malformed identity bundle")]
    Bundle(#[from] DecodeError),
    /// The peer's identity history does not verify.
    #[error("invalid peer identity")]
    Identity(#[from] crate::IdentityError),
    /// The peer's secure-channel key attestation is not acceptable.
    #[error("invalid secure-channel key attestation")]
    Attestation(#[from] crate::AttestationError),
    /// The Noise static key is not the attested key.
    #[error("the peer's Noise static key is not the key its identity attested")]
    StaticKeyMismatch,
    /// A credential did not verify.
    #[error("the peer presented an invalid credential")]
    Credential(#[from] CredentialError),
    /// The peer authenticated but is not admitted.
    #[error("{0} is not admitted: {1}")]
    NotAdmitted(Identifier, Inadmissible),
    /// The peer's credential from a trusted authority was revoked, or (admission wanting a
    /// credential) none can be checked against its authority's revocations.
    #[error("{0}'s credential from {1}: {2}")]
    Void(Identifier, Identifier, Void),
    /// A message arrived when none was expected.
    #[error("unexpected handshake message")]
    Unexpected,
    /// Nothing (or nothing valid) answered before the handshake deadline.
    #[error("no answer to the secure channel handshake within its deadline")]
    TimedOut,
    /// The handshake was given up before it finished: its channel was stopped, or the node
    /// is shutting down.
    #[error("the secure channel handshake was abandoned")]
    Abandoned,
    /// The responder, or a node on the way to it, answered with a refusal: why, as the
    /// peer tells it (the class; the detail stays in its log).
    #[error("{0}")]
    Refused(Undeliverable),
}

impl HandshakeError {
    /// The class of refusal a responder answers this failure with: all an initiator
    /// learns of it.
    pub fn class(&self) -> ErrorClass {
        match self {
            HandshakeError::NotAdmitted(_, Inadmissible::NotAllowed) => ErrorClass::NotAllowed,
            HandshakeError::NotAdmitted(_, Inadmissible::NoTrustedCredential)
            | HandshakeError::Credential(_) => ErrorClass::NoTrustedCredential,
            HandshakeError::Refused(u) => u.class,
            HandshakeError::Void(_, _, Void::Unverifiable { .. }) => ErrorClass::RevocationsUnknown,
            HandshakeError::Void(..) => ErrorClass::Revoked,
            HandshakeError::Noise(_)
            | HandshakeError::Bundle(_)
            | HandshakeError::Identity(_)
            | HandshakeError::Attestation(_)
            | HandshakeError::StaticKeyMismatch
            | HandshakeError::Unexpected
            | HandshakeError::TimedOut
            | HandshakeError::Abandoned => ErrorClass::InvalidHandshake,
        }
    }
}

/// Why an authenticated peer is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inadmissible {
    /// The admission rule names identifiers, and not this one.
    NotAllowed,
    /// The admission rule wants a credential from a trusted authority, and it has none.
    NoTrustedCredential,
}

impl fmt::Display for Inadmissible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Inadmissible::NotAllowed => "not on the allowed list",
            Inadmissible::NoTrustedCredential => "no credential from a trusted authority",
        })
    }
}

/// Why a transport message was refused. The channel goes on; the message is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Too short to hold a nonce and a tag.
    #[error("channel message of {0} bytes is too short")]
    Truncated(usize),
    /// Too long for one Noise message.
    #[error("channel message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// Seen before.
    #[error("replayed channel message (nonce {0})")]
    Replayed(u64),
    /// Older than the replay window.
    #[error("channel message nonce {0} is older than the replay window")]
    TooOld(u64),
    /// More than one key epoch ahead of what we have seen.
    #[error("channel message nonce {0} skips a whole key epoch")]
    EpochSkipped(u64),
    /// Authentication failed: altered, forged, or for another channel.
    #[error("channel message (nonce {0}) failed authentication")]
    Authentication(u64),
    /// The nonce space is used up; open a new channel.
    #[error("the channel has sent 2^64-1 messages; open a new one")]
    Exhausted,
}

fn encode_bundle(local: &LocalIdentity) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    let _ = e
        .array(3)
        .and_then(|e| e.bytes(&local.identity.export()))
        .and_then(|e| e.bytes(&local.key.attestation().encode()))
        .and_then(|e| e.array(local.credentials.len() as u64));
    for c in &local.credentials {
        let _ = e.bytes(&c.encode());
    }
    e.into_writer()
}

/// Check a peer's bundle (what handshake messages 2 and 3 carry) against the Noise static key
/// it proved it holds, the trusted authorities and the admission rule, at `now`.
pub fn verify_bundle(
    bundle: &[u8],
    remote_static: &[u8],
    trust: &Trust,
    now: u64,
) -> Result<Peer, HandshakeError> {
    let mut d = Decoder::new(bundle);
    array_of(&mut d, 3, "identity bundle")?;
    let identity = Identity::import(bounded_bytes(&mut d, MAX_NOISE_MESSAGE, "identity")?, None)?;
    let attestation =
        PurposeKeyAttestation::decode(bounded_bytes(&mut d, MAX_NOISE_MESSAGE, "attestation")?)?;
    let n = array_up_to(&mut d, MAX_PEER_CREDENTIALS, "credentials")?;
    let mut credentials = Vec::new();
    for _ in 0..n {
        credentials.push(CredentialAndPurposeKey::decode(bounded_bytes(
            &mut d,
            MAX_NOISE_MESSAGE,
            "credential",
        )?)?);
    }
    finished(&d, bundle)?;

    attestation.verify(&identity, Purpose::SecureChannel, now, CLOCK_SKEW)?;
    if attestation.public_key().as_slice() != remote_static {
        return Err(HandshakeError::StaticKeyMismatch);
    }
    let identifier = *identity.identifier();
    let mut peer = Peer {
        identity,
        identifier,
        attributes: BTreeMap::new(),
        credentials_expire_at: None,
        credentials: Vec::new(),
    };
    // Credentials nothing can be checked against, kept to say why admission failed.
    let mut unverifiable = None;
    for c in &credentials {
        // A credential from an authority we do not trust says nothing to us: a member of
        // several projects presents all its credentials, and each peer takes the ones it
        // can check. A credential from a trusted authority that fails (forged, expired, for
        // another identity) fails the handshake, and so does a revoked one.
        match present(c, &identifier, trust, now)? {
            Presented::Accepted(credential) => {
                let newer = peer
                    .credentials
                    .iter()
                    .find(|held| held.issuer == credential.issuer)
                    .is_none_or(|held| held.created_at < credential.created_at);
                if newer {
                    peer.replace(credential, trust);
                }
            }
            Presented::Untrusted(issuer) => {
                tracing::debug!(peer = %identifier, %issuer, "ignoring a credential from an authority we do not trust");
            }
            Presented::Void(issuer, void @ Void::Revoked { .. }) => {
                return Err(HandshakeError::Void(identifier, issuer, void));
            }
            // A newer one speaks for the peer; an honest peer presents it.
            Presented::Void(issuer, void @ Void::Superseded { .. }) => {
                tracing::debug!(peer = %identifier, %issuer, %void, "ignoring a superseded credential");
            }
            Presented::Void(issuer, void @ Void::Unverifiable { .. }) => {
                tracing::warn!(peer = %identifier, %issuer, %void, "ignoring a credential whose revocation cannot be checked");
                unverifiable = Some((issuer, void));
            }
        }
    }
    let credentials_expire_at = peer.credentials_expire_at;
    match &trust.admission {
        Admission::AnyIdentity => {}
        Admission::Identifiers(ids) if ids.contains(&identifier) => {}
        Admission::Identifiers(_) => {
            return Err(HandshakeError::NotAdmitted(
                identifier,
                Inadmissible::NotAllowed,
            ));
        }
        Admission::CredentialHolders if credentials_expire_at.is_some() => {}
        Admission::CredentialHolders => {
            if let Some((issuer, void)) = unverifiable {
                return Err(HandshakeError::Void(identifier, issuer, void));
            }
            return Err(HandshakeError::NotAdmitted(
                identifier,
                Inadmissible::NoTrustedCredential,
            ));
        }
    }
    Ok(peer)
}

/// The parsed [`NOISE_PATTERN`], parsed once rather than for every handshake.
static NOISE_PARAMS: LazyLock<Option<snow::params::NoiseParams>> =
    LazyLock::new(|| NOISE_PATTERN.parse().ok());

/// 128 bytes: what a handshake message adds to its payload at most (two 32-byte keys, one
/// encrypted, and two 16-byte tags), rounded up.
const HANDSHAKE_OVERHEAD: usize = 128;

/// Write the next handshake message carrying `payload`, into a buffer just large enough.
fn write_message(
    noise: &mut snow::HandshakeState,
    payload: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; (payload.len() + HANDSHAKE_OVERHEAD).min(MAX_NOISE_MESSAGE)];
    let n = noise.write_message(payload, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Noise primitives for our handshakes: snow's own, ring-accelerated where ring has them,
/// except Curve25519, which is [`X25519`] so that our static key's public half, which we
/// already hold, is not derived again (a scalar multiplication) for every handshake.
struct Resolver {
    known: StaticKey,
}

/// Our static key pair, as the resolver recognises it.
#[derive(Clone)]
struct StaticKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        RingResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        match choice {
            snow::params::DHChoice::Curve25519 => Some(Box::new(X25519 {
                known: self.known.clone(),
                secret: Zeroizing::new([0; 32]),
                public: [0; 32],
            })),
            _ => None,
        }
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        RingResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// Curve25519 Diffie-Hellman (RFC 7748) with x25519-dalek, for snow.
struct X25519 {
    known: StaticKey,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl X25519 {
    fn derive_public(&mut self) {
        let secret = x25519_dalek::StaticSecret::from(*self.secret);
        self.public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    }
}

impl snow::types::Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut secret = Zeroizing::new([0u8; 32]);
        for (s, p) in secret.iter_mut().zip(privkey) {
            *s = *p;
        }
        self.secret = secret;
        // Our own static key: its public half is known. Anything else is derived.
        let same = constant_time_eq(self.secret.as_ref(), self.known.secret.as_ref());
        if same && privkey.len() == 32 {
            self.public = self.known.public;
        } else {
            self.derive_public();
        }
    }

    fn generate(&mut self, rng: &mut dyn snow::types::Random) {
        rng.fill_bytes(self.secret.as_mut());
        self.derive_public();
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let theirs: [u8; 32] = pubkey
            .get(..32)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = x25519_dalek::StaticSecret::from(*self.secret)
            .diffie_hellman(&x25519_dalek::PublicKey::from(theirs));
        // A low-order public key makes the result independent of our secret (RFC 7748 §6.1):
        // no honest peer sends one, so refuse it rather than mix a known value into the keys.
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

/// A handshake in progress.
pub struct Handshake {
    noise: snow::HandshakeState,
    local: Arc<LocalIdentity>,
    trust: Arc<Trust>,
    rekey_interval: u64,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.noise.is_initiator())
            .finish()
    }
}

/// What a handshake step produced.
pub enum Progress {
    /// Send these bytes to the peer and wait for its answer.
    Continue(Box<Handshake>, Vec<u8>),
    /// The responder will not admit the initiator, for `error`. Noise has finished, so the
    /// refusal can be sealed with `encryptor`, the responder's sending key, and sent as the
    /// channel's first (and last) message: the initiator learns why at once, and nobody
    /// else can forge it.
    Refused {
        /// Why, in detail, for the responder's log.
        error: HandshakeError,
        /// Seals the refusal.
        encryptor: Box<Encryptor>,
    },
    /// The channel is up; send `reply` first if there is one.
    Established {
        /// The last handshake message, for the initiator to send.
        reply: Option<Vec<u8>>,
        /// The channel.
        channel: Box<Established>,
    },
}

impl Handshake {
    fn build(
        local: &LocalIdentity,
        initiator: bool,
    ) -> Result<snow::HandshakeState, HandshakeError> {
        let secret = local.key.secret_bytes();
        // Only if the constant failed to parse: parse it again for the error.
        let params = NOISE_PARAMS
            .clone()
            .map_or_else(|| NOISE_PATTERN.parse(), Ok)?;
        let resolver = Box::new(Resolver {
            known: StaticKey {
                secret: secret.clone(),
                public: *local.key.public_bytes(),
            },
        });
        let builder =
            snow::Builder::with_resolver(params, resolver).local_private_key(secret.as_ref());
        Ok(if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        })
    }

    /// Start a handshake as the initiator; returns the first message to send.
    pub fn initiate(
        local: Arc<LocalIdentity>,
        trust: Arc<Trust>,
        rekey_interval: u64,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut noise = Self::build(&local, true)?;
        let out = write_message(&mut noise, &[])?;
        Ok((
            Self {
                noise,
                local,
                trust,
                rekey_interval: rekey_interval.max(1),
            },
            out,
        ))
    }

    /// Wait for a handshake as the responder.
    pub fn respond(
        local: Arc<LocalIdentity>,
        trust: Arc<Trust>,
        rekey_interval: u64,
    ) -> Result<Self, HandshakeError> {
        Ok(Self {
            noise: Self::build(&local, false)?,
            local,
            trust,
            rekey_interval: rekey_interval.max(1),
        })
    }

    /// Take the peer's next handshake message at `now` (Unix seconds).
    pub fn step(mut self, incoming: &[u8], now: u64) -> Result<Progress, HandshakeError> {
        if self.noise.is_handshake_finished() || self.noise.is_my_turn() {
            return Err(HandshakeError::Unexpected);
        }
        // A payload is never longer than the message that carries it.
        let mut payload = Zeroizing::new(vec![0u8; incoming.len()]);
        let n = self.noise.read_message(incoming, &mut payload)?;
        let payload = payload.get(..n).ok_or(HandshakeError::Unexpected)?;
        let initiator = self.noise.is_initiator();
        if !initiator && !self.noise.is_handshake_finished() {
            // Message 1 carries nothing; message 2 carries our bundle.
            if !payload.is_empty() {
                return Err(HandshakeError::Unexpected);
            }
            let out = write_message(&mut self.noise, &encode_bundle(&self.local))?;
            return Ok(Progress::Continue(Box::new(self), out));
        }
        let remote_static = self
            .noise
            .get_remote_static()
            .ok_or(HandshakeError::Unexpected)?;
        let peer = match verify_bundle(payload, remote_static, &self.trust, now) {
            Ok(peer) => peer,
            Err(error) if !initiator && self.noise.is_handshake_finished() => {
                let (_, send) = self.noise.dangerously_get_raw_split();
                let send = Zeroizing::new(send);
                let cipher = Cipher::new(&send).ok_or(HandshakeError::Unexpected)?;
                return Ok(Progress::Refused {
                    error,
                    encryptor: Box::new(Encryptor {
                        cipher,
                        next: 0,
                        interval: self.rekey_interval,
                    }),
                });
            }
            Err(error) => return Err(error),
        };
        let reply = if initiator {
            Some(write_message(&mut self.noise, &encode_bundle(&self.local))?)
        } else {
            None
        };
        if !self.noise.is_handshake_finished() {
            return Err(HandshakeError::Unexpected);
        }
        let mut handshake_hash = [0u8; 32];
        let hh = self.noise.get_handshake_hash();
        if hh.len() == handshake_hash.len() {
            handshake_hash.copy_from_slice(hh);
        }
        let (k1, k2) = self.noise.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let (send, recv) = if initiator { (&k1, &k2) } else { (&k2, &k1) };
        let (send, recv) = (
            Cipher::new(send).ok_or(HandshakeError::Unexpected)?,
            Cipher::new(recv).ok_or(HandshakeError::Unexpected)?,
        );
        let channel = Established {
            encryptor: Encryptor {
                cipher: send,
                next: 0,
                interval: self.rekey_interval,
            },
            decryptor: Decryptor {
                current: recv,
                previous: None,
                epoch: 0,
                window: ReplayWindow::default(),
                interval: self.rekey_interval,
            },
            peer,
            handshake_hash,
        };
        Ok(Progress::Established {
            reply,
            channel: Box::new(channel),
        })
    }
}

/// An established channel, before it is split between its two workers.
pub struct Established {
    /// Encrypts what we send.
    pub encryptor: Encryptor,
    /// Decrypts what we receive.
    pub decryptor: Decryptor,
    /// Who is at the other end.
    pub peer: Peer,
    /// The Noise handshake hash: equal at both ends, unique to this channel.
    pub handshake_hash: [u8; 32],
}

impl Established {
    /// A short code both ends derive from the handshake hash; if two people compare it out
    /// of band and it matches, no one sits in the middle. Eight digits in two groups.
    pub fn verification_code(&self) -> String {
        verification_code(&self.handshake_hash)
    }
}

/// The verification code of a handshake hash: `1234-5678`.
pub fn verification_code(handshake_hash: &[u8; 32]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(CODE_TAG)
        .chain_update(handshake_hash)
        .finalize();
    code_of_digest(&d.into())
}

/// The eight-digit code `1234-5678` a digest stands for: what people read out to each
/// other to compare two digests (channel and join-request verification codes).
pub fn code_of_digest(digest: &[u8; 32]) -> String {
    let mut n = [0u8; 8];
    n.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    let v = u64::from_be_bytes(n) % 100_000_000;
    format!("{:04}-{:04}", v / 10_000, v % 10_000)
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only, not on
/// where they differ: for comparing secrets and codes.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An AES-256-GCM key in the Noise cipher-function shape.
struct Cipher {
    key: LessSafeKey,
    /// Kept so the key bytes are zeroized with the cipher; ring's key schedule is its own.
    #[expect(dead_code, reason = "held only to be zeroized on drop")]
    raw: Zeroizing<[u8; 32]>,
}

impl Cipher {
    /// `None` only if ring refused a 32-byte AES-256 key, which it does not.
    fn new(raw: &[u8; 32]) -> Option<Self> {
        let raw = Zeroizing::new(*raw);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw.as_ref()).ok()?);
        Some(Self { key, raw })
    }

    fn nonce(n: u64) -> Nonce {
        let mut bytes = [0u8; 12];
        for (b, v) in bytes.iter_mut().skip(4).zip(n.to_be_bytes()) {
            *b = v;
        }
        Nonce::assume_unique_for_key(bytes)
    }

    /// `REKEY(k)`: the first 32 bytes of `ENCRYPT(k, 2⁶⁴−1, ∅, 0³²)` (Noise §4.2).
    fn rekey(&self) -> Option<Self> {
        let mut block = Zeroizing::new([0u8; 32]);
        // Only the ciphertext is the new key; the tag is dropped.
        let _tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(u64::MAX), Aad::empty(), block.as_mut())
            .ok()?;
        Self::new(&block)
    }
}

/// The sending half of a channel.
pub struct Encryptor {
    cipher: Cipher,
    next: u64,
    interval: u64,
}

impl fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryptor")
            .field("next", &self.next)
            .finish()
    }
}

impl Encryptor {
    /// Encode and seal `message` as the next channel message, in one buffer: the clear
    /// nonce, the encoding encrypted in place, the tag. The result is the payload to send as
    /// it is; the application bytes inside are copied once, into the encoding.
    pub fn seal(&mut self, message: &ChannelMessage) -> Result<Bytes, ChannelError> {
        let mut buf = BytesMut::with_capacity(NONCE_LEN + message.encoded_len_hint() + TAG_LEN);
        buf.put_u64(0);
        message.encode_into(&mut buf);
        self.seal_in_place(buf)
    }

    /// Seal `plaintext` as the next message: `nonce ‖ ciphertext ‖ tag`.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        let mut buf = BytesMut::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        buf.put_u64(0);
        buf.extend_from_slice(plaintext);
        Ok(self.seal_in_place(buf)?.into())
    }

    /// `buf` is `NONCE_LEN` bytes of room, then the plaintext; fill in the nonce, encrypt the
    /// rest in place and append the tag.
    fn seal_in_place(&mut self, mut buf: BytesMut) -> Result<Bytes, ChannelError> {
        let len = buf.len().saturating_sub(NONCE_LEN);
        if len > MAX_CHANNEL_PLAINTEXT {
            return Err(ChannelError::TooLarge {
                len,
                max: MAX_CHANNEL_PLAINTEXT,
            });
        }
        let n = self.next;
        if n == u64::MAX {
            return Err(ChannelError::Exhausted);
        }
        if n > 0 && n.is_multiple_of(self.interval) {
            self.cipher = self.cipher.rekey().ok_or(ChannelError::Exhausted)?;
        }
        // The nonce is spent from here on, whatever happens: one that failed to seal is
        // never used again, and the key is never rotated twice for one epoch.
        self.next = n + 1;
        let (nonce, plaintext) = buf
            .split_at_mut_checked(NONCE_LEN)
            .ok_or(ChannelError::Truncated(len))?;
        nonce.copy_from_slice(&n.to_be_bytes());
        let tag = self
            .cipher
            .key
            .seal_in_place_separate_tag(Cipher::nonce(n), Aad::empty(), plaintext)
            .map_err(|_| ChannelError::TooLarge {
                len,
                max: MAX_CHANNEL_PLAINTEXT,
            })?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf.freeze())
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

/// The receiving half of a channel.
pub struct Decryptor {
    current: Cipher,
    previous: Option<Cipher>,
    epoch: u64,
    window: ReplayWindow,
    interval: u64,
}

impl fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decryptor")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Decryptor {
    /// Open a message sealed by the peer's [`Encryptor`]. Only a message that authenticates
    /// moves the replay window or the key epoch.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.check(message)?;
        Ok(self.open(Bytes::copy_from_slice(message))?.into())
    }

    /// Like [`Decryptor::decrypt`], in place: if no one else holds `message`'s bytes they are
    /// decrypted where they are (otherwise into one copy), and the plaintext is a slice of
    /// that buffer, so what is decoded from it can borrow instead of copy.
    pub fn open(&mut self, message: Bytes) -> Result<Bytes, ChannelError> {
        let n = self.check(&message)?;
        let epoch = n / self.interval;
        let next_key;
        let cipher = if epoch == self.epoch {
            &self.current
        } else if epoch.checked_add(1) == Some(self.epoch) {
            self.previous.as_ref().ok_or(ChannelError::TooOld(n))?
        } else if epoch == self.epoch.saturating_add(1) {
            next_key = self
                .current
                .rekey()
                .ok_or(ChannelError::Authentication(n))?;
            &next_key
        } else {
            return Err(ChannelError::EpochSkipped(n));
        };
        let mut buf = message
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let sealed = buf
            .get_mut(NONCE_LEN..)
            .ok_or(ChannelError::Truncated(NONCE_LEN))?;
        let plain_len = cipher
            .key
            .open_in_place(Cipher::nonce(n), Aad::empty(), sealed)
            .map_err(|_| ChannelError::Authentication(n))?
            .len();
        if epoch == self.epoch.saturating_add(1) {
            let next = self
                .current
                .rekey()
                .ok_or(ChannelError::Authentication(n))?;
            self.previous = Some(std::mem::replace(&mut self.current, next));
            self.epoch = epoch;
        }
        self.window.mark(n);
        buf.truncate(NONCE_LEN + plain_len);
        buf.advance(NONCE_LEN);
        Ok(buf.freeze())
    }

    /// The nonce of `message`, if its length is plausible and the window would take it.
    fn check(&self, message: &[u8]) -> Result<u64, ChannelError> {
        if message.len() < NONCE_LEN + TAG_LEN {
            return Err(ChannelError::Truncated(message.len()));
        }
        if message.len() > MAX_SEALED_MESSAGE {
            return Err(ChannelError::TooLarge {
                len: message.len(),
                max: MAX_SEALED_MESSAGE,
            });
        }
        let mut nb = [0u8; NONCE_LEN];
        nb.copy_from_slice(message.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
        let n = u64::from_be_bytes(nb);
        self.window.check(n)?;
        Ok(n)
    }
}

/// Which recent nonces have been seen: the highest, and a bitmap of the 128 below it.
#[derive(Debug, Default, Clone)]
struct ReplayWindow {
    highest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    fn check(&self, n: u64) -> Result<(), ChannelError> {
        let Some(h) = self.highest else { return Ok(()) };
        if n > h {
            return Ok(());
        }
        let back = h - n;
        if back >= REPLAY_WINDOW {
            return Err(ChannelError::TooOld(n));
        }
        if self.seen & (1u128 << back) != 0 {
            return Err(ChannelError::Replayed(n));
        }
        Ok(())
    }

    fn mark(&mut self, n: u64) {
        match self.highest {
            None => {
                self.highest = Some(n);
                self.seen = 1;
            }
            Some(h) if n > h => {
                let shift = n - h;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(n);
            }
            Some(h) => {
                let back = h - n;
                if back < REPLAY_WINDOW {
                    self.seen |= 1u128 << back;
                }
            }
        }
    }
}

/// What travels inside a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelMessage {
    /// A routed message: where it goes after the channel, how to answer, the bytes.
    Payload(TransportMessage),
    /// A member's refreshed credential.
    RefreshCredential(Bytes),
    /// The sender is closing the channel.
    Close,
    /// The responder accepted the initiator: the first message it sends.
    Ready,
    /// A keep-alive: the sender is there, with nothing to say.
    Ping,
    /// The responder refused the initiator: an encoded [`Undeliverable`] saying why, sent
    /// instead of `Ready`.
    Refused(Bytes),
}

impl ChannelMessage {
    /// Encode: one tag byte, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut b);
        b.into()
    }

    /// Append the encoding to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        match self {
            ChannelMessage::Payload(m) => {
                dst.put_u8(0);
                m.encode(dst);
            }
            ChannelMessage::RefreshCredential(c) => {
                dst.put_u8(1);
                dst.extend_from_slice(c);
            }
            ChannelMessage::Close => dst.put_u8(2),
            ChannelMessage::Ready => dst.put_u8(3),
            ChannelMessage::Ping => dst.put_u8(4),
            ChannelMessage::Refused(r) => {
                dst.put_u8(5);
                dst.extend_from_slice(r);
            }
        }
    }

    /// A close upper estimate of the encoded length, so one allocation holds the encoding
    /// with its nonce and tag.
    fn encoded_len_hint(&self) -> usize {
        // Per address: array, kind and string headers (at most 1 + 2 + 3 bytes).
        let route = |r: &kith_node::Route| r.iter().map(|a| a.value().len() + 6).sum::<usize>();
        match self {
            // Tag, map, keys, version, route headers, payload header: under 24 bytes.
            ChannelMessage::Payload(m) => {
                24 + route(&m.onward_route) + route(&m.return_route) + m.payload.len()
            }
            ChannelMessage::RefreshCredential(c) | ChannelMessage::Refused(c) => 1 + c.len(),
            ChannelMessage::Close | ChannelMessage::Ready | ChannelMessage::Ping => 1,
        }
    }

    /// Decode what [`ChannelMessage::encode`] produced. A payload is a slice of `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Self, kith_transport::DecodeError> {
        match bytes.first() {
            Some(0) => TransportMessage::decode(&bytes.slice(1..)).map(ChannelMessage::Payload),
            Some(1) => Ok(ChannelMessage::RefreshCredential(bytes.slice(1..))),
            Some(2) if bytes.len() == 1 => Ok(ChannelMessage::Close),
            Some(3) if bytes.len() == 1 => Ok(ChannelMessage::Ready),
            Some(4) if bytes.len() == 1 => Ok(ChannelMessage::Ping),
            Some(5) => Ok(ChannelMessage::Refused(bytes.slice(1..))),
            _ => Err(kith_transport::DecodeError::Shape {
                found: "an unknown channel message kind",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialSigningKey, IdentitySecret};

    const NOW: u64 = 1_000_000;

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"1234", b"1234"));
        assert!(!constant_time_eq(b"1234", b"1235"));
        assert!(!constant_time_eq(b"1234", b"123"));
        assert!(!constant_time_eq(b"123", b"1234"));
    }

    #[test]
    fn codes_of_digests_are_eight_digits_in_two_groups() {
        assert_eq!(code_of_digest(&[0; 32]), "0000-0000");
        let code = code_of_digest(&[0xff; 32]);
        assert_eq!(code.len(), 9);
        assert_eq!(code.as_bytes()[4], b'-');
        assert_ne!(code, code_of_digest(&[0xfe; 32]));
    }

    struct Party {
        local: Arc<LocalIdentity>,
        secret: IdentitySecret,
    }

    fn party(credentials: Vec<CredentialAndPurposeKey>) -> Party {
        let (identity, secret) = Identity::create(0);
        let key = SecureChannelKey::generate(&identity, &secret, 0, NOW * 2);
        Party {
            local: Arc::new(LocalIdentity {
                identity,
                key,
                credentials,
            }),
            secret,
        }
    }

    struct Authority {
        identity: Identity,
        key: CredentialSigningKey,
    }

    fn authority() -> Authority {
        let (identity, secret) = Identity::create(0);
        let key = CredentialSigningKey::generate(&identity, &secret, 0, NOW * 2);
        Authority { identity, key }
    }

    fn trust(authorities: &[&Authority], admission: Admission) -> Arc<Trust> {
        Arc::new(Trust {
            authorities: authorities.iter().map(|a| a.identity.clone()).collect(),
            admission,
            revocations: Default::default(),
        })
    }

    fn any() -> Arc<Trust> {
        Arc::new(Trust {
            authorities: vec![],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        })
    }

    /// Run a whole handshake; returns (initiator's channel, responder's channel).
    fn connect(
        a: &Party,
        a_trust: Arc<Trust>,
        b: &Party,
        b_trust: Arc<Trust>,
        interval: u64,
    ) -> Result<(Established, Established), HandshakeError> {
        let (ha, m1) = Handshake::initiate(a.local.clone(), a_trust, interval)?;
        let hb = Handshake::respond(b.local.clone(), b_trust, interval)?;
        let Progress::Continue(hb, m2) = hb.step(&m1, NOW)? else {
            panic!("responder finished early")
        };
        let Progress::Established {
            reply: Some(m3),
            channel: ca,
        } = ha.step(&m2, NOW)?
        else {
            panic!("initiator did not finish")
        };
        let cb = match (*hb).step(&m3, NOW)? {
            Progress::Established {
                reply: None,
                channel: cb,
            } => cb,
            Progress::Refused {
                error,
                mut encryptor,
            } => {
                // The refusal is sealed for the initiator: it opens it with its own keys.
                let mut ca = ca;
                let refusal = encryptor
                    .seal(&ChannelMessage::Refused(Bytes::from_static(b"why")))
                    .unwrap();
                let opened = ca.decryptor.open(refusal).unwrap();
                assert_eq!(
                    ChannelMessage::decode(opened).unwrap(),
                    ChannelMessage::Refused(Bytes::from_static(b"why"))
                );
                return Err(error);
            }
            _ => panic!("responder did not finish"),
        };
        Ok((*ca, *cb))
    }

    #[test]
    fn both_sides_learn_each_other_and_talk_both_ways() {
        let a = party(vec![]);
        let b = party(vec![]);
        let (mut ca, mut cb) = connect(&a, any(), &b, any(), DEFAULT_REKEY_INTERVAL).unwrap();
        assert_eq!(ca.peer.identifier, *b.local.identity.identifier());
        assert_eq!(cb.peer.identifier, *a.local.identity.identifier());
        assert_eq!(ca.handshake_hash, cb.handshake_hash);
        assert_eq!(ca.verification_code(), cb.verification_code());
        let m = ca.encryptor.encrypt(b"hello").unwrap();
        assert_eq!(cb.decryptor.decrypt(&m).unwrap(), b"hello");
        let m = cb.encryptor.encrypt(b"back").unwrap();
        assert_eq!(ca.decryptor.decrypt(&m).unwrap(), b"back");
        // The ciphertext does not contain the plaintext.
        let m = ca.encryptor.encrypt(b"secret words").unwrap();
        assert!(!m.windows(12).any(|w| w == b"secret words"));
    }

    #[test]
    fn credentials_become_attributes_and_bad_ones_fail_the_handshake() {
        let auth = authority();
        let rogue = authority();
        let b = party(vec![]);
        let attrs: BTreeMap<String, String> = [("component".to_string(), "db".to_string())].into();
        let (id, secret) = Identity::create(0);
        let good = CredentialAndPurposeKey::issue(
            &auth.key,
            id.identifier(),
            attrs.clone(),
            NOW - 10,
            NOW + 100,
        )
        .unwrap();
        let key = SecureChannelKey::generate(&id, &secret, 0, NOW * 2);
        let a = Party {
            local: Arc::new(LocalIdentity {
                identity: id.clone(),
                key,
                credentials: vec![good],
            }),
            secret,
        };
        let (_, cb) = connect(
            &a,
            any(),
            &b,
            trust(&[&auth], Admission::CredentialHolders),
            16,
        )
        .unwrap();
        assert_eq!(cb.peer.attributes, attrs);
        assert_eq!(cb.peer.credentials_expire_at, Some(NOW + 100));

        // A credential from an authority we do not trust is ignored: no attributes, and it
        // does not count as a credential for admission.
        let from_rogue = CredentialAndPurposeKey::issue(
            &rogue.key,
            id.identifier(),
            attrs.clone(),
            NOW - 10,
            NOW + 100,
        )
        .unwrap();
        let rogue_member = Party {
            local: Arc::new(LocalIdentity {
                identity: id.clone(),
                key: SecureChannelKey::generate(&id, &a.secret, 0, NOW * 2),
                credentials: vec![from_rogue],
            }),
            secret: IdentitySecret::generate(),
        };
        let (_, cb) = connect(
            &rogue_member,
            any(),
            &b,
            trust(&[&auth], Admission::AnyIdentity),
            16,
        )
        .unwrap();
        assert!(cb.peer.attributes.is_empty());
        assert_eq!(cb.peer.credentials_expire_at, None);
        let err = connect(
            &rogue_member,
            any(),
            &b,
            trust(&[&auth], Admission::CredentialHolders),
            16,
        )
        .err();
        assert!(
            matches!(err, Some(HandshakeError::NotAdmitted(..))),
            "{err:?}"
        );

        // An expired credential from a trusted authority fails the handshake.
        let expired = CredentialAndPurposeKey::issue(
            &auth.key,
            id.identifier(),
            attrs.clone(),
            NOW - 100,
            NOW - 1,
        )
        .unwrap();
        let bad = Party {
            local: Arc::new(LocalIdentity {
                identity: id.clone(),
                key: SecureChannelKey::generate(&id, &a.secret, 0, NOW * 2),
                credentials: vec![expired],
            }),
            secret: IdentitySecret::generate(),
        };
        let err = connect(&bad, any(), &b, trust(&[&auth], Admission::AnyIdentity), 16).err();
        assert!(
            matches!(
                err,
                Some(HandshakeError::Credential(CredentialError::Expired { .. }))
            ),
            "expired: {err:?}"
        );
        // A credential for someone else.
        let (other, _) = Identity::create(0);
        let c = CredentialAndPurposeKey::issue(
            &auth.key,
            other.identifier(),
            attrs,
            NOW - 10,
            NOW + 100,
        )
        .unwrap();
        let key = SecureChannelKey::generate(&id, &a.secret, 0, NOW * 2);
        let thief = Party {
            local: Arc::new(LocalIdentity {
                identity: id.clone(),
                key,
                credentials: vec![c],
            }),
            secret: IdentitySecret::generate(),
        };
        assert!(matches!(
            connect(
                &thief,
                any(),
                &b,
                trust(&[&auth], Admission::AnyIdentity),
                16
            ),
            Err(HandshakeError::Credential(
                CredentialError::WrongSubject { .. }
            ))
        ));
    }

    #[test]
    fn admission_rules_refuse_who_they_should() {
        let a = party(vec![]);
        let b = party(vec![]);
        let err = connect(
            &a,
            any(),
            &b,
            Arc::new(Trust {
                authorities: vec![],
                admission: Admission::CredentialHolders,
                revocations: Default::default(),
            }),
            16,
        );
        assert!(matches!(err, Err(HandshakeError::NotAdmitted(_, _))));
        let others: BTreeSet<Identifier> = [*b.local.identity.identifier()].into();
        let err = connect(
            &a,
            any(),
            &b,
            Arc::new(Trust {
                authorities: vec![],
                admission: Admission::Identifiers(others),
                revocations: Default::default(),
            }),
            16,
        );
        assert!(matches!(err, Err(HandshakeError::NotAdmitted(_, _))));
        let allowed: BTreeSet<Identifier> = [*a.local.identity.identifier()].into();
        assert!(
            connect(
                &a,
                any(),
                &b,
                Arc::new(Trust {
                    authorities: vec![],
                    admission: Admission::Identifiers(allowed),
                    revocations: Default::default(),
                }),
                16
            )
            .is_ok()
        );
        // The initiator applies its rule to the responder too.
        let err = connect(
            &a,
            Arc::new(Trust {
                authorities: vec![],
                admission: Admission::CredentialHolders,
                revocations: Default::default(),
            }),
            &b,
            any(),
            16,
        );
        assert!(matches!(err, Err(HandshakeError::NotAdmitted(_, _))));
    }

    /// A member of `auth` whose credential and channel key are valid until `until`.
    fn member(auth: &Authority, until: u64) -> Party {
        let (identity, secret) = Identity::create(0);
        let attrs: BTreeMap<String, String> = [("role".to_string(), "db".to_string())].into();
        let credential = CredentialAndPurposeKey::issue(
            &auth.key,
            identity.identifier(),
            attrs,
            NOW - 10,
            until,
        )
        .unwrap();
        let key = SecureChannelKey::generate(&identity, &secret, 0, until);
        Party {
            local: Arc::new(LocalIdentity {
                identity,
                key,
                credentials: vec![credential],
            }),
            secret,
        }
    }

    #[test]
    fn a_tampered_bundle_is_refused_after_the_genuine_one_was_remembered() {
        let auth = authority();
        let m = member(&auth, NOW + 100);
        let trust = trust(&[&auth], Admission::CredentialHolders);
        let bundle = encode_bundle(&m.local);
        let static_key = *m.local.key.public_bytes();
        // Twice: the second time every signature in it is already remembered.
        for _ in 0..2 {
            let peer = verify_bundle(&bundle, &static_key, &trust, NOW).unwrap();
            assert_eq!(peer.identifier, *m.local.identity.identifier());
        }
        for i in 0..bundle.len() {
            let mut bad = bundle.clone();
            bad[i] ^= 0x04;
            assert!(
                verify_bundle(&bad, &static_key, &trust, NOW).is_err(),
                "byte {i} of {}",
                bundle.len()
            );
        }
        assert!(verify_bundle(&bundle, &static_key, &trust, NOW).is_ok());
    }

    #[test]
    fn every_check_still_runs_on_a_remembered_bundle() {
        let auth = authority();
        let m = member(&auth, NOW + 100);
        let holders = trust(&[&auth], Admission::CredentialHolders);
        let bundle = encode_bundle(&m.local);
        let static_key = *m.local.key.public_bytes();
        verify_bundle(&bundle, &static_key, &holders, NOW).unwrap();

        // Expired: the credential and the channel key both end at NOW + 100.
        let credential_only = {
            let key = SecureChannelKey::generate(&m.local.identity, &m.secret, 0, NOW * 2);
            let local = LocalIdentity {
                identity: m.local.identity.clone(),
                credentials: m.local.credentials.clone(),
                key,
            };
            let static_key = *local.key.public_bytes();
            let bundle = encode_bundle(&local);
            verify_bundle(&bundle, &static_key, &holders, NOW).unwrap();
            (bundle, static_key)
        };
        assert!(matches!(
            verify_bundle(&credential_only.0, &credential_only.1, &holders, NOW + 100),
            Err(HandshakeError::Credential(CredentialError::Expired { .. }))
        ));
        assert!(matches!(
            verify_bundle(&bundle, &static_key, &holders, NOW + 100),
            Err(HandshakeError::Attestation(_))
        ));
        // Not yet valid, long before its start.
        assert!(matches!(
            verify_bundle(&credential_only.0, &credential_only.1, &holders, NOW - 1000),
            Err(HandshakeError::Credential(
                CredentialError::NotYetValid { .. }
            ))
        ));
        // Another Noise static key than the attested one.
        let other = party(vec![]);
        assert!(matches!(
            verify_bundle(&bundle, other.local.key.public_bytes(), &holders, NOW),
            Err(HandshakeError::StaticKeyMismatch)
        ));
        // The same credential presented by another identity.
        let thief = LocalIdentity {
            identity: other.local.identity.clone(),
            key: SecureChannelKey::generate(&other.local.identity, &other.secret, 0, NOW * 2),
            credentials: m.local.credentials.clone(),
        };
        assert!(matches!(
            verify_bundle(
                &encode_bundle(&thief),
                thief.key.public_bytes(),
                &holders,
                NOW
            ),
            Err(HandshakeError::Credential(
                CredentialError::WrongSubject { .. }
            ))
        ));
        // An authority we no longer trust, and an admission rule that leaves the peer out.
        assert!(matches!(
            verify_bundle(
                &bundle,
                &static_key,
                &trust(&[], Admission::CredentialHolders),
                NOW
            ),
            Err(HandshakeError::NotAdmitted(..))
        ));
        let others: BTreeSet<Identifier> = [*other.local.identity.identifier()].into();
        assert!(matches!(
            verify_bundle(
                &bundle,
                &static_key,
                &trust(&[&auth], Admission::Identifiers(others)),
                NOW
            ),
            Err(HandshakeError::NotAdmitted(..))
        ));
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        // The identity element: every secret gives the all-zero shared secret with it.
        let mut dh = X25519 {
            known: StaticKey {
                secret: Zeroizing::new([0; 32]),
                public: [0; 32],
            },
            secret: Zeroizing::new([0; 32]),
            public: [0; 32],
        };
        snow::types::Dh::set(&mut dh, &[9; 32]);
        let mut out = [0u8; 32];
        assert!(snow::types::Dh::dh(&dh, &[0; 32], &mut out).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(snow::types::Dh::dh(&dh, &one, &mut out).is_err());
        // A real key agrees with x25519-dalek, and the public half is derived from the secret.
        let peer = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
        let peer_public = x25519_dalek::PublicKey::from(&peer);
        snow::types::Dh::dh(&dh, peer_public.as_bytes(), &mut out).unwrap();
        let mine = x25519_dalek::PublicKey::from(
            snow::types::Dh::pubkey(&dh)
                .try_into()
                .map(|k: [u8; 32]| k)
                .unwrap(),
        );
        assert_eq!(out, *peer.diffie_hellman(&mine).as_bytes());
    }

    #[test]
    fn a_static_key_that_is_not_the_attested_key_is_refused() {
        // The impostor presents the victim's identity and attestation but holds another key.
        let victim = party(vec![]);
        let stolen = victim.local.key.attestation().clone();
        let own = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
        let impostor = Party {
            local: Arc::new(LocalIdentity {
                identity: victim.local.identity.clone(),
                key: SecureChannelKey::mismatched_for_test(own, stolen),
                credentials: vec![],
            }),
            secret: IdentitySecret::generate(),
        };
        let b = party(vec![]);
        assert!(matches!(
            connect(&impostor, any(), &b, any(), 16),
            Err(HandshakeError::StaticKeyMismatch)
        ));
        assert!(matches!(
            connect(&b, any(), &impostor, any(), 16),
            Err(HandshakeError::StaticKeyMismatch)
        ));
    }

    #[test]
    fn truncated_or_bit_flipped_handshake_messages_are_refused() {
        let a = party(vec![]);
        let b = party(vec![]);
        let (ha, m1) = Handshake::initiate(a.local.clone(), any(), 16).unwrap();
        let hb = Handshake::respond(b.local.clone(), any(), 16).unwrap();
        let Progress::Continue(hb, m2) = hb.step(&m1, NOW).unwrap() else {
            panic!()
        };
        drop((ha, hb));
        for i in 0..m2.len() {
            let mut bad = m2.clone();
            bad[i] ^= 0x40;
            let (ha, _) = Handshake::initiate(a.local.clone(), any(), 16).unwrap();
            // A fresh initiator never accepts another handshake's message 2, nor an altered one.
            assert!(ha.step(&bad, NOW).is_err(), "byte {i}");
        }
        let (ha, m1) = Handshake::initiate(a.local.clone(), any(), 16).unwrap();
        let hb = Handshake::respond(b.local.clone(), any(), 16).unwrap();
        let Progress::Continue(_, m2) = hb.step(&m1, NOW).unwrap() else {
            panic!()
        };
        for cut in [0, 1, 31, 32, m2.len() / 2, m2.len() - 1] {
            let (ha2, _) = Handshake::initiate(a.local.clone(), any(), 16).unwrap();
            assert!(ha2.step(&m2[..cut], NOW).is_err(), "cut at {cut}");
        }
        // The untouched message still works for its own initiator.
        assert!(ha.step(&m2, NOW).is_ok());
    }

    #[test]
    fn an_expired_secure_channel_key_is_refused() {
        let (identity, secret) = Identity::create(0);
        let key = SecureChannelKey::generate(&identity, &secret, 0, NOW - 1);
        let stale = Party {
            local: Arc::new(LocalIdentity {
                identity,
                key,
                credentials: vec![],
            }),
            secret,
        };
        let b = party(vec![]);
        assert!(matches!(
            connect(&stale, any(), &b, any(), 16),
            Err(HandshakeError::Attestation(_))
        ));
    }

    fn pair(interval: u64) -> (Established, Established) {
        connect(&party(vec![]), any(), &party(vec![]), any(), interval).unwrap()
    }

    #[test]
    fn replays_and_messages_older_than_the_window_are_refused() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let msgs: Vec<Vec<u8>> = (0..300)
            .map(|i| a.encryptor.encrypt(format!("m{i}").as_bytes()).unwrap())
            .collect();
        b.decryptor.decrypt(&msgs[0]).unwrap();
        assert_eq!(
            b.decryptor.decrypt(&msgs[0]),
            Err(ChannelError::Replayed(0))
        );
        // Out of order within the window is fine, once.
        b.decryptor.decrypt(&msgs[100]).unwrap();
        b.decryptor.decrypt(&msgs[50]).unwrap();
        assert_eq!(
            b.decryptor.decrypt(&msgs[50]),
            Err(ChannelError::Replayed(50))
        );
        b.decryptor.decrypt(&msgs[299]).unwrap();
        assert_eq!(
            b.decryptor.decrypt(&msgs[60]),
            Err(ChannelError::TooOld(60))
        );
        assert!(b.decryptor.decrypt(&msgs[200]).is_ok());
    }

    #[test]
    fn altered_truncated_or_foreign_messages_fail_and_leave_the_channel_working() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let (mut x, _) = pair(DEFAULT_REKEY_INTERVAL);
        let m = a.encryptor.encrypt(b"payload").unwrap();
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 1;
            assert!(b.decryptor.decrypt(&bad).is_err(), "byte {i}");
        }
        assert_eq!(
            b.decryptor.decrypt(&m[..10]),
            Err(ChannelError::Truncated(10))
        );
        let foreign = x.encryptor.encrypt(b"payload").unwrap();
        assert_eq!(
            b.decryptor.decrypt(&foreign),
            Err(ChannelError::Authentication(0))
        );
        // None of that moved the window: the real message still opens.
        assert_eq!(b.decryptor.decrypt(&m).unwrap(), b"payload");
    }

    #[test]
    fn keys_rotate_every_interval_and_the_window_spans_one_rotation() {
        let (mut a, mut b) = pair(4);
        let msgs: Vec<Vec<u8>> = (0..20)
            .map(|i| a.encryptor.encrypt(&[i]).unwrap())
            .collect();
        // Nonce 4 starts epoch 1: it arrives before nonce 3 of epoch 0.
        for i in [
            0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
        ] {
            assert_eq!(
                b.decryptor.decrypt(&msgs[i]).unwrap(),
                vec![i as u8],
                "message {i}"
            );
        }
        // Messages of different epochs are sealed under different keys.
        let (mut c, mut d) = pair(4);
        let m0 = c.encryptor.encrypt(b"same").unwrap();
        for _ in 1..4 {
            c.encryptor.encrypt(b"x").unwrap();
        }
        let m4 = c.encryptor.encrypt(b"same").unwrap();
        assert_ne!(m0[NONCE_LEN..], m4[NONCE_LEN..]);
        d.decryptor.decrypt(&m4).unwrap();
        assert_eq!(
            d.decryptor.decrypt(&m0).unwrap(),
            b"same",
            "one epoch back still opens"
        );
    }

    #[test]
    fn a_forged_nonce_from_the_next_epoch_does_not_rotate_the_key() {
        let (mut a, mut b) = pair(4);
        let m0 = a.encryptor.encrypt(b"zero").unwrap();
        let mut forged = m0.clone();
        forged[..NONCE_LEN].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(
            b.decryptor.decrypt(&forged),
            Err(ChannelError::Authentication(4))
        );
        let mut far = m0.clone();
        far[..NONCE_LEN].copy_from_slice(&400u64.to_be_bytes());
        assert_eq!(
            b.decryptor.decrypt(&far),
            Err(ChannelError::EpochSkipped(400))
        );
        assert_eq!(b.decryptor.decrypt(&m0).unwrap(), b"zero");
    }

    #[test]
    fn transport_matches_snow_for_the_same_handshake() {
        // A plain XX handshake with snow alone; then our cipher and snow's transport must agree
        // on every message, before and after a rekey.
        let params: snow::params::NoiseParams = NOISE_PATTERN.parse().unwrap();
        let ki = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap();
        let kr = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap();
        let mut i = snow::Builder::new(params.clone())
            .local_private_key(&ki.private)
            .build_initiator()
            .unwrap();
        let mut r = snow::Builder::new(params)
            .local_private_key(&kr.private)
            .build_responder()
            .unwrap();
        let (mut buf, mut out) = (vec![0u8; 1024], vec![0u8; 1024]);
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut out).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut out).unwrap();
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut out).unwrap();
        let (k1, k2) = i.dangerously_get_raw_split();
        let mut snow_r = r.into_stateless_transport_mode().unwrap();
        let mut ours = Encryptor {
            cipher: Cipher::new(&k1).unwrap(),
            next: 0,
            interval: 3,
        };
        let mut theirs = Decryptor {
            current: Cipher::new(&k2).unwrap(),
            previous: None,
            epoch: 0,
            window: ReplayWindow::default(),
            interval: 3,
        };
        for n in 0..7u64 {
            if n > 0 && n % 3 == 0 {
                snow_r.rekey_incoming();
                snow_r.rekey_outgoing();
            }
            let sealed = ours.encrypt(b"kith").unwrap();
            let mut plain = [0u8; 64];
            let len = snow_r
                .read_message(n, &sealed[NONCE_LEN..], &mut plain)
                .unwrap();
            assert_eq!(&plain[..len], b"kith", "snow opens our message {n}");
            let mut sealed = vec![0u8; 64];
            let len = snow_r.write_message(n, b"back", &mut sealed).unwrap();
            let mut framed = n.to_be_bytes().to_vec();
            framed.extend_from_slice(&sealed[..len]);
            assert_eq!(
                theirs.decrypt(&framed).unwrap(),
                b"back",
                "we open snow's message {n}"
            );
        }
    }

    #[test]
    fn a_message_is_opened_where_it_lies_and_its_payload_is_not_copied() {
        let (mut a, mut b) = pair(DEFAULT_REKEY_INTERVAL);
        let m = ChannelMessage::Payload(TransportMessage {
            onward_route: kith_node::Route::from("echo"),
            return_route: kith_node::Route::from("client"),
            payload: Bytes::from(vec![5u8; 16 * 1024]),
            kind: kith_node::MessageKind::Data,
        });
        let sealed = a.encryptor.seal(&m).unwrap();
        let at = sealed.as_ptr_range();
        let plain = b.decryptor.open(sealed).unwrap();
        assert!(at.contains(&plain.as_ptr()), "opened in a copy");
        let opened = ChannelMessage::decode(plain).unwrap();
        let ChannelMessage::Payload(t) = &opened else {
            panic!("{opened:?}")
        };
        assert!(at.contains(&t.payload.as_ptr()), "payload copied");
        assert_eq!(opened, m);

        // Bytes someone else still holds are opened in a copy and left as they were.
        let sealed = a.encryptor.seal(&m).unwrap();
        let kept = sealed.clone();
        let plain = b.decryptor.open(sealed).unwrap();
        assert!(!kept.as_ptr_range().contains(&plain.as_ptr()));
        assert_eq!(ChannelMessage::decode(plain).unwrap(), m);
        assert_eq!(b.decryptor.open(kept), Err(ChannelError::Replayed(1)));
        // What `seal` makes, `decrypt` opens too, and the other way round.
        let sealed = a.encryptor.seal(&ChannelMessage::Ready).unwrap();
        assert_eq!(b.decryptor.decrypt(&sealed).unwrap(), [3]);
        let sealed = a.encryptor.encrypt(&[2]).unwrap();
        assert_eq!(
            ChannelMessage::decode(b.decryptor.open(Bytes::from(sealed)).unwrap()).unwrap(),
            ChannelMessage::Close
        );
    }

    #[test]
    fn channel_messages_round_trip() {
        let m = ChannelMessage::Payload(TransportMessage {
            onward_route: kith_node::Route::from("echo"),
            return_route: kith_node::Route::from("sc-1"),
            payload: Bytes::from_static(b"hi"),
            kind: kith_node::MessageKind::Data,
        });
        for m in [
            m,
            ChannelMessage::RefreshCredential(Bytes::from_static(b"cred")),
            ChannelMessage::Close,
        ] {
            assert_eq!(ChannelMessage::decode(Bytes::from(m.encode())).unwrap(), m);
        }
        assert!(ChannelMessage::decode(Bytes::new()).is_err());
        assert!(ChannelMessage::decode(Bytes::from_static(&[9])).is_err());
        assert!(ChannelMessage::decode(Bytes::from_static(&[2, 0])).is_err());
    }
}
