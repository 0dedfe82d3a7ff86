//! The authority's services end to end: real nodes in this process, real TCP on loopback,
//! real secure channels, and a real membership store. Every scenario runs once on a fresh
//! SQLite file and once on a fresh PostgreSQL database (DESIGN §5: same behaviour on both).
//!
//! The authority reads time from a [`ManualClock`] set when the world starts: every
//! timestamp an answer carries is known exactly, and "later" is the clock moved forward, not
//! a wait. It stays within a minute of the wall clock wherever a credential it issues is
//! then verified (channels and clients check credentials against the wall clock).
//!
//! The PostgreSQL half needs a server: `KITH_TEST_POSTGRES_URL` names a role that may create
//! databases (each test makes its own and drops it). `eval "$(bash .ci/postgres)"` starts one
//! and sets the variable. Without it those tests fail; they never skip silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kith_authority::api::{
    self, ACCEPTOR_SERVICE, AUDIT_SERVICE, CREDENTIAL_SERVICE, CreatedTicket, ENROLLER_ROLE,
    Enrolled, ErrorKind, MEMBERS_SERVICE, PROJECT_ID_ATTRIBUTE, ROLE_ATTRIBUTE, TICKET_SERVICE,
};
use kith_authority::api::{JoinRequestInfo, JoinState, JoinWaited};
use kith_authority::client::{
    AuthorityClient, ClientError, JoinEvent, JoinWait, decode_credential,
};
use kith_authority::join::JoinSettings;
use kith_authority::service::{Authority, AuthorityConfig};
use kith_authority::store::{AuditEvent, Member, MembershipStore, StoreOwner};
use kith_authority::ticket::OneTimeCode;
use kith_authority::{Clock, ManualClock};
use kith_identity::channel::{Admission, LocalIdentity, Trust};
use kith_identity::revocation::RevocationKind;
use kith_identity::secure_channel::{self, ChannelSettings, DEFAULT_LISTENER};
use kith_identity::vault::Vault;
use kith_identity::{Identifier, Identity, SecureChannelKey};
use kith_node::testing::until;
use kith_node::{
    Address, Context, ErrorClass, Message, Node, RequestError, Route, RouteError, TCP, Worker,
    WorkerError,
};
use kith_transport::TcpTransport;

#[path = "../../integration-tests/src/postgres.rs"]
mod temp_postgres;
use temp_postgres::TempDatabase;
use tempfile::TempDir;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// 30 s: bounds every wait for an answer or a handshake. Generous because 200 handshakes
/// at once in a debug build take a while on a busy machine; a pass never waits this long.
const WAIT: Duration = Duration::from_secs(30);

/// 120 s: bounds a concurrency test that would otherwise hang; a pass takes a few seconds.
const CONCURRENCY_LIMIT: Duration = Duration::from_secs(120);

/// 200: how many identities redeem one ticket at once in the concurrency tests.
const REDEEMERS: usize = 200;

/// 4: client nodes the redeemers are spread over (50 channels each).
const CLIENT_NODES: usize = 4;

/// 500 ms: how long a test waits to be sure that no answer comes.
const SILENCE: Duration = Duration::from_millis(500);

const PROJECT_ID: &str = "p-3f2a";
const CREDENTIAL_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const AUTHORITY_NAME: &str = "authority";

// ---- the scenarios ------------------------------------------------------------------------

async fn an_admins_ticket_enrolls_a_new_identity_with_a_credential_that_verifies(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let attributes = attributes(&[("component", "db"), ("location", "sf")]);
    let ticket = admin_client
        .create_ticket(attributes.clone(), Duration::from_secs(600), 1)
        .await
        .unwrap();
    assert_eq!(ticket.code.len(), 64);
    assert!(ticket.code.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(ticket.id.len(), 12);
    assert_eq!(ticket.attributes, attributes);
    assert_eq!(ticket.usage_count, 1);
    assert_eq!(ticket.expires_at, world.clock.now() + 600);

    let newcomer = Party::new();
    let mut client = world.connect(&newcomer, 0).await;
    let enrolled = client.redeem(&code_of(&ticket)).await.unwrap();
    let mut expected = attributes.clone();
    expected.insert(PROJECT_ID_ATTRIBUTE.into(), PROJECT_ID.into());
    assert_eq!(enrolled.attributes, expected);

    // The credential verifies against the authority's identity, for the newcomer, with
    // exactly the ticket's attributes and the project id, for the configured lifetime.
    let verified = decode_credential(&enrolled)
        .unwrap()
        .verify(
            &newcomer.identifier,
            std::slice::from_ref(&world.identity),
            now(),
        )
        .unwrap();
    assert_eq!(verified.issuer, world.identifier);
    assert_eq!(verified.attributes, expected);
    assert_eq!(verified.expires_at, enrolled.expires_at);
    assert_eq!(
        verified.expires_at - verified.created_at,
        CREDENTIAL_TTL.as_secs()
    );
    assert_eq!(verified.created_at, world.clock.now());
    // Not for anyone else.
    assert!(
        decode_credential(&enrolled)
            .unwrap()
            .verify(
                &admin.identifier,
                std::slice::from_ref(&world.identity),
                now()
            )
            .is_err()
    );

    let member = world
        .store
        .member(&newcomer.identifier)
        .await
        .unwrap()
        .expect("the newcomer is a member");
    assert_eq!(member.attributes, attributes);
    assert_eq!(member.via, Member::via_ticket(&ticket.id));
    assert_eq!(member.added_by, admin.identifier);

    let audit = admin_client.audit(100).await.unwrap();
    let seen: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.subject.as_str()))
        .collect();
    let admin_id = admin.identifier.to_string();
    let newcomer_id = newcomer.identifier.to_string();
    assert!(seen.contains(&(AuditEvent::TICKET_CREATED, &admin_id, &ticket.id)));
    assert!(seen.contains(&(AuditEvent::TICKET_REDEEMED, &newcomer_id, &ticket.id)));
    assert!(
        seen.iter()
            .any(|(action, _, subject)| *action == AuditEvent::MEMBER_ADDED
                && *subject == newcomer_id)
    );
    assert!(
        audit
            .iter()
            .all(|e| !e.detail.contains(&ticket.code) && !e.detail.contains(&ticket.code[..16]))
    );
    let listed = admin_client.list_tickets().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].uses_left),
        (ticket.id.as_str(), 0)
    );
    world.stop().await;
}

async fn usage_count_one_enrolls_exactly_one_of_200(db: &TestDb) {
    enrolls_exactly(db, 1, 1).await;
}

async fn usage_count_three_enrolls_exactly_three_of_200(db: &TestDb) {
    enrolls_exactly(db, 1, 3).await;
}

async fn two_authorities_sharing_one_database_enroll_exactly_one_of_200(db: &TestDb) {
    enrolls_exactly(db, 2, 1).await;
}

async fn two_authorities_sharing_one_database_enroll_exactly_three_of_200(db: &TestDb) {
    enrolls_exactly(db, 2, 3).await;
}

