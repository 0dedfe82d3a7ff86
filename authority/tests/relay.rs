//! Relays on the project node end to end (DESIGN §5, `relay` policy): real nodes in this
//! process, real TCP on loopback, real secure channels, a real SQLite membership store.
//!
//! The cast: the project node `P` (the authority node: same identity, same store), relayed
//! nodes `B` that only dial out and register a relay through their channel to `P`, members
//! `C` that reach a relayed node through `P`, bystanders, strangers and admins. Every wait is
//! for an event, bounded by a timeout; "nothing arrives" is checked over [`SILENCE`], next
//! to a control that shows the same kind of message arriving when it should.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_authority::api::{self, CreatedTicket, ErrorKind, PROJECT_ID_ATTRIBUTE, RELAY_ATTRIBUTE};
use kith_authority::client::{AuthorityClient, ClientError, decode_credential};
use kith_authority::join::JoinSettings;
use kith_authority::keeper::{ConfirmError, KeeperConfig, RelayKeeper, RelayState, RelayStatus};
use kith_authority::relay::{self, RELAY_ADDRESS_PREFIX, RelayInfo};
use kith_authority::service::{Authority, AuthorityConfig};
use kith_authority::store::{MembershipStore, StoreOwner};
use kith_authority::ticket::OneTimeCode;
use kith_authority::{Clock, ManualClock};
use kith_identity::channel::{Admission, HandshakeError, LocalIdentity, Trust};
use kith_identity::secure_channel::{
    self, ChannelSettings, DEFAULT_LISTENER, SecureChannel, SecureChannelError, SharedSettings,
};
use kith_identity::vault::Vault;
use kith_identity::{
    CredentialAndPurposeKey, CredentialSigningKey, Identifier, Identity, IdentitySecret,
    SecureChannelKey, hex, unix_now,
};
use kith_node::testing::until;
use kith_node::{
    Address, AllowAll, ChannelPeer, Client, Context, Echo, ErrorClass, Message, Node, Origin,
    RequestError, Route, TCP, Undeliverable, Worker, WorkerError,
};
use kith_transport::TcpTransport;
use tempfile::TempDir;
use tokio::sync::mpsc;

/// 30 s: bounds every wait for something that should happen; a pass never waits this long.
const WAIT: Duration = Duration::from_secs(30);

/// 500 ms: how long a test listens to be sure that nothing arrives. Each such check follows
/// a control that shows the same kind of message arriving in a few milliseconds.
const SILENCE: Duration = Duration::from_millis(500);

/// 2 s: the request timeout where a test expects no answer at all (a torn-down channel).
const NO_ANSWER: Duration = Duration::from_secs(2);

const PROJECT_ID: &str = "p-7e11";
const AUTHORITY_NAME: &str = "authority";
const CREDENTIAL_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The address of the recording worker on relayed nodes.
const WHOAMI: &str = "whoami";

