//! Revocations (DESIGN §5): an authority's signed, sequence-numbered statements that the
//! credentials it issued to a member before a moment are void — because the member was
//! deleted, or because its attributes changed and it holds a newer credential — and what a
//! node knows of them.
//!
//! Signed data of one statement: `[version = 1, seq, subject, at, kind]`; a statement is
//! void-ing every credential of the issuer for `subject` whose `created_at <= at` (the
//! authority stamps every credential it issues after a change later than the change). A
//! page of statements travels with the attestation of the key that signed them, like a
//! credential, so a node that trusts the authority checks them without asking anyone, and
//! may keep them (and its followers may relay them) without trusting whoever carried them.
//!
//! [`Revocations`] is a node's view: per authority, the statements it has applied, the
//! highest sequence number seen, and — for an authority whose feed the node follows — when
//! it last heard from it. Channels consult it at every handshake and whenever it changes;
//! past the grace, an authority whose feed went unheard stops vouching for anyone here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use minicbor::{Decoder, Encoder};
use tokio::sync::watch;

use crate::codec::{array_of, array_up_to, bounded_bytes, finished, fixed};
use crate::identity::verify;
use crate::{
    CredentialSigningKey, DecodeError, IDENTIFIER_LEN, Identifier, Identity, Purpose,
    PurposeKeyAttestation,
};

const REVOCATION_VERSION: u8 = 1;

/// Signature domain for revocation statements.
const REVOCATION_TAG: &[u8] = b"kith/revocation/1\0";

/// 200 statements: the most one page carries (the authority's list page size).
pub const MAX_PAGE_REVOCATIONS: usize = 200;

/// 128 bytes: the longest signed statement (a real one is about 40).
const MAX_STATEMENT: usize = 128;

/// Why a member's earlier credentials are void.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    /// It is no longer a member.
    Revoked,
    /// Its attributes changed: only a credential issued after the change speaks for it.
    Changed,
}

impl RevocationKind {
    fn to_wire(self) -> u8 {
        match self {
            RevocationKind::Revoked => 1,
            RevocationKind::Changed => 2,
        }
    }

    fn from_wire(n: u8) -> Option<Self> {
        match n {
            1 => Some(RevocationKind::Revoked),
            2 => Some(RevocationKind::Changed),
            _ => None,
        }
    }

    /// `revoked` or `changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Revoked => "revoked",
            RevocationKind::Changed => "changed",
        }
    }
}

/// One statement: the credentials issued to `subject` up to `at` are void.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Its place in the authority's feed, from 1.
    pub seq: u64,
    /// The member.
    pub subject: Identifier,
    /// Unix seconds: credentials created at or before this are void.
    pub at: u64,
    /// Why.
    pub kind: RevocationKind,
}

impl Revocation {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(5)
            .and_then(|e| e.u8(REVOCATION_VERSION))
            .and_then(|e| e.u64(self.seq))
            .and_then(|e| e.bytes(self.subject.as_bytes()))
            .and_then(|e| e.u64(self.at))
            .and_then(|e| e.u8(self.kind.to_wire()));
        e.into_writer()
    }

    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(data);
        array_of(&mut d, 5, "revocation")?;
        if d.u8()? != REVOCATION_VERSION {
            return Err(DecodeError::Shape("revocation version"));
        }
        let seq = d.u64()?;
        let subject =
            Identifier::from_bytes(fixed::<IDENTIFIER_LEN>(&mut d, "revocation subject")?);
        let at = d.u64()?;
        let kind =
            RevocationKind::from_wire(d.u8()?).ok_or(DecodeError::Shape("revocation kind"))?;
        finished(&d, data)?;
        Ok(Self {
            seq,
            subject,
            at,
            kind,
        })
    }
}

/// A page of statements as an authority signed them, with the attestation of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocations {
    statements: Vec<(Vec<u8>, [u8; 64])>,
    purpose_key: PurposeKeyAttestation,
}

