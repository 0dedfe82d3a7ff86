//! Secure channels between real nodes over real TCP on loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kith_identity::channel::{Admission, HandshakeError, LocalIdentity, Trust};
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER, SecureChannelError};
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

fn local(
    credentials: impl FnOnce(&Identity) -> Vec<CredentialAndPurposeKey>,
) -> Arc<LocalIdentity> {
    let (identity, secret) = Identity::create(now());
    let key = SecureChannelKey::generate(&identity, &secret, now() - 5, now() + 3600);
    let credentials = credentials(&identity);
    Arc::new(LocalIdentity {
        identity,
        key,
        credentials,
    })
}

fn open_trust() -> Arc<Trust> {
    Arc::new(Trust {
        authorities: vec![],
        admission: Admission::AnyIdentity,
        revocations: Default::default(),
    })
}

/// Answers with who sent the message, as the channel stamped it.
struct WhoAmI;

impl Worker for WhoAmI {
    async fn handle_message(&mut self, ctx: &mut Context, m: Message) -> Result<(), WorkerError> {
        let answer = match m.origin() {
            Origin::SecureChannel(peer) => format!(
                "{} {:?} {} {}",
                peer.identifier,
                peer.attributes,
                kith_identity::hex::encode(&peer.handshake_hash),
                peer.source.map(|s| s.ip().to_string()).unwrap_or_default()
            ),
            other => format!("not a channel: {other:?}"),
        };
        ctx.send(m.return_route, answer).await?;
        Ok(())
    }
}

struct Side {
    node: Node,
    listener: String,
    settings: ChannelSettings,
}

async fn side(name: &str, local: Arc<LocalIdentity>, trust: Arc<Trust>, timeout: Duration) -> Side {
    let node = Node::new(name);
    let tcp = TcpTransport::start(&node);
    let listener = tcp.listen("127.0.0.1:0").await.unwrap().to_string();
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    // Only authenticated peers reach `whoami`.
    let only_channels = AllowOrigins(|o: &Origin| matches!(o, Origin::SecureChannel(_)));
    node.start_worker_with_policy([Address::local("whoami")], Arc::new(only_channels), WhoAmI)
        .unwrap();
    let mut settings = ChannelSettings::new(local, trust);
    settings.handshake_timeout = timeout;
    secure_channel::listen(&node, DEFAULT_LISTENER, settings.clone()).unwrap();
    Side {
        node,
        listener,
        settings,
    }
}

fn to(peer: &str, hops: &[&str]) -> Route {
    let mut r = vec![Address::try_new(TCP, peer).unwrap()];
    r.extend(hops.iter().map(|h| Address::local(*h)));
    Route::from(r)
}

