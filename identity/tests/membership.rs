//! Membership changes reaching open channels, between real nodes over loopback TCP: renewed
//! credentials pushed in place, attributes kept per issuer, revocations closing channels and
//! refusing new ones, and an authority unheard past the grace vouching for no one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kith_identity::channel::{Admission, HandshakeError, LocalIdentity, Trust};
use kith_identity::revocation::{Revocation, RevocationKind};
use kith_identity::secure_channel::{
    self, ChannelEnded, ChannelSettings, DEFAULT_LISTENER, SecureChannel, SecureChannelError,
    SharedSettings,
};
use kith_identity::{CredentialAndPurposeKey, CredentialSigningKey, Identity, SecureChannelKey};
use kith_node::testing::until;
use kith_node::*;
use kith_transport::TcpTransport;

const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An authority: its identity and credential signing key.
struct Authority {
    identity: Identity,
    key: CredentialSigningKey,
}

impl Authority {
    fn new() -> Self {
        let (identity, secret) = Identity::create(now());
        let key = CredentialSigningKey::generate(&identity, &secret, now() - 5, now() + 3600);
        Self { identity, key }
    }

    fn issue(
        &self,
        to: &Identity,
        attributes: &[(&str, &str)],
        created_at: u64,
        expires_at: u64,
    ) -> CredentialAndPurposeKey {
        let attributes: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CredentialAndPurposeKey::issue(
            &self.key,
            to.identifier(),
            attributes,
            created_at,
            expires_at,
        )
        .unwrap()
    }
}

/// A member node: its identity, the settings it shares with everything it opens, and an
/// `attrs` service that answers with the attributes the channel stamped on the message.
struct Member {
    node: Node,
    listener: String,
    identity: Identity,
    secret_key: SecureChannelKey,
    shared: SharedSettings,
}

impl Member {
    async fn start(name: &str, trust: Trust) -> Self {
        let node = Node::new(name);
        let tcp = TcpTransport::start(&node);
        let listener = tcp.listen("127.0.0.1:0").await.unwrap().to_string();
        let (identity, secret) = Identity::create(now());
        let key = SecureChannelKey::generate(&identity, &secret, now() - 5, now() + 3600);
        let local = LocalIdentity {
            identity: identity.clone(),
            key: copy(&key),
            credentials: vec![],
        };
        let shared = SharedSettings::new(ChannelSettings::new(Arc::new(local), Arc::new(trust)));
        secure_channel::listen(&node, DEFAULT_LISTENER, shared.clone()).unwrap();
        let only_channels = AllowOrigins(|o: &Origin| matches!(o, Origin::SecureChannel(_)));
        node.start_worker_with_policy([Address::local("attrs")], Arc::new(only_channels), Attrs)
            .unwrap();
        Self {
            node,
            listener,
            identity,
            secret_key: key,
            shared,
        }
    }

    /// Present `credentials` from now on, and push them into every open channel.
    fn present(&self, credentials: Vec<CredentialAndPurposeKey>) {
        let mut settings = self.shared.get();
        settings.local = Arc::new(LocalIdentity {
            identity: self.identity.clone(),
            key: copy(&self.secret_key),
            credentials,
        });
        self.shared.set(settings);
    }

    fn trust(&self) -> Arc<Trust> {
        self.shared.get().trust
    }

    async fn open_to(&self, other: &Member) -> Result<SecureChannel, SecureChannelError> {
        let route = Route::from(vec![
            Address::try_new(TCP, &other.listener).unwrap(),
            Address::local(DEFAULT_LISTENER),
        ]);
        secure_channel::create(&self.node, route, &self.shared.get()).await
    }

    /// The attributes the peer's end of `channel` stamps on our messages now.
    async fn attributes_seen_over(&self, channel: &SecureChannel) -> String {
        let mut client = self.node.client().unwrap();
        let through = Route::from(vec![channel.encryptor.clone(), Address::local("attrs")]);
        let reply = client.request(through, "?", WAIT).await.unwrap();
        String::from_utf8(reply.payload.to_vec()).unwrap()
    }