/// Why a page of statements was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The encoding is invalid.
    #[error("invalid revocation encoding")]
    Decode(#[from] DecodeError),
    /// The page was not signed by a key of the authority it claims to come from.
    #[error("the revocations were signed by {0}, not by the authority they are from")]
    WrongIssuer(Identifier),
    /// The signing key's attestation is not acceptable.
    #[error("the authority's signing key is not acceptable")]
    Attestation(#[from] crate::AttestationError),
    /// A statement's signature does not verify.
    #[error("revocation {0}'s signature does not verify")]
    BadSignature(u64),
    /// Statements out of sequence order.
    #[error("revocations out of order: {after} then {seq}")]
    OutOfOrder {
        /// The earlier statement's number.
        after: u64,
        /// The one that followed it.
        seq: u64,
    },
}

impl SignedRevocations {
    /// `key` signs `statements`, which must be in increasing `seq` order.
    pub fn sign(key: &CredentialSigningKey, statements: &[Revocation]) -> Self {
        Self {
            statements: statements
                .iter()
                .map(|r| {
                    let data = r.encode();
                    let signature = key.sign(REVOCATION_TAG, &data);
                    (data, signature)
                })
                .collect(),
            purpose_key: key.attestation().clone(),
        }
    }

    /// How many statements the page holds.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// The statements, if `authority` signed them with a key it attested for credentials
    /// and they are in increasing sequence order; checked at `now` (Unix seconds).
    pub fn verify(
        &self,
        authority: &Identity,
        now: u64,
    ) -> Result<Vec<Revocation>, RevocationError> {
        if self.purpose_key.subject() != authority.identifier() {
            return Err(RevocationError::WrongIssuer(*self.purpose_key.subject()));
        }
        self.purpose_key
            .verify(authority, Purpose::Credentials, now, crate::CLOCK_SKEW)?;
        let mut out: Vec<Revocation> = Vec::with_capacity(self.statements.len());
        for (data, signature) in &self.statements {
            let r = Revocation::decode(data)?;
            if !verify(
                self.purpose_key.public_key(),
                REVOCATION_TAG,
                data,
                signature,
            ) {
                return Err(RevocationError::BadSignature(r.seq));
            }
            if let Some(last) = out.last()
                && last.seq >= r.seq
            {
                return Err(RevocationError::OutOfOrder {
                    after: last.seq,
                    seq: r.seq,
                });
            }
            out.push(r);
        }
        Ok(out)
    }

    /// Encoded as `[[[statement, signature], …], attestation]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        let _ = e
            .array(2)
            .and_then(|e| e.array(self.statements.len() as u64));
        for (data, signature) in &self.statements {
            let _ = e
                .array(2)
                .and_then(|e| e.bytes(data))
                .and_then(|e| e.bytes(signature));
        }
        let mut out = e.into_writer();
        out.extend_from_slice(&self.purpose_key.encode());
        out
    }

    /// Decode (not verify): at most [`MAX_PAGE_REVOCATIONS`] statements, each checked for
    /// shape.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder::new(bytes);
        array_of(&mut d, 2, "revocations")?;
        let n = array_up_to(&mut d, MAX_PAGE_REVOCATIONS, "revocations")?;
        let mut statements = Vec::with_capacity(n);
        for _ in 0..n {
            array_of(&mut d, 2, "revocation")?;
            let data = bounded_bytes(&mut d, MAX_STATEMENT, "revocation")?.to_vec();
            let signature = fixed::<64>(&mut d, "revocation signature")?;
            Revocation::decode(&data)?;
            statements.push((data, signature));
        }
        let purpose_key = PurposeKeyAttestation::decode_from(&mut d)?;
        finished(&d, bytes)?;
        Ok(Self {
            statements,
            purpose_key,
        })
    }
}