/// [`REDEEMERS`] identities, each on a channel of its own, spread over [`CLIENT_NODES`]
/// client nodes and `authorities` authority nodes (sharing one database), redeem one ticket
/// with usage count `n` at the same moment: exactly `n` enroll, every other one is told the
/// ticket is used up.
async fn enrolls_exactly(db: &TestDb, authorities: usize, n: u32) {
    tokio::time::timeout(CONCURRENCY_LIMIT, async {
        let admin = Party::new();
        let world = World::start(db, authorities, &[&admin]).await;
        let mut admin_client = world.connect(&admin, 0).await;
        let ticket = admin_client
            .create_ticket(
                attributes(&[("fleet", "edge")]),
                Duration::from_secs(600),
                n,
            )
            .await
            .unwrap();
        let code = code_of(&ticket);

        let client_nodes: Vec<(Node, TcpTransport)> =
            (0..CLIENT_NODES).map(burst_client_node).collect();
        let barrier = Arc::new(Barrier::new(REDEEMERS));
        let mut redeemers = JoinSet::new();
        for i in 0..REDEEMERS {
            let party = Party::new();
            let node = client_nodes[i % CLIENT_NODES].0.clone();
            let route = world.listener_route(i % authorities);
            let authority = world.identifier;
            let barrier = barrier.clone();
            let code = code.clone();
            redeemers.spawn(async move {
                let mut client =
                    AuthorityClient::connect(&node, route, &authority, &party.settings, WAIT)
                        .await
                        .unwrap();
                barrier.wait().await;
                (party.identifier, client.redeem(&code).await)
            });
        }
        let mut enrolled = BTreeSet::new();
        let mut used_up = 0;
        while let Some(done) = redeemers.join_next().await {
            match done.unwrap() {
                (identifier, Ok(_)) => {
                    enrolled.insert(identifier);
                }
                (_, Err(ClientError::Refused(e))) if e.kind == ErrorKind::TicketUsedUp => {
                    used_up += 1
                }
                (_, Err(other)) => panic!("unexpected outcome: {other}"),
            }
        }
        assert_eq!(enrolled.len(), n as usize);
        assert_eq!(used_up, REDEEMERS - n as usize);
        let members: BTreeSet<Identifier> = world
            .store
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.identifier)
            .collect();
        assert_eq!(members, enrolled);
        let listed = admin_client.list_tickets().await.unwrap();
        assert_eq!(listed[0].uses_left, 0);
        for (node, _) in &client_nodes {
            node.shutdown().await;
        }
        world.stop().await;
    })
    .await
    .expect("the concurrent redemptions finished in time");
}

async fn expired_revoked_unknown_and_used_up_codes_get_distinct_refusals(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let redeemer = Party::new();
    let mut client = world.connect(&redeemer, 0).await;

    let mut refusals = BTreeMap::new();
    redeem_refused(
        &mut client,
        &OneTimeCode::random(),
        ErrorKind::TicketUnknown,
        &mut refusals,
    )
    .await;

    let revoked = admin_client
        .create_ticket(BTreeMap::new(), Duration::from_secs(600), 5)
        .await
        .unwrap();
    let info = admin_client.revoke_ticket(&revoked.id).await.unwrap();
    assert!(info.revoked_at.is_some());
    redeem_refused(
        &mut client,
        &code_of(&revoked),
        ErrorKind::TicketRevoked,
        &mut refusals,
    )
    .await;

    let single = admin_client
        .create_ticket(BTreeMap::new(), Duration::from_secs(600), 1)
        .await
        .unwrap();
    let first = Party::new();
    world
        .connect(&first, 0)
        .await
        .redeem(&code_of(&single))
        .await
        .unwrap();
    redeem_refused(
        &mut client,
        &code_of(&single),
        ErrorKind::TicketUsedUp,
        &mut refusals,
    )
    .await;

    // A ticket past its expiry by the authority's clock; at its expiry time it is refused.
    let expiring = admin_client
        .create_ticket(BTreeMap::new(), Duration::from_secs(30), 1)
        .await
        .unwrap();
    assert_eq!(expiring.expires_at, world.clock.now() + 30);
    world.clock.advance(Duration::from_secs(30));
    redeem_refused(
        &mut client,
        &code_of(&expiring),
        ErrorKind::TicketExpired,
        &mut refusals,
    )
    .await;
    let expired = &refusals[&format!("{:?}", ErrorKind::TicketExpired)];
    assert!(
        expired.contains(&expiring.expires_at.to_string()),
        "{expired}"
    );
    let messages: BTreeSet<&String> = refusals.values().collect();
    assert_eq!(messages.len(), 4, "{refusals:?}");
    // No refusal made the redeemer a member.
    assert!(
        world
            .store
            .member(&redeemer.identifier)
            .await
            .unwrap()
            .is_none()
    );

    let unknown = refusal(admin_client.revoke_ticket("000000000000").await);
    assert_eq!(unknown.kind, ErrorKind::NotFound);
    world.stop().await;
}