    fn channel_ends(&self) -> usize {
        self.node
            .addresses()
            .iter()
            .filter(|a| a.value().starts_with("sc-"))
            .count()
    }
}

fn copy(key: &SecureChannelKey) -> SecureChannelKey {
    SecureChannelKey::from_stored(&key.secret_bytes(), key.attestation().clone()).unwrap()
}

/// Answers with the attributes the channel stamped on the message.
struct Attrs;

impl Worker for Attrs {
    async fn handle_message(&mut self, ctx: &mut Context, m: Message) -> Result<(), WorkerError> {
        let answer = match m.origin() {
            Origin::SecureChannel(peer) => format!("{:?}", peer.attributes),
            other => format!("not a channel: {other:?}"),
        };
        ctx.send(m.return_route, answer).await?;
        Ok(())
    }
}

fn trusting(authorities: &[&Authority], admission: Admission) -> Trust {
    Trust::new(
        authorities.iter().map(|a| a.identity.clone()).collect(),
        admission,
    )
}

/// Wait until `seen` (re-evaluated) is `expected`, bounded by [`WAIT`].
async fn until_seen(a: &Member, channel: &SecureChannel, expected: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = a.attributes_seen_over(channel).await;
        if seen == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {seen}, waited for {expected}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_renewed_credential_replaces_what_its_issuer_said_in_the_open_channel() {
    let authority = Authority::new();
    let a = Member::start("a", trusting(&[&authority], Admission::AnyIdentity)).await;
    let b = Member::start("b", trusting(&[&authority], Admission::CredentialHolders)).await;
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web"), ("location", "sf")],
        now() - 5,
        now() + 600,
    )]);
    let channel = a.open_to(&b).await.unwrap();
    assert_eq!(
        a.attributes_seen_over(&channel).await,
        r#"{"component": "web", "location": "sf"}"#
    );
    // Narrowed: the new credential replaces the old one; nothing of it is left over.
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "db")],
        now() - 4,
        now() + 600,
    )]);
    until_seen(&a, &channel, r#"{"component": "db"}"#).await;
    assert!(channel.end_signal().has_ended().is_none());
}

/// The stamps on the messages a `stamps` service was sent, in the order they came.
type Stamps = Arc<Mutex<Vec<Arc<ChannelPeer>>>>;

/// Records the stamp on every message, then answers: by the time the sender has the
/// answer, the stamp is recorded.
struct Recorder(Stamps);

impl Worker for Recorder {
    async fn handle_message(&mut self, ctx: &mut Context, m: Message) -> Result<(), WorkerError> {
        let Origin::SecureChannel(peer) = m.origin() else {
            return Err("not through a channel".into());
        };
        self.0.lock().unwrap().push(Arc::clone(peer));
        ctx.send(m.return_route, "recorded").await?;
        Ok(())
    }
}

/// Start a `stamps` service on `member`, admitting channel messages only.
fn record_stamps(member: &Member) -> Stamps {
    let stamps = Stamps::default();
    let only_channels = AllowOrigins(|o: &Origin| matches!(o, Origin::SecureChannel(_)));
    member
        .node
        .start_worker_with_policy(
            [Address::local("stamps")],
            Arc::new(only_channels),
            Recorder(stamps.clone()),
        )
        .unwrap();
    stamps
}

/// Send one message from `a` over `channel` to the `stamps` service, and the stamp it was
/// delivered with.
async fn stamp_over(a: &Member, channel: &SecureChannel, stamps: &Stamps) -> Arc<ChannelPeer> {
    let mut client = a.node.client().unwrap();
    let through = Route::from(vec![channel.encryptor.clone(), Address::local("stamps")]);
    client.request(through, "stamp?", WAIT).await.unwrap();
    stamps.lock().unwrap().last().cloned().unwrap()
}

/// `a`, holding a `component=web` credential, with a channel open to `b`, which admits
/// only credential holders. (The nodes live as long as the returned parts.)
async fn web_member_with_a_channel() -> (Authority, Member, Member, SecureChannel) {
    let authority = Authority::new();
    let a = Member::start("a", trusting(&[&authority], Admission::AnyIdentity)).await;
    let b = Member::start("b", trusting(&[&authority], Admission::CredentialHolders)).await;
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        now() - 5,
        now() + 600,
    )]);
    let channel = a.open_to(&b).await.unwrap();
    (authority, a, b, channel)
}