/// Why a credential does not speak for its subject here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Void {
    /// The subject is no longer a member (statement `seq`, at `at`).
    Revoked {
        /// The statement.
        seq: u64,
        /// When.
        at: u64,
    },
    /// The subject's attributes changed after this credential was issued.
    Superseded {
        /// The statement.
        seq: u64,
        /// When.
        at: u64,
    },
    /// The node has not heard the authority's feed since `heard_at` (Unix seconds), longer
    /// than its grace of `grace` seconds: it cannot tell whether the credential still holds.
    Unverifiable {
        /// When the feed was last heard, Unix seconds.
        heard_at: u64,
        /// The grace, seconds.
        grace: u64,
    },
}

impl fmt::Display for Void {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Void::Revoked { seq, at } => {
                write!(f, "credential revoked (revocation {seq}, at {at})")
            }
            Void::Superseded { seq, at } => write!(
                f,
                "credential superseded: the member's attributes changed (revocation {seq}, at {at})"
            ),
            Void::Unverifiable { heard_at, grace } => write!(
                f,
                "revocations unknown: the authority's feed was last heard at {heard_at} (Unix seconds), more than {grace} s ago"
            ),
        }
    }
}

/// What a node keeps of one authority's statements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityRevocations {
    /// The highest sequence number applied.
    pub head: u64,
    /// Per member, the latest statement about it.
    pub latest: HashMap<Identifier, Revocation>,
    /// If the node follows this authority's feed: when it last heard it (Unix seconds),
    /// and how long it may go unheard (seconds) before the authority vouches for no one.
    pub followed: Option<Followed>,
}

/// How a followed feed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// When the feed was last heard, Unix seconds.
    pub heard_at: u64,
    /// How long it may go unheard, seconds.
    pub grace: u64,
}