async fn malformed_requests_are_answered_with_bad_request(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let client_node = client_node("raw");
    let channel = secure_channel::create(&client_node.0, world.listener_route(0), &admin.settings)
        .await
        .unwrap();
    let mut raw = client_node.0.client().unwrap();
    let cases: &[(&str, &[u8])] = &[
        (ACCEPTOR_SERVICE, b"not json"),
        (ACCEPTOR_SERVICE, br#"{"code": "abc"}"#),
        (ACCEPTOR_SERVICE, br#"{"code": 7}"#),
        (TICKET_SERVICE, br#"{"op": "create"}"#),
        (TICKET_SERVICE, br#"{"op": "list", "extra": 1}"#),
        (
            MEMBERS_SERVICE,
            br#"{"op": "show", "identifier": "Inothex"}"#,
        ),
        (CREDENTIAL_SERVICE, br#"{"attributes": {}}"#),
        (AUDIT_SERVICE, br#"{"limit": 10001}"#),
        (AUDIT_SERVICE, br#"{"limit": -1}"#),
    ];
    for (service, payload) in cases {
        let route = Route::from(vec![channel.encryptor.clone(), Address::local(*service)]);
        let reply = raw
            .request(route, payload.to_vec(), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{service} did not answer {payload:?}: {e}"));
        let refusal = api::decode_reply::<serde_json::Value>(&reply.payload)
            .map(|ok| panic!("{service} accepted {payload:?}: {ok}"))
            .unwrap_err();
        assert_eq!(
            refusal.kind,
            ErrorKind::BadRequest,
            "{service} {payload:?}: {refusal:?}"
        );
    }
    // A large one too (60 KiB of blanks: about the most one channel message carries).
    let big = vec![b' '; 60 * 1024];
    let route = Route::from(vec![
        channel.encryptor.clone(),
        Address::local(TICKET_SERVICE),
    ]);
    let reply = raw.request(route, big, WAIT).await.unwrap();
    assert_eq!(
        api::decode_reply::<serde_json::Value>(&reply.payload)
            .unwrap_err()
            .kind,
        ErrorKind::BadRequest
    );
    secure_channel::close(&client_node.0, &channel);
    client_node.0.shutdown().await;
    world.stop().await;
}

async fn roles_decide_who_may_manage_tickets_and_members(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let (member, enroller, stranger) = (Party::new(), Party::new(), Party::new());
    admin_client
        .add_member(&member.identifier, attributes(&[("component", "web")]))
        .await
        .unwrap();
    admin_client
        .add_member(
            &enroller.identifier,
            attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)]),
        )
        .await
        .unwrap();
    let ten_minutes = Duration::from_secs(600);
    let enroller_ticket = attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)]);

    // A plain member and a stranger may do none of it.
    for party in [&member, &stranger] {
        let mut c = world.connect(party, 0).await;
        let forbidden = [
            refusal(c.create_ticket(BTreeMap::new(), ten_minutes, 1).await),
            refusal(c.list_tickets().await),
            refusal(c.revoke_ticket("000000000000").await),
            refusal(c.members().await),
            refusal(c.member(&admin.identifier).await),
            refusal(
                c.add_member(&party.identifier, enroller_ticket.clone())
                    .await,
            ),
            refusal(c.delete_member(&member.identifier).await),
            refusal(c.audit(10).await),
        ];
        for e in forbidden {
            assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
        }
    }

    // An enroller manages tickets and reads members, but makes no enrollers and changes no
    // members.
    let mut e = world.connect(&enroller, 0).await;
    let plain = e
        .create_ticket(attributes(&[("component", "web")]), ten_minutes, 2)
        .await
        .unwrap();
    let refused = refusal(
        e.create_ticket(enroller_ticket.clone(), ten_minutes, 1)
            .await,
    );
    assert_eq!(refused.kind, ErrorKind::Forbidden);
    assert!(refused.message.contains("only admins"), "{refused:?}");
    assert_eq!(e.list_tickets().await.unwrap().len(), 1);
    assert_eq!(e.members().await.unwrap().len(), 2);
    assert_eq!(
        e.member(&member.identifier).await.unwrap().attributes,
        attributes(&[("component", "web")])
    );
    assert_eq!(
        refusal(e.member(&stranger.identifier).await).kind,
        ErrorKind::NotFound
    );
    for refused in [
        refusal(e.add_member(&stranger.identifier, BTreeMap::new()).await),
        refusal(e.delete_member(&member.identifier).await),
        refusal(e.audit(10).await),
    ] {
        assert_eq!(refused.kind, ErrorKind::Forbidden);
    }
    let revoked = e.revoke_ticket(&plain.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());

    // An admin may make enroller tickets.
    let made = admin_client
        .create_ticket(enroller_ticket.clone(), ten_minutes, 1)
        .await
        .unwrap();
    assert_eq!(made.attributes, enroller_ticket);

    // A demoted enroller loses its rights with its next request, on the same channel.
    admin_client
        .add_member(&enroller.identifier, BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(
        refusal(e.create_ticket(BTreeMap::new(), ten_minutes, 1).await).kind,
        ErrorKind::Forbidden
    );
    assert_eq!(refusal(e.members().await).kind, ErrorKind::Forbidden);

    // What no one may ask for.
    let bad_terms = [
        (BTreeMap::new(), Duration::from_secs(0), 1),
        (BTreeMap::new(), Duration::from_millis(999), 1),
        (BTreeMap::new(), Duration::from_secs(366 * 24 * 3600), 1),
        (BTreeMap::new(), ten_minutes, 0),
        (BTreeMap::new(), ten_minutes, 100_001),
        (
            attributes(&[(PROJECT_ID_ATTRIBUTE, "other")]),
            ten_minutes,
            1,
        ),
        (attributes(&[("has space", "x")]), ten_minutes, 1),
        (attributes(&[("ctl", "a\u{7}b")]), ten_minutes, 1),
        (
            (0..64).map(|i| (format!("a{i}"), String::new())).collect(),
            ten_minutes,
            1,
        ),
    ];
    for (attributes, expires_in, usage_count) in bad_terms {
        let refused = refusal(
            admin_client
                .create_ticket(attributes.clone(), expires_in, usage_count)
                .await,
        );
        assert_eq!(
            refused.kind,
            ErrorKind::BadRequest,
            "{attributes:?} {expires_in:?} {usage_count}"
        );
    }
    assert_eq!(
        refusal(
            admin_client
                .add_member(
                    &stranger.identifier,
                    attributes(&[(PROJECT_ID_ATTRIBUTE, "x")])
                )
                .await
        )
        .kind,
        ErrorKind::BadRequest
    );
    // The widest terms allowed are accepted.
    admin_client
        .create_ticket(
            (0..63).map(|i| (format!("a{i}"), String::new())).collect(),
            Duration::from_secs(365 * 24 * 3600),
            100_000,
        )
        .await
        .unwrap();
    world.stop().await;
}

async fn members_are_updated_by_admins_and_by_enrollers_except_their_role(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let (member, enroller) = (Party::new(), Party::new());
    admin_client
        .add_member(&member.identifier, attributes(&[("component", "web")]))
        .await
        .unwrap();
    admin_client
        .add_member(
            &enroller.identifier,
            attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)]),
        )
        .await
        .unwrap();
    let change = admin_client
        .update_member(
            &member.identifier,
            attributes(&[("zone", "eu"), (ROLE_ATTRIBUTE, ENROLLER_ROLE)]),
            vec!["component".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        change.before.attributes,
        attributes(&[("component", "web")])
    );
    assert_eq!(
        change.after.attributes,
        attributes(&[("zone", "eu"), (ROLE_ATTRIBUTE, ENROLLER_ROLE)])
    );
    // The member's next credential carries the change.
    let mut m = world.connect(&member, 0).await;
    let fresh = m.credential().await.unwrap();
    assert_eq!(fresh.attributes.get("zone").map(String::as_str), Some("eu"));

    // An enroller changes anything but the role.
    let mut e = world.connect(&enroller, 0).await;
    let change = e
        .update_member(&member.identifier, attributes(&[("zone", "us")]), vec![])
        .await
        .unwrap();
    assert_eq!(
        change.after.attributes.get("zone").map(String::as_str),
        Some("us")
    );
    for (set, remove) in [
        (attributes(&[(ROLE_ATTRIBUTE, "admin")]), vec![]),
        (BTreeMap::new(), vec![ROLE_ATTRIBUTE.to_owned()]),
    ] {
        let refused = refusal(e.update_member(&member.identifier, set, remove).await);
        assert_eq!(refused.kind, ErrorKind::Forbidden, "{refused:?}");
        assert!(refused.message.contains(ROLE_ATTRIBUTE), "{refused:?}");
    }
    // Empty, invalid and unknown.
    let empty = refusal(
        admin_client
            .update_member(&member.identifier, BTreeMap::new(), vec![])
            .await,
    );
    assert_eq!(empty.kind, ErrorKind::BadRequest);
    let project_id = refusal(
        admin_client
            .update_member(
                &member.identifier,
                attributes(&[(PROJECT_ID_ATTRIBUTE, "x")]),
                vec![],
            )
            .await,
    );
    assert_eq!(project_id.kind, ErrorKind::BadRequest);
    let unknown = refusal(
        admin_client
            .update_member(&Party::new().identifier, attributes(&[("a", "b")]), vec![])
            .await,
    );
    assert_eq!(unknown.kind, ErrorKind::NotFound);
    // A plain member may not update anyone.
    let plain = Party::new();
    admin_client
        .add_member(&plain.identifier, attributes(&[("component", "db")]))
        .await
        .unwrap();
    let mut p = world.connect(&plain, 0).await;
    let refused = refusal(
        p.update_member(&plain.identifier, attributes(&[("a", "b")]), vec![])
            .await,
    );
    assert_eq!(refused.kind, ErrorKind::Forbidden);
}

async fn re_enrolling_says_what_changed_and_a_retry_spends_no_use(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let ticket = admin_client
        .create_ticket(
            attributes(&[("component", "web")]),
            Duration::from_secs(600),
            1,
        )
        .await
        .unwrap();
    let newcomer = Party::new();
    let mut client = world.connect(&newcomer, 0).await;
    let first = client.redeem(&code_of(&ticket)).await.unwrap();
    assert_eq!((first.before.clone(), first.retried), (None, false));
    let again = client.redeem(&code_of(&ticket)).await.unwrap();
    assert!(again.retried);
    assert_eq!(again.before, Some(attributes(&[("component", "web")])));
    assert_eq!(again.attributes, first.attributes);
    let second = admin_client
        .create_ticket(attributes(&[("zone", "eu")]), Duration::from_secs(600), 1)
        .await
        .unwrap();
    let merged = client.redeem(&code_of(&second)).await.unwrap();
    assert_eq!(merged.before, Some(attributes(&[("component", "web")])));
    assert_eq!(
        merged.attributes,
        attributes(&[
            ("component", "web"),
            ("zone", "eu"),
            (PROJECT_ID_ATTRIBUTE, PROJECT_ID)
        ])
    );
    let third = admin_client
        .create_ticket(attributes(&[("zone", "us")]), Duration::from_secs(600), 1)
        .await
        .unwrap();
    let replaced = client.redeem_with(&code_of(&third), true).await.unwrap();
    assert_eq!(
        replaced.attributes,
        attributes(&[("zone", "us"), (PROJECT_ID_ATTRIBUTE, PROJECT_ID)])
    );
    let tickets = admin_client.list_tickets().await.unwrap();
    assert!(tickets.iter().all(|t| t.uses_left == 0), "{tickets:?}");
}

async fn the_revocation_feed_holds_a_follower_until_a_change_and_serves_it_signed(db: &TestDb) {
    // Two authority processes sharing the database: the deletion is committed through one,
    // the follower waits on the other, which must notice the change on its own.
    let admin = Party::new();
    let world = World::start(db, 2, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let member = Party::new();
    admin_client
        .add_member(&member.identifier, attributes(&[("component", "web")]))
        .await
        .unwrap();
    // Anyone with a channel may follow: a node trusting the authority need not be a member.
    let follower = Party::new();
    let mut follower_client = world.connect(&follower, 1).await;
    let (now, head) = follower_client
        .revocations(0, Duration::ZERO)
        .await
        .unwrap();
    assert!(now.is_empty(), "{now:?}");
    assert_eq!(head, 0);

    let held = tokio::spawn(async move {
        let asked = tokio::time::Instant::now();
        let answer = follower_client
            .revocations(0, Duration::from_secs(20))
            .await
            .unwrap();
        (answer, asked.elapsed())
    });
    // The request is held: nothing has changed yet.
    tokio::time::sleep(SILENCE).await;
    assert!(!held.is_finished(), "answered before anything changed");
    admin_client
        .delete_member(&member.identifier)
        .await
        .unwrap();
    let ((statements, head), waited) = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the held request was answered after {waited:?}, not at the change"
    );
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(statements[0].subject, member.identifier);
    assert_eq!(statements[0].kind, RevocationKind::Revoked);
    assert_eq!(head, statements[0].seq);
    // Asked again from there, nothing more.
    let mut again = world.connect(&follower, 0).await;
    let (more, _) = again
        .revocations(statements[0].seq, Duration::ZERO)
        .await
        .unwrap();
    assert!(more.is_empty(), "{more:?}");
    world.stop().await;
}

async fn credentials_follow_the_store(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let member = Party::new();
    let mut m = world.connect(&member, 0).await;
    assert_eq!(refusal(m.credential().await).kind, ErrorKind::NotMember);

    admin_client
        .add_member(&member.identifier, attributes(&[("component", "web")]))
        .await
        .unwrap();
    let fresh = m.credential().await.unwrap();
    assert_eq!(
        fresh.attributes,
        attributes(&[("component", "web"), (PROJECT_ID_ATTRIBUTE, PROJECT_ID)])
    );
    assert_eq!(
        fresh.expires_at,
        world.clock.now() + CREDENTIAL_TTL.as_secs()
    );
    verify(&world, &member, &fresh);

    // The stored attributes change; the next credential carries the new ones, created a
    // second after the change (strictly newer than it, so that nodes voiding credentials
    // created at or before the change keep this one).
    world.clock.advance(Duration::from_secs(30));
    admin_client
        .add_member(
            &member.identifier,
            attributes(&[("component", "api"), ("tier", "2")]),
        )
        .await
        .unwrap();
    let fresh = m.credential().await.unwrap();
    assert_eq!(
        fresh.attributes,
        attributes(&[
            ("component", "api"),
            ("tier", "2"),
            (PROJECT_ID_ATTRIBUTE, PROJECT_ID)
        ])
    );
    assert_eq!(
        fresh.expires_at,
        world.clock.now() + 1 + CREDENTIAL_TTL.as_secs()
    );
    verify(&world, &member, &fresh);

    // An admin that is not a member gets the project id only.
    let mine = admin_client.credential().await.unwrap();
    assert_eq!(
        mine.attributes,
        attributes(&[(PROJECT_ID_ATTRIBUTE, PROJECT_ID)])
    );

    // Deleted: no more credentials, at once, on the same channel.
    let deleted = admin_client
        .delete_member(&member.identifier)
        .await
        .unwrap();
    assert_eq!(deleted.identifier, member.identifier.to_string());
    assert_eq!(refusal(m.credential().await).kind, ErrorKind::NotMember);
    assert_eq!(
        refusal(admin_client.delete_member(&member.identifier).await).kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        refusal(admin_client.member(&member.identifier).await).kind,
        ErrorKind::NotFound
    );
    let audit = admin_client.audit(2).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].action, AuditEvent::MEMBER_DELETED);
    assert_eq!(audit[1].subject, member.identifier.to_string());
    assert_eq!(audit[1].at, world.clock.now());
    world.stop().await;
}