/// [`web_member_with_a_channel`], with `b` recording the stamps of what arrives at its
/// `stamps` service.
async fn web_member_talking_to_a_recorder() -> (Authority, Member, Member, Stamps, SecureChannel) {
    let (authority, a, b, channel) = web_member_with_a_channel().await;
    let stamps = record_stamps(&b);
    (authority, a, b, stamps, channel)
}

#[tokio::test]
async fn messages_over_one_channel_share_one_stamp() {
    let (_authority, a, _b, stamps, channel) = web_member_talking_to_a_recorder().await;
    let first = stamp_over(&a, &channel, &stamps).await;
    let second = stamp_over(&a, &channel, &stamps).await;
    assert!(
        Arc::ptr_eq(&first, &second),
        "each message got its own copy of the stamp: {first:?}"
    );
    assert_eq!(first.identifier, a.identity.identifier().to_string());
    assert_eq!(format!("{:?}", first.attributes), r#"{"component": "web"}"#);
}

#[tokio::test]
async fn a_pushed_credential_that_changes_attributes_restamps_the_next_messages() {
    let (authority, a, _b, stamps, channel) = web_member_talking_to_a_recorder().await;
    let before = stamp_over(&a, &channel, &stamps).await;
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "db")],
        now() - 4,
        now() + 600,
    )]);
    // The push travels on its own: wait, bounded, for a message delivered after it. A stamp
    // kept from before the push never shows the new attributes, and this fails.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let stamp = stamp_over(&a, &channel, &stamps).await;
        if format!("{:?}", stamp.attributes) == r#"{"component": "db"}"# {
            break stamp;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still stamped {:?} after the push",
            stamp.attributes
        );
        tokio::task::yield_now().await;
    };
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(
        (&after.identifier, after.handshake_hash, after.source),
        (&before.identifier, before.handshake_hash, before.source),
        "only the attributes change; the channel is the same"
    );
    // Shared again from the change on.
    assert!(Arc::ptr_eq(
        &after,
        &stamp_over(&a, &channel, &stamps).await
    ));
}

#[tokio::test]
async fn a_channel_whose_peer_refreshes_in_time_outlives_the_first_credential() {
    let authority = Authority::new();
    let a = Member::start("a", trusting(&[&authority], Admission::AnyIdentity)).await;
    let b = Member::start("b", trusting(&[&authority], Admission::CredentialHolders)).await;
    let first_expiry = now() + 2;
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        now() - 5,
        first_expiry,
    )]);
    let channel = a.open_to(&b).await.unwrap();
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web"), ("renewed", "yes")],
        now() - 4,
        now() + 600,
    )]);
    until_seen(&a, &channel, r#"{"component": "web", "renewed": "yes"}"#).await;
    until("the first credential to expire", || now() > first_expiry).await;
    assert_eq!(
        a.attributes_seen_over(&channel).await,
        r#"{"component": "web", "renewed": "yes"}"#
    );
    assert!(channel.end_signal().has_ended().is_none());
}