/// A node's view of its trusted authorities' revocations; shared by every channel of the
/// node, which it tells whenever it changes.
pub struct Revocations {
    authorities: Mutex<HashMap<Identifier, AuthorityRevocations>>,
    changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            authorities: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("generation", &*self.changed.borrow())
            .finish_non_exhaustive()
    }
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identifier, AuthorityRevocations>> {
        self.authorities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Apply `statements` of `authority` (already verified) that are newer than what is
    /// applied; returns how many were new. Channels are told.
    pub fn apply(&self, authority: &Identifier, statements: &[Revocation]) -> usize {
        let mut all = self.lock();
        let feed = all.entry(*authority).or_default();
        let mut applied = 0;
        for r in statements {
            if r.seq <= feed.head {
                continue;
            }
            feed.head = r.seq;
            let newer = feed.latest.get(&r.subject).is_none_or(|old| old.at <= r.at);
            if newer {
                feed.latest.insert(r.subject, *r);
            }
            applied += 1;
        }
        drop(all);
        if applied > 0 {
            self.bump();
        }
        applied
    }

    /// The highest sequence number applied for `authority` (0 for none).
    pub fn head(&self, authority: &Identifier) -> u64 {
        self.lock().get(authority).map_or(0, |f| f.head)
    }

    /// Follow `authority`'s feed: it vouches for no one once unheard for `grace` seconds
    /// past `heard_at`.
    pub fn follow(&self, authority: &Identifier, heard_at: u64, grace: u64) {
        self.lock().entry(*authority).or_default().followed = Some(Followed { heard_at, grace });
        self.bump();
    }

    /// The feed of `authority` was heard at `now`.
    pub fn heard(&self, authority: &Identifier, now: u64) {
        let was_stale = {
            let mut all = self.lock();
            let Some(followed) = all.get_mut(authority).and_then(|f| f.followed.as_mut()) else {
                return;
            };
            let was = now > followed.heard_at.saturating_add(followed.grace);
            followed.heard_at = now;
            was
        };
        if was_stale {
            self.bump();
        }
    }

    /// Whether a credential `authority` issued to `subject`, created at `created_at`, still
    /// speaks for it at `now`.
    pub fn check(
        &self,
        authority: &Identifier,
        subject: &Identifier,
        created_at: u64,
        now: u64,
    ) -> Result<(), Void> {
        let all = self.lock();
        let Some(feed) = all.get(authority) else {
            return Ok(());
        };
        if let Some(r) = feed.latest.get(subject)
            && created_at <= r.at
        {
            return Err(match r.kind {
                RevocationKind::Revoked => Void::Revoked {
                    seq: r.seq,
                    at: r.at,
                },
                RevocationKind::Changed => Void::Superseded {
                    seq: r.seq,
                    at: r.at,
                },
            });
        }
        if let Some(f) = feed.followed
            && now > f.heard_at.saturating_add(f.grace)
        {
            return Err(Void::Unverifiable {
                heard_at: f.heard_at,
                grace: f.grace,
            });
        }
        Ok(())
    }

    /// What is known of every authority, for status: per authority, its head, how many
    /// members its statements name, and how its feed stands if it is followed.
    pub fn overview(&self) -> Vec<(Identifier, u64, usize, Option<Followed>)> {
        let mut all: Vec<_> = self
            .lock()
            .iter()
            .map(|(a, f)| (*a, f.head, f.latest.len(), f.followed))
            .collect();
        all.sort_by_key(|(a, ..)| *a);
        all
    }

    /// A copy of what is known of `authority`, to keep across restarts.
    pub fn snapshot(&self, authority: &Identifier) -> Option<AuthorityRevocations> {
        self.lock().get(authority).cloned()
    }

    /// Restore what was kept of `authority` (before its feed is followed again).
    pub fn restore(&self, authority: &Identifier, kept: AuthorityRevocations) {
        self.lock().insert(*authority, kept);
        self.bump();
    }

    /// A receiver that sees every change: statements applied, feeds followed or heard again.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn authority() -> (Identity, CredentialSigningKey) {
        let (identity, secret) = Identity::create(NOW);
        let key = CredentialSigningKey::generate(&identity, &secret, NOW - 10, NOW + 3600);
        (identity, key)
    }

    fn member(n: u8) -> Identifier {
        Identifier::from_bytes([n; IDENTIFIER_LEN])
    }

    fn statement(seq: u64, n: u8, at: u64, kind: RevocationKind) -> Revocation {
        Revocation {
            seq,
            subject: member(n),
            at,
            kind,
        }
    }

    #[test]
    fn a_signed_page_round_trips_and_verifies_only_for_its_authority() {
        let (a, key) = authority();
        let (b, _) = authority();
        let page = [
            statement(1, 1, NOW, RevocationKind::Revoked),
            statement(2, 2, NOW + 1, RevocationKind::Changed),
        ];
        let signed = SignedRevocations::sign(&key, &page);
        let decoded = SignedRevocations::decode(&signed.encode()).unwrap();
        assert_eq!(decoded, signed);
        assert_eq!(decoded.verify(&a, NOW).unwrap(), page);
        assert!(matches!(
            decoded.verify(&b, NOW),
            Err(RevocationError::WrongIssuer(_))
        ));
    }

    #[test]
    fn an_altered_statement_fails_its_signature() {
        let (a, key) = authority();
        let signed =
            SignedRevocations::sign(&key, &[statement(7, 1, NOW, RevocationKind::Revoked)]);
        let mut forged = signed.clone();
        forged.statements[0].0 = statement(7, 2, NOW, RevocationKind::Revoked).encode();
        assert!(matches!(
            forged.verify(&a, NOW),
            Err(RevocationError::BadSignature(7))
        ));
    }

    #[test]
    fn statements_out_of_order_are_refused() {
        let (a, key) = authority();
        let signed = SignedRevocations::sign(
            &key,
            &[
                statement(2, 1, NOW, RevocationKind::Revoked),
                statement(2, 2, NOW, RevocationKind::Revoked),
            ],
        );
        assert!(matches!(
            signed.verify(&a, NOW),
            Err(RevocationError::OutOfOrder { after: 2, seq: 2 })
        ));
    }

    #[test]
    fn a_statement_voids_credentials_created_up_to_its_time_only() {
        let revocations = Revocations::default();
        let (a, _) = authority();
        let a = *a.identifier();
        assert_eq!(revocations.check(&a, &member(1), NOW, NOW), Ok(()));
        assert_eq!(
            revocations.apply(&a, &[statement(1, 1, NOW, RevocationKind::Revoked)]),
            1
        );
        assert_eq!(
            revocations.check(&a, &member(1), NOW, NOW),
            Err(Void::Revoked { seq: 1, at: NOW })
        );
        // Enrolled again later: a credential issued after the statement speaks for it.
        assert_eq!(revocations.check(&a, &member(1), NOW + 1, NOW), Ok(()));
        assert_eq!(revocations.check(&a, &member(2), NOW, NOW), Ok(()));
        // Another authority's credentials are not touched.
        assert_eq!(revocations.check(&member(9), &member(1), NOW, NOW), Ok(()));
        // A statement seen again is not applied twice; a change supersedes.
        assert_eq!(
            revocations.apply(
                &a,
                &[
                    statement(1, 1, NOW, RevocationKind::Revoked),
                    statement(2, 1, NOW + 5, RevocationKind::Changed),
                ]
            ),
            1
        );
        assert_eq!(revocations.head(&a), 2);
        assert_eq!(
            revocations.check(&a, &member(1), NOW + 5, NOW),
            Err(Void::Superseded {
                seq: 2,
                at: NOW + 5
            })
        );
    }

    #[test]
    fn a_followed_feed_unheard_past_its_grace_vouches_for_no_one() {
        let revocations = Revocations::default();
        let a = member(9);
        revocations.follow(&a, NOW, 60);
        assert_eq!(revocations.check(&a, &member(1), NOW, NOW + 60), Ok(()));
        assert_eq!(
            revocations.check(&a, &member(1), NOW, NOW + 61),
            Err(Void::Unverifiable {
                heard_at: NOW,
                grace: 60
            })
        );
        let mut changes = revocations.subscribe();
        changes.mark_unchanged();
        revocations.heard(&a, NOW + 61);
        assert!(changes.has_changed().unwrap());
        assert_eq!(revocations.check(&a, &member(1), NOW, NOW + 100), Ok(()));
        // An authority not followed never goes stale.
        assert_eq!(
            revocations.check(&member(8), &member(1), NOW, u64::MAX),
            Ok(())
        );
    }

    #[test]
    fn applying_tells_subscribers_and_a_snapshot_restores() {
        let revocations = Revocations::default();
        let a = member(9);
        let mut changes = revocations.subscribe();
        changes.mark_unchanged();
        revocations.apply(&a, &[statement(3, 1, NOW, RevocationKind::Revoked)]);
        assert!(changes.has_changed().unwrap());
        let kept = revocations.snapshot(&a).unwrap();
        let restored = Revocations::default();
        restored.restore(&a, kept);
        assert_eq!(restored.head(&a), 3);
        assert!(restored.check(&a, &member(1), NOW, NOW).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedRevocations::decode(&bytes);
        }

        #[test]
        fn truncated_and_altered_pages_never_verify_as_something_else(
            seqs in proptest::collection::btree_set(1u64..1_000_000, 0..20),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let (a, key) = authority();
            let page: Vec<Revocation> = seqs
                .iter()
                .map(|&s| statement(s, (s % 251) as u8, NOW, RevocationKind::Revoked))
                .collect();
            let bytes = SignedRevocations::sign(&key, &page).encode();
            let cut = cut.index(bytes.len());
            prop_assert!(SignedRevocations::decode(&bytes[..cut]).is_err());
            let mut altered = bytes.clone();
            let i = flip.index(altered.len());
            altered[i] ^= 0x01;
            if let Ok(page2) = SignedRevocations::decode(&altered)
                && let Ok(got) = page2.verify(&a, NOW)
            {
                prop_assert_eq!(got, page);
            }
        }
    }
}