// ---- backend-independent ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_without_a_secure_channel_reaches_no_service() {
    let db = TestDb::sqlite();
    let admin = Party::new();
    let world = World::start(&db, 1, &[&admin]).await;
    let (node, _tcp) = client_node("plain");
    let mut raw = node.client().unwrap();
    let create = api::encode(&api::TicketRequest::Create {
        attributes: BTreeMap::new(),
        expires_in: 600,
        usage_count: 1,
    })
    .unwrap();
    let auth = &world.nodes[0];
    let denied_before = auth.node.stats().dropped_denied;
    let services = [
        TICKET_SERVICE,
        ACCEPTOR_SERVICE,
        CREDENTIAL_SERVICE,
        MEMBERS_SERVICE,
        AUDIT_SERVICE,
    ];
    // Straight over TCP: the node's access control refuses it before any service sees it,
    // and answers with an error message that says so, never with the service's answer.
    for service in services {
        let route = Route::from(vec![
            Address::try_new(TCP, &auth.listener).unwrap(),
            Address::local(service),
        ]);
        raw.send(route, create.clone()).await.unwrap();
    }
    for service in services {
        match raw.receive(WAIT).await {
            Err(RequestError::Undeliverable(error))
                if error.class == ErrorClass::Denied
                    && error.address == Address::local(service) => {}
            other => panic!("{service} did not refuse a plain TCP message: {other:?}"),
        }
    }
    until("the refusals to be counted", || {
        auth.node.stats().dropped_denied >= denied_before + services.len() as u64
    })
    .await;
    // From the authority node itself: refused too.
    let mut local = auth.node.client().unwrap();
    for service in services {
        match local
            .request(Address::local(service), create.clone(), SILENCE)
            .await
        {
            Err(RequestError::Route(RouteError::Denied(_))) => {}
            other => panic!("{service} accepted a local message: {other:?}"),
        }
    }
    // Nothing was done.
    assert!(world.store.list_tickets().await.unwrap().is_empty());
    assert!(world.store.audit_log(10).await.unwrap().is_empty());
    node.shutdown().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connecting_to_another_identity_than_the_authority_fails_with_wrong_authority() {
    let db = TestDb::sqlite();
    let world = World::start(&db, 1, &[]).await;
    let impostor = World::start(&TestDb::sqlite(), 1, &[]).await;
    let (node, _tcp) = client_node("client");
    let me = Party::new();
    let started = std::time::Instant::now();
    let outcome = AuthorityClient::connect(
        &node,
        impostor.listener_route(0),
        &world.identifier,
        &me.settings,
        WAIT,
    )
    .await;
    match outcome {
        Err(ClientError::WrongAuthority { expected, found }) => {
            assert_eq!(expected, world.identifier);
            assert_eq!(found, impostor.identifier);
        }
        other => panic!("expected WrongAuthority, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    // The right one connects, and both ends of its channel have a verification code.
    let client = AuthorityClient::connect(
        &node,
        world.listener_route(0),
        &world.identifier,
        &me.settings,
        WAIT,
    )
    .await
    .unwrap();
    assert!(!client.verification_code().is_empty());
    assert_eq!(client.authority().identifier(), &world.identifier);
    client.close().await;
    node.shutdown().await;
    impostor.stop().await;
    world.stop().await;
}

// ---- join requests --------------------------------------------------------------------------

/// Wait (as the requester) until request `id` is decided.
async fn decided(client: &mut AuthorityClient, id: &str) -> JoinWaited {
    tokio::time::timeout(WAIT, async {
        loop {
            let waited = client.wait_join_request(id).await.unwrap();
            if waited.request.state != JoinState::Pending {
                return waited;
            }
        }
    })
    .await
    .expect("the request was decided in time")
}

async fn show(client: &mut AuthorityClient, id: &str) -> JoinRequestInfo {
    client.join_request(id).await.unwrap()
}

async fn a_join_request_is_approved_with_its_code_and_the_requester_gets_its_credential(
    db: &TestDb,
) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let requester = Party::new();
    let mut client = world.connect(&requester, 0).await;
    let asked = attributes(&[("component", "worker"), ("zone", "a")]);
    let (filed, code) = client
        .file_join_request(asked.clone(), Some(Duration::from_secs(3600)), "rack 4")
        .await
        .unwrap();
    // No one in between: the authority stored the code the requester computed.
    assert_eq!(filed.code, code);
    assert_eq!(filed.state, JoinState::Pending);
    assert_eq!(filed.source, "127.0.0.1");
    assert_eq!(filed.requester, requester.identifier.to_string());
    assert_eq!((filed.lifetime, filed.note.as_str()), (3600, "rack 4"));
    // Filing again (same identity, another channel) keeps the request, with the new
    // channel's code.
    let mut again = world.connect(&requester, 0).await;
    let (refiled, new_code) = again
        .file_join_request(asked.clone(), Some(Duration::from_secs(3600)), "rack 4")
        .await
        .unwrap();
    assert_eq!(refiled.id, filed.id);
    assert_ne!(new_code, code);
    assert_eq!(refiled.code, new_code);
    let code = new_code;
    drop(again);

    let listed = admin_client.join_requests(false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].code, code);

    let id = filed.id.clone();
    let waiter = tokio::spawn(async move {
        let waited = decided(&mut client, &id).await;
        (waited, client)
    });

    // A wrong code is refused and changes nothing.
    let e = refusal(
        admin_client
            .approve_join_request(&filed.id, "0000-0000", None, None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::WrongCode, "{e:?}");
    assert_eq!(
        show(&mut admin_client, &filed.id).await.state,
        JoinState::Pending
    );
    // Approval may narrow, never widen.
    let e = refusal(
        admin_client
            .approve_join_request(&filed.id, &code, Some(attributes(&[("zone", "b")])), None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    let e = refusal(
        admin_client
            .approve_join_request(&filed.id, &code, None, Some(Duration::from_secs(7200)))
            .await,
    );
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
    assert!(!waiter.is_finished());

    let approved = admin_client
        .approve_join_request(
            &filed.id.to_lowercase(),
            &code.replace('-', ""),
            Some(attributes(&[("component", "worker")])),
            Some(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    assert_eq!(approved.state, JoinState::Approved);
    assert_eq!(approved.granted_lifetime, Some(600));
    assert_eq!(
        approved.decided_by.as_deref(),
        Some(admin.identifier.to_string().as_str())
    );

    let (waited, mut client) = waiter.await.unwrap();
    assert_eq!(waited.request.state, JoinState::Approved);
    let enrolled = waited.credential.expect("a credential with the approval");
    verify(&world, &requester, &enrolled);
    assert_eq!(
        enrolled.attributes,
        attributes(&[("component", "worker"), (PROJECT_ID_ATTRIBUTE, PROJECT_ID)])
    );
    assert_eq!(enrolled.expires_at, world.clock.now() + 600);
    // It is a member like any other; its refreshed credentials keep the shorter lifetime.
    world.clock.advance(Duration::from_secs(10));
    let refreshed = client.credential().await.unwrap();
    assert_eq!(refreshed.expires_at, world.clock.now() + 600);
    let member = world
        .store
        .member(&requester.identifier)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(member.via, format!("request:{}", filed.id));
    assert_eq!(member.added_by, admin.identifier);

    // Decided is decided.
    let e = refusal(
        admin_client
            .approve_join_request(&filed.id, &code, None, None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::RequestClosed, "{e:?}");
    let audit = admin_client.audit(100).await.unwrap();
    for action in ["request.filed", "request.approved", "member.added"] {
        assert!(
            audit
                .iter()
                .any(|a| a.action == action && (a.subject == filed.id || action == "member.added")),
            "{action} in {audit:?}"
        );
    }
    drop((client, admin_client));
    world.stop().await;
}

/// A node that poses as the authority: it answers the requester's handshake with its own
/// identity and passes every join call on through its own channel to the real authority.
struct Middleman {
    to_authority: Address,
}

impl Worker for Middleman {
    async fn handle_message(&mut self, ctx: &mut Context, m: Message) -> Result<(), WorkerError> {
        let mut client = ctx.node().client()?;
        let route = Route::from(vec![
            self.to_authority.clone(),
            Address::local(api::JOIN_SERVICE),
        ]);
        if let Ok(answer) = client.request(route, m.payload.clone(), WAIT).await {
            ctx.send(m.return_route, answer.payload).await?;
        }
        Ok(())
    }
}

async fn a_man_in_the_middle_shows_the_admin_another_code_than_the_requester(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;

    // The middleman: its own identity, a listener, and a channel to the authority.
    let middle = Party::new();
    let (middle_node, middle_tcp) = client_node("middle");
    let to_authority =
        secure_channel::create(&middle_node, world.listener_route(0), &middle.settings)
            .await
            .unwrap();
    secure_channel::listen(&middle_node, DEFAULT_LISTENER, middle.settings.clone()).unwrap();
    middle_node
        .start_worker_with_policy(
            [Address::local(api::JOIN_SERVICE)],
            Arc::new(kith_node::AllowAll),
            Middleman {
                to_authority: to_authority.encryptor.clone(),
            },
        )
        .unwrap();
    let middle_listener = middle_tcp.listen("127.0.0.1:0").await.unwrap().to_string();

    // The requester accepted the wrong fingerprint (or was given a doctored route).
    let requester = Party::new();
    let route = Route::from(vec![
        Address::try_new(TCP, &middle_listener).unwrap(),
        Address::local(DEFAULT_LISTENER),
    ]);
    let mut client =
        AuthorityClient::connect_unpinned(&world.client.0, route, &requester.settings, WAIT)
            .await
            .unwrap();
    assert_eq!(*client.authority().identifier(), middle.identifier);
    let (filed, requester_code) = client
        .file_join_request(attributes(&[("component", "worker")]), None, "")
        .await
        .unwrap();

    // The admin sees the request (filed, in fact, by the middleman) with another code.
    let listed = admin_client.join_requests(false).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, filed.id);
    assert_ne!(listed[0].code, requester_code);
    assert_eq!(listed[0].requester, middle.identifier.to_string());
    // The code the requester reads out does not approve it.
    let e = refusal(
        admin_client
            .approve_join_request(&filed.id, &requester_code, None, None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::WrongCode, "{e:?}");
    assert_eq!(
        show(&mut admin_client, &filed.id).await.state,
        JoinState::Pending
    );
    drop((client, admin_client));
    middle_node.shutdown().await;
    world.stop().await;
}

/// What a join wait told its caller, kept past the event's borrows.
#[derive(Debug, PartialEq)]
enum Told {
    Waiting,
    Busy,
    /// Lost the authority; `true` if its channel's end signal said so (no call failed).
    Lost(bool),
    Unreachable,
}

async fn a_waiting_requester_reconnects_when_the_authority_restarts_and_gets_its_credential(
    db: &TestDb,
) {
    let admin = Party::new();
    let mut world = World::start(db, 1, &[&admin]).await;
    let requester = Party::new();
    let mut client = world.connect(&requester, 0).await;
    let (filed, code) = client
        .file_join_request(attributes(&[("component", "worker")]), None, "rack 4")
        .await
        .unwrap();
    let wait = JoinWait::new(
        &world.client.0,
        world.listener_route(0),
        &requester.settings,
        &filed.id,
        WAIT * 2,
    );
    // Room for every event of this run; a full channel would fail the test, not stall it.
    let (tx, mut told) = tokio::sync::mpsc::channel(64);
    let waiter = tokio::spawn(async move {
        wait.run(client, |event| {
            let _ = tx.try_send(match event {
                JoinEvent::Waiting => Told::Waiting,
                JoinEvent::Busy { .. } => Told::Busy,
                JoinEvent::Lost { error } => Told::Lost(error.is_none()),
                JoinEvent::Unreachable { .. } => Told::Unreachable,
            });
        })
        .await
    });
    let next = async |told: &mut tokio::sync::mpsc::Receiver<Told>| {
        tokio::time::timeout(WAIT, told.recv())
            .await
            .expect("the wait told what it does in time")
            .expect("the wait is still running")
    };

    world.restart(0, &[&admin]).await;
    // Noticed by the channel's end, long before the held wait call would time out.
    assert_eq!(next(&mut told).await, Told::Lost(true));
    loop {
        match next(&mut told).await {
            Told::Waiting => break,
            Told::Unreachable => {}
            other => panic!("{other:?} while reconnecting"),
        }
    }
    assert!(!waiter.is_finished());

    let mut admin_client = world.connect(&admin, 0).await;
    let approved = admin_client
        .approve_join_request(&filed.id, &code, None, None)
        .await
        .unwrap();
    assert_eq!(approved.state, JoinState::Approved);
    let approved = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter got the decision in time")
        .unwrap()
        .unwrap();
    assert_eq!(approved.request.id, filed.id);
    assert_eq!(approved.request.state, JoinState::Approved);
    verify(&world, &requester, &approved.credential);
    // It waited on the same request throughout: nothing was filed again.
    let all = admin_client.join_requests(true).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    drop(admin_client);
    world.stop().await;
}

async fn join_requests_are_capped_per_address_and_expire(db: &TestDb) {
    let admin = Party::new();
    let join = JoinSettings {
        request_ttl: Duration::from_secs(3600),
        max_pending_per_source: 5,
        max_pending: 1000,
    };
    let world = World::start_with(db, 1, &[&admin], join).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let mut filed = Vec::new();
    for _ in 0..5 {
        let party = Party::new();
        let mut client = world.connect(&party, 0).await;
        let (info, _) = client
            .file_join_request(BTreeMap::new(), None, "")
            .await
            .unwrap();
        assert_eq!(info.expires_at, world.clock.now() + 3600);
        filed.push((info, client));
    }
    let sixth = Party::new();
    let mut sixth_client = world.connect(&sixth, 0).await;
    let e = refusal(
        sixth_client
            .file_join_request(BTreeMap::new(), None, "")
            .await,
    );
    assert_eq!(e.kind, ErrorKind::TooManyRequests, "{e:?}");
    assert!(e.message.contains("127.0.0.1"), "{}", e.message);

    // Undecided, they expire at their expiry time; a waiter learns it, and an expired one
    // cannot be approved.
    let (first, mut first_client) = filed.remove(0);
    assert_eq!(
        show(&mut admin_client, &first.id).await.state,
        JoinState::Pending
    );
    world.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        show(&mut admin_client, &first.id).await.state,
        JoinState::Expired
    );
    let waited = decided(&mut first_client, &first.id).await;
    assert_eq!(waited.request.state, JoinState::Expired);
    assert!(waited.credential.is_none());
    let e = refusal(
        admin_client
            .approve_join_request(&first.id, &first.code, None, None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::RequestClosed, "{e:?}");
    // Expired requests no longer count against the address.
    sixth_client
        .file_join_request(BTreeMap::new(), None, "")
        .await
        .unwrap();
    drop((filed, first_client, sixth_client, admin_client));
    world.stop().await;
}

async fn only_admins_and_enrollers_decide_join_requests(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let (member, enroller) = (Party::new(), Party::new());
    for (party, attrs) in [
        (&member, attributes(&[("component", "db")])),
        (&enroller, attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)])),
    ] {
        admin_client
            .add_member(&party.identifier, attrs)
            .await
            .unwrap();
    }
    let requester = Party::new();
    let mut client = world.connect(&requester, 0).await;
    let (filed, code) = client
        .file_join_request(attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)]), None, "")
        .await
        .unwrap();

    let mut member_client = world.connect(&member, 0).await;
    let forbidden = |e: api::ApiError| {
        assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
        assert!(e.message.contains("admins and enrollers"), "{}", e.message);
    };
    forbidden(refusal(member_client.join_requests(true).await));
    forbidden(refusal(member_client.join_request(&filed.id).await));
    forbidden(refusal(
        member_client
            .approve_join_request(&filed.id, &code, None, None)
            .await,
    ));
    forbidden(refusal(
        member_client.deny_join_request(&filed.id, "no").await,
    ));
    forbidden(refusal(
        member_client
            .add_auto_approve_rule("0.0.0.0/0", BTreeMap::new(), None, Duration::from_secs(60))
            .await,
    ));
    forbidden(refusal(member_client.auto_approve_rules().await));
    forbidden(refusal(member_client.delete_auto_approve_rule("X").await));
    // Nor may anyone wait on someone else's request.
    let e = refusal(member_client.wait_join_request(&filed.id).await);
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");

    // An enroller may list, but not make an enroller.
    let mut enroller_client = world.connect(&enroller, 0).await;
    assert_eq!(enroller_client.join_requests(false).await.unwrap().len(), 1);
    let e = refusal(
        enroller_client
            .approve_join_request(&filed.id, &code, None, None)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
    let e = refusal(
        enroller_client
            .add_auto_approve_rule(
                "10.0.0.0/8",
                attributes(&[(ROLE_ATTRIBUTE, ENROLLER_ROLE)]),
                None,
                Duration::from_secs(60),
            )
            .await,
    );
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
    // The enroller denies; the requester learns why.
    let denied = enroller_client
        .deny_join_request(&filed.id, "enrollers are made by hand")
        .await
        .unwrap();
    assert_eq!(denied.state, JoinState::Denied);
    let waited = decided(&mut client, &filed.id).await;
    assert_eq!(waited.request.state, JoinState::Denied);
    assert_eq!(
        waited.request.reason.as_deref(),
        Some("enrollers are made by hand")
    );
    assert!(waited.credential.is_none());
    assert!(
        world
            .store
            .member(&requester.identifier)
            .await
            .unwrap()
            .is_none()
    );
    drop((client, member_client, enroller_client, admin_client));
    world.stop().await;
}

async fn auto_approval_rules_approve_matching_requests_now_and_later(db: &TestDb) {
    let admin = Party::new();
    let world = World::start(db, 1, &[&admin]).await;
    let mut admin_client = world.connect(&admin, 0).await;
    let (worker, db_party) = (Party::new(), Party::new());
    let mut worker_client = world.connect(&worker, 0).await;
    let (worker_req, _) = worker_client
        .file_join_request(attributes(&[("component", "worker")]), None, "")
        .await
        .unwrap();
    let mut db_client = world.connect(&db_party, 0).await;
    let (db_req, _) = db_client
        .file_join_request(attributes(&[("component", "db")]), None, "")
        .await
        .unwrap();

    // A rule for another netblock approves nothing.
    let elsewhere = admin_client
        .add_auto_approve_rule(
            "10.0.0.0/8",
            attributes(&[("component", "worker")]),
            None,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(elsewhere.approved.is_empty());
    let e = refusal(
        admin_client
            .add_auto_approve_rule(
                "10.0.0.0/33",
                BTreeMap::new(),
                None,
                Duration::from_secs(60),
            )
            .await,
    );
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");

    // Loopback workers are approved at once, for at most 5 minutes; the db request waits.
    let added = admin_client
        .add_auto_approve_rule(
            "127.0.0.0/8",
            attributes(&[("component", "worker")]),
            Some(Duration::from_secs(300)),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(added.approved, vec![worker_req.id.clone()]);
    let waited = decided(&mut worker_client, &worker_req.id).await;
    let enrolled = waited.credential.unwrap();
    assert_eq!(waited.request.granted_lifetime, Some(300));
    assert_eq!(enrolled.expires_at, world.clock.now() + 300);
    assert_eq!(
        show(&mut admin_client, &db_req.id).await.state,
        JoinState::Pending
    );
    // A later matching request is approved as it is filed.
    let later = Party::new();
    let mut later_client = world.connect(&later, 0).await;
    let (later_req, _) = later_client
        .file_join_request(BTreeMap::new(), None, "")
        .await
        .unwrap();
    assert_eq!(later_req.state, JoinState::Approved);
    assert!(later_req.decided_by.unwrap().contains(&added.rule.id));

    let rules = admin_client.auto_approve_rules().await.unwrap();
    assert_eq!(rules.len(), 2);
    admin_client
        .delete_auto_approve_rule(&added.rule.id)
        .await
        .unwrap();
    let last = Party::new();
    let mut last_client = world.connect(&last, 0).await;
    let (last_req, _) = last_client
        .file_join_request(BTreeMap::new(), None, "")
        .await
        .unwrap();
    assert_eq!(last_req.state, JoinState::Pending);

    // A rule approves only until its expiry.
    let brief = admin_client
        .add_auto_approve_rule(
            "127.0.0.0/8",
            BTreeMap::new(),
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(brief.rule.expires_at, world.clock.now() + 60);
    assert_eq!(brief.approved, vec![last_req.id.clone()]);
    world.clock.advance(Duration::from_secs(60));
    let rules = admin_client.auto_approve_rules().await.unwrap();
    assert_eq!(
        rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [elsewhere.rule.id.as_str()]
    );
    let after = Party::new();
    let mut after_client = world.connect(&after, 0).await;
    let (after_req, _) = after_client
        .file_join_request(BTreeMap::new(), None, "")
        .await
        .unwrap();
    assert_eq!(after_req.state, JoinState::Pending);
    drop((
        worker_client,
        db_client,
        later_client,
        last_client,
        after_client,
        admin_client,
    ));
    world.stop().await;
}

/// Run the same scenarios on each database, as `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(&super::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(&super::TestDb::postgres().await).await;
                }
            )*
        }
    };
}