/// Node `b` listening on loopback with an echo service and a secure-channel listener for
/// any identity, its settings changed by `adjust`; where it listens, and its listener's
/// counts.
async fn listening_b(
    adjust: impl FnOnce(&mut ChannelSettings),
) -> (Node, String, Arc<secure_channel::ListenerStats>) {
    let b = Node::new("b");
    let listener = TcpTransport::start(&b)
        .listen("127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    b.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    let mut settings = ChannelSettings::new(local(|_| vec![]), open_trust());
    adjust(&mut settings);
    let stats = secure_channel::listen(&b, DEFAULT_LISTENER, settings).unwrap();
    (b, listener, stats)
}

fn channel_workers(node: &Node) -> usize {
    node.addresses()
        .iter()
        .filter(|a| a.value().starts_with("sc-"))
        .count()
}

#[tokio::test]
async fn messages_through_a_channel_carry_the_peers_identifier_and_attributes() {
    let auth_id = Identity::create(now());
    let auth_key = CredentialSigningKey::generate(&auth_id.0, &auth_id.1, now() - 5, now() + 3600);
    let attrs: BTreeMap<String, String> = [("component".to_string(), "db".to_string())].into();
    let a_local = local(|id| {
        vec![
            CredentialAndPurposeKey::issue(
                &auth_key,
                id.identifier(),
                attrs.clone(),
                now() - 5,
                now() + 600,
            )
            .unwrap(),
        ]
    });
    let a_identifier = *a_local.identity.identifier();
    let a = side("a", a_local, open_trust(), WAIT).await;
    let b_trust = Arc::new(Trust {
        authorities: vec![auth_id.0.clone()],
        admission: Admission::CredentialHolders,
        revocations: Default::default(),
    });
    let b = side("b", local(|_| vec![]), b_trust, WAIT).await;

    let channel =
        secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
            .await
            .unwrap();
    assert_eq!(
        channel.peer.identifier,
        *b.settings.local.identity.identifier()
    );

    let mut client = a.node.client().unwrap();
    let through = Route::from(vec![channel.encryptor.clone(), Address::local("whoami")]);
    let reply = client.request(through, "who am I?", WAIT).await.unwrap();
    let text = String::from_utf8(reply.payload.to_vec()).unwrap();
    // It also carries the channel's handshake hash, the same at both ends, and where the
    // handshake came from.
    assert_eq!(
        text,
        format!(
            "{a_identifier} {{\"component\": \"db\"}} {} 127.0.0.1",
            kith_identity::hex::encode(&channel.handshake_hash)
        )
    );
    // The reply came back through the channel too, authenticated as b.
    assert!(
        reply.origin().channel_peer().is_some_and(
            |peer| peer.identifier == b.settings.local.identity.identifier().to_string()
        )
    );

    let through = Route::from(vec![channel.encryptor.clone(), Address::local("echo")]);
    let big = Bytes::from(vec![7u8; 60 * 1024]);
    assert_eq!(
        client
            .request(through, big.clone(), WAIT)
            .await
            .unwrap()
            .payload,
        big
    );
}

#[tokio::test]
async fn a_channel_only_service_refuses_a_sender_without_a_channel_as_denied() {
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let b = side("b", local(|_| vec![]), open_trust(), WAIT).await;
    let mut client = a.node.client().unwrap();
    let err = client
        .request(to(&b.listener, &["whoami"]), "hi", WAIT)
        .await;
    assert!(
        matches!(&err, Err(RequestError::Undeliverable(u)) if u.class == ErrorClass::Denied && u.address == Address::local("whoami")),
        "{err:?}"
    );
    assert_eq!(b.node.stats().dropped_denied, 1);
}

#[tokio::test]
async fn a_listener_that_requires_credentials_refuses_a_peer_without_one_and_the_initiator_learns_it()
 {
    let a = side(
        "a",
        local(|_| vec![]),
        open_trust(),
        Duration::from_millis(500),
    )
    .await;
    let strict = Arc::new(Trust {
        authorities: vec![],
        admission: Admission::CredentialHolders,
        revocations: Default::default(),
    });
    let b = side("b", local(|_| vec![]), strict, Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let err = secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap_err();
    // Answered with the reason, long before the 500 ms handshake deadline.
    assert!(
        matches!(&err, SecureChannelError::Handshake(HandshakeError::Refused(u)) if u.class == ErrorClass::NoTrustedCredential && u.node == "b"),
        "{err:?}"
    );
    assert_eq!(
        kith_node::DisplayChain(&err).to_string(),
        "secure channel handshake failed: b refused the secure channel: no credential from an authority it trusts"
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    until("both sides to clean up", || {
        channel_workers(&a.node) == 0 && channel_workers(&b.node) == 0
    })
    .await;
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_abandoned() {
    let b = side(
        "b",
        local(|_| vec![]),
        open_trust(),
        Duration::from_millis(200),
    )
    .await;
    // A raw node sends message 1 and then goes silent (slowloris).
    let a = Node::new("a");
    TcpTransport::start(&a);
    let lazy = local(|_| vec![]);
    let (_, first) = kith_identity::channel::Handshake::initiate(lazy, open_trust(), 16).unwrap();
    let client = a.client().unwrap();
    client
        .send(to(&b.listener, &[DEFAULT_LISTENER]), first)
        .await
        .unwrap();
    until("a responder to start", || channel_workers(&b.node) == 1).await;
    until("the responder to be abandoned", || {
        channel_workers(&b.node) == 0
    })
    .await;
}

#[tokio::test]
async fn garbage_to_a_decryptor_tears_the_channel_down_not_the_node() {
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let b = side("b", local(|_| vec![]), open_trust(), WAIT).await;
    let channel =
        secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
            .await
            .unwrap();
    until("b's side to be up", || channel_workers(&b.node) == 2).await;
    let b_decryptor = b
        .node
        .addresses()
        .into_iter()
        .find(|x| x.value().starts_with("sc-") && !x.value().starts_with("sc-enc"))
        .unwrap();
    // Anyone who can reach b can send bytes to the decryptor's address.
    let raw = Node::new("raw");
    TcpTransport::start(&raw);
    let client = raw.client().unwrap();
    let garbage = vec![0u8; 64];
    client
        .send(to(&b.listener, &[b_decryptor.value()]), garbage)
        .await
        .unwrap();
    until("b to tear its side down", || channel_workers(&b.node) == 0).await;
    // Its close reaches a, which tears down too; both nodes still serve.
    until("a to tear its side down", || channel_workers(&a.node) == 0).await;
    let again = secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap();
    let mut c = a.node.client().unwrap();
    let r = c
        .request(
            Route::from(vec![again.encryptor, Address::local("echo")]),
            "ok",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(r.payload, Bytes::from("ok"));
    let _ = channel;
}

#[tokio::test]
async fn closing_a_channel_stops_both_ends() {
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let b = side("b", local(|_| vec![]), open_trust(), WAIT).await;
    let channel =
        secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
            .await
            .unwrap();
    until("b's side to be up", || channel_workers(&b.node) == 2).await;
    assert!(secure_channel::close(&a.node, &channel));
    until("both ends to stop", || {
        channel_workers(&a.node) == 0 && channel_workers(&b.node) == 0
    })
    .await;
}

/// Forwards whatever reaches it to the rest of its route, recording each payload: a wiretap
/// on the path between two channel ends.
struct Tap(Arc<std::sync::Mutex<Vec<(Route, Bytes)>>>);

impl Worker for Tap {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        mut m: Message,
    ) -> Result<(), WorkerError> {
        m.onward_route.step();
        m.return_route.prepend(ctx.address().clone());
        self.0
            .lock()
            .unwrap()
            .push((m.onward_route.clone(), m.payload.clone()));
        ctx.forward(m).await?;
        Ok(())
    }
}

async fn tapped_channel() -> (
    Side,
    Side,
    secure_channel::SecureChannel,
    Arc<std::sync::Mutex<Vec<(Route, Bytes)>>>,
) {
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let b = side("b", local(|_| vec![]), open_trust(), WAIT).await;
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    b.node
        .start_worker_with_policy(
            [Address::local("tap")],
            Arc::new(AllowAll),
            Tap(log.clone()),
        )
        .unwrap();
    let channel = secure_channel::create(
        &a.node,
        to(&b.listener, &["tap", DEFAULT_LISTENER]),
        &a.settings,
    )
    .await
    .unwrap();
    (a, b, channel, log)
}

/// The recorded ciphertexts that went to b's decryptor, with that decryptor's address.
fn to_b_decryptor(log: &std::sync::Mutex<Vec<(Route, Bytes)>>) -> Vec<(Address, Bytes)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|(r, p)| {
            r.next()
                .filter(|a| a.value().starts_with("sc-") && r.len() == 1)
                .map(|a| (a.clone(), p.clone()))
        })
        .collect()
}

/// Counts what reaches it; open to channel peers only.
struct Counting(Arc<std::sync::atomic::AtomicU64>);

impl Worker for Counting {
    async fn handle_message(&mut self, _: &mut Context, _: Message) -> Result<(), WorkerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn counting_sink(node: &Node) -> Arc<std::sync::atomic::AtomicU64> {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let only_channels = AllowOrigins(|o: &Origin| matches!(o, Origin::SecureChannel(_)));
    node.start_worker_with_policy(
        [Address::local("sink")],
        Arc::new(only_channels),
        Counting(count.clone()),
    )
    .unwrap();
    count
}

#[tokio::test]
async fn a_replayed_message_tears_the_channel_down_and_reaches_nothing() {
    let (a, b, channel, log) = tapped_channel().await;
    let count = counting_sink(&b.node);
    let client = a.node.client().unwrap();
    let through = Route::from(vec![channel.encryptor.clone(), Address::local("sink")]);
    client.send(through, "once").await.unwrap();
    until("the message to arrive", || {
        count.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let (decryptor, sealed) = to_b_decryptor(&log).last().cloned().unwrap();

    // Someone on the path sends the same ciphertext again.
    let raw = Node::new("raw");
    TcpTransport::start(&raw);
    raw.client()
        .unwrap()
        .send(to(&b.listener, &[decryptor.value()]), sealed)
        .await
        .unwrap();
    until("b to tear the channel down", || {
        channel_workers(&b.node) == 0
    })
    .await;
    until("a to follow", || channel_workers(&a.node) == 0).await;
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the replay reached the service"
    );
}

#[tokio::test]
async fn a_message_older_than_the_replay_window_tears_the_channel_down() {
    let (a, b, channel, log) = tapped_channel().await;
    let client = a.node.client().unwrap();
    let through = Route::from(vec![channel.encryptor.clone(), Address::local("sink")]);
    let count = counting_sink(&b.node);
    for i in 0..200u32 {
        client
            .send(through.clone(), i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    until("all 200 to arrive", || {
        count.load(std::sync::atomic::Ordering::SeqCst) == 200
    })
    .await;
    let recorded = to_b_decryptor(&log);
    // The first data message, 200 messages behind: far outside the 128-message window.
    let (decryptor, old) = recorded[1].clone();
    let raw = Node::new("raw");
    TcpTransport::start(&raw);
    raw.client()
        .unwrap()
        .send(to(&b.listener, &[decryptor.value()]), old)
        .await
        .unwrap();
    until("b to tear the channel down", || {
        channel_workers(&b.node) == 0
    })
    .await;
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        200,
        "the stale message was delivered"
    );
}

#[tokio::test]
async fn a_flood_of_unfinished_handshakes_is_capped_and_the_listener_recovers() {
    let (b, listener, stats) = listening_b(|settings| {
        settings.handshake_timeout = Duration::from_millis(300);
        settings.handshake_limits.max_pending = 2;
    })
    .await;

    // Five first messages that never go further.
    let flood = Node::new("flood");
    TcpTransport::start(&flood);
    let mut client = flood.client().unwrap();
    for _ in 0..5 {
        let (_, first) =
            kith_identity::channel::Handshake::initiate(local(|_| vec![]), open_trust(), 16)
                .unwrap();
        client
            .send(to(&listener, &[DEFAULT_LISTENER]), first)
            .await
            .unwrap();
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
    until("three refusals", || load(&stats.refused_busy) == 3).await;
    assert_eq!(load(&stats.started), 2);
    assert_eq!(channel_workers(&b), 2, "more responders than the cap");
    // Each refused one is told so at once: two second messages and three "busy" answers.
    let mut busy = 0;
    for _ in 0..5 {
        match client.receive(WAIT).await {
            Err(RequestError::Undeliverable(u)) => {
                assert_eq!((u.class, u.node.as_str()), (ErrorClass::Busy, "b"));
                busy += 1;
            }
            Ok(second) => assert!(second.undeliverable().is_none()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(busy, 3);

    // The abandoned handshakes give their places back; a real peer then gets in.
    until("the slots to free", || {
        stats.pending() == 0 && channel_workers(&b) == 0
    })
    .await;
    // A first message that is no handshake is answered as such.
    client
        .send(to(&listener, &[DEFAULT_LISTENER]), "not a handshake")
        .await
        .unwrap();
    match client.receive(WAIT).await {
        Err(RequestError::Undeliverable(u)) => assert_eq!(u.class, ErrorClass::InvalidHandshake),
        other => panic!("{other:?}"),
    }
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let channel = secure_channel::create(&a.node, to(&listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap();
    let mut c = a.node.client().unwrap();
    let reply = c
        .request(
            Route::from(vec![channel.encryptor, Address::local("echo")]),
            "in",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("in"));
    assert_eq!(
        stats.pending(),
        0,
        "an established channel still holds a slot"
    );
}

#[tokio::test]
async fn a_peer_whose_credential_expires_is_cut_off_at_its_next_message() {
    let auth_id = Identity::create(now());
    let auth_key = CredentialSigningKey::generate(&auth_id.0, &auth_id.1, now() - 5, now() + 3600);
    let expires = now() + 2;
    let a_local = local(|id| {
        vec![
            CredentialAndPurposeKey::issue(
                &auth_key,
                id.identifier(),
                [("component".to_string(), "db".to_string())].into(),
                now() - 5,
                expires,
            )
            .unwrap(),
        ]
    });
    let a = side("a", a_local, open_trust(), WAIT).await;
    let b_trust = Arc::new(Trust {
        authorities: vec![auth_id.0.clone()],
        admission: Admission::CredentialHolders,
        revocations: Default::default(),
    });
    let b = side("b", local(|_| vec![]), b_trust, WAIT).await;
    let channel =
        secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
            .await
            .unwrap();
    let mut client = a.node.client().unwrap();
    let through = Route::from(vec![channel.encryptor.clone(), Address::local("whoami")]);
    client
        .request(through.clone(), "before", WAIT)
        .await
        .unwrap();
    assert!(channel_workers(&b.node) > 0);

    // The credential's end is a point on the clock: wait for it (bounded).
    until("the credential to expire", || now() >= expires).await;
    let after = client
        .request(through, "after", Duration::from_millis(500))
        .await;
    assert!(
        after.is_err(),
        "a message got through after the credential expired"
    );
    until("b to end the channel", || channel_workers(&b.node) == 0).await;
}

#[tokio::test]
async fn replacing_a_listeners_settings_applies_from_the_next_handshake() {
    let a = side(
        "a",
        local(|_| vec![]),
        open_trust(),
        Duration::from_millis(500),
    )
    .await;
    let node = Node::new("b");
    let tcp = TcpTransport::start(&node);
    let listener = tcp.listen("127.0.0.1:0").await.unwrap().to_string();
    let mut open = ChannelSettings::new(local(|_| vec![]), open_trust());
    open.handshake_timeout = Duration::from_millis(500);
    let shared = secure_channel::SharedSettings::new(open.clone());
    secure_channel::listen(&node, DEFAULT_LISTENER, shared.clone()).unwrap();

    let first = secure_channel::create(&a.node, to(&listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap();
    // From now on only credential holders are admitted; a has none.
    let mut strict = open;
    strict.trust = Arc::new(Trust {
        authorities: vec![],
        admission: Admission::CredentialHolders,
        revocations: Default::default(),
    });
    shared.set(strict);
    let refused =
        secure_channel::create(&a.node, to(&listener, &[DEFAULT_LISTENER]), &a.settings).await;
    assert!(refused.is_err(), "the replaced settings were not used");
    // The channel opened before keeps working.
    let mut client = a.node.client().unwrap();
    let through = Route::from(vec![first.encryptor.clone(), Address::local("echo")]);
    node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
        .unwrap();
    assert_eq!(
        client
            .request(through, "still", WAIT)
            .await
            .unwrap()
            .payload,
        Bytes::from("still")
    );
}

/// Counts what reaches it.
struct Count(Arc<std::sync::atomic::AtomicUsize>);

impl Worker for Count {
    async fn handle_message(&mut self, _: &mut Context, _: Message) -> Result<(), WorkerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Several tasks sending on one channel at once (a relay's traffic and its heartbeat
/// answers share one): nonces must leave in order, or a sender overtaken by more than the
/// replay window makes the peer end the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_sending_on_one_channel_keep_it_up_and_lose_nothing() {
    const SENDERS: usize = 8;
    const EACH: usize = 3_000;
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let b = side("b", local(|_| vec![]), open_trust(), WAIT).await;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    b.node
        .start_worker_with_policy(
            [Address::local("count")],
            Arc::new(AllowAll),
            Count(seen.clone()),
        )
        .unwrap();
    let channel =
        secure_channel::create(&a.node, to(&b.listener, &[DEFAULT_LISTENER]), &a.settings)
            .await
            .unwrap();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let client = a.node.client().unwrap();
        let route = Route::from(vec![channel.encryptor.clone(), Address::local("count")]);
        senders.spawn(async move {
            for i in 0..EACH {
                client
                    .send(route.clone(), Bytes::from(vec![0u8; 32]))
                    .await
                    .unwrap();
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
    let total = SENDERS * EACH;
    until("every message to arrive", || {
        seen.load(std::sync::atomic::Ordering::Relaxed) == total
    })
    .await;
    assert_eq!(
        channel_workers(&a.node),
        2,
        "a's end of the channel is gone"
    );
    assert_eq!(
        channel_workers(&b.node),
        2,
        "b's end of the channel is gone"
    );
}

/// First messages that never go further, from `node`: `count` of them, as fast as its
/// connection takes them. Returns the client they came from: while it lives, the second
/// messages have somewhere to go and the handshakes stay unfinished.
async fn spray_first_messages(node: &Node, listener: &str, count: usize) -> Client {
    let client = node.client().unwrap();
    for _ in 0..count {
        let (_, first) =
            kith_identity::channel::Handshake::initiate(local(|_| vec![]), open_trust(), 16)
                .unwrap();
        if client
            .send(to(listener, &[DEFAULT_LISTENER]), first)
            .await
            .is_err()
        {
            break;
        }
    }
    client
}

fn node_from(name: &str, last: u8) -> Node {
    let node = Node::new(name);
    kith_transport::TcpTransport::start_with(
        &node,
        kith_transport::TcpOptions {
            source_address: Some(std::net::IpAddr::from([127, 0, 0, last])),
            ..Default::default()
        },
    );
    node
}

fn source(last: u8) -> kith_transport::source::Source {
    kith_transport::source::Source::of(std::net::IpAddr::from([127, 0, 0, last]))
}

#[tokio::test]
async fn one_connection_spraying_first_messages_holds_only_its_share_and_others_get_in_at_once() {
    let (b, listener, stats) = listening_b(|_| {}).await;

    // 3,000 first messages from one connection on 127.0.0.2, in the background.
    let attacker = node_from("attacker", 2);
    let spray = tokio::spawn({
        let attacker = attacker.clone();
        let listener = listener.clone();
        async move {
            let _client = spray_first_messages(&attacker, &listener, 3_000).await;
        }
    });
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::SeqCst);
    until("the sprayer to be refused", || {
        load(&stats.refused_busy) > 100
    })
    .await;
    // It held what it could before the shares bound (a quarter of the table), no more.
    let held = stats.pending_from(source(2));
    assert!(
        held <= kith_identity::pending::MAX_PENDING_HANDSHAKES / 4,
        "one connection holds {held} unfinished handshakes"
    );

    // Meanwhile a peer on 127.0.0.1 opens a channel, within a second.
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let started = std::time::Instant::now();
    let channel = secure_channel::create(&a.node, to(&listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the channel took {took:?}");
    let mut c = a.node.client().unwrap();
    let reply = c
        .request(
            Route::from(vec![channel.encryptor, Address::local("echo")]),
            "in",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("in"));
    spray.abort();
    for n in [attacker, a.node, b] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn a_full_handshake_table_sheds_the_heaviest_sources_oldest_for_a_quiet_newcomer() {
    let (b, listener, stats) =
        listening_b(|settings| settings.handshake_limits.max_pending = 20).await;

    // Two connections from 127.0.0.2, sixteen unfinished handshakes each: more than fit.
    let attackers = [node_from("attacker-1", 2), node_from("attacker-2", 2)];
    let mut clients = Vec::new();
    for n in &attackers {
        clients.push(spray_first_messages(n, &listener, 16).await);
    }
    until("the table to fill", || stats.pending() == 20).await;
    assert_eq!(stats.pending_from(source(2)), 20);
    assert_eq!(stats.shed(), 0, "a source is never shed for itself");

    // A newcomer from 127.0.0.1 still gets in: one of 127.0.0.2's is abandoned for it.
    let a = side("a", local(|_| vec![]), open_trust(), WAIT).await;
    let started = std::time::Instant::now();
    secure_channel::create(&a.node, to(&listener, &[DEFAULT_LISTENER]), &a.settings)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(stats.shed(), 1);
    assert_eq!(stats.pending_from(source(2)), 19);
    for n in attackers.into_iter().chain([a.node, b]) {
        n.shutdown().await;
    }
}