#[tokio::test]
async fn one_authority_never_overrides_an_attribute_another_authoritys_credential_gives() {
    let first = Authority::new();
    let second = Authority::new();
    let a = Member::start("a", trusting(&[], Admission::AnyIdentity)).await;
    // b ranks `first` above `second`.
    let b = Member::start(
        "b",
        trusting(&[&first, &second], Admission::CredentialHolders),
    )
    .await;
    a.present(vec![
        second.issue(
            &a.identity,
            &[("component", "db"), ("zone", "2")],
            now() - 5,
            now() + 600,
        ),
        first.issue(&a.identity, &[("component", "web")], now() - 5, now() + 600),
    ]);
    let channel = a.open_to(&b).await.unwrap();
    assert_eq!(
        a.attributes_seen_over(&channel).await,
        r#"{"component": "web", "zone": "2"}"#
    );
    // A renewal from the second authority cannot take the attribute either; it replaces
    // only what the second authority said.
    a.present(vec![
        first.issue(&a.identity, &[("component", "web")], now() - 5, now() + 600),
        second.issue(
            &a.identity,
            &[("component", "admin"), ("zone", "3")],
            now() - 4,
            now() + 600,
        ),
    ]);
    until_seen(&a, &channel, r#"{"component": "web", "zone": "3"}"#).await;
}

#[tokio::test]
async fn a_revoked_peer_loses_its_open_channel_and_is_refused_a_new_one() {
    let (authority, a, b, channel) = web_member_with_a_channel().await;
    assert!(b.channel_ends() > 0);
    b.trust().revocations.apply(
        authority.identity.identifier(),
        &[Revocation {
            seq: 1,
            subject: *a.identity.identifier(),
            at: now(),
            kind: RevocationKind::Revoked,
        }],
    );
    until("b to close the revoked peer's channel", || {
        b.channel_ends() == 0
    })
    .await;
    // a hears the close (or notices its peer's end is gone) too.
    let how = tokio::time::timeout(WAIT, channel.end_signal().ended())
        .await
        .unwrap();
    assert_ne!(how, ChannelEnded::PeerSilent);
    let refused = a.open_to(&b).await.unwrap_err();
    assert!(
        matches!(&refused, SecureChannelError::Handshake(HandshakeError::Refused(u)) if u.class == ErrorClass::Revoked),
        "{refused:?}"
    );
    assert!(
        DisplayChain(&refused)
            .to_string()
            .contains("credential revoked"),
        "{}",
        DisplayChain(&refused)
    );
    // Enrolled again: a credential issued after the revocation admits it.
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        now() + 1,
        now() + 600,
    )]);
    a.open_to(&b).await.unwrap();
}

#[tokio::test]
async fn a_changed_member_gives_no_attributes_until_it_pushes_its_newer_credential() {
    let authority = Authority::new();
    let a = Member::start("a", trusting(&[&authority], Admission::AnyIdentity)).await;
    let b = Member::start("b", trusting(&[&authority], Admission::CredentialHolders)).await;
    let at = now();
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        at - 5,
        at + 600,
    )]);
    let channel = a.open_to(&b).await.unwrap();
    b.trust().revocations.apply(
        authority.identity.identifier(),
        &[Revocation {
            seq: 1,
            subject: *a.identity.identifier(),
            at,
            kind: RevocationKind::Changed,
        }],
    );
    until_seen(&a, &channel, "{}").await;
    // The old credential, pushed again, does not bring them back; the newer one does.
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        at - 5,
        at + 600,
    )]);
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "api")],
        at + 1,
        at + 600,
    )]);
    until_seen(&a, &channel, r#"{"component": "api"}"#).await;
}

#[tokio::test]
async fn a_node_that_has_not_heard_its_authority_past_the_grace_refuses_with_a_reason() {
    let authority = Authority::new();
    let a = Member::start("a", trusting(&[&authority], Admission::AnyIdentity)).await;
    let b = Member::start("b", trusting(&[&authority], Admission::CredentialHolders)).await;
    a.present(vec![authority.issue(
        &a.identity,
        &[("component", "web")],
        now() - 5,
        now() + 600,
    )]);
    let revocations = b.trust().revocations.clone();
    let id = *authority.identity.identifier();
    // Heard a minute ago, with a minute and a half of grace: still trusted.
    revocations.follow(&id, now() - 60, 90);
    a.open_to(&b).await.unwrap();
    // Heard two minutes ago: past the grace.
    revocations.follow(&id, now() - 120, 90);
    let refused = a.open_to(&b).await.unwrap_err();
    assert!(
        matches!(&refused, SecureChannelError::Handshake(HandshakeError::Refused(u)) if u.class == ErrorClass::RevocationsUnknown),
        "{refused:?}"
    );
    assert!(
        DisplayChain(&refused)
            .to_string()
            .contains("revocations are out of date"),
        "{}",
        DisplayChain(&refused)
    );
    // Heard again: admitted again.
    revocations.heard(&id, now());
    a.open_to(&b).await.unwrap();
}