on_both_databases!(
    the_revocation_feed_holds_a_follower_until_a_change_and_serves_it_signed,
    members_are_updated_by_admins_and_by_enrollers_except_their_role,
    re_enrolling_says_what_changed_and_a_retry_spends_no_use,
    an_admins_ticket_enrolls_a_new_identity_with_a_credential_that_verifies,
    usage_count_one_enrolls_exactly_one_of_200,
    usage_count_three_enrolls_exactly_three_of_200,
    two_authorities_sharing_one_database_enroll_exactly_one_of_200,
    two_authorities_sharing_one_database_enroll_exactly_three_of_200,
    expired_revoked_unknown_and_used_up_codes_get_distinct_refusals,
    malformed_requests_are_answered_with_bad_request,
    roles_decide_who_may_manage_tickets_and_members,
    credentials_follow_the_store,
    a_join_request_is_approved_with_its_code_and_the_requester_gets_its_credential,
    a_man_in_the_middle_shows_the_admin_another_code_than_the_requester,
    a_waiting_requester_reconnects_when_the_authority_restarts_and_gets_its_credential,
    join_requests_are_capped_per_address_and_expire,
    only_admins_and_enrollers_decide_join_requests,
    auto_approval_rules_approve_matching_requests_now_and_later,
);

// ---- helpers ------------------------------------------------------------------------------