// ---- 1. who may create a relay --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_without_ockam_relay_for_the_name_is_refused_with_the_missing_attribute() {
    let (project, _, node, mut admin_client) = project_with_admin("members").await;
    let no_relay = project
        .enroll(&mut admin_client, &node, &[("component", "web")])
        .await;
    let other_relay = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "other")])
        .await;

    refused(
        project
            .connect(&node, &no_relay)
            .await
            .create_relay("db")
            .await,
        ErrorKind::Forbidden,
        &["ockam-relay=db", "no ockam-relay attribute"],
    );

    let mut other = project.connect(&node, &other_relay).await;
    refused(
        other.create_relay("db").await,
        ErrorKind::Forbidden,
        &["ockam-relay=db", "yours has ockam-relay=other"],
    );
    // The name it was granted, it may create: the refusal above was about the name.
    let made = other.create_relay("other").await.unwrap();
    assert_eq!(made.owner, other_relay.identifier.to_string());

    // A keeper is refused at once, with the project node's reason, and does not retry.
    let settings = SharedSettings::new(no_relay.settings(project.trust()));
    let started = std::time::Instant::now();
    refused(
        RelayKeeper::start(&node, settings, project.keeper_config("db")).await,
        ErrorKind::Forbidden,
        &["ockam-relay=db"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );

    assert_eq!(relay_names(&mut admin_client).await, ["other"]);
    assert_eq!(relay_addresses(&project), ["forward_to_other"]);
    shut_down(&[&node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_member_is_refused_with_or_without_a_credential_from_another_authority() {
    let (project, _, node, mut admin_client) = project_with_admin("strangers").await;

    // No credential at all.
    let stranger = Party::new();
    // A credential that says everything the relay wants (this project's id, ockam-relay=db)
    // but from an authority the project node does not trust: ignored, so no attributes.
    let (rogue, rogue_secret) = Identity::create(unix_now());
    let rogue_key =
        CredentialSigningKey::generate(&rogue, &rogue_secret, unix_now() - 5, unix_now() + 3600);
    let forged = Party::credentialed(
        &rogue_key,
        attributes(&[(PROJECT_ID_ATTRIBUTE, PROJECT_ID), (RELAY_ATTRIBUTE, "db")]),
        unix_now() - 5,
        unix_now() + 3600,
    );
    for party in [&stranger, &forged] {
        refused(
            project.connect(&node, party).await.create_relay("db").await,
            ErrorKind::Forbidden,
            &["ockam-relay=db", "presents no valid credential"],
        );
    }

    assert!(relay_names(&mut admin_client).await.is_empty());
    assert!(relay_addresses(&project).is_empty());
    shut_down(&[&node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_credential_creates_no_relay_whether_expired_before_or_after_the_handshake() {
    let (project, _, node, mut admin_client) = project_with_admin("expiring").await;
    let signing_key = project.signing_key().await;
    let grant = attributes(&[(PROJECT_ID_ATTRIBUTE, PROJECT_ID), (RELAY_ATTRIBUTE, "db")]);

    // Expired before the handshake: the project node verifies credentials from its own
    // authority and refuses the handshake, and says so at once.
    let expired = Party::credentialed(
        &signing_key,
        grant.clone(),
        unix_now() - 100,
        unix_now() - 1,
    );
    let mut settings = expired.settings(project.trust());
    settings.handshake_timeout = NO_ANSWER;
    let outcome = AuthorityClient::connect(
        &node,
        project.listener_route(),
        &project.identifier,
        &settings,
        WAIT,
    )
    .await;
    match outcome {
        Err(ClientError::Connect {
            source: SecureChannelError::Handshake(HandshakeError::Refused(refusal)),
            ..
        }) if refusal.class == ErrorClass::NoTrustedCredential => {}
        other => panic!("expected the handshake to be refused, got {other:?}"),
    }

    // Valid at the handshake, expired by the time it asks: the project node tears the
    // channel down when the request arrives, and the client learns it at once.
    let expires_at = unix_now() + 2;
    let expiring = Party::credentialed(&signing_key, grant, unix_now() - 5, expires_at);
    // The project needs the identity as a member too, so that only the expiry can refuse.
    admin_client
        .add_member(&expiring.identifier, attributes(&[(RELAY_ATTRIBUTE, "db")]))
        .await
        .unwrap();
    let mut client = project.connect(&node, &expiring).await;
    client.set_timeout(NO_ANSWER);
    // Control: while the credential is valid the same channel gets answers.
    assert!(client.list_relays().await.unwrap().is_empty());
    until("the credential to expire", || unix_now() >= expires_at).await;
    match client.create_relay("db").await {
        Err(ClientError::ChannelEnded { .. }) => {}
        other => panic!("expected the channel whose credential expired to end, got {other:?}"),
    }

    assert!(relay_names(&mut admin_client).await.is_empty());
    assert!(relay_addresses(&project).is_empty());
    shut_down(&[&node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_deleted_from_the_store_after_enrollment_is_refused_as_not_member() {
    let (project, _, node, mut admin_client) = project_with_admin("deleted").await;
    let member = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let mut client = project.connect(&node, &member).await;
    admin_client
        .delete_member(&member.identifier)
        .await
        .unwrap();

    // Its channel still presents a valid credential with ockam-relay=db; the store decides.
    refused(
        client.create_relay("db").await,
        ErrorKind::NotMember,
        &["ockam-relay=db", "no longer a member"],
    );
    assert!(relay_names(&mut admin_client).await.is_empty());

    // Made a member again, the same channel may.
    admin_client
        .add_member(&member.identifier, BTreeMap::new())
        .await
        .unwrap();
    client.create_relay("db").await.unwrap();
    assert_eq!(relay_names(&mut admin_client).await, ["db"]);
    shut_down(&[&node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_with_ockam_relay_db_creates_db_and_an_admin_without_credential_any_name() {
    let (project, admin, node, mut admin_client) = project_with_admin("creators").await;
    let member = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let mut client = project.connect(&node, &member).await;

    let made = client.create_relay("db").await.unwrap();
    assert_eq!(made.name, "db");
    assert_eq!(made.address, "forward_to_db");
    assert_eq!(made.owner, member.identifier.to_string());
    assert_eq!(made.created_at, project.clock.now());
    assert_eq!(made.updated_at, made.created_at);
    assert_eq!(client.check_relay("db").await.unwrap().owner, made.owner);

    // The admin presents no credential at all.
    assert!(admin.credentials.is_empty());
    for name in ["anything", "x.y-z_1"] {
        let made = admin_client.create_relay(name).await.unwrap();
        assert_eq!(made.owner, admin.identifier.to_string());
    }
    assert_eq!(
        relay_names(&mut admin_client).await,
        ["anything", "db", "x.y-z_1"]
    );
    assert_eq!(
        relay_addresses(&project),
        ["forward_to_anything", "forward_to_db", "forward_to_x.y-z_1"]
    );
    // A member lists only its own.
    let mine: Vec<RelayInfo> = client.list_relays().await.unwrap();
    assert_eq!(mine, vec![made]);
    shut_down(&[&node], project).await;
}

// ---- 2. a name belongs to one identity ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_name_stays_with_its_owner_across_channels_until_an_admin_frees_it() {
    let (project, _, node, mut admin_client) = project_with_admin("members").await;
    let first = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let second = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let user = project
        .enroll(&mut admin_client, &node, &[("component", "web")])
        .await;
    let mut b1 = Relayed::start(&project, first, "b1");
    let mut b2 = Relayed::start(&project, second, "b2");
    let user_node = plain_node("user");
    let mut user_channel = Outer::open(&project, &user_node, &user).await;

    let mut old = b1.client(&project).await;
    let created = old.create_relay("db").await.unwrap();
    let mut other = b2.client(&project).await;
    refused(
        other.create_relay("db").await,
        ErrorKind::Forbidden,
        &[&format!("held by {}", b1.party.identifier)],
    );
    refused(
        other.delete_relay("db").await,
        ErrorKind::Forbidden,
        &["not yours"],
    );

    // The owner comes back through a new channel and takes the relay along.
    project.clock.advance(Duration::from_secs(5));
    let mut new = b1.client(&project).await;
    let moved = new.create_relay("db").await.unwrap();
    assert_eq!(moved.owner, created.owner);
    assert_eq!(moved.created_at, created.created_at);
    assert_eq!(moved.updated_at, created.updated_at + 5);
    refused(
        old.check_relay("db").await,
        ErrorKind::NotFound,
        &["through this channel"],
    );
    new.check_relay("db").await.unwrap();
    // With the old channel closed, messages still reach b1: through the new one.
    old.close().await;
    user_channel
        .echo_through("db", &mut b1, "via the new channel")
        .await;
    b2.nothing_seen().await;

    // An admin frees the name; the relay's address is gone at once.
    let deleted = admin_client.delete_relay("db").await.unwrap();
    assert_eq!(deleted.owner, b1.party.identifier.to_string());
    assert!(relay_addresses(&project).is_empty());
    user_channel.send_through("db", "to no one").await;
    let error = user_channel.undeliverable().await;
    assert_eq!(error.to_string(), "project has no relay named db");
    b1.nothing_seen().await;

    // Now the other identity may create it, and then the first one may not delete it.
    let taken = other.create_relay("db").await.unwrap();
    assert_eq!(taken.owner, b2.party.identifier.to_string());
    refused(new.delete_relay("db").await, ErrorKind::Forbidden, &[]);
    user_channel
        .echo_through("db", &mut b2, "to the new owner")
        .await;
    b1.nothing_seen().await;
    let listed = admin_client.list_relays().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner, b2.party.identifier.to_string());

    shut_down(&[&b1.node, &b2.node, &user_node, &node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_goes_with_its_owners_channel_and_its_name_is_free_at_once() {
    let (project, _, node, mut admin_client) = project_with_admin("goes").await;
    let member = project
        .enroll(&mut admin_client, &node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let relayed = Relayed::start(&project, member, "relayed");
    let owner = relayed.relay(&project, "db").await;
    assert_eq!(relay_names(&mut admin_client).await, ["db"]);

    // The relayed node's channel ends (it stopped, say); nobody deleted the relay.
    owner.close().await;
    until("the relay to be removed at the project node", || {
        relay_addresses(&project).is_empty()
    })
    .await;
    assert!(relay_names(&mut admin_client).await.is_empty());

    // Moved to a new channel, it survives the old one's end and goes with the new one's.
    let first = relayed.relay(&project, "db").await;
    let mut second = relayed.relay(&project, "db").await;
    first.close().await;
    second.check_relay("db").await.unwrap();
    assert_eq!(relay_addresses(&project), ["forward_to_db"]);
    second.close().await;
    until("the moved relay to go with its channel", || {
        relay_addresses(&project).is_empty()
    })
    .await;
    shut_down(&[&relayed.node, &node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_list_pages_by_name_and_the_client_gets_every_relay_once() {
    let (project, _, node, mut admin_client) = project_with_admin("many").await;
    // More than two pages, created out of name order.
    let mut names: Vec<String> = (0..450).map(|i| format!("r{:03}", (i * 7) % 450)).collect();
    for name in &names {
        admin_client.create_relay(name).await.unwrap();
    }
    names.sort();
    assert_eq!(relay_names(&mut admin_client).await, names);
    shut_down(&[&node], project).await;
}

// ---- 3. names -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_relay_names_are_refused_with_bad_request_and_a_clear_message() {
    let (project, _, node, mut admin_client) = project_with_admin("names").await;
    let long = "x".repeat(10 * 1024);
    let cases: [(&str, &str); 5] = [
        ("a/b", "'/' at position 2"),
        ("d\u{7}b", "'\\u{7}' at position 2"),
        ("db\n", "'\\n' at position 3"),
        (&long, "10240 bytes long; the most is 64"),
        ("", "empty"),
    ];
    for (name, says) in cases {
        // Checked before anything else: an admin, who may create any name, is refused too.
        let refusal = refused(
            admin_client.create_relay(name).await,
            ErrorKind::BadRequest,
            &[says],
        );
        assert!(refusal.message.len() < 200, "{refusal:?} echoes the name");
    }
    assert!(relay_names(&mut admin_client).await.is_empty());
    assert!(relay_addresses(&project).is_empty());
    shut_down(&[&node], project).await;
}

// ---- 4. end to end --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_reaches_a_relayed_node_through_an_end_to_end_channel_across_the_relay() {
    let (project, mut b, [c_party]) = stage([("component", "web-frontend")]).await;
    let _b_client = b.relay(&project, "db").await;

    let c_node = plain_node("c");
    let outer = Outer::open(&project, &c_node, &c_party).await;
    let (inner, _) = outer.inner_channel("db", &[], &c_party, &b).await;
    // The inner channel is with b itself, proven end to end: b's identity and credential.
    assert_eq!(inner.peer.identifier, b.party.identifier);
    assert_ne!(inner.peer.identifier, project.identifier);
    assert_eq!(
        inner
            .peer
            .attributes
            .get(RELAY_ATTRIBUTE)
            .map(String::as_str),
        Some("db")
    );

    let mut c = c_node.client().unwrap();
    let through = Route::from(vec![inner.encryptor.clone(), Address::local(WHOAMI)]);
    let reply = c
        .request(through.clone(), "hello through the relay", WAIT)
        .await
        .unwrap();
    assert_eq!(&reply.payload[..], b"hello through the relay");
    assert!(
        matches!(reply.origin(), Origin::SecureChannel(peer)
            if peer.identifier == b.party.identifier.to_string()),
        "{:?}",
        reply.origin()
    );
    // b sees c, with c's attributes from c's credential, not the project node.
    let seen = b.next_seen().await;
    assert_eq!(&seen.payload[..], b"hello through the relay");
    let Some(ChannelPeer {
        identifier,
        attributes: seen_attributes,
        ..
    }) = seen.origin.channel_peer()
    else {
        panic!("not through a channel: {:?}", seen.origin);
    };
    assert_eq!(*identifier, c_party.identifier.to_string());
    assert_eq!(
        *seen_attributes,
        attributes(&[
            ("component", "web-frontend"),
            (PROJECT_ID_ATTRIBUTE, PROJECT_ID)
        ])
    );
    // And again: the channel keeps working both ways.
    for i in 0..10 {
        let text = format!("message {i}");
        let reply = c
            .request(through.clone(), text.clone(), WAIT)
            .await
            .unwrap();
        assert_eq!(&reply.payload[..], text.as_bytes());
        b.next_seen().await;
    }
    secure_channel::close(&c_node, &inner);
    shut_down(&[&c_node, &b.node], project).await;
}

// ---- 5. ciphertext only, and tampering ------------------------------------------------------

/// On b, between b's channel to the project node and b's end of the inner channel: records
/// every payload as the project node's relay handed it over, and can flip a bit in the next
/// one, as a project node (or anyone on the path) that changed a message would.
struct Tap {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    tamper: Arc<AtomicBool>,
}

impl Worker for Tap {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        mut message: Message,
    ) -> Result<(), WorkerError> {
        self.seen.lock().unwrap().push(message.payload.to_vec());
        if self.tamper.swap(false, Ordering::SeqCst) {
            let mut changed = message.payload.to_vec();
            if let Some(last) = changed.last_mut() {
                *last ^= 0x01;
            }
            message.payload = changed.into();
        }
        message.onward_route.step();
        message.return_route.prepend(ctx.address().clone());
        ctx.forward(message).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_project_node_relays_ciphertext_only_and_a_changed_message_tears_the_channel_down() {
    let (project, mut b, [c_party]) = stage([("component", "web-frontend")]).await;
    let tapped = Arc::new(Mutex::new(Vec::new()));
    let tamper = Arc::new(AtomicBool::new(false));
    b.node
        .start_worker_with_policy(
            [Address::local("tap")],
            Arc::new(AllowAll),
            Tap {
                seen: tapped.clone(),
                tamper: tamper.clone(),
            },
        )
        .unwrap();
    let mut b_client = b.relay(&project, "db").await;

    let c_node = plain_node("c");
    let mut outer = Outer::open(&project, &c_node, &c_party).await;
    let (inner, b_inner) = outer.inner_channel("db", &["tap"], &c_party, &b).await;

    let marker = b"kith relay plaintext marker 6b1f";
    let mut c = c_node.client().unwrap();
    let through = Route::from(vec![inner.encryptor.clone(), Address::local(WHOAMI)]);
    let reply = c.request(through.clone(), &marker[..], WAIT).await.unwrap();
    assert_eq!(&reply.payload[..], marker);
    assert_eq!(&b.next_seen().await.payload[..], marker);
    // Three handshake messages, b's `Ready`, the request and the answer all passed the tap.
    until("the tap to see the whole exchange", || {
        tapped.lock().unwrap().len() >= 6
    })
    .await;
    {
        let tapped = tapped.lock().unwrap();
        assert!(tapped.iter().any(|p| p.len() > marker.len()));
        for payload in tapped.iter() {
            assert!(
                !contains(payload, marker),
                "plaintext crossed the project node"
            );
            // c's credential went to b inside the handshake, encrypted too.
            assert!(
                !contains(payload, b"web-frontend"),
                "an attribute in the clear"
            );
        }
    }

    // The next message is changed on the way: b refuses it and ends the channel, and c's
    // end hears of it.
    tamper.store(true, Ordering::SeqCst);
    let after = c
        .request(through.clone(), "changed on the way", NO_ANSWER)
        .await;
    assert!(after.is_err(), "a changed message was answered: {after:?}");
    assert!(
        !tamper.load(Ordering::SeqCst),
        "the tap did not change a message"
    );
    until("b to end its side of the inner channel", || {
        channel_ends(&b.node).is_disjoint(&b_inner)
    })
    .await;
    until("c to end its side of the inner channel", || {
        !c_node.addresses().contains(&inner.encryptor)
    })
    .await;
    b.nothing_seen().await;
    // The relay and the channels to the project node are unharmed.
    b_client.check_relay("db").await.unwrap();
    outer
        .echo_through("db", &mut b, "the relay still works")
        .await;

    shut_down(&[&c_node, &b.node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_a_bystander_sends_through_the_relay_ends_the_inner_channel_and_injects_nothing() {
    let (project, mut b, [c_party, d_party]) =
        stage([("component", "web"), ("component", "bystander")]).await;
    let _b_client = b.relay(&project, "db").await;

    let c_node = plain_node("c");
    let outer = Outer::open(&project, &c_node, &c_party).await;
    let (inner, b_inner) = outer.inner_channel("db", &[], &c_party, &b).await;
    let b_decryptor = b_inner
        .iter()
        .find(|a| !kith_identity::secure_channel::is_encryptor(a))
        .cloned()
        .unwrap();
    let mut c = c_node.client().unwrap();
    let through = Route::from(vec![inner.encryptor.clone(), Address::local(WHOAMI)]);
    c.request(through.clone(), "before", WAIT).await.unwrap();
    b.next_seen().await;

    // d, a member with a channel of its own to the project node, knows b's decryptor and
    // sends it something that is not from c's channel.
    let d_node = plain_node("d");
    let d_channel = Outer::open(&project, &d_node, &d_party).await;
    let garbage: Vec<u8> = (0..96u8).map(|i| i.wrapping_mul(37)).collect();
    d_channel
        .client
        .send(
            Route::from(vec![
                d_channel.channel.encryptor.clone(),
                Address::local(relay::relay_address("db")),
                b_decryptor.clone(),
            ]),
            garbage,
        )
        .await
        .unwrap();
    until("b to end the inner channel", || {
        channel_ends(&b.node).is_disjoint(&b_inner)
    })
    .await;
    b.nothing_seen().await;
    let after = c.request(through, "after", NO_ANSWER).await;
    assert!(
        after.is_err(),
        "the inner channel outlived garbage: {after:?}"
    );
    b.nothing_seen().await;

    shut_down(&[&d_node, &c_node, &b.node], project).await;
}

// ---- 6. the back address, and who may send through the relay -----------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_owners_answers_pass_the_back_address_and_only_into_a_secure_channel() {
    let (project, mut b, [c_party, d_party]) =
        stage([("component", "web"), ("component", "bystander")]).await;
    let p = project.node.node.clone();
    // Workers on the project node the back address must not lead to: one open to every
    // origin, and one for this node only (which a relay that passed messages on as local
    // ones would open to the relayed node). Neither answers, so what they record is all
    // that reached them.
    let (open, mut open_seen) = Recorder::new(false);
    p.start_worker_with_policy([Address::local("open")], Arc::new(AllowAll), open)
        .unwrap();
    let (local_only, mut local_seen) = Recorder::new(false);
    p.start_worker("local-only", local_only).unwrap();
    let _b_client = b.relay(&project, "db").await;

    // c sends through the relay; b's answer comes back through the back address into c's
    // channel. What b sees tells the back address and c's channel's encryptor on P.
    let c_node = plain_node("c");
    let mut c = Outer::open(&project, &c_node, &c_party).await;
    c.send_through("db", "hello").await;
    let seen = b.next_seen().await;
    let answer = c.client.receive(WAIT).await.unwrap();
    assert_eq!(&answer.payload[..], b"hello");
    let hops: Vec<Address> = seen.return_route.iter().cloned().collect();
    assert_eq!(hops.len(), 4, "{}", seen.return_route);
    let (back, c_encryptor) = (hops[1].clone(), hops[2].clone());
    assert!(back.value().starts_with("relay-back-"), "{back}");
    assert!(
        kith_identity::secure_channel::is_encryptor(&c_encryptor),
        "{c_encryptor}"
    );
    assert_eq!(&hops[3], c.client.address());
    let c_mailbox = hops[3].clone();
    let to_c = |first: &Address| {
        Route::from(vec![
            first.clone(),
            back.clone(),
            c_encryptor.clone(),
            c_mailbox.clone(),
        ])
    };

    // The owner, through any channel of its own, reaches c that way (the control)…
    let owner = Outer::open(&project, &b.node, &b.party).await;
    owner
        .client
        .send(to_c(&owner.channel.encryptor), "from the owner")
        .await
        .unwrap();
    let got = c.client.receive(WAIT).await.unwrap();
    assert_eq!(&got.payload[..], b"from the owner");
    // …a bystander member does not.
    let d_node = plain_node("d");
    let d = Outer::open(&project, &d_node, &d_party).await;
    d.client
        .send(to_c(&d.channel.encryptor), "forged answer")
        .await
        .unwrap();
    assert!(
        c.no_answer().await,
        "a non-owner's answer passed the back address"
    );

    // The owner cannot speak, as the project node, into a channel that never used its relay:
    // e's channel to P is found as the encryptor P gained when e connected.
    let before: BTreeSet<Address> = p.addresses().into_iter().collect();
    let e_node = plain_node("e");
    let mut e = Outer::open(&project, &e_node, &c_party).await;
    let e_encryptor = p
        .addresses()
        .into_iter()
        .find(|a| kith_identity::secure_channel::is_encryptor(a) && !before.contains(a))
        .expect("P has an encryptor for e's channel");
    let to_e = Route::from(vec![
        owner.channel.encryptor.clone(),
        back.clone(),
        e_encryptor.clone(),
        e.client.address().clone(),
    ]);
    owner.client.send(to_e.clone(), "unasked").await.unwrap();
    assert!(
        e.no_answer().await,
        "the owner reached a channel that never sent through its relay"
    );
    // Control: once e has sent through the relay, the owner may answer it.
    e.send_through("db", "hi").await;
    b.next_seen().await;
    assert_eq!(&e.client.receive(WAIT).await.unwrap().payload[..], b"hi");
    owner.client.send(to_e, "asked").await.unwrap();
    assert_eq!(&e.client.receive(WAIT).await.unwrap().payload[..], b"asked");

    // The owner cannot use the back address to reach anything but a channel's encryptor:
    // not a worker open to all (control: it reaches that worker directly)…
    let owner_mailbox = b.node.client().unwrap();
    let direct = Route::from(vec![
        owner.channel.encryptor.clone(),
        Address::local("open"),
    ]);
    owner_mailbox.send(direct, "direct").await.unwrap();
    let got = tokio::time::timeout(WAIT, open_seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.payload[..], b"direct");
    assert!(matches!(got.origin, Origin::SecureChannel(_)));
    let via_back = |rest: Vec<Address>| {
        let mut hops = vec![owner.channel.encryptor.clone(), back.clone()];
        hops.extend(rest);
        Route::from(hops)
    };
    owner_mailbox
        .send(via_back(vec![Address::local("open")]), "via back")
        .await
        .unwrap();
    // …not a worker for the project node's own use…
    owner_mailbox
        .send(via_back(vec![Address::local("local-only")]), "as local")
        .await
        .unwrap();
    // …and not a dial out to an address of its choosing.
    let observer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let observed = Address::try_new(TCP, observer.local_addr().unwrap().to_string()).unwrap();
    owner_mailbox
        .send(
            via_back(vec![observed, Address::local("echo")]),
            "dial out for me",
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(SILENCE, observer.accept())
            .await
            .is_err(),
        "the project node dialed out for the relayed node"
    );
    assert!(
        open_seen.try_recv().is_err(),
        "the back address led to a worker that is not a channel"
    );
    assert!(
        local_seen.try_recv().is_err(),
        "a local-only worker took a message from the back address"
    );

    // Through `forward_to_db`, a sender needs a credential from this project (control: c
    // above); an identity without one gets nothing to b.
    let stranger = Party::new();
    let e_node = plain_node("e");
    let mut e = Outer::open(&project, &e_node, &stranger).await;
    e.send_through("db", "from a stranger").await;
    assert!(e.no_answer().await);
    b.nothing_seen().await;
    // None of it harmed the relay: a member's message and b's answer still pass.
    c.echo_through("db", &mut b, "still fine").await;

    shut_down(&[&e_node, &d_node, &c_node, &b.node], project).await;
}

// ---- 7. the keeper --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_keeper_registers_again_when_the_project_node_comes_back_on_the_same_port() {
    let (mut project, mut b, [c_party]) = stage([("component", "web")]).await;
    let settings = SharedSettings::new(b.party.settings(project.trust()));
    let mut keeper = RelayKeeper::start(&b.node, settings, project.keeper_config("db"))
        .await
        .unwrap();
    let status = keeper.status();
    assert!(matches!(status.state, RelayState::Up { .. }), "{status:?}");
    assert_eq!(
        status.relay.as_ref().unwrap().owner,
        b.party.identifier.to_string()
    );
    assert_eq!(status.reconnections, 0);
    assert_eq!(status.last_error, None);

    let c_node = plain_node("c");
    let mut c = Outer::open(&project, &c_node, &c_party).await;
    c.echo_through("db", &mut b, "before the restart").await;

    // The project node goes away: the heartbeat fails, and reconnecting fails while it is
    // down.
    let port = project.port;
    project.shut_down_node().await;
    let down = reached(&mut keeper, "reconnecting", |s| {
        matches!(s.state, RelayState::Reconnecting { .. })
    })
    .await;
    assert!(down.last_error.is_some(), "{down:?}");
    let failing = reached(
        &mut keeper,
        "reconnecting after a failed attempt",
        |s| matches!(s.state, RelayState::Reconnecting { attempts, .. } if attempts >= 1),
    )
    .await;
    let Some((_, error)) = &failing.last_error else {
        panic!("no error while reconnecting: {failing:?}");
    };
    // Refused, or — if another test's server took the freed port meanwhile — not answered:
    // either way the channel to the project node fails, and says so.
    assert!(
        error.contains("cannot open a secure channel")
            || error.contains("did not answer the secure channel handshake"),
        "{error}"
    );

    // A new project node process-object, same identity and store, on the same port.
    project.start_node_on(&format!("127.0.0.1:{port}")).await;
    assert_eq!(project.port, port);
    let up = reached(&mut keeper, "up again", |s| {
        matches!(s.state, RelayState::Up { .. })
    })
    .await;
    assert_eq!(up.reconnections, 1);
    assert!(up.last_error.is_some());
    assert_eq!(
        up.relay.as_ref().unwrap().owner,
        b.party.identifier.to_string()
    );

    let c2_node = plain_node("c2");
    let mut c2 = Outer::open(&project, &c2_node, &c_party).await;
    c2.echo_through("db", &mut b, "after the restart").await;

    keeper.stop();
    shut_down(&[&c2_node, &c_node, &b.node], project).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_keeper_reports_the_relay_down_as_soon_as_its_channel_ends_and_confirms_only_with_the_project_node()
 {
    let (project, b, []) = stage([]).await;
    let settings = SharedSettings::new(b.party.settings(project.trust()));
    // A heartbeat too slow to notice anything within this test: only the channel's end
    // signal can.
    let config = KeeperConfig {
        heartbeat: WAIT * 2,
        ..project.keeper_config("db")
    };
    let mut keeper = RelayKeeper::start(&b.node, settings, config).await.unwrap();
    // Confirmed by the project node, now.
    let confirmed = keeper.confirm().await.unwrap();
    assert_eq!(confirmed.owner, b.party.identifier.to_string());

    project.shut_down_node().await;
    let down = reached(&mut keeper, "down", |s| {
        matches!(s.state, RelayState::Reconnecting { .. })
    })
    .await;
    assert!(down.last_error.is_some(), "{down:?}");
    // Not confirmed while the project node is gone: an attempt made for the asker fails.
    match keeper.confirm().await {
        Err(ConfirmError::Failed(e)) => {
            assert!(
                matches!(
                    *e,
                    ClientError::Connect { .. } | ClientError::ConnectTimeout { .. }
                ),
                "{e:?}"
            )
        }
        other => panic!("confirmed with the project node gone: {other:?}"),
    }
    keeper.stop();
    b.node.shutdown().await;
}

// ---- helpers --------------------------------------------------------------------------------

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn code_of(ticket: &CreatedTicket) -> OneTimeCode {
    OneTimeCode::from_bytes(hex::decode(&ticket.code).unwrap().try_into().unwrap())
}

/// The authority's refusal in `outcome`, which must be of `kind` and say each of `says`.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    outcome: Result<T, ClientError>,
    kind: ErrorKind,
    says: &[&str],
) -> api::ApiError {
    let refusal = match outcome {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refusal.kind, kind, "{refusal:?}");
    for said in says {
        assert!(
            refusal.message.contains(said),
            "{refusal:?} does not say {said:?}"
        );
    }
    refusal
}

async fn relay_names(admin: &mut AuthorityClient) -> Vec<String> {
    admin
        .list_relays()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// The relay addresses registered on the project node.
fn relay_addresses(project: &Project) -> Vec<String> {
    project
        .node
        .node
        .addresses()
        .into_iter()
        .filter(|a| a.value().starts_with(RELAY_ADDRESS_PREFIX))
        .map(|a| a.value().to_owned())
        .collect()
}

/// The addresses of every secure channel end on `node`.
fn channel_ends(node: &Node) -> BTreeSet<Address> {
    node.addresses()
        .into_iter()
        .filter(|a| a.value().starts_with("sc-"))
        .collect()
}

/// Wait for `keeper`'s relay to be `what` (as `f` says); its state then.
async fn reached(
    keeper: &mut RelayKeeper,
    what: &str,
    f: impl Fn(&RelayStatus) -> bool,
) -> RelayStatus {
    let status = keeper.wait_for(WAIT, &f).await;
    assert!(
        f(&status),
        "the relay was not {what} within {WAIT:?}: {status:?}"
    );
    status
}

/// A node with TCP (which it keeps registered) and no listener.
fn plain_node(name: &str) -> Node {
    let node = Node::new(name);
    TcpTransport::start(&node);
    node
}

/// Shut `nodes` down, then the project node.
async fn shut_down(nodes: &[&Node], project: Project) {
    for node in nodes {
        node.shutdown().await;
    }
    project.stop().await;
}

/// A project with one admin, connected from a node of its own that the test's other parties
/// may share.
async fn project_with_admin(node_name: &str) -> (Project, Party, Node, AuthorityClient) {
    let admin = Party::new();
    let project = Project::start(&[&admin]).await;
    let node = plain_node(node_name);
    let admin_client = project.connect(&node, &admin).await;
    (project, admin, node, admin_client)
}

/// What most relay tests start from: a project whose admin enrolled relayed node `b`
/// (`ockam-relay=db`; running, not yet relaying) and one member per attribute in `members`.
/// The admin's node, done with enrolling, is shut down.
async fn stage<const N: usize>(members: [(&str, &str); N]) -> (Project, Relayed, [Party; N]) {
    let (project, _, admin_node, mut admin_client) = project_with_admin("admin").await;
    let b_party = project
        .enroll(&mut admin_client, &admin_node, &[(RELAY_ATTRIBUTE, "db")])
        .await;
    let mut parties = Vec::new();
    for attribute in members {
        parties.push(
            project
                .enroll(&mut admin_client, &admin_node, &[attribute])
                .await,
        );
    }
    admin_client.close().await;
    admin_node.shutdown().await;
    let b = Relayed::start(&project, b_party, "b");
    let Ok(parties) = <[Party; N]>::try_from(parties) else {
        unreachable!("one party per member");
    };
    (project, b, parties)
}

/// An identity, the credentials it presents, and fresh channel settings on demand.
struct Party {
    identity: Identity,
    secret: IdentitySecret,
    identifier: Identifier,
    credentials: Vec<CredentialAndPurposeKey>,
}

impl Party {
    fn new() -> Self {
        let (identity, secret) = Identity::create(unix_now());
        Self {
            identifier: *identity.identifier(),
            identity,
            secret,
            credentials: Vec::new(),
        }
    }

    /// A new party presenting one credential with `attributes`, signed by `key`, valid from
    /// `created_at` to `expires_at` (Unix seconds; both may be past, for an expired one).
    fn credentialed(
        key: &CredentialSigningKey,
        attributes: BTreeMap<String, String>,
        created_at: u64,
        expires_at: u64,
    ) -> Self {
        let mut party = Self::new();
        party.credentials.push(
            CredentialAndPurposeKey::issue(
                key,
                &party.identifier,
                attributes,
                created_at,
                expires_at,
            )
            .unwrap(),
        );
        party
    }

    fn settings(&self, trust: Arc<Trust>) -> ChannelSettings {
        let key = SecureChannelKey::generate(
            &self.identity,
            &self.secret,
            unix_now() - 5,
            unix_now() + 3600,
        );
        let local = LocalIdentity {
            identity: self.identity.clone(),
            key,
            credentials: self.credentials.clone(),
        };
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = WAIT;
        settings
    }
}

/// What a recording worker saw of one message.
#[derive(Debug)]
struct Seen {
    origin: Origin,
    payload: Vec<u8>,
    return_route: Route,
}

/// 64 records: what a recorder keeps unread, more than any test sends before it reads.
const RECORDED: usize = 64;

/// Records every message it gets and, if `answer`, sends its payload back.
struct Recorder {
    seen: mpsc::Sender<Seen>,
    answer: bool,
}

impl Recorder {
    /// A recorder, and where what it records arrives.
    fn new(answer: bool) -> (Self, mpsc::Receiver<Seen>) {
        let (seen, records) = mpsc::channel(RECORDED);
        (Self { seen, answer }, records)
    }
}

impl Worker for Recorder {
    async fn handle_message(
        &mut self,
        ctx: &mut Context,
        message: Message,
    ) -> Result<(), WorkerError> {
        // Full only if a test stopped reading; dropping the record then is harmless.
        let _ = self.seen.try_send(Seen {
            origin: message.origin().clone(),
            payload: message.payload.to_vec(),
            return_route: message.return_route.clone(),
        });
        if self.answer {
            ctx.send(message.return_route, message.payload).await?;
        }
        Ok(())
    }
}

/// A relayed node: TCP without a listener (it only dials out), a secure-channel listener
/// for channels that come through its relay, `echo`, and [`WHOAMI`], which records and
/// answers.
struct Relayed {
    party: Party,
    node: Node,
    seen: mpsc::Receiver<Seen>,
}

impl Relayed {
    fn start(project: &Project, party: Party, name: &str) -> Self {
        let node = plain_node(name);
        secure_channel::listen(&node, DEFAULT_LISTENER, party.settings(project.trust())).unwrap();
        node.start_worker_with_policy([Address::local("echo")], Arc::new(AllowAll), Echo)
            .unwrap();
        let (whoami, seen) = Recorder::new(true);
        node.start_worker_with_policy([Address::local(WHOAMI)], Arc::new(AllowAll), whoami)
            .unwrap();
        Self { party, node, seen }
    }

    /// A client of the project node's services from this node, as this party.
    async fn client(&self, project: &Project) -> AuthorityClient {
        project.connect(&self.node, &self.party).await
    }

    /// Relay `name`, created through a new channel to the project node; the relay leads here
    /// for as long as the returned client (and so its channel) lives.
    async fn relay(&self, project: &Project, name: &str) -> AuthorityClient {
        let mut client = self.client(project).await;
        client.create_relay(name).await.unwrap();
        client
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the relayed node got a message in time")
            .expect("the recorder is running")
    }

    async fn nothing_seen(&mut self) {
        if let Ok(Some(seen)) = tokio::time::timeout(SILENCE, self.seen.recv()).await {
            panic!("the relayed node got a message it should not have: {seen:?}");
        }
    }
}

/// A party's secure channel to the project node, and a mailbox to send through it.
struct Outer {
    node: Node,
    channel: SecureChannel,
    client: Client,
}

impl Outer {
    async fn open(project: &Project, node: &Node, party: &Party) -> Self {
        let settings = party.settings(project.admitting(project.identifier));
        let channel = tokio::time::timeout(
            WAIT,
            secure_channel::create(node, project.listener_route(), &settings),
        )
        .await
        .expect("the channel to the project node opened in time")
        .expect("the project node admitted us");
        Self {
            node: node.clone(),
            channel,
            client: node.client().unwrap(),
        }
    }

    /// The route through this channel and relay `name` to `service` on the relayed node.
    fn through(&self, name: &str, service: &str) -> Route {
        Route::from(vec![
            self.channel.encryptor.clone(),
            Address::local(relay::relay_address(name)),
            Address::local(service),
        ])
    }

    async fn send_through(&self, name: &str, payload: &'static str) {
        self.client
            .send(self.through(name, WHOAMI), payload)
            .await
            .unwrap();
    }

    /// Send `payload` to `relayed`'s recorder through relay `name`; it must arrive, and its
    /// answer must come back.
    async fn echo_through(&mut self, name: &str, relayed: &mut Relayed, payload: &'static str) {
        self.send_through(name, payload).await;
        let seen = relayed.next_seen().await;
        assert_eq!(&seen.payload[..], payload.as_bytes());
        let answer = self.client.receive(WAIT).await.unwrap();
        assert_eq!(&answer.payload[..], payload.as_bytes());
    }

    /// The error message that answers what was sent through this channel.
    async fn undeliverable(&mut self) -> Undeliverable {
        match self.client.receive(WAIT).await {
            Err(RequestError::Undeliverable(error)) => error,
            other => panic!("expected an error message, got {other:?}"),
        }
    }

    /// Whether nothing arrives in [`SILENCE`].
    async fn no_answer(&mut self) -> bool {
        matches!(
            self.client.receive(SILENCE).await,
            Err(RequestError::Timeout(_))
        )
    }

    /// A secure channel from `party` through this channel and relay `name` (and `via`, on
    /// the relayed node) to `relayed`'s listener, admitting only `relayed`'s identity; and
    /// `relayed`'s end of it (the two channel workers it gained).
    async fn inner_channel(
        &self,
        name: &str,
        via: &[&str],
        party: &Party,
        relayed: &Relayed,
    ) -> (SecureChannel, BTreeSet<Address>) {
        let before = channel_ends(&relayed.node);
        let mut hops = vec![
            self.channel.encryptor.clone(),
            Address::local(relay::relay_address(name)),
        ];
        hops.extend(via.iter().map(Address::local));
        hops.push(Address::local(DEFAULT_LISTENER));
        let settings = party.settings(Arc::new(Trust {
            authorities: self.authorities(),
            admission: Admission::Identifiers(BTreeSet::from([relayed.party.identifier])),
            revocations: Default::default(),
        }));
        let channel = tokio::time::timeout(
            WAIT,
            secure_channel::create(&self.node, Route::from(hops), &settings),
        )
        .await
        .expect("the inner channel opened in time")
        .expect("the relayed node admitted us");
        let ends: BTreeSet<Address> = channel_ends(&relayed.node)
            .difference(&before)
            .cloned()
            .collect();
        assert_eq!(
            ends.len(),
            2,
            "the relayed end of the inner channel: {ends:?}"
        );
        (channel, ends)
    }

    /// The project's authority: the project node's own identity.
    fn authorities(&self) -> Vec<Identity> {
        vec![self.channel.peer.identity.clone()]
    }
}

/// One project node: the authority's services, the relay service, a secure-channel listener
/// that trusts the project's authority, and its own store and vault handles.
struct ProjectNode {
    node: Node,
    store: MembershipStore,
    vault: Vault,
}

/// A project: the authority identity in a vault file, the membership store in a SQLite file,
/// and the project node on a loopback port.
struct Project {
    _dir: TempDir,
    vault_path: std::path::PathBuf,
    location: String,
    identity: Identity,
    identifier: Identifier,
    admins: BTreeSet<Identifier>,
    node: ProjectNode,
    port: u16,
    /// The clock the project node's authority reads, across restarts: set to the wall
    /// clock at the start, and moved only by the tests.
    clock: Arc<ManualClock>,
}

/// Whose store the project node opens: [`PROJECT_ID`]'s.
fn owner() -> StoreOwner {
    StoreOwner {
        project_id: PROJECT_ID.into(),
        authority: None,
    }
}

impl Project {
    async fn start(admins: &[&Party]) -> Self {
        let dir = TempDir::new().unwrap();
        let vault_path = dir.path().join("vault.sqlite");
        let vault = Vault::open(&vault_path).await.unwrap();
        let stored = vault
            .create_identity(AUTHORITY_NAME, unix_now())
            .await
            .unwrap();
        vault.close().await;
        let location = dir
            .path()
            .join("authority.sqlite")
            .to_str()
            .unwrap()
            .to_owned();
        let identity = stored.identity;
        // The project's store is created once; every node started on it opens it.
        MembershipStore::create(&location, &owner(), unix_now())
            .await
            .unwrap()
            .close()
            .await;
        let admins = admins.iter().map(|p| p.identifier).collect();
        let clock = Arc::new(ManualClock::new(unix_now()));
        let (node, port) = Self::node_on(
            &vault_path,
            &location,
            &identity,
            &admins,
            &clock,
            "127.0.0.1:0",
        )
        .await;
        Self {
            _dir: dir,
            vault_path,
            location,
            identifier: *identity.identifier(),
            identity,
            admins,
            node,
            port,
            clock,
        }
    }

    async fn node_on(
        vault_path: &std::path::Path,
        location: &str,
        identity: &Identity,
        admins: &BTreeSet<Identifier>,
        clock: &Arc<ManualClock>,
        bind: &str,
    ) -> (ProjectNode, u16) {
        let vault = Vault::open(vault_path).await.unwrap();
        let store = MembershipStore::open(location, &owner(), unix_now())
            .await
            .unwrap();
        let node = Node::new("project");
        let tcp = TcpTransport::start(&node);
        let key = vault
            .secure_channel_key(AUTHORITY_NAME, unix_now())
            .await
            .unwrap();
        let local = LocalIdentity {
            identity: identity.clone(),
            key,
            credentials: vec![],
        };
        // The project node trusts its own authority: members' credentials then carry their
        // attributes (and the project id) into every message they send.
        let trust = Arc::new(Trust {
            authorities: vec![identity.clone()],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        });
        let mut settings = ChannelSettings::new(Arc::new(local), trust);
        settings.handshake_timeout = WAIT;
        secure_channel::listen(&node, DEFAULT_LISTENER, settings).unwrap();
        let authority = Authority::new(
            store.clone(),
            vault.clone(),
            AUTHORITY_NAME.into(),
            AuthorityConfig {
                project_id: PROJECT_ID.into(),
                admins: admins.clone(),
                credential_ttl: CREDENTIAL_TTL,
                join: JoinSettings::default(),
                clock: clock.clone(),
            },
        );
        authority.start(&node).unwrap();
        relay::start(&authority, &node).unwrap();
        let port = tcp.listen(bind).await.unwrap().port();
        (ProjectNode { node, store, vault }, port)
    }

    /// Shut the project node down (its store and vault handles closed).
    async fn shut_down_node(&self) {
        self.node.node.shutdown().await;
        self.node.store.close().await;
        self.node.vault.close().await;
    }

    /// A new project node, same identity, vault and store, listening on `bind`.
    async fn start_node_on(&mut self, bind: &str) {
        let (node, port) = Self::node_on(
            &self.vault_path,
            &self.location,
            &self.identity,
            &self.admins,
            &self.clock,
            bind,
        )
        .await;
        self.node = node;
        self.port = port;
    }

    fn listener_route(&self) -> Route {
        Route::from(vec![
            Address::try_new(TCP, format!("127.0.0.1:{}", self.port)).unwrap(),
            Address::local(DEFAULT_LISTENER),
        ])
    }

    /// Trust in the project's authority, admitting anyone.
    fn trust(&self) -> Arc<Trust> {
        Arc::new(Trust {
            authorities: vec![self.identity.clone()],
            admission: Admission::AnyIdentity,
            revocations: Default::default(),
        })
    }

    /// Trust in the project's authority, admitting only `peer`.
    fn admitting(&self, peer: Identifier) -> Arc<Trust> {
        Arc::new(Trust {
            authorities: vec![self.identity.clone()],
            admission: Admission::Identifiers(BTreeSet::from([peer])),
            revocations: Default::default(),
        })
    }

    async fn connect(&self, from: &Node, party: &Party) -> AuthorityClient {
        AuthorityClient::connect(
            from,
            self.listener_route(),
            &self.identifier,
            &party.settings(self.trust()),
            WAIT,
        )
        .await
        .unwrap()
    }

    /// A new member enrolled the real way: an admin's ticket with `attrs`, redeemed through
    /// the member's own channel; it presents the credential it got from then on.
    async fn enroll(
        &self,
        admin: &mut AuthorityClient,
        from: &Node,
        attrs: &[(&str, &str)],
    ) -> Party {
        let ticket = admin
            .create_ticket(attributes(attrs), Duration::from_secs(600), 1)
            .await
            .unwrap();
        let mut party = Party::new();
        let enrolled = self
            .connect(from, &party)
            .await
            .redeem(&code_of(&ticket))
            .await
            .unwrap();
        party
            .credentials
            .push(decode_credential(&enrolled).unwrap());
        party
    }

    /// The authority's credential signing key, for credentials with hand-picked validity.
    async fn signing_key(&self) -> CredentialSigningKey {
        self.node
            .vault
            .credential_signing_key(AUTHORITY_NAME, unix_now())
            .await
            .unwrap()
    }

    fn keeper_config(&self, name: &str) -> KeeperConfig {
        KeeperConfig {
            name: name.into(),
            listener: self.listener_route(),
            project_node: self.identifier,
            timeout: NO_ANSWER,
            heartbeat: Duration::from_millis(200),
        }
    }

    async fn stop(self) {
        self.shut_down_node().await;
    }
}