/// Whose store the tests' authorities open: [`PROJECT_ID`]'s.
fn owner() -> StoreOwner {
    StoreOwner {
        project_id: PROJECT_ID.into(),
        authority: None,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The one-time code of a ticket the authority created.
fn code_of(ticket: &CreatedTicket) -> OneTimeCode {
    let bytes: Vec<u8> = (0..ticket.code.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&ticket.code[i..i + 2], 16).unwrap())
        .collect();
    OneTimeCode::from_bytes(bytes.try_into().unwrap())
}

/// The authority's refusal in `outcome`.
#[track_caller]
fn refusal<T: std::fmt::Debug>(outcome: Result<T, ClientError>) -> api::ApiError {
    match outcome {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Redeem `code`, expect a refusal of `kind` that comes at once (not a timeout), and keep
/// its message by kind.
async fn redeem_refused(
    client: &mut AuthorityClient,
    code: &OneTimeCode,
    kind: ErrorKind,
    messages: &mut BTreeMap<String, String>,
) {
    let started = std::time::Instant::now();
    let e = refusal(client.redeem(code).await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    assert_eq!(e.kind, kind, "{e:?}");
    messages.insert(format!("{kind:?}"), e.message);
}

fn verify(world: &World, party: &Party, enrolled: &Enrolled) {
    let verified = decode_credential(enrolled)
        .unwrap()
        .verify(
            &party.identifier,
            std::slice::from_ref(&world.identity),
            now(),
        )
        .unwrap();
    assert_eq!(verified.attributes, enrolled.attributes);
}

/// An identity with a channel key, as a client node would hold it (no vault needed).
struct Party {
    identifier: Identifier,
    settings: ChannelSettings,
}

impl Party {
    fn new() -> Self {
        let (identity, secret) = Identity::create(now());
        let key = SecureChannelKey::generate(&identity, &secret, now() - 5, now() + 3600);
        let identifier = *identity.identifier();
        let local = LocalIdentity {
            identity,
            key,
            credentials: vec![],
        };
        let mut settings = ChannelSettings::new(Arc::new(local), open_trust());
        settings.handshake_timeout = WAIT;
        Self {
            identifier,
            settings,
        }
    }
}

fn open_trust() -> Arc<Trust> {
    Arc::new(Trust {
        authorities: vec![],
        admission: Admission::AnyIdentity,
        revocations: Default::default(),
    })
}

fn client_node(name: &str) -> (Node, TcpTransport) {
    let node = Node::new(name);
    let tcp = TcpTransport::start(&node);
    (node, tcp)
}

/// Client node `i` of a burst, a host of its own at 127.0.3.(i+1): a burst of redeemers
/// spread over client nodes comes, as it would, from several addresses (a source holds at
/// most 128 unfinished handshakes).
fn burst_client_node(i: usize) -> (Node, TcpTransport) {
    let node = Node::new(format!("client-{i}"));
    let host = u8::try_from(i + 1).unwrap();
    let tcp = TcpTransport::start_with(
        &node,
        kith_transport::TcpOptions {
            source_address: Some(std::net::IpAddr::from([127, 0, 3, host])),
            ..Default::default()
        },
    );
    (node, tcp)
}

/// One authority node: its own store handle (as another process would have), its own vault
/// handle on the shared vault file, the services, and a secure-channel listener on TCP.
struct AuthorityNode {
    node: Node,
    _tcp: TcpTransport,
    listener: String,
    store: MembershipStore,
    vault: Vault,
}

/// `authorities` authority nodes of one authority identity sharing one database, and a
/// client node to reach them from.
struct World {
    _dir: TempDir,
    vault_path: std::path::PathBuf,
    identity: Identity,
    identifier: Identifier,
    nodes: Vec<AuthorityNode>,
    /// A store handle of the test's own, for looking behind the services' backs.
    store: MembershipStore,
    client: (Node, TcpTransport),
    location: String,
    join: JoinSettings,
    /// The clock every authority node of the world reads.
    clock: Arc<ManualClock>,
}

impl World {
    async fn start(db: &TestDb, authorities: usize, admins: &[&Party]) -> Self {
        Self::start_with(db, authorities, admins, JoinSettings::default()).await
    }

    async fn start_with(
        db: &TestDb,
        authorities: usize,
        admins: &[&Party],
        join: JoinSettings,
    ) -> Self {
        let admins: BTreeSet<Identifier> = admins.iter().map(|p| p.identifier).collect();
        let dir = TempDir::new().unwrap();
        let vault_path = dir.path().join("vault.sqlite");
        let vault = Vault::open(&vault_path).await.unwrap();
        let stored = vault.create_identity(AUTHORITY_NAME, now()).await.unwrap();
        vault.close().await;
        let location = db.location();
        let mut world = Self {
            identifier: *stored.identity.identifier(),
            identity: stored.identity,
            _dir: dir,
            vault_path,
            nodes: Vec::new(),
            // The world's own handle creates the project's store; its nodes open it.
            store: MembershipStore::create(&location, &owner(), now())
                .await
                .unwrap(),
            client: client_node("client"),
            location,
            join,
            clock: Arc::new(ManualClock::new(now())),
        };
        for i in 0..authorities {
            let node = world.start_node(i, admins.clone(), "127.0.0.1:0").await;
            world.nodes.push(node);
        }
        world
    }

    async fn start_node(
        &self,
        index: usize,
        admins: BTreeSet<Identifier>,
        bind: &str,
    ) -> AuthorityNode {
        let vault = Vault::open(&self.vault_path).await.unwrap();
        let store = MembershipStore::open(&self.location, &owner(), now())
            .await
            .unwrap();
        let node = Node::new(format!("authority-{index}"));
        let tcp = TcpTransport::start(&node);
        let stored = vault.identity(AUTHORITY_NAME).await.unwrap();
        let key = vault
            .secure_channel_key(AUTHORITY_NAME, now())
            .await
            .unwrap();
        let local = LocalIdentity {
            identity: stored.identity.clone(),
            key,
            credentials: vec![],
        };
        let mut settings = ChannelSettings::new(Arc::new(local), open_trust());
        settings.handshake_timeout = WAIT;
        secure_channel::listen(&node, DEFAULT_LISTENER, settings).unwrap();
        let authority = Authority::new(
            store.clone(),
            vault.clone(),
            AUTHORITY_NAME.into(),
            AuthorityConfig {
                project_id: PROJECT_ID.into(),
                admins,
                credential_ttl: CREDENTIAL_TTL,
                join: self.join,
                clock: self.clock.clone(),
            },
        );
        authority.start(&node).unwrap();
        let listener = tcp.listen(bind).await.unwrap().to_string();
        AuthorityNode {
            node,
            _tcp: tcp,
            listener,
            store,
            vault,
        }
    }

    /// Stop authority node `index` and start it again on the same address, as a restarted
    /// process would be.
    async fn restart(&mut self, index: usize, admins: &[&Party]) {
        let old = self.nodes.remove(index);
        let bind = old.listener.clone();
        stop_node(old).await;
        let admins = admins.iter().map(|p| p.identifier).collect();
        let node = self.start_node(index, admins, &bind).await;
        self.nodes.insert(index, node);
    }

    fn listener_route(&self, index: usize) -> Route {
        Route::from(vec![
            Address::try_new(TCP, &self.nodes[index].listener).unwrap(),
            Address::local(DEFAULT_LISTENER),
        ])
    }

    /// A client for `party` to authority node `index`, from the world's client node.
    async fn connect(&self, party: &Party, index: usize) -> AuthorityClient {
        AuthorityClient::connect(
            &self.client.0,
            self.listener_route(index),
            &self.identifier,
            &party.settings,
            WAIT,
        )
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.client.0.shutdown().await;
        for node in self.nodes {
            stop_node(node).await;
        }
        self.store.close().await;
    }
}

async fn stop_node(node: AuthorityNode) {
    node.node.shutdown().await;
    node.store.close().await;
    node.vault.close().await;
}

/// A fresh, empty database for one test: a SQLite file in a temporary directory, or a
/// PostgreSQL database dropped when the test ends.
enum TestDb {
    Sqlite { _dir: TempDir, location: String },
    Postgres(TempDatabase),
}

impl TestDb {
    fn sqlite() -> Self {
        let dir = TempDir::new().unwrap();
        let location = path_text(&dir.path().join("authority.sqlite"));
        TestDb::Sqlite {
            _dir: dir,
            location,
        }
    }

    async fn postgres() -> Self {
        TestDb::Postgres(TempDatabase::for_test(
            "the authority service tests",
            "kith_service_test",
        ))
    }

    fn location(&self) -> String {
        match self {
            TestDb::Sqlite { location, .. } => location.clone(),
            TestDb::Postgres(database) => database.url.clone(),
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}
